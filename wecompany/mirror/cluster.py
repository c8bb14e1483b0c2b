"""
Several daemons acting as one service: what a node tells the others, and
what it keeps of theirs.

Two halves, so that no service is given a collaborator after it is made:

* :class:`Cluster` is what the domain services use (``Domain.cluster``): it
  records this node's sessions in Redis, keeps a replica of every other
  node's sessions (as :class:`RemoteClient` proxies, which the services
  treat like any other :class:`~wecompany.domain.interfaces.IClient`), and
  sends to other nodes: events for their clients, text that must be
  acknowledged, call operations, media. :class:`LocalCluster` has the same
  methods for a daemon on its own, and no Redis code runs then.
* :class:`ClusterNode` is built last, from the cluster and the services
  whose work arrives from other nodes (text, calls, sign-outs). It
  subscribes to this node's channel and to the cluster's, announces the
  node with a heartbeat, watches the other nodes' heartbeats and cleans up
  after a node that died, and publishes this node's state again when Redis
  comes back after an outage.

Keys (under ``--redis-prefix``, default ``wecompany:``, then ``v1:``):

=========================  ======================================================
``nodes``                  set of node ids that announced themselves
``node:{id}``              the node's heartbeat (JSON), expires after ``--node-timeout``
``sessions:{id}``          hash: session id -> the session (JSON); written by its node only
``user:{uid}``             hash: ``{node}/{sid}`` of every session of the user (online iff not empty)
``chat:{uid}``             ``{node}/{sid}`` of the user's one desktop (TCP) chat session
``busy:{uid}``             the call the user is in (a lock, one call per user cluster-wide)
``cleanup:{id}``           which survivor is cleaning up after node ``id`` (a lock, held while it does)
``owner:{id}``             the process that runs node ``id`` (two daemons with one id: the second stays out)
``idnode:{n}``             the node whose ids carry number ``n`` (0-1023), so that ids are unique
=========================  ======================================================

(The rooms' keys are :mod:`wecompany.mirror.rooms`'s, the SFU's :mod:`wecompany.mirror.sfu`'s.)

Channels: ``node:{id}`` (to one node) and ``all`` (to every node).
"""

from __future__ import annotations

import base64
import itertools
import secrets
import zlib

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from wecompany.domain.events import CallEnded, CallIncoming, CallRejected, CallRinging, TextMessage
from wecompany.domain.interfaces import IClient
from wecompany.domain.sessions import Identity
from wecompany.errors import InternalError, Unavailable, WeCompanyError
from wecompany.mirror import scripts
from wecompany.mirror.codec import decode_event, dumps, encode_event, loads
from wecompany.mirror.medialink import FROM_PARTY, TO_CLIENT

DELIVERED, STORED = 0, 1  # as ChatService's TextAck statuses
KEY_VERSION = "v1:"
RPC_TIMEOUT = 3.0
#: How long a session's entries outlive their node's last refresh (cleanup has time; garbage goes eventually).
SESSION_TTL_FACTOR = 10
#: The call operation a node sends the call's node when its party's session closed (not a client operation).
GONE = "gone"
#: Ids carry a 10-bit node number (wecompany.domain.ids).
NODE_NUMBERS = 1024


def new_node_id() -> str:
    return "n-" + secrets.token_hex(4)


def all_channel(prefix: str) -> str:
    """The channel every node of the cluster under ``prefix`` hears."""
    return prefix + KEY_VERSION + "all"


@implementer(IClient)
class RemoteClient:
    """
    A session held by another node, as this node's services see it: what
    is sent to it goes to that node, which hands it to the real client.
    One instance per remote session, so identity comparisons hold.
    """

    remote = True
    write_blocked = False

    def __init__(self, cluster: "Cluster", node: str, sid: str, identity: Identity, kind: str) -> None:
        self.cluster = cluster
        self.node = node
        self.sid = sid
        self.identity = identity
        self.kind = kind

    def send_event(self, event) -> None:
        self.cluster.to_node(self.node, {"t": "event", "sid": self.sid, "event": encode_event(event)})

    def send_media(self, call_id: str, data: bytes) -> bool:
        return self.cluster.send_media(self.node, TO_CLIENT, self.sid, call_id, data)

    def disconnect(self, error: WeCompanyError) -> None:
        self.cluster.to_node(self.node, {"t": "kick", "sid": self.sid, **_error_fields(error)})

    def __repr__(self) -> str:
        return f"<RemoteClient {self.identity.user_id} on {self.node}/{self.sid}>"


def _error_fields(error: WeCompanyError) -> dict:
    return {"code": error.code, "error_code": error.error_code, "message": error.message}


def _error_from(message: dict) -> WeCompanyError:
    return WeCompanyError(message.get("message") or "closed by the cluster", code=message.get("code") or 409,
                          error_code=message.get("error_code"))


def rpc_error_fields(error: WeCompanyError) -> dict:
    """An error an RPC answer carries back: what the transports show of it."""
    fields = _error_fields(error)
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, (int, float)):
        fields["retry_after"] = retry_after
    if error.detail is not None:
        fields["detail"] = error.detail
    return fields


def rpc_error(fields) -> WeCompanyError:
    """The error of an RPC answer, as the node that answered raised it (its code, business code and message)."""
    if not isinstance(fields, dict):
        return InternalError("another node answered with an error it did not describe")
    code = fields.get("code")
    error_code = fields.get("error_code")
    error = WeCompanyError(str(fields.get("message") or "another node refused"),
                           code=code if isinstance(code, int) and 400 <= code <= 599 else 500,
                           error_code=error_code if isinstance(error_code, int) else None,
                           detail=fields["detail"] if isinstance(fields.get("detail"), str) else None)
    if isinstance(fields.get("retry_after"), (int, float)):
        error.retry_after = fields["retry_after"]
    return error


class LocalCluster:
    """A daemon on its own: every question is answered for this node alone, nothing is sent anywhere."""

    enabled = False
    node_id = "local"

    def session_opened(self, client, locally_first: bool) -> Deferred:
        return succeed(locally_first)

    def session_closed(self, client, locally_last: bool) -> Deferred:
        return succeed(locally_last)

    def chat_session(self, user_id: str):
        return None

    def remote_sessions(self, user_id: str) -> list:
        return []

    def look_up_chat(self, user_id: str) -> Deferred:
        return succeed(None)

    def find_online(self, name_or_id: str):
        return None

    def remote_online(self) -> list:
        return []

    def remote_chat_sessions(self) -> list:
        return []

    def remote_user_ids(self):
        return ()

    def remote_session_count(self) -> int:
        return 0

    def deliver_text(self, target, event) -> Deferred:  # pragma: no cover - never a remote target here
        raise AssertionError("no remote sessions without a cluster")

    def broadcast_text(self, event) -> int:
        return 0

    def sign_out_elsewhere(self, user_id: str, error) -> None:
        pass

    def stored_for(self, user_id: str) -> None:
        pass

    def reserve_call(self, call_id: str, user_ids) -> Deferred:
        return succeed(True)

    def release_call(self, call_id: str, user_ids) -> None:
        pass

    def remote_calls_of(self):
        """The local clients in a call another node owns."""
        return ()

    # CallService's forwarder: no call of this node is ever owned by another.
    def forward(self, client, op: str, call_id: str, reason: str = "") -> bool:
        return False

    def forward_media(self, client, data: bytes) -> bool:
        return False

    def call_finished(self, call) -> None:
        pass

    def end_remote_calls(self, reason: str) -> None:
        pass

    def status(self) -> dict:
        return {"enabled": False}

    def peer_totals(self) -> dict:
        """The other nodes' calls and rooms, as of their last heartbeats."""
        return {"calls": 0, "active_calls": 0, "rooms": set()}


class Cluster(LocalCluster):
    """
    This node's side of the cluster (see the module docstring).

    :param link: a :class:`~wecompany.mirror.redis.RedisLink` (or a fake with its methods).
    :param registry: this node's :class:`~wecompany.domain.sessions.SessionRegistry`.
    """

    enabled = True
    log = Logger()

    def __init__(self, link, registry, clock, *, node_id: str | None = None, prefix: str = "wecompany:",
                 node_timeout: float = 15.0, call_lock_ttl: float = 3700.0, links=None) -> None:
        self.link = link
        #: Direct media links to the other nodes (a :class:`~wecompany.mirror.medialink.NodeLinks`), or None.
        self.links = links
        self.registry = registry
        self.clock = clock
        self.node_id = node_id or new_node_id()
        self.prefix = prefix + KEY_VERSION
        self.node_timeout = node_timeout
        self.call_lock_ttl = call_lock_ttl
        # This node's sessions, by session id and by client.
        self.local_by_sid: dict[str, object] = {}
        self.sid_of: dict[object, str] = {}
        # The replica of every other node's sessions.
        self.remote: dict[tuple[str, str], RemoteClient] = {}  # (node, sid) -> proxy
        self.remote_by_user: dict[str, dict[tuple[str, str], RemoteClient]] = {}
        self.remote_chat: dict[str, RemoteClient] = {}  # user id -> its chat session elsewhere
        # Local clients in a call another node owns: client -> (call id, owner node).
        self.remote_calls: dict[object, tuple[str, str]] = {}
        # The other live nodes, with what their last heartbeat said (its calls).
        self.peers: dict[str, dict] = {}
        self.id_conflict = False  # another running daemon has this node id
        self._unreleased: list[tuple[str, str]] = []  # (call, user) locks to release once Redis is back
        self._rpc_ids = itertools.count(1)
        self._rpc_waiting: dict[int, Deferred] = {}
        self._pending: set[Deferred] = set()

    # -- keys and channels ----------------------------------------------------------
    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def node_channel(self, node: str) -> str:
        return self.key("node", node)

    @property
    def all_channel(self) -> str:
        return self.key("all")  # = all_channel(prefix)

    def address(self, sid: str) -> str:
        return f"{self.node_id}/{sid}"

    # -- sending ------------------------------------------------------------------------
    def to_node(self, node: str, message: dict) -> None:
        self.publish(self.node_channel(node), message)

    def to_all(self, message: dict) -> None:
        self.publish(self.all_channel, message)

    def publish(self, channel: str, message: dict) -> None:
        message["from"] = self.node_id
        d = self.link.publish(channel, dumps(message))
        d.addErrback(self._lost, f"publishing to {channel}")

    def _lost(self, failure, what: str, fallback=None):
        # While Redis is down, what would cross nodes is lost (the link said so once, when it went down).
        if not failure.check(Unavailable):
            self.log.failure("cluster: {what} failed", failure, what=what)
        return fallback

    def track(self, work, what: str, fallback=None) -> Deferred:
        """
        A background Redis operation (a coroutine or a Deferred): its result,
        or ``fallback`` if it fails (logged); :meth:`flush` waits for it.
        """
        d = work if isinstance(work, Deferred) else Deferred.fromCoroutine(work)
        self._pending.add(d)
        d.addErrback(self._lost, what, fallback)
        d.addBoth(lambda result: (self._pending.discard(d), result)[1])
        return d

    def flush(self) -> Deferred:
        """Fires when every background Redis operation asked for so far is over."""
        return DeferredList(list(self._pending), consumeErrors=True)

    # -- sessions ------------------------------------------------------------------------
    def session_opened(self, client, locally_first: bool) -> Deferred:
        """
        Record the session; fires with whether the user just came online
        cluster-wide. A desktop (TCP) session claims the user's one chat
        session: an older one on another node is closed.
        """
        sid = secrets.token_hex(6)
        self.local_by_sid[sid] = client
        self.sid_of[client] = sid
        # Without Redis the user's presence is what this node knows.
        return self.track(self._announce_session(client, sid, fresh=True), "recording a session",
                           fallback=locally_first)

    async def _announce_session(self, client, sid: str, fresh: bool) -> bool:
        ident = client.identity
        info = {"sid": sid, "uid": ident.user_id, "name": ident.username, "account": ident.account_id,
                "kind": client.kind}
        redis = self.link.redis
        await redis.hset(self.key("sessions", self.node_id), sid, dumps(info))
        count = await redis.eval(scripts.ADD_SESSION, [self.key("user", ident.user_id)],
                                 [self.address(sid), str(int(self.node_timeout * SESSION_TTL_FACTOR))])
        if client.kind == "tcp":
            older = await redis.getset(self.key("chat", ident.user_id), self.address(sid))
            if fresh and older and older != self.address(sid):
                node, _, old_sid = older.partition("/")
                # The older chat session is closed where it is (its node may be this one).
                self.to_node(node, {"t": "kick", "sid": old_sid, "code": 409,
                                    "message": "logged in from another connection"})
        self.to_all({"t": "up", **info})
        return int(count) == 1 if fresh else False

    def end_remote_calls(self, reason: str) -> None:
        """This node's clients leave the calls other nodes own (the node stops): both parties hear ``reason``."""
        for client, (call_id, owner) in list(self.remote_calls.items()):
            del self.remote_calls[client]
            self.to_node(owner, {"t": "call", "op": GONE, "sid": self.sid_of.get(client, ""), "call": call_id,
                                 "reason": reason})
            client.send_event(CallEnded(call_id, reason))

    def session_closed(self, client, locally_last: bool) -> Deferred:
        """Forget the session; fires with whether the user just went offline cluster-wide."""
        sid = self.sid_of.pop(client, None)
        if sid is None:
            return succeed(locally_last)
        self.local_by_sid.pop(sid, None)
        call = self.remote_calls.pop(client, None)
        if call is not None:  # in a call another node owns: it ends there too
            self.to_node(call[1], {"t": "call", "op": GONE, "sid": sid, "call": call[0],
                                   "reason": "disconnected"})
        return self.track(self._retire_session(client.identity, client.kind, sid), "forgetting a session",
                           fallback=locally_last)

    async def _retire_session(self, ident: Identity, kind: str, sid: str) -> bool:
        redis = self.link.redis
        await redis.hdel(self.key("sessions", self.node_id), sid)
        left = await redis.eval(scripts.REMOVE_SESSION, [self.key("user", ident.user_id)], [self.address(sid)])
        if kind == "tcp":
            await redis.eval(scripts.DELETE_IF, [self.key("chat", ident.user_id)], [self.address(sid)])
        self.to_all({"t": "down", "sid": sid, "uid": ident.user_id})
        return int(left) == 0

    # -- the replica of the other nodes' sessions --------------------------------------
    def add_remote(self, node: str, info: dict) -> RemoteClient:
        key = (node, info["sid"])
        proxy = self.remote.get(key)
        if proxy is None:
            ident = Identity(str(info["uid"]), info["name"], info.get("account"))
            proxy = self.remote[key] = RemoteClient(self, node, info["sid"], ident, info["kind"])
            self.remote_by_user.setdefault(proxy.identity.user_id, {})[key] = proxy
        if proxy.kind == "tcp":
            self.remote_chat[proxy.identity.user_id] = proxy
        return proxy

    def drop_remote(self, node: str, sid: str) -> RemoteClient | None:
        proxy = self.remote.pop((node, sid), None)
        if proxy is None:
            return None
        uid = proxy.identity.user_id
        sessions = self.remote_by_user.get(uid, {})
        sessions.pop((node, sid), None)
        if not sessions:
            self.remote_by_user.pop(uid, None)
        if self.remote_chat.get(uid) is proxy:
            del self.remote_chat[uid]
        return proxy

    def remote_of_node(self, node: str) -> list[RemoteClient]:
        return [proxy for (n, _), proxy in self.remote.items() if n == node]

    def chat_session(self, user_id: str):
        return self.remote_chat.get(user_id)

    def remote_sessions(self, user_id: str) -> list:
        return list(self.remote_by_user.get(user_id, {}).values())

    def look_up_chat(self, user_id: str) -> Deferred:
        """
        The user's desktop session on another node, asking Redis when the
        replica does not know it (it logged in a moment ago and its "up" is
        still on its way) -> a RemoteClient or None.
        """
        proxy = self.remote_chat.get(user_id)
        if proxy is not None or not self.link.up:
            return succeed(proxy)
        return self.track(self._look_up_chat(user_id), "looking up a session", fallback=None)

    async def _look_up_chat(self, user_id: str):
        redis = self.link.redis
        holder = await redis.get(self.key("chat", user_id))
        node, _, sid = (holder or "").partition("/")
        if not node or node == self.node_id:
            return None
        raw = await redis.hget(self.key("sessions", node), sid)
        if raw is None:
            return None
        try:
            return self.add_remote(node, loads(raw))
        except (ValueError, KeyError):
            return None

    def find_online(self, name_or_id: str):
        sessions = self.remote_by_user.get(name_or_id)
        if sessions:
            return next(iter(sessions.values())).identity
        lowered = name_or_id.lower()
        for sessions in self.remote_by_user.values():
            ident = next(iter(sessions.values())).identity
            if ident.username.lower() == lowered:
                return ident
        return None

    def remote_online(self) -> list[Identity]:
        return [next(iter(sessions.values())).identity for sessions in self.remote_by_user.values()]

    def remote_chat_sessions(self) -> list:
        return list(self.remote_chat.values())

    def remote_user_ids(self):
        """The users with a session on another node (a live view)."""
        return self.remote_by_user.keys()

    def remote_session_count(self) -> int:
        return len(self.remote)

    # -- text ------------------------------------------------------------------------------
    def deliver_text(self, target: RemoteClient, event: TextMessage) -> Deferred:
        """Hand a text to ``target``'s node, which delivers it or stores it; -> DELIVERED or STORED."""
        return self.call(target.node, {"op": "text", "uid": target.identity.user_id,
                                       "event": encode_event(event)})

    def broadcast_text(self, event: TextMessage) -> int:
        self.to_all({"t": "broadcast", "event": encode_event(event)})
        return len(self.remote_chat)

    # -- requests that are answered ----------------------------------------------------
    def call(self, node: str, request: dict, timeout: float = RPC_TIMEOUT) -> Deferred:
        """Ask ``node``; fires with its answer, or fails (Unavailable) when none comes in time."""
        rid = next(self._rpc_ids)
        d: Deferred = Deferred()
        self._rpc_waiting[rid] = d
        self.to_node(node, {"t": "rpc", "id": rid, **request})

        def unanswered():
            if self._rpc_waiting.pop(rid, None) is d:
                d.errback(Unavailable(f"node {node} did not answer"))

        timer = self.clock.callLater(timeout, unanswered)
        d.addBoth(lambda result: (timer.cancel() if timer.active() else None, result)[1])
        return d

    def answered(self, rid: int, result, error=None) -> None:
        """The answer to request ``rid``: its result, or (``error``, :func:`rpc_error_fields`) its error."""
        d = self._rpc_waiting.pop(rid, None)
        if d is None:
            return
        if error is not None:
            d.errback(rpc_error(error))
        else:
            d.callback(result)

    # -- sign-out everywhere ------------------------------------------------------------
    def stored_for(self, user_id: str) -> None:
        """
        Text was stored here for ``user_id``: if the user has a desktop
        session on another node this one had not heard of yet (it logged in
        a moment ago), that node delivers it now rather than at the next login.
        """
        self.track(self._tell_holder(user_id), "telling a node of stored text")

    async def _tell_holder(self, user_id: str) -> None:
        holder = await self.link.redis.get(self.key("chat", user_id))
        node = holder.partition("/")[0] if holder else None
        if node and node != self.node_id:
            self.to_node(node, {"t": "stored", "uid": user_id})

    def sign_out_elsewhere(self, user_id: str, error) -> None:
        """Close the user's sessions on every other node, telling each why."""
        nodes = {proxy.node for proxy in self.remote_sessions(user_id)}
        for node in nodes:
            self.to_node(node, {"t": "kick-user", "uid": user_id, **_error_fields(error)})

    # -- calls: one per user cluster-wide, owned by the caller's node ------------------
    def reserve_call(self, call_id: str, user_ids) -> Deferred:
        """Take the busy lock of every one of ``user_ids`` for ``call_id``; -> False (nothing held) if one is taken."""
        return Deferred.fromCoroutine(self._reserve(call_id, list(user_ids)))

    async def _reserve(self, call_id: str, user_ids: list[str]) -> bool:
        taken = []
        for uid in user_ids:
            ok = await self.link.redis.set(self.key("busy", uid), call_id, expire=int(self.call_lock_ttl),
                                           only_if_not_exists=True)
            if not ok:
                self.release_call(call_id, taken)
                return False
            taken.append(uid)
        return True

    def release_call(self, call_id: str, user_ids) -> None:
        if not self.link.up:
            # Released when Redis is back (if it kept them), not left to block the users for the lock's TTL.
            self._unreleased.extend((call_id, uid) for uid in user_ids)
            return
        for uid in user_ids:
            self.track(self.link.redis.eval(scripts.DELETE_IF, [self.key("busy", uid)], [call_id]),
                        "releasing a call lock")

    def release_pending(self) -> None:
        """Redis is back: the locks of calls that ended meanwhile go."""
        pending, self._unreleased = self._unreleased, []
        for call_id, uid in pending:
            self.release_call(call_id, [uid])

    def remote_calls_of(self):
        return self.remote_calls

    def call_finished(self, call) -> None:
        """CallService's listener: the call's locks go."""
        self.release_call(call.call_id, [call.caller.identity.user_id, call.callee.identity.user_id])

    def forward(self, client, op: str, call_id: str, reason: str = "") -> bool:
        """A local client acts on a call another node owns: it goes there. -> whether it was such a call."""
        held = self.remote_calls.get(client)
        if held is None or held[0] != call_id:
            return False
        # Held until the owner's CallEnded/CallRejected comes back (or the owner is found dead).
        self.to_node(held[1], {"t": "call", "op": op, "sid": self.sid_of.get(client, ""), "call": call_id,
                               "reason": reason})
        return True

    def forward_media(self, client, data: bytes) -> bool:
        held = self.remote_calls.get(client)
        if held is None:
            return False
        self.send_media(held[1], FROM_PARTY, self.sid_of.get(client, ""), held[0], data)
        return True

    def send_media(self, node: str, op: int, sid: str, call_id: str, data: bytes) -> bool:
        """
        One media packet to ``node``: over the direct link to it when there
        is one (``--node-link``), else through Redis. -> False when it was
        dropped (the link is full).
        """
        if self.links is not None:
            sent = self.links.send(node, op, sid, call_id, data)
            if sent is not None:
                return sent
        if op == TO_CLIENT:
            self.to_node(node, {"t": "media", "sid": sid, "call": call_id, "data": base64.b64encode(data).decode()})
        else:
            self.to_node(node, {"t": "call-media", "sid": sid, "data": base64.b64encode(data).decode()})
        return True

    def status(self) -> dict:
        """For /health and the admin: this node, Redis, and the nodes this one sees alive."""
        return {"enabled": True, "node": self.node_id, "redis": "ok" if self.link.up else "unavailable",
                "nodes": sorted({self.node_id, *self.peers}), "node_id_in_use": self.id_conflict}

    def peer_totals(self) -> dict:
        totals = {"calls": 0, "active_calls": 0}
        rooms: set = set()
        for beat in self.peers.values():
            for name in totals:
                count = beat.get(name)
                if isinstance(count, int) and count >= 0:
                    totals[name] += count
            if isinstance(beat.get("rooms"), list):
                rooms.update(r for r in beat["rooms"] if isinstance(r, int))
        return {**totals, "rooms": rooms}


class ClusterNode:
    """
    The other half (see the module docstring): what arrives from other
    nodes, the heartbeat, the watch on the other nodes, and recovery.

    :param cluster: this node's :class:`Cluster`.
    :param chat: the ChatService (text and presence arriving from elsewhere).
    :param calls: the CallService (operations on the calls this node owns).
    :param rooms: the RoomService (its members elsewhere; its ``mirror`` is
        the :class:`~wecompany.mirror.rooms.RoomMirror`).
    :param files: the FileService (a dead node's unfinished uploads are removed).
    :param caches: the read caches by name (:mod:`wecompany.mirror.caches`):
        what another node's store invalidates is forgotten here too.
    :param sfu: the :class:`~wecompany.mirror.sfu.SfuRouter` (the SFU calls
        other nodes forward here; its rooms' claims follow the heartbeat), or None.
    """

    log = Logger()

    def __init__(self, cluster: Cluster, chat, calls, rooms, files=None, caches=None, sfu=None) -> None:
        self.cluster = cluster
        self.sfu = sfu
        self.files = files
        self.caches = dict(caches or {})
        self.chat = chat
        self.calls = calls
        self.rooms = rooms
        self.room_mirror = rooms.mirror
        self.clock = cluster.clock
        self.started_at = self.clock.seconds()
        self.instance = secrets.token_hex(8)  # this process, among any that share its node id
        self.number: int | None = None  # the ids' node number, once claimed
        self.dead_nodes: set[str] = set()
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self.clock
        self._resync = LoopingCall(self._sync)
        self._resync.clock = self.clock
        self._handlers = {
            "event": self._event, "media": self._media, "kick": self._kick, "kick-user": self._kick_user,
            "rpc": self._rpc, "rpc-reply": self._rpc_reply, "call": self._call_op, "call-media": self._call_media,
            "room-event": self.room_mirror.on_node_message, "room-replace": self.room_mirror.on_node_message,
            "stored": lambda message: self.chat.kick_drain(str(message["uid"])),
        }
        if cluster.links is not None:
            cluster.links.on_media(self._link_media)

    # -- life cycle --------------------------------------------------------------------
    def start(self) -> None:
        c = self.cluster
        c.link.watch(self.link_up, self.link_down)
        c.link.subscribe(c.node_channel(c.node_id), self._on_node_message)
        c.link.subscribe(c.all_channel, self._on_all_message)
        c.link.start()
        self._heartbeat.start(max(0.5, c.node_timeout / 3), now=False)
        self._resync.start(max(1.0, c.node_timeout / 3), now=False)

    async def stop(self) -> None:
        """Leave at once: the others drop this node's sessions now, not after the timeout."""
        for loop in (self._heartbeat, self._resync):
            if loop.running:
                loop.stop()
        c = self.cluster
        await c.flush()
        if c.link.up:
            try:
                await self.room_mirror.leave_all()
                if self.sfu is not None:
                    await self.sfu.leave_all()
                c.to_all({"t": "bye"})
                redis = c.link.redis
                await redis.delete(c.key("node", c.node_id))
                await redis.srem(c.key("nodes"), c.node_id)
                await redis.eval(scripts.DELETE_IF, [c.key("owner", c.node_id)], [self.instance])
                if self.number is not None:
                    await redis.eval(scripts.DELETE_IF, [c.key("idnode", str(self.number))], [self.instance])
                await c.flush()
            except Exception:
                self.log.failure("cluster: leaving failed")
        if c.links is not None:
            c.links.stop()
        await c.link.stop()

    def link_up(self) -> None:
        """Redis is (back) up: announce this node and its sessions again, then learn the others'."""
        d = Deferred.fromCoroutine(self._recover())
        d.addErrback(lambda f: self.log.failure("cluster: publishing this node's state failed", f))

    def link_down(self) -> None:
        """Redis is gone: what crossed nodes cannot go on (calls with a party elsewhere end)."""
        c = self.cluster
        for node in {node for node, _ in c.remote}:
            self._forget_node(node)
        c.end_remote_calls("disconnected")
        c.peers.clear()

    async def _recover(self) -> None:
        c = self.cluster
        await self._beat_once()
        c.release_pending()
        # What other nodes changed meanwhile was not heard: their caches' entries go.
        for cache in self.caches.values():
            cache.invalidate_all()
        for sid, client in list(c.local_by_sid.items()):
            await c._announce_session(client, sid, fresh=False)
        await self.room_mirror.republish()
        await self._sync_once()
        # Text stored for users of this node while the cluster could not route it.
        for client in list(self.chat.registry.chat_clients()):
            if client.identity.account_id is not None:
                self.chat.kick_drain(client.identity.user_id)

    # -- heartbeat and the watch on the other nodes ------------------------------------
    # Both loops wait for their round to end before the next (a slow Redis
    # gets no pile of rounds), and never stop on a failed one.
    def _beat(self) -> Deferred:
        d = Deferred.fromCoroutine(self._beat_once())
        d.addErrback(self.cluster._lost, "the heartbeat")
        return d

    async def _beat_once(self) -> None:
        c = self.cluster
        redis = c.link.redis
        ttl = max(1, int(round(c.node_timeout)))
        # One process per node id: another daemon started with ours (a copied
        # config file) must not write over this one's sessions, nor we over its.
        if not int(await redis.eval(scripts.CLAIM, [c.key("owner", c.node_id)], [self.instance, ttl])):
            if not c.id_conflict:
                c.id_conflict = True
                self.log.error("cluster: node id {node} is in use by another running daemon: this one stays "
                               "out of the cluster until it is free (give every node its own --node-id)",
                               node=c.node_id)
            return
        if c.id_conflict:
            c.id_conflict = False
            self.log.info("cluster: node id {node} is this daemon's again", node=c.node_id)
        await self._claim_number(redis, 2 * ttl)
        beat = {"id": c.node_id, "started": self.started_at, "calls": self.calls.count,
                "active_calls": self.calls.active_count, "rooms": self.rooms.local_room_ids()}
        if c.links is not None and c.links.address is not None:
            beat["link"] = c.links.address
        await redis.set(c.key("node", c.node_id), dumps(beat),
                        expire=max(1, int(round(c.node_timeout))))
        await redis.sadd(c.key("nodes"), c.node_id)
        await redis.expire(c.key("sessions", c.node_id), int(c.node_timeout * SESSION_TTL_FACTOR))
        await self.room_mirror.refresh()
        if self.sfu is not None:
            await self.sfu.refresh()

    async def _claim_number(self, redis, ttl: int) -> None:
        """A number of the ids' node field (0-1023) no other live node uses, so ids stay unique."""
        c = self.cluster
        if self.number is not None and int(await redis.eval(scripts.CLAIM, [c.key("idnode", str(self.number))],
                                                            [self.instance, ttl])):
            return
        first = zlib.crc32(c.node_id.encode()) % NODE_NUMBERS
        for i in range(NODE_NUMBERS):
            number = (first + i) % NODE_NUMBERS
            if int(await redis.eval(scripts.CLAIM, [c.key("idnode", str(number))], [self.instance, ttl])):
                if number != self.number:
                    self.log.info("cluster: this node numbers its ids {number}", number=number)
                self.number = number
                self.chat.ids.use_node(number)
                return
        self.log.error("cluster: every one of the {count} id numbers is in use: ids of this node may collide",
                       count=NODE_NUMBERS)

    def _sync(self) -> Deferred:
        d = Deferred.fromCoroutine(self._sync_once())
        d.addErrback(self.cluster._lost, "watching the other nodes")
        return d

    async def _sync_once(self) -> None:
        """Re-read every other node's sessions; a node whose heartbeat is gone is dead."""
        c = self.cluster
        redis = c.link.redis
        # Those this node knows of too: one another survivor already cleaned up
        # after (and took out of the set) must still be dropped here.
        remembered = set(c.peers) | {node for node, _ in c.remote}
        for node in sorted(set(await redis.smembers(c.key("nodes"))) | remembered):
            if node == c.node_id:
                continue
            beat = await redis.get(c.key("node", node))
            if beat is None:
                await self._node_died(node)
                continue
            try:
                beat = loads(beat)
            except ValueError:
                beat = None
            c.peers[node] = beat if isinstance(beat, dict) else {}
            if c.links is not None:
                c.links.peer_address(node, c.peers[node].get("link"))
            sessions = await redis.hgetall(c.key("sessions", node))
            known = {sid for n, sid in c.remote if n == node}
            for sid, raw in sessions.items():
                try:
                    c.add_remote(node, loads(raw))
                except (ValueError, KeyError):
                    continue
                known.discard(sid)
            for sid in known:  # gone, and its "down" missed
                self._remote_gone(node, sid)
        await self.room_mirror.resync()

    async def _node_died(self, node: str) -> None:
        """Every survivor ends what involved the dead node; one of them cleans its state out of Redis."""
        c = self.cluster
        if node not in self.dead_nodes:
            self.dead_nodes.add(node)
            self.log.warn("cluster: node {node} stopped answering: its sessions are gone", node=node)
        self._forget_node(node)
        c.peers.pop(node, None)
        if c.links is not None:
            c.links.forget(node)
        self.rooms.node_gone(node)
        for client, (call_id, owner) in list(c.remote_calls.items()):
            if owner == node:  # this node's client was in a call the dead node owned
                del c.remote_calls[client]
                client.send_event(CallEnded(call_id, "disconnected"))
        redis = c.link.redis
        claim = c.key("cleanup", node)
        claimed = await redis.set(claim, c.node_id, expire=60, only_if_not_exists=True)
        if not claimed:
            return
        sessions = await redis.hgetall(c.key("sessions", node))
        for sid, raw in sessions.items():
            try:
                info = loads(raw)
            except ValueError:
                continue
            uid = str(info["uid"])
            left = await redis.eval(scripts.REMOVE_SESSION, [c.key("user", uid)], [f"{node}/{sid}"])
            await redis.eval(scripts.DELETE_IF, [c.key("chat", uid)], [f"{node}/{sid}"])
            if int(left) == 0 and info.get("account") is not None:
                self.chat.announce_presence(Identity(uid, info["name"], info["account"]), False)
        members = await self.room_mirror.clean_up_after(node, self.rooms.record_left)
        if self.files is not None:
            await self.files.remove_uploads_of(node)
        await redis.delete(c.key("sessions", node))
        await redis.srem(c.key("nodes"), node)
        # Released, so that a node restarted under the same id is cleaned up if it dies again soon; a
        # survivor that read the node list before the srem finds nothing left to clean.
        await redis.delete(claim)
        self.log.info("cluster: cleaned up after node {node} ({count} sessions, {members} room members)",
                      node=node, count=len(sessions), members=members)

    def _forget_node(self, node: str) -> None:
        for proxy in self.cluster.remote_of_node(node):
            self._remote_gone(node, proxy.sid)

    def _remote_gone(self, node: str, sid: str) -> None:
        proxy = self.cluster.drop_remote(node, sid)
        if proxy is not None:
            self.calls.session_closed(proxy, "disconnected")  # a call this node owns with it ends

    # -- what arrives ---------------------------------------------------------------------
    def _on_node_message(self, raw) -> None:
        message = loads(raw)
        handler = self._handlers.get(message.get("t"))
        if handler is not None:
            handler(message)

    def _on_all_message(self, raw) -> None:
        message = loads(raw)
        sender = message.get("from")
        c = self.cluster
        if sender == c.node_id:
            return
        kind = message.get("t")
        if kind == "up":
            self.dead_nodes.discard(sender)
            c.peers.setdefault(sender, {})
            c.add_remote(sender, message)
        elif kind == "down":
            self._remote_gone(sender, message["sid"])
        elif kind == "bye":
            self._forget_node(sender)
            c.peers.pop(sender, None)
            if c.links is not None:
                c.links.forget(sender)
            self.rooms.node_gone(sender)
        elif kind == "invalidate":
            cache = self.caches.get(message.get("cache"))
            if cache is not None:
                cache.invalidate(message["key"])
        elif kind == "broadcast":
            event = decode_event(message["event"])
            for client in self.chat.registry.chat_clients():
                if client.identity.user_id != event.sender_id:
                    client.send_event(event)

    def _local(self, message: dict):
        return self.cluster.local_by_sid.get(message.get("sid", ""))

    def _event(self, message: dict) -> None:
        client = self._local(message)
        if client is None:
            return
        event = decode_event(message["event"])
        c = self.cluster
        if isinstance(event, (CallIncoming, CallRinging)):
            c.remote_calls[client] = (event.call_id, message["from"])
        elif isinstance(event, (CallEnded, CallRejected)):
            held = c.remote_calls.get(client)
            if held is None or held[0] != event.call_id:
                return  # ended here already (this node stopping told its client), or told twice
            del c.remote_calls[client]
        client.send_event(event)

    def _media(self, message: dict) -> None:
        self._link_media(message["from"], TO_CLIENT, message.get("sid", ""), message["call"],
                         base64.b64decode(message["data"]))

    def _link_media(self, node: str, op: int, sid: str, call_id: str, data: bytes) -> None:
        """A media packet from ``node`` (over a link or through Redis)."""
        c = self.cluster
        if op == TO_CLIENT:
            client = c.local_by_sid.get(sid)
            if client is not None:
                client.send_media(call_id, data)
        else:
            party = c.remote.get((node, sid))
            if party is not None:
                self.calls.relay(party, data)

    def _kick(self, message: dict) -> None:
        client = self._local(message)
        if client is not None:
            if message.get("code") == 409:
                self.chat.close_session(client, "replaced")
            client.disconnect(_error_from(message))

    def _kick_user(self, message: dict) -> None:
        for client in self.chat.registry.sessions_of(str(message["uid"])):
            client.disconnect(_error_from(message))

    def _rpc(self, message: dict) -> None:
        d = Deferred.fromCoroutine(self._answer(message))
        d.addErrback(lambda f: self.log.failure("cluster: answering {op} failed", f, op=message.get("op")))

    async def _answer(self, message: dict) -> None:
        reply = {"t": "rpc-reply", "id": message["id"], "result": None}
        op = message.get("op")
        if op == "text":
            reply["result"] = await self.chat.deliver_here(str(message["uid"]), decode_event(message["event"]))
        elif op == "sfu":
            # The SFU's answers and refusals go back as if the asking node had made them.
            try:
                if self.sfu is None:
                    raise Unavailable(f"node {self.cluster.node_id} has no SFU")
                reply["result"] = await self.sfu.serve(message)
            except WeCompanyError as error:
                reply["error"] = rpc_error_fields(error)
            except Exception:
                self.log.failure("cluster: serving an SFU call of node {node} failed", node=message.get("from"))
                reply["error"] = rpc_error_fields(InternalError())
        self.cluster.to_node(message["from"], reply)

    def _rpc_reply(self, message: dict) -> None:
        self.cluster.answered(message["id"], message.get("result"), message.get("error"))

    def _party(self, message: dict):
        return self.cluster.remote.get((message["from"], message.get("sid", "")))

    def _call_op(self, message: dict) -> None:
        party = self._party(message)
        if party is None:
            return
        op, call_id = message["op"], message["call"]
        try:
            if op == "accept":
                self.calls.accept(party, call_id)
            elif op == "reject":
                self.calls.reject(party, call_id, message.get("reason") or "")
            elif op == GONE:  # the party's session closed on its node
                self.calls.session_closed(party, message.get("reason") or "disconnected")
            else:
                self.calls.end(party, call_id)
        except WeCompanyError as error:
            # The call ended here meanwhile (its end is on its way there): nothing to do.
            self.log.debug("cluster: {op} of call {call}: {why}", op=op, call=call_id, why=error.message)

    def _call_media(self, message: dict) -> None:
        self._link_media(message["from"], FROM_PARTY, message.get("sid", ""), "", base64.b64decode(message["data"]))
