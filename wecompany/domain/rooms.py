"""
Meeting rooms for WebRTC signaling: who is in which room, and what they say.

Plain Python, like the chat service: members are :class:`IClient` s (the
signaling protocol implements it), events are pushed with ``send_event`` as
:class:`SignalEvent` values that each transport encodes in its own dialect,
and time comes from the injected clock. The room of a meeting exists while
it has members; its name is the meeting's stable ``room_id``.
"""

from __future__ import annotations

import itertools
import secrets

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from wecompany.domain.interfaces import IMeetingListener
from wecompany.domain.meetings import ENDED, CANCELLED
from wecompany.errors import Conflict, Forbidden, InvalidInput, MeetingEnded, MeetingNotFound, NotFound

SIGNALS = ("offer", "answer", "ice-candidate")
# Event ids need only be unique (they authorise nothing): a random prefix for
# this process and a counter, not a system call per event.
_EVENT_ID_PREFIX = secrets.token_hex(4)
_event_numbers = itertools.count()
MAX_PEER_ID = 128
MAX_CHAT = 2000
#: Events the server sends a whole room of its own accord (``RoomService.announce``), on every node.
SERVER_EVENTS = frozenset({"recording"})


@attrs.frozen
class SignalEvent:
    """
    One message for one signaling client, in no particular dialect.

    ``kind`` is the seed-dialect name (``offer``, ``room-info``...). The
    ``from_*`` fields are stamped by the server from the sender's session,
    never taken from the client.
    """

    kind: str
    meeting_id: int
    payload: object
    timestamp: float
    id: str = attrs.Factory(lambda: _EVENT_ID_PREFIX + format(next(_event_numbers), "08x"))
    from_user_id: int | None = None
    from_peer_id: str | None = None
    from_session_id: str | None = None
    to_user_id: int | None = None
    to_peer_id: str | None = None
    # Wire encodings by dialect, filled by transports (an event from a member
    # reads the same for every recipient of one dialect).
    encoded: dict = attrs.field(factory=dict, eq=False, repr=False)


@attrs.define(eq=False)
class Member:
    """
    One signaling session in a room. A member on another node of the
    cluster (``node`` set) is a replica: it has no client here.
    """

    session_id: str
    client: object
    user_id: int
    username: str
    peer_id: str
    meeting_id: int
    joined_at: float
    audio_enabled: bool = True
    video_enabled: bool = True
    screen_sharing: bool = False
    node: str | None = None


@attrs.define(eq=False)
class Room:
    """
    The live room of one meeting. ``meeting`` is its record as last seen
    (at a join, or told by the MeetingService): chat is checked against it
    without a database read per message. Until a member joins here (a room
    known only from its members on other nodes) it is None.
    """

    meeting_id: int
    room_id: str
    meeting: object | None
    members: dict = attrs.Factory(dict)  # session_id -> Member, in join order
    created_at: float = 0.0
    messages: int = 0


@implementer(IMeetingListener)
class RoomService:
    """
    Rooms follow their meetings (:class:`IMeetingListener`): when one ends or
    is deleted its members are disconnected, and a member who leaves the
    meeting through REST, or is removed from it, is disconnected too.

    In a cluster a room's members may be on several nodes: the ``mirror``
    (:class:`~wecompany.mirror.rooms.RoomMirror`) tells the other nodes of
    this node's members and carries what crosses; what they say comes back
    through the ``remote_*`` methods. A node follows a room while it has
    an interest in it: a connection admitted to it (:meth:`admit` with the
    client), or a watcher that follows it without a member here (:meth:`follow`:
    the SFU's node of the room), until that connection or watcher is released.

    :param store: IStore + IMeetingStore.
    :param ice: :class:`~wecompany.domain.ice.IceServers`.
    :param mirror: ``RoomMirror``, or ``LocalRoomMirror`` for a daemon on its own.
    :param format_time: POSIX seconds -> the string clients see (RFC 3339).
    """

    log = Logger()

    def __init__(self, store, ice, clock, mirror, format_time=str) -> None:
        self.store = store
        self.ice = ice
        self.clock = clock
        self.mirror = mirror
        self.format_time = format_time
        self.rooms: dict[int, Room] = {}
        self.sessions: dict[str, Member] = {}  # session_id -> member, here or elsewhere
        self._by_client: dict[object, Member] = {}
        self._interest: dict[int, set] = {}  # meeting id -> the clients admitted to its room here, and watchers
        self._interest_of: dict[object, int] = {}
        self._watchers: dict[int, set] = {}  # meeting id -> those following its room through follow()
        self._followed: dict[int, object] = {}  # meeting id -> its record, for the rooms watchers follow
        self._unseen: dict[str, float] = {}  # members elsewhere the room's record lacks -> since when
        self._room_names: dict[str, int] = {}  # room ids found by room_by_id -> meeting id

    # -- admission (before the WebSocket upgrade) -----------------------------
    async def admit(self, user_id: int, meeting_id: int, client=None):
        """
        May ``user_id`` open a signaling session for ``meeting_id``? Raises
        :class:`Forbidden` (meeting missing or over, not a participant joined
        through REST, room full); returns the MeetingRecord. With ``client``
        (the connection that will join), the room is followed across the
        cluster until :meth:`release` (its members elsewhere count here).
        """
        meeting = await self.store.get_meeting(meeting_id)
        if meeting is None:
            raise Forbidden("no such meeting")
        if meeting.status in (ENDED, CANCELLED):
            raise Forbidden(f"meeting has {'ended' if meeting.status == ENDED else 'been cancelled'}")
        participant = await self.store.get_participant(meeting_id, user_id)
        if participant is None or participant.status == "left":
            raise Forbidden("join the meeting through the REST API first")
        if client is not None and self.mirror.enabled:
            self._follow(client, meeting_id)
            await self.mirror.watch(meeting_id, self)
        room = self.rooms.get(meeting_id)
        if room is not None and len({m.user_id for m in room.members.values()} | {user_id}) > meeting.max_participants:
            self.release(client)
            raise Forbidden("room is full")
        return meeting

    def follow(self, meeting, watcher) -> Deferred:
        """
        Follow the room of ``meeting`` (a MeetingRecord) across the cluster
        for ``watcher`` until :meth:`release` (``watcher``), though no member
        of it may be on this node: its members elsewhere are known here (by
        the room's name, :meth:`sessions_in`), and ``watcher``, an
        :class:`IMeetingListener`, is told of the meeting's changes made
        through REST on other nodes (those made here reach the meeting's
        listeners directly). -> Deferred firing once the members elsewhere
        are loaded.
        """
        self._followed.setdefault(meeting.id, meeting)
        self._watchers.setdefault(meeting.id, set()).add(watcher)
        room = self.rooms.get(meeting.id)
        if room is not None and not room.room_id:  # known so far from members elsewhere only
            room.room_id = meeting.room_id
            if room.meeting is None:
                room.meeting = meeting
        self._follow(watcher, meeting.id)
        return self.mirror.watch(meeting.id, self)

    def _follow(self, client, meeting_id: int) -> None:
        if client in self._interest_of:
            return
        self._interest_of[client] = meeting_id
        self._interest.setdefault(meeting_id, set()).add(client)

    def release(self, client) -> None:
        """
        ``client``'s connection (or a watcher of :meth:`follow`) is gone: a
        room no connection or watcher here is in is no longer followed.
        """
        self.leave(client, "disconnected")
        meeting_id = self._interest_of.pop(client, None)
        if meeting_id is None:
            return
        watchers = self._watchers.get(meeting_id)
        if watchers is not None:
            watchers.discard(client)
            if not watchers:
                del self._watchers[meeting_id]
                self._followed.pop(meeting_id, None)
        clients = self._interest[meeting_id]
        clients.discard(client)
        if clients:
            return
        del self._interest[meeting_id]
        self.mirror.unwatch(meeting_id)
        room = self.rooms.get(meeting_id)
        if room is not None and all(m.node is not None for m in room.members.values()):
            for member in room.members.values():
                self.sessions.pop(member.session_id, None)
            del self.rooms[meeting_id]

    # -- membership -----------------------------------------------------------
    def join(self, client, meeting, user, peer_id: str) -> Member:
        """
        Enter the room: ``room-info`` to the joiner, ``user-joined`` and a
        fresh ``room-info`` to everyone else.
        """
        if client in self._by_client:
            raise Conflict("already joined")
        if not isinstance(peer_id, str) or not 1 <= len(peer_id) <= MAX_PEER_ID:
            raise InvalidInput(f"peer_id must be 1-{MAX_PEER_ID} characters")
        now = self.clock.seconds()
        existing = self.rooms.get(meeting.id)
        for other in list(existing.members.values()) if existing is not None else ():
            if other.peer_id == peer_id:
                if other.user_id != user.id:
                    raise Conflict("peer_id is in use in this room")
                # The same user reconnecting before its old socket noticed: the new one wins.
                if other.node is not None:
                    self.mirror.replace(other)  # closed on its node
                    self._remove_remote(other, "replaced")
                else:
                    self.leave(other.client, "replaced")
                    other.client.disconnect(Conflict("replaced by a newer connection with the same peer_id"))
        if self.mirror.enabled and client not in self._interest_of:
            # Joined without an admission here (the service used directly): followed from now on.
            self._follow(client, meeting.id)
            self.mirror.watch(meeting.id, self)
        # Made only now (leave() above may have removed an emptied room).
        room = self.rooms.get(meeting.id)
        if room is None:
            room = self.rooms[meeting.id] = Room(meeting.id, meeting.room_id, meeting, created_at=now)
        elif room.meeting is None or meeting.updated_at > room.meeting.updated_at:
            room.meeting, room.room_id = meeting, meeting.room_id
        member = Member("s_" + secrets.token_hex(8), client, user.id, user.username, peer_id, meeting.id, now)
        room.members[member.session_id] = member
        self.sessions[member.session_id] = member
        self._by_client[client] = member
        self.mirror.joined(member)
        client.send_event(self._room_info(room, member))
        self._to_others(room, member, self._event("user-joined", member, self.member_view(member)))
        self._refresh_others(room, member)
        if sum(1 for m in room.members.values() if m.user_id == user.id) == 1:
            self._record(meeting.id, user.id, {"status": "joined", "joined_at": now, "left_at": None})
        self.log.info("{user} joined room of meeting {meeting} as {peer}", user=user.id, meeting=meeting.id,
                      peer=peer_id)
        return member

    def leave(self, client, reason: str = "leave") -> bool:
        """Leave once: ``user-left`` and a fresh ``room-info`` to the rest. Idempotent."""
        member = self._by_client.get(client)
        if member is None:
            return False
        self._remove(member, reason)
        return True

    def _remove(self, member: Member, reason: str, record: bool = True) -> None:
        del self._by_client[member.client]
        self.mirror.left(member, reason)
        self._drop(member, reason)
        room = self.rooms.get(member.meeting_id)
        if record and not any(m.user_id == member.user_id for m in (room.members.values() if room else ())):
            self.record_left(member.meeting_id, member.user_id)

    def _remove_remote(self, member: Member, reason: str) -> None:
        """A member elsewhere left (its node records it)."""
        self._drop(member, reason)

    def _drop(self, member: Member, reason: str) -> None:
        self.sessions.pop(member.session_id, None)
        self._unseen.pop(member.session_id, None)
        room = self.rooms.get(member.meeting_id)
        if room is None or room.members.pop(member.session_id, None) is None:
            return
        self._to_others(room, member, self._event("user-left", member, {**self.member_view(member), "reason": reason}))
        self._refresh_others(room, member)
        if not room.members:
            del self.rooms[member.meeting_id]

    def record_left(self, meeting_id: int, user_id: int) -> None:
        """The user's last session in the room is gone: its participant record says it left."""
        self._record(meeting_id, user_id, {"status": "left", "left_at": self.clock.seconds()})

    def member_of(self, client) -> Member | None:
        return self._by_client.get(client)

    # -- messages -------------------------------------------------------------
    def signal(self, client, kind: str, payload, to_peer_id=None, to_user_id=None) -> int:
        """Relay offer/answer/ICE to one peer or all sessions of one user; never broadcast."""
        member = self._require(client)
        room = self.rooms[member.meeting_id]
        if to_peer_id is not None:
            targets = [m for m in room.members.values() if m.peer_id == to_peer_id]
        elif to_user_id is not None:
            targets = [m for m in room.members.values() if m.user_id == to_user_id]
        else:
            raise InvalidInput(f"{kind} needs to_peer_id or to_user_id")
        targets = [m for m in targets if m is not member]
        if not targets:
            raise NotFound("no such peer in this room")
        event = self._event(kind, member, payload, to_peer_id=to_peer_id, to_user_id=to_user_id)
        elsewhere = [target for target in targets if target.node is not None]
        for target in targets:
            if target.node is None:
                self._deliver(target, event)
        if elsewhere:
            self.mirror.to_members(elsewhere, event)
        return len(targets)

    def chat(self, client, payload) -> Deferred[SignalEvent]:
        """
        Store the message durably, then send it to the whole room, the sender
        included. Bad input raises at once; the Deferred fails if the message
        could not be stored. (Callbacks, not a coroutine: this is the hottest
        path of a busy room, and a coroutine's Deferred costs more than the
        rest of it.)
        """
        member = self._require(client)
        content = _chat_text(payload)
        meeting = self.rooms[member.meeting_id].meeting
        if meeting.status in (ENDED, CANCELLED):
            raise Forbidden("meeting is over")
        if not meeting.settings.get("enable_chat", True):
            raise Forbidden("chat is disabled in this meeting")
        d = self.store.add_meeting_message(member.meeting_id, member.user_id, content, "text", self.clock.seconds())
        return d.addCallback(self._chat_stored, member)

    def _chat_stored(self, record, member: Member) -> SignalEvent:
        # Built from the stored record alone: nothing else the sender put in
        # its payload (a made-up user_id or is_system, a padding field) goes
        # to the room.
        body = {"message_id": record.id, "content": record.content, "message_type": record.message_type,
                "user_id": record.user_id, "username": record.username, "nickname": record.nickname,
                "created_at": self.format_time(record.created_at)}
        event = self._event("chat", member, body)
        room = self.rooms.get(member.meeting_id)
        if room is not None:
            room.messages += 1
            for other in list(room.members.values()):
                if other.node is None:
                    self._deliver(other, event)
        self.mirror.to_room(member.meeting_id, event)
        return event

    def media_state(self, client, payload) -> None:
        member = self._require(client)
        if not isinstance(payload, dict):
            raise InvalidInput("media-state payload must be an object")
        changes = {}
        for key in ("audio_enabled", "video_enabled"):
            if key in payload:
                if not isinstance(payload[key], bool):
                    raise InvalidInput(f"{key} must be true or false")
                changes[key] = payload[key]
        if not changes:
            raise InvalidInput("media-state needs audio_enabled and/or video_enabled")
        for key, value in changes.items():
            setattr(member, key, value)
        state = {"audio_enabled": member.audio_enabled, "video_enabled": member.video_enabled}
        self.mirror.changed(member)
        self._to_room(member, self._event("media-state", member, state))
        self._record(member.meeting_id, member.user_id, changes)

    def screen_share(self, client, payload) -> None:
        member = self._require(client)
        sharing = payload.get("enabled", payload.get("sharing")) if isinstance(payload, dict) else None
        if not isinstance(sharing, bool):
            raise InvalidInput("screen-share payload needs enabled: true or false")
        member.screen_sharing = sharing
        self.mirror.changed(member)
        self._to_room(member, self._event("screen-share", member, {"enabled": sharing, "sharing": sharing}))

    def announce(self, meeting_id: int, kind: str, payload) -> int:
        """
        A server event (``kind``, one of :data:`SERVER_EVENTS`) for every
        member of the meeting's room, on this node and, through the mirror,
        on the others -> how many were told here.
        """
        if kind not in SERVER_EVENTS:
            raise ValueError(f"{kind!r} is not a room-wide server event")
        event = SignalEvent(kind, meeting_id, payload, self.clock.seconds())
        self.mirror.to_room(meeting_id, event)
        room = self.rooms.get(meeting_id)
        if room is None:
            return 0
        here = [m for m in room.members.values() if m.node is None]
        for member in here:
            self._deliver(member, event)
        return len(here)

    def pong(self, client, payload) -> None:
        member = self._by_client.get(client)
        meeting_id = member.meeting_id if member is not None else 0
        client.send_event(SignalEvent("pong", meeting_id, payload, self.clock.seconds()))

    # -- the meetings' REST side (IMeetingListener) -------------------------------
    def meeting_changed(self, meeting) -> None:
        if meeting.id in self._followed:
            self._followed[meeting.id] = meeting
        room = self.rooms.get(meeting.id)
        if room is None:
            return
        room.meeting = meeting
        if meeting.status == ENDED:
            self._close_room(room, MeetingEnded("the meeting has ended"))
        elif meeting.status == CANCELLED:
            self._close_room(room, MeetingEnded("the meeting was cancelled"))

    def meeting_deleted(self, meeting_id: int) -> None:
        room = self.rooms.get(meeting_id)
        if room is not None:
            self._close_room(room, MeetingNotFound("the meeting was deleted"))

    def participant_left(self, meeting_id: int, user_id: int, reason: str) -> None:
        room = self.rooms.get(meeting_id)
        if room is None:
            return
        error = Forbidden("you left the meeting" if reason == "left" else "you were removed from the meeting")
        # Its sessions here; those elsewhere are closed by their nodes, which heard the same.
        for member in [m for m in room.members.values() if m.user_id == user_id and m.node is None]:
            # The REST record already says so (or is gone): nothing to record.
            self._remove(member, reason, record=False)
            self._disconnect(member, error)

    def _close_room(self, room: Room, error) -> None:
        """
        Everyone goes at once: no user-left among them, and the records were
        closed by REST. Members on other nodes are closed there (their
        nodes heard the same change).
        """
        del self.rooms[room.meeting_id]
        here = [m for m in room.members.values() if m.node is None]
        for member in room.members.values():
            self.sessions.pop(member.session_id, None)
        for member in here:
            del self._by_client[member.client]
            self.mirror.left(member, "closed", announce=False)
        for member in here:
            self._disconnect(member, error)
        room.members.clear()
        self.log.info("room of meeting {meeting} closed: {why}", meeting=room.meeting_id, why=error.message)

    # -- what other nodes say (the mirror's listener) ---------------------------------
    def remote_joined(self, member: Member) -> None:
        """A member joined on another node: ``user-joined`` and a fresh ``room-info`` here."""
        if member.meeting_id not in self._interest:
            return
        known = self.sessions.get(member.session_id)
        if known is not None:
            if known.node == member.node:
                _copy_state(member, known)
            return
        room = self.rooms.get(member.meeting_id)
        if room is None:
            followed = self._followed.get(member.meeting_id)  # its name is known if a watcher follows it
            room = self.rooms[member.meeting_id] = Room(member.meeting_id, followed.room_id if followed else "",
                                                        followed, created_at=member.joined_at)
        room.members[member.session_id] = member
        self.sessions[member.session_id] = member
        self._to_others(room, member, self._event("user-joined", member, self.member_view(member)))
        self._refresh_others(room, member)

    def remote_left(self, meeting_id: int, session_id: str, reason: str) -> None:
        member = self.sessions.get(session_id)
        if member is not None and member.node is not None and member.meeting_id == meeting_id:
            self._remove_remote(member, reason)

    def remote_event(self, event: SignalEvent, session_ids=None) -> None:
        """An event from a member elsewhere, for the room's members here (or only ``session_ids``)."""
        room = self.rooms.get(event.meeting_id)
        if room is None:
            return
        if event.kind in SERVER_EVENTS:
            if event.from_session_id is None and session_ids is None:  # another node's announce
                for member in list(room.members.values()):
                    if member.node is None:
                        self._deliver(member, event)
            return
        sender = room.members.get(event.from_session_id)
        if sender is None or sender.node is None:
            return  # from no member known here (it left meanwhile): dropped, as it would be on its node
        if event.kind in ("media-state", "screen-share") and isinstance(event.payload, dict):
            _apply_state(sender, event.kind, event.payload)
        wanted = set(session_ids) if session_ids is not None else None
        for member in list(room.members.values()):
            if member.node is None and (wanted is None or member.session_id in wanted):
                self._deliver(member, event)

    def remote_members(self, meeting_id: int, present, grace: float = 0.0) -> None:
        """
        What the room's record says is elsewhere: who was missed joining or
        leaving is settled. A member missing from it is dropped once it has
        been missing for ``grace`` seconds: after Redis restarted empty, each
        node writes its members again, and a read too early must not make
        them leave and join again.
        """
        if meeting_id not in self._interest:
            return
        room = self.rooms.get(meeting_id)
        seen = {member.session_id for member in present}
        now = self.clock.seconds()
        for member in list(room.members.values()) if room is not None else ():
            if member.node is None or member.session_id in seen:
                self._unseen.pop(member.session_id, None)
            elif now - self._unseen.setdefault(member.session_id, now) >= grace:
                self._remove_remote(member, "disconnected")
        for member in present:
            self.remote_joined(member)

    def replaced_elsewhere(self, session_id: str) -> None:
        """The same user joined with the same peer id on another node: the newer connection wins."""
        member = self.sessions.get(session_id)
        if member is not None and member.node is None:
            self.leave(member.client, "replaced")
            self._disconnect(member, Conflict("replaced by a newer connection with the same peer_id"))

    def remote_meeting(self, meeting_id: int, op: str, user_id: int | None, reason: str) -> None:
        """The meeting changed through REST on another node: its room here follows, and so do its watchers."""
        if op == "deleted":
            self.meeting_deleted(meeting_id)
            self._tell_watchers(meeting_id, "meeting_deleted", meeting_id)
        elif op == "participant-left" and user_id is not None:
            self.participant_left(meeting_id, user_id, reason)
            self._tell_watchers(meeting_id, "participant_left", meeting_id, user_id, reason)
        elif op == "changed":
            d = self.store.get_meeting(meeting_id)
            d.addCallback(self._remote_change)
            d.addErrback(lambda f: self.log.failure("reading meeting {meeting} failed", f, meeting=meeting_id))

    def _remote_change(self, meeting) -> None:
        if meeting is None:
            return
        self.meeting_changed(meeting)
        self._tell_watchers(meeting.id, "meeting_changed", meeting)

    def _tell_watchers(self, meeting_id: int, method: str, *args) -> None:
        for watcher in list(self._watchers.get(meeting_id, ())):
            try:
                getattr(watcher, method)(*args)
            except Exception:
                self.log.failure("telling a watcher of meeting {meeting} failed", meeting=meeting_id)

    def node_gone(self, node: str) -> None:
        """A node died or left: its members leave every room here."""
        for room in list(self.rooms.values()):
            for member in [m for m in room.members.values() if m.node == node]:
                self._remove_remote(member, "disconnected")

    # -- queries (REST and metrics) -----------------------------------------------
    def room_by_id(self, room_id: str) -> Room | None:
        """
        The room named ``room_id`` here (its meeting's stable room id), or
        None. Looked up often (the SFU's calls name rooms so): the name of a
        room found is remembered, and a room whose members are all on other
        nodes, whose name this node has not been told, is not found.
        """
        meeting_id = self._room_names.get(room_id)
        room = self.rooms.get(meeting_id) if meeting_id is not None else None
        if room is not None and room.room_id == room_id:
            return room
        self._room_names.pop(room_id, None)
        room = next((r for r in self.rooms.values() if r.room_id == room_id), None) if room_id else None
        if room is not None:
            if len(self._room_names) > 2 * len(self.rooms) + 64:  # names of rooms long gone
                self._room_names.clear()
            self._room_names[room_id] = room.meeting_id
        return room

    def sessions_in(self, room_id: str, user_id: int) -> list[Member]:
        """``user_id``'s open signaling sessions in the room named ``room_id``, here or elsewhere, in join order."""
        room = self.room_by_id(room_id)
        if room is None:
            return []
        return [m for m in room.members.values() if m.user_id == user_id]

    def live_meeting_of(self, room_id: str) -> int | None:
        """The id of the meeting whose room is named ``room_id``, while the room is here and the meeting not over."""
        room = self.room_by_id(room_id)
        if room is None or (room.meeting is not None and room.meeting.status in (ENDED, CANCELLED)):
            return None
        return room.meeting_id

    def find_live_meeting(self, room_id: str):
        """
        The id of the live meeting whose room is named ``room_id``, or None:
        from the room here when there is one (a value), else from the store
        (a Deferred), so that a node with no member of the room finds it too.
        """
        meeting_id = self.live_meeting_of(room_id)
        if meeting_id is not None or not isinstance(room_id, str) or not room_id:
            return meeting_id
        d = self.store.get_meeting_by_room(room_id)
        return d.addCallback(lambda meeting: None if meeting is None or meeting.status in (ENDED, CANCELLED)
                             else meeting.id)

    def room_count(self) -> int:
        """Rooms with a member on this node."""
        return len(self.local_room_ids())

    def local_room_ids(self) -> list[int]:
        return [mid for mid, room in self.rooms.items() if any(m.node is None for m in room.members.values())]

    def room_view(self, meeting_id: int) -> dict | None:
        room = self.rooms.get(meeting_id)
        if room is None:
            return None
        return {"meeting_id": room.meeting_id, "room_id": room.room_id,
                "participant_count": len(room.members), "created_at": self.format_time(room.created_at),
                "messages": room.messages,
                "sessions": [self.session_view(m) for m in room.members.values()]}

    def member_view(self, member: Member, is_self: bool = False) -> dict:
        return {"user_id": member.user_id, "username": member.username, "session_id": member.session_id,
                "peer_id": member.peer_id, "is_self": is_self, "joined_at": self.format_time(member.joined_at),
                "audio_enabled": member.audio_enabled, "video_enabled": member.video_enabled,
                "screen_sharing": member.screen_sharing}

    def session_view(self, member: Member) -> dict:
        view = self.member_view(member)
        del view["is_self"]
        view["meeting_id"] = member.meeting_id
        return view

    # -- internals ----------------------------------------------------------------
    def _require(self, client) -> Member:
        member = self._by_client.get(client)
        if member is None:
            raise Conflict("send join first")
        return member

    def _event(self, kind: str, member: Member, payload, **to) -> SignalEvent:
        return SignalEvent(kind, member.meeting_id, payload, self.clock.seconds(), from_user_id=member.user_id,
                           from_peer_id=member.peer_id, from_session_id=member.session_id, **to)

    def _room_info(self, room: Room, me: Member) -> SignalEvent:
        payload = {"meeting_id": room.meeting_id, "session_id": me.session_id, "peer_id": me.peer_id,
                   "participant_count": len(room.members),
                   "participants": [self.member_view(m, m is me) for m in room.members.values()],
                   "ice_servers": self.ice.for_user(me.user_id)}
        return SignalEvent("room-info", room.meeting_id, payload, self.clock.seconds(),
                           from_session_id=me.session_id)

    def _to_others(self, room: Room, member: Member, event: SignalEvent) -> None:
        """To the room's other members on this node."""
        for other in list(room.members.values()):
            if other is not member and other.node is None:
                self._deliver(other, event)

    def _to_room(self, member: Member, event: SignalEvent) -> None:
        """From ``member`` (here) to everyone else in its room, here and elsewhere."""
        self._to_others(self.rooms[member.meeting_id], member, event)
        self.mirror.to_room(member.meeting_id, event)

    def _refresh_others(self, room: Room, member: Member) -> None:
        for other in list(room.members.values()):
            if other is not member and other.node is None:
                self._deliver(other, self._room_info(room, other))

    def _deliver(self, member: Member, event: SignalEvent) -> None:
        # One client failing to take an event must not stop the room's
        # bookkeeping (a leave must always finish).
        try:
            member.client.send_event(event)
        except Exception:
            self.log.failure("sending {kind} to session {session} failed", kind=event.kind,
                             session=member.session_id)

    def _disconnect(self, member: Member, error) -> None:
        try:
            member.client.disconnect(error)
        except Exception:
            self.log.failure("disconnecting session {session} failed", session=member.session_id)

    def _record(self, meeting_id: int, user_id: int, changes: dict) -> None:
        """Mirror socket events into the participant's REST record (in the background)."""
        d = Deferred.fromCoroutine(self._update(meeting_id, user_id, changes))
        d.addErrback(lambda f: self.log.failure("updating participant {user} of {meeting} failed", f,
                                                user=user_id, meeting=meeting_id))

    async def _update(self, meeting_id: int, user_id: int, changes: dict) -> None:
        await self.store.update_participant(meeting_id, user_id, changes)


def _apply_state(member: Member, kind: str, payload: dict) -> None:
    if kind == "media-state":
        for key in ("audio_enabled", "video_enabled"):
            if isinstance(payload.get(key), bool):
                setattr(member, key, payload[key])
    elif isinstance(payload.get("enabled"), bool):
        member.screen_sharing = payload["enabled"]


def _copy_state(source: Member, target: Member) -> None:
    target.audio_enabled, target.video_enabled = source.audio_enabled, source.video_enabled
    target.screen_sharing = source.screen_sharing


def _chat_text(payload) -> str:
    if isinstance(payload, str):
        text = payload
    elif isinstance(payload, dict):
        text = payload.get("content", payload.get("message", payload.get("text")))
    else:
        text = None
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("chat payload needs content (a non-empty string)")
    if len(text) > MAX_CHAT:
        raise InvalidInput(f"chat content must be at most {MAX_CHAT} characters")
    return text.strip()
