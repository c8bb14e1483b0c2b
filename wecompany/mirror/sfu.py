"""
The meeting SFU in a cluster: one node per room, the calls that reach
another node forwarded to it (as LiveKit routes rooms).

Behind a load balancer two tabs of one meeting can reach two nodes, and a
browser's later calls on its connection any node: but a room's SFU
connections must all be on one node to receive each other, and a
connection is known only where it was opened. So every node sends the
browser's calls (:mod:`wecompany.api.webrtc`) through its
:class:`SfuRouter`:

* A call that names a room (``/answer``, ``/room/:id/...``) asks Redis
  which node serves it. The first one that makes the room (``/answer``,
  ``/room/:id/join``) on any node claims it (``SET ... NX``); that node
  refreshes its claim with its heartbeat while it has the room, and lets
  it go at the first heartbeat after the room has emptied, or when it
  stops. A dead node's claim expires with its heartbeat, and a node that
  finds the claim of a node whose heartbeat is gone takes it over, so the
  browser's reconnection is served within the dead-node detection time.
* A call that names a peer (``/peer/:id/...``, ``/ice-candidate``) finds
  the node from the peer id itself, without Redis: ids are made
  ``<uuid4>~<node id>`` (:func:`peer_id_maker`), and one whose shape is
  not exactly that is not found. A peer of a node that is no longer alive
  is not found either (404 ``peer not found``: the browser reconnects).
* A call for another node goes there with :meth:`Cluster.call
  <wecompany.mirror.cluster.Cluster.call>`, and its result or its error
  (code, business code, message) comes back as if it were local. It
  carries the user the forwarding node proved from a Bearer token, and
  nothing else the owner trusts: the owner's
  :class:`~wecompany.domain.sfu.SfuService` checks the call as it checks
  its own.

The node that serves a room follows its members on every node
(:meth:`RoomService.follow <wecompany.domain.rooms.RoomService.follow>`)
for as long as it serves it, though none may be on this node: the SFU
admits a member whose signaling session is elsewhere, and closes the
media of one whose session closed elsewhere, who left or was removed
through REST elsewhere, or whose meeting ended elsewhere, by the rules of
:mod:`wecompany.domain.sfu`.

When Redis cannot say (it is down, or does not answer within the RPC
timeout), a room call is served here, as on a daemon on its own, and the
outage is logged once. When Redis is back, the node's claims are made
again with the heartbeat; a node that finds another one serving a room
it served meanwhile closes its connections there (``moved``), and their
browsers reconnect to the room's node.

Keys (under the cluster's prefix, see :mod:`wecompany.mirror.cluster`):

=========================  ======================================================
``sfu:room:{room_id}``     the node that serves the room's SFU, refreshed with its
                           heartbeat; expires after ``--node-timeout``
=========================  ======================================================
"""

from __future__ import annotations

import re
import uuid

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from wecompany.domain.interfaces import IMeetingListener
from wecompany.domain.sfu import R_MOVED, detached, resolve, short_peer_id
from wecompany.errors import InvalidInput, PeerNotFound, Unavailable, WeCompanyError
from wecompany.mirror import scripts
from wecompany.mirror.cluster import RPC_TIMEOUT

#: Between a peer id's UUID and its node: not a character of node ids, and left as is in URLs.
SEPARATOR = "~"
_NODE = "[A-Za-z0-9._-]{1,64}"  # wecompany.config.parse_node_id
_PEER_ID = re.compile("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}" + SEPARATOR
                      + f"({_NODE})")

#: The calls that name a room, with how many arguments follow the room id.
ROOM_CALLS = {"answer": 2, "leave": 1, "join_room": 1, "room_peers": 0, "room_stats": 0}
#: The calls that name a peer, likewise.
PEER_CALLS = {"add_candidate": 1, "candidates": 0, "pending_offer": 0, "answer_offer": 1}
#: Room calls that make the room, and so claim it; the others only find where it is.
CLAIMING = frozenset({"answer", "join_room"})
#: Calls that take the identity a token proved.
WITH_IDENTITY = frozenset({"answer", "leave", "add_candidate", "candidates", "pending_offer", "answer_offer"})

_HERE = object()  # _owner(): Redis could not say; served here (not a string: any string may be a node id)
_ROUNDS = 3  # of claiming a room whose claim changes hands meanwhile


def peer_id_maker(node_id: str):
    """The SFU's peer ids for node ``node_id``: a UUID 4 (unguessable) and the node."""
    if not re.fullmatch(_NODE, node_id):
        raise ValueError(f"node id {node_id!r} cannot be part of a peer id")
    return lambda: f"{uuid.uuid4()}{SEPARATOR}{node_id}"


def node_of_peer(peer_id) -> str | None:
    """The node a peer id made by :func:`peer_id_maker` names, or None for anything else."""
    if not isinstance(peer_id, str):
        return None
    match = _PEER_ID.fullmatch(peer_id)
    return match.group(1) if match else None


@implementer(IMeetingListener)
@attrs.define(eq=False)
class OwnedRoom:
    """
    A room whose SFU this node serves. It follows the room's members across
    the cluster (it is the watcher of :meth:`RoomService.follow
    <wecompany.domain.rooms.RoomService.follow>`), and so is told of the
    meeting's changes made on other nodes, which it passes to the SFU.
    """

    router: "SfuRouter"
    room_id: str
    held: bool  # the claim in Redis is this node's (False: taken while Redis could not say)
    since: float
    busy: int = 0  # calls being served for it: the room is not let go meanwhile
    meeting: object = None  # its MeetingRecord, once found
    following: bool = False  # its members everywhere are known here

    def meeting_changed(self, meeting) -> None:
        self.router.sfu.meeting_changed(meeting)

    def meeting_deleted(self, meeting_id) -> None:
        self.router.sfu.meeting_deleted(meeting_id)

    def participant_left(self, meeting_id, user_id, reason) -> None:
        self.router.sfu.participant_left(meeting_id, user_id, reason)


@attrs.define
class RouterCounters:
    """Monotonic counts for the metrics."""

    forwarded: int = 0  # calls this node sent to the room's node
    served: int = 0  # calls other nodes sent here
    alone: int = 0  # room calls served here because Redis could not say where
    moved: int = 0  # rooms another node turned out to serve (their connections here closed)


class SfuRouter:
    """
    The SFU's routes in a cluster (see the module docstring): the methods
    of :class:`~wecompany.domain.sfu.SfuService` the HTTP routes call, each
    served here or on the room's node.

    :param sfu: this node's :class:`~wecompany.domain.sfu.SfuService`
        (made with :func:`peer_id_maker` ids).
    :param cluster: this node's :class:`~wecompany.mirror.cluster.Cluster`.
    :param rooms: the :class:`~wecompany.domain.rooms.RoomService`.
    :param store: finds a room's meeting (``get_meeting_by_room``).
    :param clock: ``IReactorTime``.
    :param timeout: how long Redis may take to say who serves a room.
    """

    log = Logger()

    def __init__(self, sfu, cluster, rooms, store, clock, *, timeout: float = RPC_TIMEOUT) -> None:
        self.sfu = sfu
        self.cluster = cluster
        self.rooms = rooms
        self.store = store
        self.clock = clock
        self.timeout = timeout
        self.node_id = cluster.node_id
        self.owned: dict[str, OwnedRoom] = {}
        self.counters = RouterCounters()
        self._alone_told = False  # the outage was logged

    def key(self, room_id: str) -> str:
        return self.cluster.key("sfu", "room", room_id)

    @property
    def ttl(self) -> int:
        """Seconds a claim outlives its node's last heartbeat: as long as the heartbeat itself."""
        return max(1, int(round(self.cluster.node_timeout)))

    # -- the browser's routes (SfuService's signatures) --------------------------------
    def answer(self, room_id, user_id, offer_sdp, identity=None):
        return self._room_call("answer", room_id, [user_id, offer_sdp], identity)

    def leave(self, room_id, user_id, identity=None):
        return self._room_call("leave", room_id, [user_id], identity)

    def join_room(self, room_id, user_id):
        return self._room_call("join_room", room_id, [user_id], None)

    def room_peers(self, room_id):
        return self._room_call("room_peers", room_id, [], None)

    def room_stats(self, room_id):
        return self._room_call("room_stats", room_id, [], None)

    def add_candidate(self, peer_id, candidate, identity=None):
        return self._peer_call("add_candidate", peer_id, [candidate], identity)

    def candidates(self, peer_id, identity=None):
        return self._peer_call("candidates", peer_id, [], identity)

    def pending_offer(self, peer_id, identity=None):
        return self._peer_call("pending_offer", peer_id, [], identity)

    def answer_offer(self, peer_id, answer_sdp, identity=None):
        return self._peer_call("answer_offer", peer_id, [answer_sdp], identity)

    # -- serving here -------------------------------------------------------------------
    def _local(self, name: str, key, args, identity):
        method = getattr(self.sfu, name)
        if name in WITH_IDENTITY:
            return method(key, *args, identity=identity)
        return method(key, *args)

    def _peer_call(self, name: str, peer_id, args, identity):
        node = node_of_peer(peer_id)
        if node == self.node_id:
            return self._local(name, peer_id, args, identity)  # as cheap as on a daemon on its own
        if node is None:
            raise PeerNotFound(short_peer_id(peer_id))  # not an id any node of the cluster made
        return detached(Deferred.fromCoroutine(self._forward_to_peer(node, name, peer_id, args, identity)))

    async def _forward_to_peer(self, node: str, name: str, peer_id: str, args, identity):
        if not await self._alive(node):
            # Its node is gone, and its connections with it: the browser reconnects on this 404.
            raise PeerNotFound(short_peer_id(peer_id))
        return await self._forward(node, name, peer_id, args, identity)

    def _room_call(self, name: str, room_id, args, identity):
        if not isinstance(room_id, str) or not 0 < len(room_id) <= 128:
            return self._local(name, room_id, args, identity)  # refused there, as on its own
        return detached(Deferred.fromCoroutine(self._room(name, room_id, args, identity, forwarded=False)))

    async def _room(self, name: str, room_id: str, args, identity, forwarded: bool):
        owned = self.owned.get(room_id)
        if owned is not None:  # served here: no need to ask
            return await self._serve_room(owned, name, room_id, args, identity)
        claim = name in CLAIMING
        owner = await self._owner(room_id, claim)
        if owner == self.node_id or (owner is _HERE and claim):
            owned = self.owned.get(room_id)  # made meanwhile by another call
            if owned is None:
                owned = self.owned[room_id] = OwnedRoom(self, room_id, owner == self.node_id, self.clock.seconds())
            return await self._serve_room(owned, name, room_id, args, identity)
        if owner is None or owner is _HERE:
            # Nobody serves it (or Redis cannot say): what this node knows of it answers.
            return await resolve(self._local(name, room_id, args, identity))
        if forwarded:
            # Sent here by a node that read the claim just before it changed hands: not sent on again.
            raise Unavailable("the room's media server changed meanwhile: try again")
        return await self._forward(owner, name, room_id, args, identity)

    async def _serve_room(self, owned: OwnedRoom, name: str, room_id: str, args, identity):
        owned.busy += 1
        try:
            await self._follow(owned)
            return await resolve(self._local(name, room_id, args, identity))
        finally:
            owned.busy -= 1

    async def _follow(self, owned: OwnedRoom) -> None:
        """
        The room's members on every node are known here from now on. Calls
        at once each wait for them (the room service shares the loading).
        """
        if owned.following:
            return
        if owned.meeting is None:
            meeting = await self.store.get_meeting_by_room(owned.room_id)
            if meeting is None:
                return  # no such meeting: the SFU refuses the call
            owned.meeting = owned.meeting or meeting
        if self.owned.get(owned.room_id) is not owned:
            return  # let go meanwhile
        await self.rooms.follow(owned.meeting, owned)
        if self.owned.get(owned.room_id) is owned:
            owned.following = True
        else:
            self.rooms.release(owned)

    # -- where a room is ------------------------------------------------------------------
    async def _owner(self, room_id: str, claim: bool):
        """
        This node's id (it serves the room: it just claimed it, with
        ``claim``), another node's, None (nobody serves it), or ``_HERE``
        (Redis cannot say).
        """
        if not self.cluster.link.up:
            return self._alone(room_id, "Redis is down")
        d = Deferred.fromCoroutine(self._ask_owner(room_id, claim))
        d.addTimeout(self.timeout, self.clock)
        try:
            owner = await d
        except Exception as e:
            return self._alone(room_id, e.message if isinstance(e, WeCompanyError) else repr(e))
        self._alone_told = False
        return owner

    async def _ask_owner(self, room_id: str, claim: bool):
        redis = self.cluster.link.redis
        key = self.key(room_id)
        for _ in range(_ROUNDS):
            if claim and await redis.set(key, self.node_id, expire=self.ttl, only_if_not_exists=True):
                self.log.info("SFU room {room_id} is served by this node", room_id=room_id)
                return self.node_id
            holder = await redis.get(key)
            if holder is None:
                if not claim:
                    return None
                continue  # it expired between the two: claim it again
            if holder == self.node_id or await self._alive(holder):
                return holder
            # Its node is gone, its claim not yet expired: the room is free.
            self.log.info("SFU room {room_id}: node {node} that served it is gone", room_id=room_id, node=holder)
            await redis.eval(scripts.DELETE_IF, [key], [holder])
            if not claim:
                return None
        raise Unavailable("the claim of the room kept changing hands")

    def _alone(self, room_id: str, why: str):
        self.counters.alone += 1
        if not self._alone_told:
            self._alone_told = True
            self.log.warn("SFU: the cluster cannot say which node serves room {room_id} ({why}): rooms are "
                          "served on the node their calls reach until it can", room_id=room_id, why=why)
        return _HERE

    async def _alive(self, node: str) -> bool:
        """Is ``node`` alive: seen in the heartbeats, or its heartbeat in Redis (a node started a moment ago)."""
        if node in self.cluster.peers:
            return True
        if not self.cluster.link.up:
            return False
        d = self.cluster.link.redis.exists(self.cluster.key("node", node))
        d.addTimeout(self.timeout, self.clock)
        try:
            return bool(int(await d))
        except Exception:
            return False

    async def _forward(self, node: str, name: str, key: str, args, identity):
        self.counters.forwarded += 1
        return await self.cluster.call(node, {"op": "sfu", "call": name, "key": key, "args": list(args),
                                              "identity": identity}, self.timeout)

    # -- what other nodes send ------------------------------------------------------------
    async def serve(self, request: dict):
        """
        A call another node forwarded (the cluster RPC ``sfu``) -> its
        result; a WeCompanyError it raises goes back to that node. Only the
        identity is taken from the forwarding node (it proved it); the rest
        is checked here as the routes' own.
        """
        name, key, args, identity = (request.get("call"), request.get("key"), request.get("args"),
                                     request.get("identity"))
        arity = ROOM_CALLS.get(name, PEER_CALLS.get(name)) if isinstance(name, str) else None
        if arity is None or not isinstance(args, list) or len(args) != arity:
            raise InvalidInput("not an SFU call")
        if identity is not None and (isinstance(identity, bool) or not isinstance(identity, int) or identity <= 0):
            raise InvalidInput("not an identity")
        self.counters.served += 1
        if name in PEER_CALLS:
            if node_of_peer(key) != self.node_id:
                raise PeerNotFound(short_peer_id(key))
            return await resolve(self._local(name, key, args, identity))
        if not isinstance(key, str) or not 0 < len(key) <= 128:
            return await resolve(self._local(name, key, args, identity))
        return await self._room(name, key, args, identity, forwarded=True)

    # -- upkeep -----------------------------------------------------------------------------
    async def refresh(self) -> None:
        """
        With the heartbeat: the claims of the rooms this node serves are
        refreshed (made again after Redis lost them); a room it no longer
        has is let go; one another node claimed meanwhile is left to it.
        """
        redis = self.cluster.link.redis
        for room_id, owned in list(self.owned.items()):
            if self.owned.get(room_id) is not owned:
                continue
            key = self.key(room_id)
            if owned.busy == 0 and room_id not in self.sfu.rooms:
                self._forget(owned)
                await redis.eval(scripts.DELETE_IF, [key], [self.node_id])
                self.log.info("SFU room {room_id} is empty: no longer served by this node", room_id=room_id)
                continue
            if int(await redis.eval(scripts.CLAIM, [key], [self.node_id, self.ttl])):
                owned.held = True
                continue
            holder = await redis.get(key)
            if self.owned.get(room_id) is owned:
                self._lost(owned, holder)

    def _lost(self, owned: OwnedRoom, holder) -> None:
        """Another node serves the room (both served it while Redis was away): its connections here close."""
        self.counters.moved += 1
        self._forget(owned)
        closed = self.sfu.close_room(owned.room_id, R_MOVED)
        self.log.warn("SFU room {room_id} is served by node {node}: its {count} connections here close, and "
                      "their browsers reconnect there", room_id=owned.room_id, node=holder, count=closed)

    def _forget(self, owned: OwnedRoom) -> None:
        if self.owned.get(owned.room_id) is owned:
            del self.owned[owned.room_id]
        owned.following = False
        self.rooms.release(owned)  # (nothing to release if it was never followed)

    async def leave_all(self) -> None:
        """This node stops (its connections closed with its engine): the rooms it served are free at once."""
        redis = self.cluster.link.redis
        for owned in list(self.owned.values()):
            self._forget(owned)
            await redis.eval(scripts.DELETE_IF, [self.key(owned.room_id)], [self.node_id])

    def owned_count(self) -> int:
        return len(self.owned)
