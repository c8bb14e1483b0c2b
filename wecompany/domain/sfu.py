"""
The meeting SFU's domain: who may publish and receive in a room, and when to negotiate.

The browser client (``/work/shared/spec/sfu.md``) negotiates over HTTP: it
offers once (:meth:`SfuService.answer`); every later offer comes from the
server, polled with :meth:`SfuService.pending_offer` and answered with
:meth:`SfuService.answer_offer`. This module decides who may connect, what
each peer receives and when to offer again; an
:class:`~wecompany.domain.interfaces.IMediaEngine` does the SDP, ICE and RTP
and reports back as an
:class:`~wecompany.domain.interfaces.IMediaEngineListener`.

Negotiation, per peer:

* after ``open_peer`` the peer is stable and receives nothing until its
  connection is ``connected``; then it is given every track the room's
  other peers publish, in one offer;
* a track added or ended elsewhere in the room changes what every connected
  peer should receive, and each is offered again;
* one offer is outstanding per peer: a change while an offer awaits its
  answer, or while the engine is busy with this peer, sets ``reoffer``, and
  a fresh offer with the then-current streams follows the answer;
* after every applied answer, the room's other video publishers are asked
  for a keyframe, so the new receiver starts at once (asks of one publisher
  closer than ``keyframe_interval`` are folded into one at its end).

Admission is this daemon's own: an SFU peer is bound to the user's open
signaling session in the room (its signaling ``peer_id`` labels what it
publishes), and a Bearer token, when one is sent, must name that user. The
browser sends no token on these calls, so whoever knows a room id and the
user id of a member who is in it can still connect as that member; peer ids
are unguessable, so nobody can act on another's connection.
"""

from __future__ import annotations

import inspect
import uuid
from collections import deque

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wecompany.domain.ids import MAX_ID
from wecompany.domain.interfaces import IMediaEngineListener, IMeetingListener
from wecompany.domain.meetings import CANCELLED, ENDED
from wecompany.errors import (
    Conflict, Forbidden, InternalError, InvalidInput, NotFound, PeerNotFound, RateLimited,
    Unavailable, WeCompanyError,
)


@attrs.frozen
class ForwardedStream:
    """
    One track of one publisher as a subscriber receives it.

    ``stream_id`` is the msid stream id the subscriber's browser sees: the
    publisher's signaling ``peer_id``, so that its tile is labelled with the
    publisher's name; a publisher's audio and video share it.
    """

    publisher_peer_id: str
    track_id: str
    kind: str  # "audio" or "video"
    stream_id: str


@attrs.frozen
class PublishedTrack:
    """One track a peer of a room publishes now (what a recording of the room takes)."""

    peer_id: str
    user_id: int
    track_id: str
    kind: str
    stream_id: str


@attrs.frozen
class SfuLimits:
    """
    The SFU's limits and timeouts (seconds). Defaults suit the browser
    client, which polls every 600/800 ms.
    """

    max_sdp: int = 128 * 1024
    # A server offer past this (the m-sections of every publisher who ever left stay in it:
    # unified plan never removes one) is not sent: the connection closes instead, the
    # browser's next poll is "peer not found" and it reconnects with a fresh connection,
    # before its answer would grow past max_sdp and be refused.
    max_offer_sdp: int = 96 * 1024
    max_peers_per_user: int = 4
    max_peers_per_room: int = 64
    max_peers: int = 1024
    max_tracks_per_peer: int = 4
    max_local_candidates: int = 64  # queued for the browser's poll; more are dropped
    max_remote_candidates: int = 128  # accepted from the browser per peer
    connect_timeout: float = 30.0  # from creation to the first `connected`
    idle_timeout: float = 60.0  # without any HTTP call for the peer
    disconnected_grace: float = 10.0
    session_grace: float = 10.0  # bound signaling session gone, user has none in the room
    sweep_interval: float = 2.0
    # Keyframe requests to one publisher closer than this are folded into one at its end:
    # in a full room one track change is an answer from every other peer, each asking
    # every video publisher (64 peers: ~4000 PLIs and engine round trips at once).
    keyframe_interval: float = 0.5


# Connection states (IMediaEngineListener.connection_state)
NEW, CONNECTING, CONNECTED, DISCONNECTED, FAILED, CLOSED = (
    "new", "connecting", "connected", "disconnected", "failed", "closed")
STATES = (NEW, CONNECTING, CONNECTED, DISCONNECTED, FAILED, CLOSED)
KINDS = ("audio", "video")

# Why a peer closed (SfuCounters.peers_closed keys)
R_LEFT = "left"
R_REMOVED = "removed"
R_MEETING_ENDED = "meeting_ended"
R_FAILED = "failed"
R_CLOSED = "closed"
R_DISCONNECTED = "disconnected"
R_CONNECT_TIMEOUT = "connect_timeout"
R_IDLE = "idle"
R_SESSION_GONE = "session_gone"
R_ENGINE_GONE = "engine_peer_not_found"
R_ENGINE_ERROR = "engine_error"
R_ENGINE_LOST = "engine_lost"
R_REPLACED = "replaced"  # a reloaded tab's old connection, closed to make room
R_OPEN_FAILED = "open_failed"
R_SDP_LIMIT = "sdp_limit"  # its next offer would have been past SfuLimits.max_offer_sdp
R_MOVED = "moved"  # in a cluster, another node serves the room (wecompany.mirror.sfu)
CLOSE_REASONS = (R_LEFT, R_REMOVED, R_MEETING_ENDED, R_FAILED, R_CLOSED, R_DISCONNECTED,
                 R_CONNECT_TIMEOUT, R_IDLE, R_SESSION_GONE, R_ENGINE_GONE, R_ENGINE_ERROR,
                 R_ENGINE_LOST, R_REPLACED, R_OPEN_FAILED, R_SDP_LIMIT, R_MOVED)

_MAX_ROOM_ID = 128
_MAX_CANDIDATE = 1024
_MAX_MID = 64
_MAX_UFRAG = 256
_MAX_TRACK_ID = 256
_ENDED_STATUSES = (ENDED, CANCELLED)


@attrs.define
class SfuCounters:
    """Monotonic counters for metrics (plain ints; ``peers_closed`` by reason)."""

    peers_opened: int = 0
    peers_closed: dict = attrs.Factory(lambda: dict.fromkeys(CLOSE_REASONS, 0))
    offers: int = 0
    answers: int = 0
    candidates_received: int = 0
    candidates_sent: int = 0
    candidates_dropped: int = 0
    keyframes_requested: int = 0
    engine_errors: int = 0


@attrs.frozen
class SfuGauges:
    peers: int
    connected: int
    forwarded_streams: int
    rooms: int


@attrs.define(eq=False)
class SfuPeer:
    """
    One browser connection (one tab): it publishes and receives.

    ``negotiated`` is what the peer receives as of its last applied answer;
    ``offered`` what the outstanding offer (or the ``renegotiate`` in flight)
    gives it. ``busy`` is set while the engine works on this peer
    (``open_peer``, ``renegotiate``, ``apply_answer``).
    """

    peer_id: str
    room_id: str
    user_id: int
    session_id: str  # the signaling session this peer is bound to
    stream_id: str  # that session's signaling peer_id: the msid of what this peer publishes
    created_at: float
    last_activity: float
    local_candidates: deque
    state: str = NEW
    connected: bool = False  # has been `connected` once: it receives from then on
    closed: bool = False
    busy: bool = True
    reoffer: bool = False
    pending_offer: str | None = None
    offered: tuple = ()
    negotiated: tuple = ()
    tracks: dict = attrs.Factory(dict)  # track_id -> kind, in the order they came
    published: tuple = ()  # the ForwardedStreams of ``tracks``, made once per change
    keyframe_at: float | None = None  # when the engine was last asked for a keyframe
    keyframe_call: object = None  # the folded request waiting for keyframe_interval
    gathering_complete: bool = False
    candidates_dropped: int = 0
    remote_candidates: int = 0
    disconnected_since: float | None = None
    session_gone_since: float | None = None
    leave_requested: bool = False


@attrs.define(eq=False)
class SfuRoom:
    room_id: str
    meeting_id: int | None
    created_at: float
    peers: dict = attrs.Factory(dict)  # peer_id -> SfuPeer, in creation order


def parse_user_id(value) -> int:
    """A positive user id, given as an int or its decimal string; else :class:`InvalidInput`."""
    if isinstance(value, bool):
        raise InvalidInput("user_id must be a positive integer")
    if isinstance(value, str):
        if not (0 < len(value) <= 19 and value.isascii() and value.isdigit()):
            raise InvalidInput("user_id must be a positive integer")
        value = int(value)
    if not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise InvalidInput("user_id must be a positive integer")
    return value


def _check_room_id(room_id) -> str:
    if not isinstance(room_id, str) or not 0 < len(room_id) <= _MAX_ROOM_ID:
        raise InvalidInput("room_id must be a non-empty string")
    return room_id


def _check_sdp(value, sdp_type: str, limit: int) -> str:
    """An SDP string, or a ``{type, sdp}`` description of ``sdp_type``."""
    if isinstance(value, dict):
        if value.get("type") != sdp_type:
            raise InvalidInput(f"the session description must be of type {sdp_type}")
        value = value.get("sdp")
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"the {sdp_type} must hold an SDP string")
    if len(value) > limit or len(value.encode("utf-8", "surrogatepass")) > limit:
        raise InvalidInput(f"the {sdp_type} SDP is larger than {limit} bytes")
    if not value.startswith("v=0"):
        raise InvalidInput(f"the {sdp_type} is not an SDP")
    return value


def check_candidate(candidate):
    """
    A browser's ``RTCIceCandidate.toJSON()``, checked and reduced to the
    fields the engine takes; ``None`` (or an empty candidate line, which
    browsers use for it) is the end of candidates.
    """
    if candidate is None:
        return None
    if not isinstance(candidate, dict):
        raise InvalidInput("candidate must be an object")
    line = candidate.get("candidate")
    if not isinstance(line, str) or len(line) > _MAX_CANDIDATE:
        raise InvalidInput(f"candidate.candidate must be a string of at most {_MAX_CANDIDATE} characters")
    if line == "":
        return None
    mid = candidate.get("sdpMid")
    if mid is not None and (not isinstance(mid, str) or len(mid) > _MAX_MID):
        raise InvalidInput("candidate.sdpMid must be a short string")
    index = candidate.get("sdpMLineIndex")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1024):
        raise InvalidInput("candidate.sdpMLineIndex must be a small non-negative integer")
    if mid is None and index is None:
        raise InvalidInput("candidate needs sdpMid or sdpMLineIndex")
    ufrag = candidate.get("usernameFragment")
    if ufrag is not None and (not isinstance(ufrag, str) or len(ufrag) > _MAX_UFRAG):
        raise InvalidInput("candidate.usernameFragment must be a short string")
    return {"candidate": line, "sdpMid": mid, "sdpMLineIndex": index, "usernameFragment": ufrag}


def _identity_user(identity) -> int:
    """The account id a token proved: an int, or an Identity (``account_id``)."""
    if isinstance(identity, int) and not isinstance(identity, bool):
        return identity
    account_id = getattr(identity, "account_id", None)
    if account_id is None:
        raise Forbidden("this token names no account")
    return account_id


def short_peer_id(peer_id) -> str:
    """A peer id as error messages quote it (whatever a client sent, bounded)."""
    return str(peer_id)[:64]


def detached(d: Deferred) -> Deferred:
    """
    ``d``'s result, in a Deferred whose cancellation does not reach ``d``: an
    HTTP client that goes away (a tab closing) cancels its request, but what
    the request asked of the engine goes on, and the peer stays consistent.
    """
    out: Deferred = Deferred()

    def passed(result):
        if not out.called:
            out.callback(result)
        elif isinstance(result, Failure):
            pass  # cancelled meanwhile: nobody waits for it (the domain has logged what matters)

    d.addBoth(passed)
    return out


async def resolve(value):
    """A value, or what a Deferred or awaitable gives (the SFU's collaborators answer either way)."""
    if isinstance(value, Deferred) or inspect.isawaitable(value):
        return await value
    return value


@implementer(IMediaEngineListener, IMeetingListener)
class SfuService:
    """
    Rooms of SFU peers, their admission and their negotiation.

    :param engine: the :class:`~wecompany.domain.interfaces.IMediaEngine`;
        the composition root calls ``engine.start(sfu)`` (this service is its
        listener).
    :param clock: ``IReactorTime`` (``seconds``, ``callLater``).
    :param members: ``members(room_id, user_id) -> list`` of the user's open
        signaling sessions in the room, on this node or another, in join
        order (objects with ``session_id``, ``peer_id``, ``user_id``,
        ``username``, ``meeting_id``). Called often: it must be cheap and
        synchronous.
    :param room_meeting: ``room_meeting(room_id)`` -> the id of the live
        meeting whose room it is, or ``None``; a value or a Deferred.
    :param limits: :class:`SfuLimits`.
    :param format_time: POSIX seconds -> what clients see.
    :param recording_failed: optional ``recording_failed(recording_id,
        reason)`` told what the engine reports.
    :param track_published: optional ``track_published(room_id, track)``
        told of each track a peer starts publishing (a
        :class:`PublishedTrack`): a recording in progress learns whose it is.
    :param make_peer_id: unguessable peer ids (UUID 4 by default, like pion).
    """

    log = Logger()

    def __init__(self, engine, clock, members, room_meeting, limits: SfuLimits | None = None,
                 format_time=float, recording_failed=None, make_peer_id=None, track_published=None) -> None:
        self.engine = engine
        self.clock = clock
        self.members = members
        self.room_meeting = room_meeting
        self.limits = limits or SfuLimits()
        self.format_time = format_time
        self._recording_failed = recording_failed
        self._track_published = track_published
        self._make_peer_id = make_peer_id or (lambda: str(uuid.uuid4()))
        self.rooms: dict[str, SfuRoom] = {}
        self.peers: dict[str, SfuPeer] = {}
        self.counters = SfuCounters()
        self.stopping = False
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = clock

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        """Start housekeeping (every ``sweep_interval`` seconds on the clock)."""
        if not self._sweeper.running:
            self._sweeper.start(self.limits.sweep_interval, now=False).addErrback(
                lambda f: self.log.failure("SFU housekeeping stopped", f))

    def stop(self) -> None:
        """
        Stop housekeeping, and offer nobody anything more: the daemon is
        stopping, its connections close one after another, and each publisher
        gone would otherwise renegotiate every other peer just before they go
        too (the engine's own ``stop`` closes the peers).
        """
        self.stopping = True
        if self._sweeper.running:
            self._sweeper.stop()

    # -- the browser's routes -------------------------------------------------------
    def answer(self, room_id, user_id, offer_sdp, identity=None) -> Deferred:
        """
        Route 1: a new peer answering the browser's offer (an SDP string, or
        ``{type: "offer", sdp}``). -> Deferred[dict] ``{peer_id, answer_sdp}``.

        The user must have an open signaling session in the room (else
        :class:`Forbidden`); with ``identity`` (what a Bearer token proved)
        it must be that user.
        """
        return detached(Deferred.fromCoroutine(self._answer(room_id, user_id, offer_sdp, identity)))

    async def _answer(self, room_id, user_id, offer_sdp, identity):
        room_id = _check_room_id(room_id)
        user_id = parse_user_id(user_id)
        offer_sdp = _check_sdp(offer_sdp, "offer", self.limits.max_sdp)
        if identity is not None and _identity_user(identity) != user_id:
            raise Forbidden("the token belongs to another user")
        if not self._sessions(room_id, user_id):
            raise Forbidden("join the meeting's room (signaling) before connecting media")
        meeting_id = await resolve(self.room_meeting(room_id))
        if meeting_id is None:
            raise Forbidden("the meeting of this room is over or unknown")
        # The await let the world move: admission and limits are decided now, at once.
        sessions = self._sessions(room_id, user_id)
        if not sessions:
            raise Forbidden("join the meeting's room (signaling) before connecting media")
        # Each tab has its own signaling session: bind to the first not yet bound
        # (two tabs of one user then get two tiles), else to the first.
        bound = {p.session_id for p in self.peers.values() if p.room_id == room_id and p.user_id == user_id}
        session = next((s for s in sessions if s.session_id not in bound), sessions[0])
        if getattr(session, "meeting_id", meeting_id) != meeting_id:
            raise Forbidden("the signaling session is in another meeting")
        self._check_limits(self.rooms.get(room_id), user_id, sessions)
        room = self.rooms.get(room_id)  # the limits may have closed its last peers, and with them it
        if room is None:
            room = self.rooms[room_id] = SfuRoom(room_id, meeting_id, self.clock.seconds())
        elif room.meeting_id is None:
            room.meeting_id = meeting_id
        now = self.clock.seconds()
        peer = SfuPeer(peer_id=self._make_peer_id(), room_id=room_id, user_id=user_id,
                       session_id=session.session_id, stream_id=session.peer_id,
                       created_at=now, last_activity=now,
                       local_candidates=deque())
        # Registered before open_peer so the events of its opening (candidates) find it.
        room.peers[peer.peer_id] = self.peers[peer.peer_id] = peer
        self.counters.peers_opened += 1
        try:
            answer_sdp = await self.engine.open_peer(room_id, peer.peer_id, offer_sdp)
        except Exception as e:
            if not peer.closed:
                self._forget(peer, R_OPEN_FAILED)
            self._close_in_engine(peer.peer_id)  # in case the engine made half of it
            if not room.peers and self.rooms.get(room_id) is room:
                del self.rooms[room_id]
            if isinstance(e, WeCompanyError):
                raise
            self.log.failure("SFU engine failed to open peer {peer_id}", Failure(), peer_id=peer.peer_id)
            raise InternalError("Failed to create the media connection")
        if peer.closed:  # left, removed or ended while it opened
            self._close_in_engine(peer.peer_id)
            raise PeerNotFound(peer.peer_id)
        self.log.info("SFU peer {peer_id} opened for user {user_id} in room {room_id}",
                      peer_id=peer.peer_id, user_id=user_id, room_id=room_id)
        peer.busy = False
        self._after_engine(peer)
        return {"peer_id": peer.peer_id, "answer_sdp": answer_sdp}

    def _check_limits(self, room, user_id, sessions) -> None:
        if room is not None:
            mine = [p for p in room.peers.values() if p.user_id == user_id]
            if len(mine) >= self.limits.max_peers_per_user:
                # A reloaded tab leaves its old connection behind until it idles out;
                # those bound to a signaling session that is gone make room first.
                live = {s.session_id for s in sessions}
                for old in mine:
                    if old.session_id not in live:
                        self._close(old, R_REPLACED)
                mine = [p for p in room.peers.values() if p.user_id == user_id]
                if len(mine) >= self.limits.max_peers_per_user:
                    raise RateLimited("too many media connections of this user in this room",
                                      retry_after=self.limits.session_grace)
            if len(room.peers) >= self.limits.max_peers_per_room:
                raise Conflict("the room has as many media connections as it can take")
        if len(self.peers) >= self.limits.max_peers:
            raise Unavailable("the media server is full")

    def add_candidate(self, peer_id, candidate, identity=None) -> Deferred:
        """Route 2: a browser ICE candidate for the engine. -> Deferred[None]."""
        return detached(Deferred.fromCoroutine(self._add_candidate(peer_id, candidate, identity)))

    async def _add_candidate(self, peer_id, candidate, identity):
        peer = self._peer(peer_id)
        if identity is not None and _identity_user(identity) != peer.user_id:
            raise Forbidden("the token belongs to another user")
        candidate = check_candidate(candidate)
        peer.remote_candidates += 1
        if peer.remote_candidates > self.limits.max_remote_candidates:
            raise RateLimited("too many ICE candidates for this connection")
        self.counters.candidates_received += 1
        try:
            await self.engine.add_candidate(peer.peer_id, candidate)
        except InvalidInput:
            raise  # the engine could not use it: the connection itself is fine
        except Exception as e:
            self._engine_failed(Failure(), peer, "add_candidate")
            if isinstance(e, WeCompanyError):
                raise
            raise InternalError("Failed to add the ICE candidate")

    def candidates(self, peer_id, identity=None) -> dict:
        """
        Route 3: the engine's candidates not yet handed out (each once), and
        whether its gathering is complete. -> ``{candidates, complete}``.
        """
        peer = self._callers_peer(peer_id, identity)
        batch = list(peer.local_candidates)
        peer.local_candidates.clear()
        self.counters.candidates_sent += len(batch)
        return {"candidates": batch, "complete": peer.gathering_complete}

    def pending_offer(self, peer_id, identity=None) -> str | None:
        """Route 4: the server's offer awaiting the browser's answer (the same until answered), or ``None``."""
        return self._callers_peer(peer_id, identity).pending_offer

    def answer_offer(self, peer_id, answer_sdp, identity=None) -> Deferred:
        """Route 5: the browser's answer (SDP or ``{type: "answer", sdp}``) to the pending offer. -> Deferred[None]."""
        return detached(Deferred.fromCoroutine(self._answer_offer(peer_id, answer_sdp, identity)))

    async def _answer_offer(self, peer_id, answer_sdp, identity):
        peer = self._callers_peer(peer_id, identity)
        answer_sdp = _check_sdp(answer_sdp, "answer", self.limits.max_sdp)
        if peer.pending_offer is None:
            raise Conflict("no offer is awaiting an answer on this connection")
        peer.pending_offer = None
        peer.busy = True
        try:
            await self.engine.apply_answer(peer.peer_id, answer_sdp)
        except Exception as e:
            self._engine_failed(Failure(), peer, "apply_answer")
            if isinstance(e, WeCompanyError):
                raise
            raise InternalError("Failed to apply the answer")
        if peer.closed:
            raise PeerNotFound(peer.peer_id)
        peer.busy = False
        peer.negotiated, peer.offered = peer.offered, ()
        self.counters.answers += 1
        self._request_keyframes(peer)
        self._after_engine(peer)

    def leave(self, room_id, user_id, identity=None) -> int:
        """
        Route 6: close the user's peers in the room. -> how many closed.

        With ``identity`` (a Bearer token) naming the user, every one of
        them. Without, only those whose signaling session is no longer in
        the room (the browser sends its WebSocket ``leave`` first), so that
        a stranger who knows a room id cannot cut a member off; those whose
        session is still there are marked, and close as soon as it goes
        (the WebSocket ``leave`` may arrive after this call).
        """
        room_id = _check_room_id(room_id)
        user_id = parse_user_id(user_id)
        room = self._room(room_id)
        mine = [p for p in room.peers.values() if p.user_id == user_id]
        if identity is not None:
            if _identity_user(identity) != user_id:
                raise Forbidden("the token belongs to another user")
            doomed = mine
        else:
            live = {s.session_id for s in self._sessions(room_id, user_id)}
            doomed = [p for p in mine if p.session_id not in live]
            for peer in mine:
                if peer.session_id in live:
                    peer.leave_requested = True
        for peer in doomed:
            self._close(peer, R_LEFT)
        return len(doomed)

    # -- the family's test-suite routes ---------------------------------------------
    def join_room(self, room_id, user_id) -> Deferred:
        """
        ``POST /room/:id/join``: the room's entry (made if new) for a live
        meeting's room, else :class:`NotFound`. -> Deferred[dict].
        """
        return Deferred.fromCoroutine(self._join_room(room_id, user_id))

    async def _join_room(self, room_id, user_id):
        room_id = _check_room_id(room_id)
        user_id = parse_user_id(user_id)
        meeting_id = await resolve(self.room_meeting(room_id))
        if meeting_id is None:
            raise NotFound("Room not found")
        room = self.rooms.get(room_id)
        if room is None:
            room = self.rooms[room_id] = SfuRoom(room_id, meeting_id, self.clock.seconds())
        return {"message": "Joined room", "user_id": str(user_id),
                "room": {"id": room.room_id, "meeting_id": str(meeting_id),
                         "created_at": self.format_time(room.created_at)}}

    def room_peers(self, room_id) -> dict:
        """``GET /room/:id/peers`` -> ``{room_id, peers, count}``."""
        room = self._room(_check_room_id(room_id))
        peers = [{"peer_id": p.peer_id, "user_id": str(p.user_id), "media_type": _media_type(p),
                  "status": p.state, "created_at": self.format_time(p.created_at),
                  "last_activity": self.format_time(p.last_activity)}
                 for p in room.peers.values()]
        return {"room_id": room.room_id, "peers": peers, "count": len(peers)}

    def room_stats(self, room_id) -> dict:
        """``GET /room/:id/stats``: peers and the streams published in the room."""
        room = self._room(_check_room_id(room_id))
        peers = list(room.peers.values())
        kinds = [kind for p in peers for kind in p.tracks.values()]
        sharing = 0
        for p in peers:
            session = self._bound_session(p)
            if session is not None and getattr(session, "screen_sharing", False):
                sharing += 1
        return {"room_id": room.room_id, "total_peers": len(peers),
                "connected_peers": sum(1 for p in peers if p.state == CONNECTED),
                "audio_streams": kinds.count("audio"), "video_streams": kinds.count("video"),
                "screen_shares": sharing}

    # -- for recordings and metrics ----------------------------------------------------
    def published_tracks(self, room_id) -> list[PublishedTrack]:
        """Every track published in the room now, publisher by publisher (empty for an unknown room)."""
        room = self.rooms.get(room_id)
        if room is None:
            return []
        return [PublishedTrack(p.peer_id, p.user_id, track_id, kind, p.stream_id)
                for p in room.peers.values() for track_id, kind in p.tracks.items()]

    def close_room(self, room_id, reason) -> int:
        """Close every peer of the room (``reason``, one of :data:`CLOSE_REASONS`). -> how many."""
        room = self.rooms.pop(room_id, None)
        if room is None:
            return 0
        peers = list(room.peers.values())
        for peer in peers:  # the room went first: nobody left in it is offered the others' leaving
            self._close(peer, reason)
        return len(peers)

    def rooms_of_meeting(self, meeting_id) -> list[str]:
        """The SFU rooms of a meeting (one, or none)."""
        return [room.room_id for room in self.rooms.values() if room.meeting_id == meeting_id]

    def gauges(self) -> SfuGauges:
        return SfuGauges(peers=len(self.peers),
                         connected=sum(1 for p in self.peers.values() if p.state == CONNECTED),
                         forwarded_streams=sum(len(p.negotiated) for p in self.peers.values()),
                         rooms=len(self.rooms))

    # -- IMediaEngineListener ------------------------------------------------------------
    def candidate(self, peer_id, candidate) -> None:
        peer = self.peers.get(peer_id)
        if peer is None:
            return
        if len(peer.local_candidates) >= self.limits.max_local_candidates:
            # The first candidates (host, then reflexive) are the useful ones: keep those.
            peer.candidates_dropped += 1
            self.counters.candidates_dropped += 1
            return
        peer.local_candidates.append(candidate)

    def gathering_complete(self, peer_id) -> None:
        peer = self.peers.get(peer_id)
        if peer is not None:
            peer.gathering_complete = True

    def connection_state(self, peer_id, state) -> None:
        peer = self.peers.get(peer_id)
        if peer is None or state not in STATES:
            return
        peer.state = state
        if state == CONNECTED:
            peer.disconnected_since = None
            if not peer.connected:
                peer.connected = True
                self._renegotiate(peer)  # every track of the others, in one offer
        elif state == DISCONNECTED:
            if peer.disconnected_since is None:
                peer.disconnected_since = self.clock.seconds()
        elif state in (FAILED, CLOSED):
            self._close(peer, R_FAILED if state == FAILED else R_CLOSED)

    def track_added(self, peer_id, track_id, kind) -> None:
        peer = self.peers.get(peer_id)
        if peer is None or kind not in KINDS or not isinstance(track_id, str) or track_id in peer.tracks:
            return
        if not 0 < len(track_id) <= _MAX_TRACK_ID or len(peer.tracks) >= self.limits.max_tracks_per_peer:
            self.log.warn("SFU peer {peer_id}: track {track_id!r} ignored (too many or bad id)",
                          peer_id=peer_id, track_id=track_id[:64])
            return
        peer.tracks[track_id] = kind
        peer.published += (ForwardedStream(peer.peer_id, track_id, kind, peer.stream_id),)
        if self._track_published is not None:
            try:
                self._track_published(peer.room_id, PublishedTrack(peer.peer_id, peer.user_id, track_id, kind,
                                                                   peer.stream_id))
            except Exception:
                self.log.failure("SFU: telling of track {track_id} failed", track_id=track_id[:64])
        self._renegotiate_others(peer)

    def track_ended(self, peer_id, track_id) -> None:
        peer = self.peers.get(peer_id)
        if peer is None or track_id not in peer.tracks:
            return
        del peer.tracks[track_id]
        peer.published = tuple(s for s in peer.published if s.track_id != track_id)
        self._renegotiate_others(peer)

    def recording_failed(self, recording_id, reason) -> None:
        self.log.warn("SFU recording {recording_id} failed: {reason}", recording_id=recording_id, reason=reason)
        if self._recording_failed is not None:
            self._recording_failed(recording_id, reason)

    def engine_lost(self, rooms) -> None:
        for room_id in list(rooms):
            room = self.rooms.pop(room_id, None)
            if room is None:
                continue
            self.log.warn("SFU room {room_id} lost with its engine ({count} peers)",
                          room_id=room_id, count=len(room.peers))
            for peer in list(room.peers.values()):
                # Gone with the engine: nothing to close there, nobody left here to tell.
                self._forget(peer, R_ENGINE_LOST)

    # -- IMeetingListener --------------------------------------------------------------
    def meeting_changed(self, meeting) -> None:
        if getattr(meeting, "status", None) in _ENDED_STATUSES:
            self._close_meeting(meeting.id, getattr(meeting, "room_id", None))

    def meeting_deleted(self, meeting_id) -> None:
        self._close_meeting(meeting_id, None)

    def participant_left(self, meeting_id, user_id, reason) -> None:
        why = R_REMOVED if reason == "removed" else R_LEFT
        for room in [r for r in self.rooms.values() if r.meeting_id == meeting_id]:
            for peer in [p for p in room.peers.values() if p.user_id == user_id]:
                self._close(peer, why)

    def _close_meeting(self, meeting_id, room_id) -> None:
        for room in [r for r in self.rooms.values() if r.meeting_id == meeting_id or r.room_id == room_id]:
            # The room goes first: nobody left in it is offered the others' leaving.
            del self.rooms[room.room_id]
            for peer in list(room.peers.values()):
                self._close(peer, R_MEETING_ENDED)

    # -- housekeeping ------------------------------------------------------------------
    def sweep(self) -> None:
        """Close peers that never connected, went idle, stayed disconnected, or lost their signaling session."""
        now = self.clock.seconds()
        limits = self.limits
        for peer in list(self.peers.values()):
            if peer.closed:
                continue
            if not peer.connected and now - peer.created_at >= limits.connect_timeout:
                self._close(peer, R_CONNECT_TIMEOUT)
            elif now - peer.last_activity >= limits.idle_timeout:
                self._close(peer, R_IDLE)
            elif peer.disconnected_since is not None and now - peer.disconnected_since >= limits.disconnected_grace:
                self._close(peer, R_DISCONNECTED)
            else:
                self._check_session(peer, now)
        for room in [r for r in self.rooms.values() if not r.peers]:
            # Rooms made by join_room that nobody connected to.
            if now - room.created_at >= limits.idle_timeout:
                del self.rooms[room.room_id]

    def _check_session(self, peer, now) -> None:
        try:
            sessions = self.members(peer.room_id, peer.user_id)
        except Exception:
            self.log.failure("SFU: listing the signaling sessions of room {room_id} failed", room_id=peer.room_id)
            return
        if any(s.session_id == peer.session_id for s in sessions):
            peer.session_gone_since = None
            return
        if peer.leave_requested:
            self._close(peer, R_LEFT)
        elif sessions:
            peer.session_gone_since = None  # the user is still in the room (a WebSocket reconnect)
        elif peer.session_gone_since is None:
            peer.session_gone_since = now
        elif now - peer.session_gone_since >= self.limits.session_grace:
            self._close(peer, R_SESSION_GONE)

    # -- negotiation -------------------------------------------------------------------
    def _streams_for(self, peer) -> tuple:
        """What ``peer`` should receive: every track of the room's other peers."""
        room = self.rooms.get(peer.room_id)
        if room is None:
            return ()
        return tuple(stream for other in room.peers.values() if other is not peer and not other.closed
                     for stream in other.published)

    def _renegotiate_others(self, publisher) -> None:
        room = self.rooms.get(publisher.room_id)
        if room is None:
            return
        for other in list(room.peers.values()):
            if other is not publisher:
                self._renegotiate(other)

    def _renegotiate(self, peer) -> None:
        """Offer ``peer`` its current streams now, or as soon as its outstanding offer is answered."""
        if peer.closed or not peer.connected or self.stopping:
            return
        if peer.busy or peer.pending_offer is not None:
            peer.reoffer = True
            return
        streams = self._streams_for(peer)
        if streams == peer.negotiated:
            return  # nothing changed for it (a track came and went while it was busy)
        peer.busy = True
        peer.reoffer = False
        peer.offered = streams
        try:
            d = self.engine.renegotiate(peer.peer_id, streams)
        except Exception:
            self._engine_failed(Failure(), peer, "renegotiate")
            return
        d.addCallbacks(self._offer_made, self._engine_failed, callbackArgs=(peer,),
                       errbackArgs=(peer, "renegotiate"))
        d.addErrback(lambda f: self.log.failure("SFU: after renegotiate", f))

    def _offer_made(self, offer_sdp, peer) -> None:
        if peer.closed:
            return
        if isinstance(offer_sdp, str) and len(offer_sdp) > self.limits.max_offer_sdp:
            self.log.info("SFU peer {peer_id}: its offer has grown to {size} bytes (publishers came and went); "
                          "closing it so the browser reconnects afresh", peer_id=peer.peer_id, size=len(offer_sdp))
            peer.busy = False
            self._close(peer, R_SDP_LIMIT)
            return
        peer.busy = False
        peer.pending_offer = offer_sdp
        self.counters.offers += 1

    def _after_engine(self, peer) -> None:
        """The engine is done with ``peer``: a change that waited for it gets its offer."""
        if peer.reoffer and not peer.closed:
            peer.reoffer = False
            self._renegotiate(peer)

    def _request_keyframes(self, answerer) -> None:
        room = self.rooms.get(answerer.room_id)
        if room is None:
            return
        for publisher in list(room.peers.values()):
            if publisher is not answerer and "video" in publisher.tracks.values():
                self._request_keyframe(publisher)

    def _request_keyframe(self, publisher) -> None:
        """Ask ``publisher`` for a keyframe now, or once at the end of ``keyframe_interval`` after the last ask."""
        if publisher.closed or publisher.keyframe_call is not None or self.stopping:
            return
        now = self.clock.seconds()
        if publisher.keyframe_at is not None and now - publisher.keyframe_at < self.limits.keyframe_interval:
            publisher.keyframe_call = self.clock.callLater(
                publisher.keyframe_at + self.limits.keyframe_interval - now, self._folded_keyframe, publisher)
            return
        publisher.keyframe_at = now
        self.counters.keyframes_requested += 1
        try:
            d = self.engine.request_keyframe(publisher.peer_id)
        except Exception:
            d = Deferred()
            d.errback()
        d.addErrback(self._keyframe_failed, publisher)

    def _folded_keyframe(self, publisher) -> None:
        publisher.keyframe_call = None
        self._request_keyframe(publisher)

    def _keyframe_failed(self, failure, publisher) -> None:
        # Best effort: a lost keyframe request is not a broken connection, unless the engine has no such peer.
        if failure.check(PeerNotFound):
            self._close(publisher, R_ENGINE_GONE)
        else:
            self.counters.engine_errors += 1
            self.log.failure("SFU: keyframe request to {peer_id} failed", failure, peer_id=publisher.peer_id)

    def _engine_failed(self, failure, peer, operation) -> None:
        """An engine call for ``peer`` failed: it closes here (never left waiting with a flag set)."""
        peer.busy = False
        if peer.closed:
            return
        if failure.check(PeerNotFound):
            self._close(peer, R_ENGINE_GONE)
        else:
            self.counters.engine_errors += 1
            self.log.failure("SFU engine {operation} failed for peer {peer_id}", failure,
                             operation=operation, peer_id=peer.peer_id)
            self._close(peer, R_ENGINE_ERROR)

    # -- closing -------------------------------------------------------------------------
    def _close(self, peer, reason) -> None:
        """Close ``peer`` here and in the engine; what it published leaves every other peer."""
        if peer.closed:
            return
        had_tracks = bool(peer.tracks)
        self._forget(peer, reason)
        self._close_in_engine(peer.peer_id)
        self.log.info("SFU peer {peer_id} closed ({reason})", peer_id=peer.peer_id, reason=reason)
        room = self.rooms.get(peer.room_id)
        if room is None:
            return
        if had_tracks:
            for other in list(room.peers.values()):
                self._renegotiate(other)
        if not room.peers:
            del self.rooms[room.room_id]

    def _forget(self, peer, reason) -> None:
        peer.closed = True
        peer.pending_offer = None
        peer.tracks = {}
        peer.published = ()
        if peer.keyframe_call is not None:
            if peer.keyframe_call.active():
                peer.keyframe_call.cancel()
            peer.keyframe_call = None
        peer.local_candidates.clear()
        self.peers.pop(peer.peer_id, None)
        room = self.rooms.get(peer.room_id)
        if room is not None:
            room.peers.pop(peer.peer_id, None)
        if reason is not None:
            self.counters.peers_closed[reason] = self.counters.peers_closed.get(reason, 0) + 1

    def _close_in_engine(self, peer_id) -> None:
        try:
            d = self.engine.close_peer(peer_id)
        except Exception:
            self.log.failure("SFU engine close_peer({peer_id}) raised", peer_id=peer_id)
            return
        d.addErrback(lambda f: self.log.failure("SFU engine close_peer({peer_id}) failed", f, peer_id=peer_id))

    # -- lookups ---------------------------------------------------------------------------
    def check_caller(self, peer_id, identity) -> None:
        """
        A call on ``peer_id`` that carries a Bearer token (``identity``) must
        come from the peer's own user (:class:`Forbidden`); without one the
        unguessable peer id is what authorises it. Unknown peers are
        :class:`PeerNotFound`. (The routes on a peer take ``identity`` and
        check it so themselves.)
        """
        self._callers_peer(peer_id, identity)

    def _callers_peer(self, peer_id, identity) -> SfuPeer:
        peer = self._peer(peer_id)
        if identity is not None and _identity_user(identity) != peer.user_id:
            raise Forbidden("this SFU connection is another user's")
        return peer

    def _peer(self, peer_id) -> SfuPeer:
        """The open peer ``peer_id`` (an HTTP call on it is activity), else :class:`PeerNotFound`."""
        peer = self.peers.get(peer_id) if isinstance(peer_id, str) else None
        if peer is None:
            raise PeerNotFound(short_peer_id(peer_id))
        peer.last_activity = self.clock.seconds()
        return peer

    def _room(self, room_id) -> SfuRoom:
        room = self.rooms.get(room_id)
        if room is None:
            raise NotFound("Room not found")
        return room

    def _sessions(self, room_id, user_id) -> list:
        return list(self.members(room_id, user_id))

    def _bound_session(self, peer):
        try:
            sessions = self.members(peer.room_id, peer.user_id)
        except Exception:
            return None
        return next((s for s in sessions if s.session_id == peer.session_id), None)


def _media_type(peer) -> str:
    kinds = set(peer.tracks.values())
    if kinds == {"audio", "video"}:
        return "audio_video"
    return next(iter(kinds)) if kinds else "none"
