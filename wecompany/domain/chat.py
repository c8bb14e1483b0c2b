"""
Sessions, presence, contacts and text delivery: the chat service every
transport talks to.

Text to an online user is delivered at once. Text to an offline account is
stored durably and delivered, oldest first, right after that user's next
login. While a user's stored messages are being drained, new messages to that
user are stored too (and drained in the same loop), so nothing overtakes an
older message.
"""

from __future__ import annotations

from collections import Counter

import attrs
from twisted.internet.defer import Deferred, TimeoutError
from twisted.logger import Logger

from wecompany.domain.events import CallRejected, PresenceChanged, TextMessage
from wecompany.domain.sessions import Identity
from wecompany.errors import Conflict, InvalidInput, NotFound, Unavailable, WeCompanyError
from wecompany.mirror.cluster import LocalCluster
from wecompany.store.records import StoredMessage

DELIVERED = 0
STORED = 1

BROADCAST = "*"
DRAIN_BATCH = 100
MAX_PAGE = 500


@attrs.frozen
class TextAck:
    """What the sender of a text learns: the message id and what happened to it."""

    message_id: int
    to: str
    status: int  # DELIVERED or STORED
    recipients: int


class SessionReplaced(Conflict):
    default_message = "logged in from another connection"


@attrs.define
class _Drain:
    again: bool = False
    waiter: Deferred | None = None


class ChatService:
    """
    :param store: :class:`~wecompany.store.interface.IStore`.
    :param registry: :class:`~wecompany.domain.sessions.SessionRegistry`.
    :param directory: :class:`~wecompany.domain.sessions.UserDirectory`.
    :param calls: :class:`~wecompany.domain.calls.CallService`.
    :param ids: :class:`~wecompany.domain.ids.IdGenerator`.
    :param clock: ``IReactorTime``.
    :param listeners: :class:`~wecompany.domain.interfaces.ISessionListener` s
        told when a session opens and closes (file transfers).
    :param cluster: the :class:`~wecompany.mirror.cluster.Cluster` (or
        ``LocalCluster``): where users on other nodes are, and how to reach them.
    """

    log = Logger()

    def __init__(self, store, registry, directory, calls, ids, clock, listeners=(), cluster=None) -> None:
        self.store = store
        self.registry = registry
        self.directory = directory
        self.calls = calls
        self.ids = ids
        self.clock = clock
        self.listeners = tuple(listeners)
        self.cluster = cluster if cluster is not None else LocalCluster()
        self._draining: dict[str, _Drain] = {}
        self._inflight: Counter[str] = Counter()
        # Work started for sessions that come and go (presence, offline delivery), until it ends:
        # the daemon's stop waits for it before it closes the store (settle).
        self._pending: set[Deferred] = set()
        self._settled: list[Deferred] = []
        #: Text messages sent through this node since it started (the dashboard's messages per second).
        self.texts_sent = 0

    # -- sessions -----------------------------------------------------------
    def open_session(self, client) -> None:
        """
        ``client`` has authenticated. A previous chat session of the same user
        is closed (its call ends); contacts learn the user is online; stored
        messages and files start flowing.
        """
        first, replaced = self.registry.attach(client)
        if replaced is not None:
            self.close_session(replaced, "replaced")
            replaced.disconnect(SessionReplaced())
        # Online for the contacts once the user is online cluster-wide (an
        # older chat session on another node is closed there).
        self._track(self.cluster.session_opened(client, first).addCallback(self._announce_if, client.identity, True))
        if client.kind == "tcp" and client.identity.account_id is not None:
            self.kick_drain(client.identity.user_id)
        for listener in self.listeners:
            listener.session_opened(client)

    def close_session(self, client, reason: str = "disconnected") -> None:
        """``client`` is gone (or replaced). Idempotent."""
        attached, offline = self.registry.detach(client)
        if not attached:
            return
        self.calls.session_closed(client, reason)
        for listener in self.listeners:
            listener.session_closed(client)
        self._track(self.cluster.session_closed(client, offline).addCallback(self._announce_if, client.identity,
                                                                             False))

    def _announce_if(self, changed: bool, ident: Identity, online: bool) -> None:
        if changed:
            self.announce_presence(ident, online)

    def announce_presence(self, ident: Identity, online: bool) -> None:
        """Tell the user's watchers, wherever they are, that the user came online or went offline."""
        self._background(self._announce(ident, online))

    # -- text ---------------------------------------------------------------
    async def send_text(self, client, to: str, text: str) -> TextAck:
        sender = client.identity
        self.texts_sent += 1
        message_id = self.ids.next_id()
        now = self.clock.seconds()
        if to == BROADCAST:
            event = TextMessage(message_id, sender.user_id, sender.username, text, now, broadcast=True)
            count = 0
            for other in self.registry.chat_clients():
                if other is not client:
                    other.send_event(event)
                    count += 1
            count += self.cluster.broadcast_text(event)
            return TextAck(message_id, BROADCAST, DELIVERED, count)
        recipient = await self.directory.resolve_user(to)
        if recipient is None:
            raise NotFound(f"unknown user {to!r}")
        uid = recipient.user_id
        event = TextMessage(message_id, sender.user_id, sender.username, text, now)
        target = self.registry.chat_client(uid)
        if target is not None and uid not in self._draining:
            target.send_event(event)
            return TextAck(message_id, uid, DELIVERED, 1)
        remote = await self.cluster.look_up_chat(uid) if target is None else None
        if remote is not None:
            try:
                # Its node delivers it, or stores it if the session went meanwhile.
                status = await self.cluster.deliver_text(remote, event)
                return TextAck(message_id, uid, status, 1)
            except Unavailable:
                pass  # no answer in time: stored here, so it is not lost (maybe delivered twice)
        if recipient.account_id is None or sender.account_id is None:
            raise Conflict("recipient is offline and messages of anonymous sessions are not stored")
        status = await self.deliver_here(uid, event, recipient.account_id, sender.account_id)
        return TextAck(message_id, uid, status, 1)

    async def deliver_here(self, uid: str, event: TextMessage, recipient_account: int | None = None,
                           sender_account: int | None = None) -> int:
        """
        Deliver ``event`` to ``uid``'s chat session on this node, or store it
        for the user (also while stored messages are being drained, so it
        cannot overtake them). -> DELIVERED or STORED. Another node asks this
        of the node that holds the user's session.
        """
        target = self.registry.chat_client(uid)
        if target is not None and uid not in self._draining:
            target.send_event(event)
            return DELIVERED
        recipient_account = int(uid) if recipient_account is None else recipient_account
        sender_account = int(event.sender_id) if sender_account is None else sender_account
        self._inflight[uid] += 1
        try:
            await self.store.store_offline_message(
                StoredMessage(event.message_id, sender_account, recipient_account, event.text, event.sent_at))
        finally:
            self._inflight[uid] -= 1
            if not self._inflight[uid]:
                del self._inflight[uid]
        self.kick_drain(uid)
        self.cluster.stored_for(uid)
        return STORED

    def kick_drain(self, uid: str) -> None:
        """Deliver ``uid``'s stored messages if it is online (coalesces with a running drain)."""
        state = self._draining.get(uid)
        if state is not None:
            state.again = True
            if state.waiter is not None:
                waiter, state.waiter = state.waiter, None
                waiter.callback(None)
            return
        if self.registry.chat_client(uid) is None:
            return
        state = self._draining[uid] = _Drain()
        self._background(self._drain(uid, state))

    async def _drain(self, uid: str, state: _Drain) -> None:
        try:
            account_id = int(uid)
            names: dict[int, str] = {}
            while True:
                state.again = False
                client = self.registry.chat_client(uid)
                if client is None:
                    return
                batch = await self.store.fetch_offline_messages(account_id, DRAIN_BATCH)
                if self.registry.chat_client(uid) is not client:
                    continue  # replaced or gone meanwhile: start over with the new session
                if batch:
                    missing = {m.sender_id for m in batch} - names.keys()
                    if missing:
                        users = await self.store.list_users_by_ids(sorted(missing))
                        names.update((i, u.username) for i, u in users.items())
                    if self.registry.chat_client(uid) is not client:
                        continue
                    for m in batch:
                        client.send_event(TextMessage(m.id, str(m.sender_id), names.get(m.sender_id, ""),
                                                      m.text, m.sent_at, stored=True))
                    await self.store.delete_offline_messages([m.id for m in batch])
                    continue
                if self._inflight.get(uid):
                    # A store for this user is still being written: wait for it,
                    # so a later live message cannot overtake it.
                    if not state.again:
                        state.waiter = Deferred()
                        await state.waiter
                    continue
                if not state.again:
                    return
        finally:
            del self._draining[uid]

    # -- presence and contacts ---------------------------------------------
    def is_online(self, user_id: str) -> bool:
        """Online on this node or on any other."""
        return self.registry.is_online(user_id) or bool(self.cluster.remote_sessions(user_id))

    def online_users(self, offset: int = 0, limit: int = 100):
        """A page of the users online in the whole cluster: this node's first, in the order they came."""
        _check_page(offset, limit)
        _, local = self.registry.online(0, self.registry.online_count)
        seen = {ident.user_id for ident in local}
        everyone = local + [ident for ident in self.cluster.remote_online() if ident.user_id not in seen]
        return len(everyone), everyone[offset:offset + limit]

    @property
    def online_count(self) -> int:
        """Users online in the whole cluster (each counted once)."""
        elsewhere = sum(1 for uid in self.cluster.remote_user_ids() if not self.registry.is_online(uid))
        return self.registry.online_count + elsewhere

    @property
    def session_count(self) -> int:
        return self.registry.session_count + self.cluster.remote_session_count()

    async def _announce(self, ident: Identity, online: bool) -> None:
        if ident.account_id is None:
            return
        watchers = await self.store.watchers_of(ident.account_id)
        event = PresenceChanged(ident.user_id, ident.username, online)
        for watcher in watchers:
            client = self.registry.chat_client(str(watcher)) or self.cluster.chat_session(str(watcher))
            if client is not None:
                client.send_event(event)

    async def add_contact(self, client, name_or_id: str) -> tuple[Identity, bool]:
        me = self._account_of(client)
        other = await self.directory.resolve_user(name_or_id)
        if other is None or other.account_id is None:
            raise NotFound(f"unknown user {name_or_id!r}")
        if other.account_id == me:
            raise InvalidInput("you cannot add yourself as a contact")
        await self.store.add_contact(me, other.account_id, self.clock.seconds())
        return other, self.is_online(other.user_id)

    async def remove_contact(self, client, name_or_id: str) -> Identity:
        me = self._account_of(client)
        other = await self.directory.resolve_user(name_or_id)
        if other is None or other.account_id is None or not await self.store.remove_contact(me, other.account_id):
            raise NotFound(f"{name_or_id!r} is not a contact")
        return other

    async def list_contacts(self, client, offset: int, limit: int):
        """-> (total, [(Identity, online)])"""
        me = self._account_of(client)
        _check_page(offset, limit)
        total, users = await self.store.list_contacts(me, offset, limit)
        page = [(Identity.of_user(u), self.is_online(str(u.id))) for u in users]
        return total, page

    @staticmethod
    def _account_of(client) -> int:
        if client.identity.account_id is None:
            raise WeCompanyError("anonymous sessions have no contacts", code=403)
        return client.identity.account_id

    # -- calls --------------------------------------------------------------
    async def place_call(self, client, callee: str, is_video: bool):
        """
        Ring ``callee`` on whichever node holds its desktop session. One call
        per user holds cluster-wide: both users' locks are taken first, so two
        nodes ringing the same user at once cannot both succeed.
        """
        if self.calls.call_of(client) is not None or client in self.cluster.remote_calls_of():
            raise Conflict("you are already in a call")
        target = await self.directory.resolve_user(callee)
        callee_client = None
        if target is not None:
            callee_client = (self.registry.chat_client(target.user_id)
                             or await self.cluster.look_up_chat(target.user_id))
        call_id = self.calls.new_call_id()
        users = [client.identity.user_id] + ([target.user_id] if callee_client is not None else [])
        if callee_client is not None and target.user_id != client.identity.user_id:
            if not await self.cluster.reserve_call(call_id, users):
                client.send_event(CallRejected(call_id, "busy"))
                return None
        call = self.calls.place(client, target, callee_client, is_video, call_id=call_id)
        if call is None:
            self.cluster.release_call(call_id, users)
        return call

    # -- plumbing -----------------------------------------------------------
    def _background(self, coro) -> None:
        d = Deferred.fromCoroutine(coro)
        d.addErrback(lambda f: self.log.failure("background chat task failed", f))
        self._track(d)

    def _track(self, d: Deferred) -> Deferred:
        self._pending.add(d)

        def ended(result):
            self._pending.discard(d)
            if not self._pending:
                waiters, self._settled = self._settled, []
                for waiter in waiters:
                    waiter.callback(None)
            return result

        return d.addBoth(ended)

    async def settle(self, timeout: float = 10.0) -> None:
        """
        Wait until the presence announcements and offline deliveries under
        way have ended (those they start too), or ``timeout`` seconds on the
        clock: the daemon's stop, after its connections closed and before the
        store closes, so that contacts hear who went offline.
        """
        if not self._pending:
            return
        waiter = Deferred()
        self._settled.append(waiter)
        try:
            await waiter.addTimeout(timeout, self.clock)
        except TimeoutError:
            self.log.warn("stopping: {count} presence or delivery task(s) still running after {timeout:g} s",
                          count=len(self._pending), timeout=timeout)


def _check_page(offset: int, limit: int) -> None:
    if offset < 0 or not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be 1..{MAX_PAGE}")
