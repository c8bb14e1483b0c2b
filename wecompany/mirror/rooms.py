"""
Meeting rooms with members on several nodes.

A node keeps, for each room it has an interest in (a member here, or a
connection admitted to it), a replica of the members on other nodes: they
are :class:`~wecompany.domain.rooms.Member` s whose ``node`` is set and that
have no client. :class:`RoomMirror` is what the
:class:`~wecompany.domain.rooms.RoomService` tells of its own members and
what it asks the other nodes to deliver; what arrives comes back to the
room service through the listener it watches a room with.

Keys and channels (under the cluster's prefix, see :mod:`wecompany.mirror.cluster`):

=========================  ======================================================
``room:{meeting}``         hash: session id -> the member (JSON), written by the member's node only
``rooms:{node}``           set of the meetings the node has members in (its cleanup after death)
channel ``room:{meeting}`` joins, leaves, room-wide events and the meeting's REST changes;
                           only nodes with an interest in the room subscribe
=========================  ======================================================

Messages for some members only (offers, answers, ICE candidates, a session
replaced) go to their node's channel instead, so that a busy room's
signaling is not sent to every node in it.

Ordering: a node publishes through one connection and subscribes through
one, so what one node publishes reaches each other node in the order it
was published, across channels too (a join is heard before the offers of
the member who joined). A node subscribes to a room before it reads the
room's members, so a join is either in what it reads or heard after; the
periodic resync repairs what a Redis outage lost.

A room survives a Redis outage on each node as it was: browsers' media goes
peer to peer and is not cut because the nodes cannot talk, and the resync
after the outage settles who is still there.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from wecompany.domain.interfaces import IMeetingListener
from wecompany.domain.rooms import SERVER_EVENTS, Member, SignalEvent
from wecompany.errors import Unavailable
from wecompany.mirror.cluster import SESSION_TTL_FACTOR
from wecompany.mirror.codec import dumps, loads

#: The kinds of event that cross nodes in a room (a node builds nothing else from the wire).
CROSSING = frozenset({"offer", "answer", "ice-candidate", "chat", "media-state", "screen-share"}) | SERVER_EVENTS
_EVENT_FIELDS = tuple(f.name for f in attrs.fields(SignalEvent) if f.name != "encoded")


def encode_signal(event: SignalEvent) -> dict:
    return {name: getattr(event, name) for name in _EVENT_FIELDS}


def decode_signal(data: dict) -> SignalEvent:
    if data.get("kind") not in CROSSING:
        raise ValueError(f"{data.get('kind')!r} does not cross nodes")
    return SignalEvent(**{name: data[name] for name in _EVENT_FIELDS if name in data})


def member_info(member: Member, node: str) -> dict:
    return {"sid": member.session_id, "node": node, "uid": member.user_id, "name": member.username,
            "peer": member.peer_id, "meeting": member.meeting_id, "joined": member.joined_at,
            "audio": member.audio_enabled, "video": member.video_enabled, "screen": member.screen_sharing}


def remote_member(info: dict) -> Member:
    """The replica of a member on another node (raises KeyError/TypeError/ValueError on a bad record)."""
    member = Member(str(info["sid"]), None, int(info["uid"]), str(info["name"]), str(info["peer"]),
                    int(info["meeting"]), float(info["joined"]), bool(info.get("audio", True)),
                    bool(info.get("video", True)), bool(info.get("screen", False)), node=str(info["node"]))
    return member


@implementer(IMeetingListener)
class LocalRoomMirror:
    """A daemon on its own: every member is here; nothing is sent anywhere."""

    enabled = False
    node_id = None

    def watch(self, meeting_id: int, listener) -> Deferred:
        return succeed(None)

    def unwatch(self, meeting_id: int) -> None:
        pass

    def joined(self, member: Member) -> None:
        pass

    def left(self, member: Member, reason: str, announce: bool = True) -> None:
        pass

    def changed(self, member: Member) -> None:
        pass

    def to_room(self, meeting_id: int, event: SignalEvent) -> None:
        pass

    def to_members(self, members, event: SignalEvent) -> None:  # pragma: no cover - no remote members here
        raise AssertionError("no remote members without a cluster")

    def replace(self, member: Member) -> None:  # pragma: no cover - no remote members here
        raise AssertionError("no remote members without a cluster")

    # The meetings' REST side: on its own, the room service hears it directly.
    def meeting_changed(self, meeting) -> None:
        pass

    def meeting_deleted(self, meeting_id: int) -> None:
        pass

    def participant_left(self, meeting_id: int, user_id: int, reason: str) -> None:
        pass


class RoomMirror(LocalRoomMirror):
    """
    The rooms' side of a node in a cluster.

    :param cluster: this node's :class:`~wecompany.mirror.cluster.Cluster`
        (its link, keys, node id and background tracking).

    The room service watches a room with itself as the listener, which is
    told (``remote_joined(info)``, ``remote_left(meeting, session, reason)``,
    ``remote_event(event, sessions)``, ``remote_meeting(meeting, op, ...)``)
    what the other nodes said.
    """

    enabled = True
    log = Logger()

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.node_id = cluster.node_id
        self._watched: dict[int, object] = {}  # meeting id -> listener
        self._loading: dict[int, Deferred] = {}
        self._mine: dict[int, dict[str, Member]] = {}  # meeting id -> this node's members there

    def key(self, meeting_id: int) -> str:
        return self.cluster.key("room", str(meeting_id))

    def channel(self, meeting_id: int) -> str:
        return self.cluster.key("room", str(meeting_id))

    @property
    def ttl(self) -> int:
        return int(self.cluster.node_timeout * SESSION_TTL_FACTOR)

    # -- interest --------------------------------------------------------------------
    def watch(self, meeting_id: int, listener) -> Deferred:
        """
        Subscribe to the room and load its members elsewhere (each told to
        the listener); fires when loaded. Concurrent calls share the work.
        """
        if meeting_id in self._watched:
            loading = self._loading.get(meeting_id)
            if loading is None:
                return succeed(None)
            waiter: Deferred = Deferred()
            loading.addBoth(lambda result: (waiter.callback(None), result)[1])
            return waiter
        self._watched[meeting_id] = listener
        d = self.cluster.track(self._load(meeting_id, listener), f"loading room {meeting_id}")
        self._loading[meeting_id] = d
        d.addBoth(lambda result: (self._loading.pop(meeting_id, None), result)[1])
        return d

    async def _load(self, meeting_id: int, listener) -> None:
        link = self.cluster.link
        if not link.up:
            return  # alone until Redis is back: the recovery loads it then
        await link.subscribe(self.channel(meeting_id), lambda raw: self._on_room_message(meeting_id, raw))
        if meeting_id not in self._watched:  # unwatched meanwhile (and unsubscribed then)
            return
        await self._reconcile(meeting_id, listener)

    def unwatch(self, meeting_id: int) -> None:
        self._watched.pop(meeting_id, None)
        self.cluster.link.unsubscribe(self.channel(meeting_id))

    def watched(self):
        return list(self._watched)

    # -- this node's members ----------------------------------------------------------
    def joined(self, member: Member) -> None:
        self._mine.setdefault(member.meeting_id, {})[member.session_id] = member
        info = member_info(member, self.node_id)
        self.cluster.track(self._write(member.meeting_id, member.session_id, info), "recording a room member")
        self._send(self.channel(member.meeting_id), {"t": "joined", "member": info})

    async def _write(self, meeting_id: int, session_id: str, info: dict) -> None:
        redis = self.cluster.link.redis
        key = self.key(meeting_id)
        await redis.hset(key, session_id, dumps(info))
        await redis.expire(key, self.ttl)
        await redis.sadd(self.cluster.key("rooms", self.node_id), str(meeting_id))

    def left(self, member: Member, reason: str, announce: bool = True) -> None:
        mine = self._mine.get(member.meeting_id, {})
        mine.pop(member.session_id, None)
        if not mine:
            self._mine.pop(member.meeting_id, None)
        self.cluster.track(self._erase(member.meeting_id, member.session_id), "forgetting a room member")
        if announce:
            self._send(self.channel(member.meeting_id), {"t": "left", "meeting": member.meeting_id,
                                                            "sid": member.session_id, "reason": reason})

    async def _erase(self, meeting_id: int, session_id: str) -> None:
        redis = self.cluster.link.redis
        await redis.hdel(self.key(meeting_id), session_id)
        if meeting_id not in self._mine:
            await redis.srem(self.cluster.key("rooms", self.node_id), str(meeting_id))

    def changed(self, member: Member) -> None:
        """The member's media state changed: its record follows (the event itself goes with to_room)."""
        if member.session_id in self._mine.get(member.meeting_id, {}):
            info = member_info(member, self.node_id)
            self.cluster.track(self._write(member.meeting_id, member.session_id, info), "updating a room member")

    def local_members(self):
        for members in self._mine.values():
            yield from members.values()

    # -- sending -------------------------------------------------------------------------
    def to_room(self, meeting_id: int, event: SignalEvent) -> None:
        self._send(self.channel(meeting_id), {"t": "event", "event": encode_signal(event)})

    def to_members(self, members, event: SignalEvent) -> None:
        if not self.cluster.link.up:
            raise Unavailable("that peer is connected to another server, which cannot be reached now")
        by_node: dict[str, list[str]] = {}
        for member in members:
            by_node.setdefault(member.node, []).append(member.session_id)
        encoded = encode_signal(event)
        for node, sessions in by_node.items():
            self.cluster.to_node(node, {"t": "room-event", "event": encoded, "sessions": sessions})

    def replace(self, member: Member) -> None:
        self.cluster.to_node(member.node, {"t": "room-replace", "meeting": member.meeting_id,
                                           "sid": member.session_id})

    def _send(self, channel: str, message: dict) -> None:
        if self.cluster.link.up:
            self.cluster.publish(channel, message)

    # -- the meetings' REST side, for the rooms on every node ----------------------------
    def meeting_changed(self, meeting) -> None:
        self._send(self.channel(meeting.id), {"t": "meeting", "op": "changed", "meeting": meeting.id})

    def meeting_deleted(self, meeting_id: int) -> None:
        self._send(self.channel(meeting_id), {"t": "meeting", "op": "deleted", "meeting": meeting_id})

    def participant_left(self, meeting_id: int, user_id: int, reason: str) -> None:
        self._send(self.channel(meeting_id), {"t": "meeting", "op": "participant-left", "meeting": meeting_id,
                                                 "user": user_id, "reason": reason})

    # -- what arrives ------------------------------------------------------------------
    def _on_room_message(self, meeting_id: int, raw) -> None:
        listener = self._watched.get(meeting_id)
        if listener is None:
            return
        message = loads(raw)
        if message.get("from") == self.node_id:
            return
        kind = message.get("t")
        if kind == "joined":
            listener.remote_joined(remote_member(message["member"]))
        elif kind == "left":
            listener.remote_left(meeting_id, str(message["sid"]), str(message.get("reason") or "leave"))
        elif kind == "event":
            event = decode_signal(message["event"])
            if event.meeting_id == meeting_id:
                listener.remote_event(event, None)
        elif kind == "meeting":
            user = message.get("user")
            listener.remote_meeting(meeting_id, str(message["op"]), int(user) if user is not None else None,
                                    str(message.get("reason") or ""))

    def on_node_message(self, message: dict) -> None:
        """A message for some of this node's members (``room-event``, ``room-replace``)."""
        kind = message.get("t")
        if kind == "room-event":
            event = decode_signal(message["event"])
            listener = self._watched.get(event.meeting_id)
            if listener is not None:
                listener.remote_event(event, [str(s) for s in message["sessions"]])
        elif kind == "room-replace":
            listener = self._watched.get(int(message["meeting"]))
            if listener is not None:
                listener.replaced_elsewhere(str(message["sid"]))

    # -- upkeep ------------------------------------------------------------------------
    async def leave_all(self) -> None:
        """This node stops: its members leave the rooms' records now (the others drop them on its goodbye)."""
        redis = self.cluster.link.redis
        for meeting_id, members in list(self._mine.items()):
            for session_id in list(members):
                await redis.hdel(self.key(meeting_id), session_id)
        self._mine.clear()
        await redis.delete(self.cluster.key("rooms", self.node_id))

    async def refresh(self) -> None:
        """With the heartbeat: the rooms this node has members in outlive it by the session TTL."""
        redis = self.cluster.link.redis
        for meeting_id in list(self._mine):
            await redis.expire(self.key(meeting_id), self.ttl)
        await redis.expire(self.cluster.key("rooms", self.node_id), self.ttl)

    async def republish(self) -> None:
        """Redis is back (maybe empty): this node's members are written again (the resync follows)."""
        for member in list(self.local_members()):
            await self._write(member.meeting_id, member.session_id, member_info(member, self.node_id))

    async def resync(self) -> None:
        """Re-read every watched room: who joined or left unheard (an outage, a lost message) is settled."""
        for meeting_id, listener in list(self._watched.items()):
            await self.cluster.link.subscribe(self.channel(meeting_id),
                                              lambda raw, m=meeting_id: self._on_room_message(m, raw))
            await self._reconcile(meeting_id, listener)

    async def _reconcile(self, meeting_id: int, listener) -> None:
        records = await self.cluster.link.redis.hgetall(self.key(meeting_id))
        present = []
        for raw in records.values():
            try:
                member = remote_member(loads(raw))
            except (KeyError, TypeError, ValueError):
                continue
            if member.node != self.node_id and member.meeting_id == meeting_id:
                present.append(member)
        if self._watched.get(meeting_id) is listener:
            listener.remote_members(meeting_id, present, grace=self.cluster.node_timeout / 3)

    async def clean_up_after(self, node: str, record_left) -> int:
        """
        A dead node's members leave the rooms' records; a user with no
        session left in a room is recorded as having left it
        (``record_left(meeting_id, user_id)``). -> members removed.
        """
        redis = self.cluster.link.redis
        removed = 0
        rooms_key = self.cluster.key("rooms", node)
        for raw_id in await redis.smembers(rooms_key):
            try:
                meeting_id = int(raw_id)
            except ValueError:
                continue
            key = self.key(meeting_id)
            records = await redis.hgetall(key)
            gone, staying = [], set()
            for sid, raw in records.items():
                try:
                    member = remote_member(loads(raw))
                except (KeyError, TypeError, ValueError):
                    continue
                if member.node == node:
                    gone.append((sid, member.user_id))
                else:
                    staying.add(member.user_id)
            for sid, _ in gone:
                await redis.hdel(key, sid)
            removed += len(gone)
            for user_id in {user for _, user in gone} - staying:
                record_left(meeting_id, user_id)
        await redis.delete(rooms_key)
        return removed
