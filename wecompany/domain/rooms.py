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
    """One signaling session in a room."""

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


@attrs.define(eq=False)
class Room:
    """
    The live room of one meeting. ``meeting`` is its record as last seen
    (at a join, or told by the MeetingService): chat is checked against it
    without a database read per message.
    """

    meeting_id: int
    room_id: str
    meeting: object
    members: dict = attrs.Factory(dict)  # session_id -> Member, in join order
    created_at: float = 0.0
    messages: int = 0


@implementer(IMeetingListener)
class RoomService:
    """
    Rooms follow their meetings (:class:`IMeetingListener`): when one ends or
    is deleted its members are disconnected, and a member who leaves the
    meeting through REST, or is removed from it, is disconnected too.

    :param store: IStore + IMeetingStore.
    :param ice: :class:`~wecompany.domain.ice.IceServers`.
    :param format_time: POSIX seconds -> the string clients see (RFC 3339).
    """

    log = Logger()

    def __init__(self, store, ice, clock, format_time=str) -> None:
        self.store = store
        self.ice = ice
        self.clock = clock
        self.format_time = format_time
        self.rooms: dict[int, Room] = {}
        self.sessions: dict[str, Member] = {}  # session_id -> member
        self._by_client: dict[object, Member] = {}

    # -- admission (before the WebSocket upgrade) -----------------------------
    async def admit(self, user_id: int, meeting_id: int):
        """
        May ``user_id`` open a signaling session for ``meeting_id``? Raises
        :class:`Forbidden` (meeting missing or over, not a participant joined
        through REST, room full); returns the MeetingRecord.
        """
        meeting = await self.store.get_meeting(meeting_id)
        if meeting is None:
            raise Forbidden("no such meeting")
        if meeting.status in (ENDED, CANCELLED):
            raise Forbidden(f"meeting has {'ended' if meeting.status == ENDED else 'been cancelled'}")
        participant = await self.store.get_participant(meeting_id, user_id)
        if participant is None or participant.status == "left":
            raise Forbidden("join the meeting through the REST API first")
        room = self.rooms.get(meeting_id)
        if room is not None and len({m.user_id for m in room.members.values()} | {user_id}) > meeting.max_participants:
            raise Forbidden("room is full")
        return meeting

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
                self.leave(other.client, "replaced")
                other.client.disconnect(Conflict("replaced by a newer connection with the same peer_id"))
        # Made only now (leave() above may have removed an emptied room).
        room = self.rooms.get(meeting.id)
        if room is None:
            room = self.rooms[meeting.id] = Room(meeting.id, meeting.room_id, meeting, created_at=now)
        elif meeting.updated_at > room.meeting.updated_at:
            room.meeting = meeting
        member = Member("s_" + secrets.token_hex(8), client, user.id, user.username, peer_id, meeting.id, now)
        room.members[member.session_id] = member
        self.sessions[member.session_id] = member
        self._by_client[client] = member
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
        self.sessions.pop(member.session_id, None)
        room = self.rooms.get(member.meeting_id)
        if room is None:
            return
        room.members.pop(member.session_id, None)
        self._to_others(room, member, self._event("user-left", member, {**self.member_view(member), "reason": reason}))
        self._refresh_others(room, member)
        if record and not any(m.user_id == member.user_id for m in room.members.values()):
            self._record(member.meeting_id, member.user_id, {"status": "left", "left_at": self.clock.seconds()})
        if not room.members:
            del self.rooms[member.meeting_id]

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
        for target in targets:
            self._deliver(target, event)
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
                self._deliver(other, event)
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
        self._to_others(self.rooms[member.meeting_id], member, self._event("media-state", member, state))
        self._record(member.meeting_id, member.user_id, changes)

    def screen_share(self, client, payload) -> None:
        member = self._require(client)
        sharing = payload.get("enabled", payload.get("sharing")) if isinstance(payload, dict) else None
        if not isinstance(sharing, bool):
            raise InvalidInput("screen-share payload needs enabled: true or false")
        member.screen_sharing = sharing
        self._to_others(self.rooms[member.meeting_id], member,
                        self._event("screen-share", member, {"enabled": sharing, "sharing": sharing}))

    def pong(self, client, payload) -> None:
        member = self._by_client.get(client)
        meeting_id = member.meeting_id if member is not None else 0
        client.send_event(SignalEvent("pong", meeting_id, payload, self.clock.seconds()))

    # -- the meetings' REST side (IMeetingListener) -------------------------------
    def meeting_changed(self, meeting) -> None:
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
        for member in [m for m in room.members.values() if m.user_id == user_id]:
            # The REST record already says so (or is gone): nothing to record.
            self._remove(member, reason, record=False)
            self._disconnect(member, error)

    def _close_room(self, room: Room, error) -> None:
        """Everyone goes at once: no user-left among them, and the records were closed by REST."""
        del self.rooms[room.meeting_id]
        for member in list(room.members.values()):
            del self._by_client[member.client]
            self.sessions.pop(member.session_id, None)
        for member in room.members.values():
            self._disconnect(member, error)
        room.members.clear()
        self.log.info("room of meeting {meeting} closed: {why}", meeting=room.meeting_id, why=error.message)

    # -- queries (REST and metrics) -----------------------------------------------
    def room_count(self) -> int:
        return len(self.rooms)

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
        for other in list(room.members.values()):
            if other is not member:
                self._deliver(other, event)

    def _refresh_others(self, room: Room, member: Member) -> None:
        for other in list(room.members.values()):
            if other is not member:
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
