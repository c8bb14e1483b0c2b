"""
Rooms, peers and the forwarding of encoded media between them (asyncio, aiortc).

One :class:`~aiortc.RTCPeerConnection` per peer carries both directions: the
browser's own audio and video transceivers (its first offer) publish, and one
``sendonly`` transceiver per :class:`ForwardedTrack` (added by
:meth:`Forwarder.renegotiate`) subscribes. Nothing is decoded: each published
track's receiver hands assembled encoded frames to :class:`PublishedTrack`,
which fans them out as ``av.Packet`` objects to bounded per-subscriber queues
that the subscribers' senders packetize again (see :mod:`.aiortc_internals`).

Published tracks end (``track_ended``) when their peer closes or its
connection fails or closes, when the receiver stops (RTCP BYE), or when no
frame has arrived for :data:`RTP_TIMEOUT` seconds; if media comes back later
the track is announced again with ``track_added``.

Local ICE candidates are all in the answer/offer SDP (aiortc gathers before
``setLocalDescription`` returns); ``gathering_complete`` is emitted right
after the reply. Only ``host_addresses`` are gathered on (plus STUN/TURN from
``ice_servers``); ``public_address`` replaces the host address in the SDP.
"""

from __future__ import annotations

import asyncio
import fractions
import re
import sys
import time
from collections import deque
from typing import Any, Callable, Optional

import attrs
import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription, candidate_from_sdp

from wecompany.errors import InvalidInput, PeerNotFound, Unavailable
from wecompany.sfu import aiortc_internals
from wecompany.sfu.ports import PortRange
from wecompany.sfu.recording import Recordings

RTP_TIMEOUT = 10.0
KEYFRAME_REQUEST_INTERVAL = 0.5
QUEUE_LIMIT = {"audio": 50, "video": 60}  # about 1-2 s of frames

Emit = Callable[[dict], None]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def is_keyframe(mime_type: str, data: bytes) -> bool:
    """Whether an encoded frame (as the jitter buffer assembles it) can start decoding."""
    mime = mime_type.lower()
    if mime == "video/vp8":
        # RFC 6386 9.1: bit 0 of the frame tag is 0 for a key frame.
        return len(data) > 0 and not (data[0] & 0x01)
    if mime == "video/h264":
        # Annex B stream: an IDR slice (NAL type 5) or a parameter set.
        position = data.find(b"\x00\x00\x01")
        while position != -1 and position + 3 < len(data):
            if data[position + 3] & 0x1F in (5, 7):
                return True
            position = data.find(b"\x00\x00\x01", position + 3)
        return False
    return True


def announce_address(sdp: str, host_addresses: list[str], public_address: Optional[str]) -> str:
    """
    Replace the host addresses by ``public_address`` in candidate and
    connection lines (with no ``host_addresses`` given, the address of every
    host candidate).
    """
    if not public_address:
        return sdp
    hosts = set(host_addresses)
    if not hosts:
        for line in sdp.split("\r\n"):
            fields = line.split(" ")
            if line.startswith("a=candidate:") and len(fields) > 7 and fields[6:8] == ["typ", "host"]:
                hosts.add(fields[4])
    lines = []
    for line in sdp.split("\r\n"):
        if line.startswith("a=candidate:"):
            fields = line.split(" ")
            if len(fields) > 4 and fields[4] in hosts:
                fields[4] = public_address
            line = " ".join(fields)
        elif line.startswith("c=IN IP4 "):
            if line[len("c=IN IP4 "):] in hosts:
                line = "c=IN IP4 " + public_address
        lines.append(line)
    return "\r\n".join(lines)


@attrs.frozen
class NegotiatedTables:
    """Codecs and header extensions (per kind) of the first negotiation with a peer."""

    codecs: dict[str, list]
    header_extensions: dict[str, list]

    @classmethod
    def from_sdp(cls, sdp: str) -> "NegotiatedTables":
        codecs: dict[str, list] = {}
        extensions: dict[str, list] = {}
        for media in SessionDescription.parse(sdp).media:
            if media.kind not in ("audio", "video"):
                continue
            known = codecs.setdefault(media.kind, [])
            for codec in media.rtp.codecs:
                if codec.payloadType not in {c.payloadType for c in known}:
                    known.append(codec)
            seen = extensions.setdefault(media.kind, [])
            for extension in media.rtp.headerExtensions:
                if extension.id not in {e.id for e in seen}:
                    seen.append(extension)
        return cls(codecs=codecs, header_extensions=extensions)

    def codec_like(self, kind: str, codec: Any) -> Optional[Any]:
        """This peer's codec equal to ``codec`` (same type and parameters), whatever its payload type."""
        for candidate in self.codecs.get(kind, []):
            if (candidate.mimeType.lower() == codec.mimeType.lower()
                    and candidate.clockRate == codec.clockRate
                    and candidate.parameters == codec.parameters):
                return candidate
        return None


class ForwardedTrack(MediaStreamTrack):
    """
    What one subscriber's sender reads: the encoded frames of one published
    track as ``av.Packet`` objects, through a bounded queue. When full, the
    oldest audio packet is dropped; for video the queue is emptied and
    frames are skipped until the next keyframe (a keyframe is requested).
    """

    def __init__(self, source: "PublishedTrack", stream_id: str) -> None:
        super().__init__()
        self.kind = source.kind
        self._id = source.track_id
        self.source = source
        self.stream_id = stream_id
        self.dropped = 0
        self.forwarded = 0
        self._limit = QUEUE_LIMIT[self.kind]
        self._queue: deque = deque()
        self._wakeup: Optional[asyncio.Future] = None
        self._reading = False
        self._need_keyframe = self.kind == "video"

    def push(self, packet: av.Packet, keyframe: bool) -> None:
        if self.readyState != "live" or not self._reading:
            return
        if self._need_keyframe:
            if not keyframe:
                self.source.request_keyframe()
                return
            self._need_keyframe = False
        if len(self._queue) >= self._limit:
            self.dropped += 1
            if self.kind == "video":
                self._queue.clear()
                if not keyframe:
                    self._need_keyframe = True
                    self.source.request_keyframe()
                    return
            else:
                self._queue.popleft()
        self._queue.append(packet)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def recv(self) -> av.Packet:
        if not self._reading:
            self._reading = True
            if self.kind == "video":
                self.source.request_keyframe()
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup
        self.forwarded += 1
        return self._queue.popleft()

    def stop(self) -> None:
        super().stop()
        self.source.subscribers.discard(self)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)


class PublishedTrack:
    """One track a peer publishes, fanned out to its :class:`ForwardedTrack` s."""

    def __init__(self, peer: "Peer", transceiver: Any, track_id: str, kind: str,
                 media_ssrc: Optional[int]) -> None:
        self.peer = peer
        self.transceiver = transceiver
        self.track_id = track_id
        self.kind = kind
        self.media_ssrc = media_ssrc
        self.codec: Optional[Any] = None
        self.live = False
        self.last_frame = 0.0
        self.frames = 0
        self.bytes = 0
        self.subscribers: set[ForwardedTrack] = set()
        self._last_keyframe_request = 0.0

    def on_frame(self, codec: Any, data: bytes, timestamp: int) -> None:
        self.last_frame = time.monotonic()
        self.frames += 1
        self.bytes += len(data)
        self.codec = codec
        if not self.live:
            self.live = True
            self.peer.forwarder.emit({"event": "track_added", "peer_id": self.peer.peer_id,
                                      "track_id": self.track_id, "kind": self.kind})
        recordings = self.peer.forwarder.recordings
        recorded = self.peer.room in recordings.by_room
        if not self.subscribers and not recorded:
            return
        keyframe = self.kind == "audio" or is_keyframe(codec.mimeType, data)
        if recorded:
            recordings.on_frame(self.peer.room, self, codec, data, timestamp, keyframe)
        if not self.subscribers:
            return
        packet = av.Packet(data)
        packet.pts = timestamp
        packet.time_base = fractions.Fraction(1, codec.clockRate)
        for subscriber in list(self.subscribers):
            subscriber.push(packet, keyframe)

    def end(self) -> None:
        if self.live:
            self.live = False
            self.peer.forwarder.recordings.on_track_end(self.peer.room, self)
            self.peer.forwarder.emit({"event": "track_ended", "peer_id": self.peer.peer_id,
                                      "track_id": self.track_id})

    def request_keyframe(self) -> None:
        """Send PLI to the publisher (at most every KEYFRAME_REQUEST_INTERVAL)."""
        if self.kind != "video":
            return
        now = time.monotonic()
        if now - self._last_keyframe_request < KEYFRAME_REQUEST_INTERVAL:
            return
        ssrc = self.media_ssrc
        if ssrc is None:
            sources = self.transceiver.receiver.getSynchronizationSources()
            if not sources:
                return
            ssrc = max(sources, key=lambda s: s.timestamp).source
        self._last_keyframe_request = now
        self.peer.forwarder.spawn(aiortc_internals.send_pli(self.transceiver.receiver, ssrc))


@attrs.define
class Subscription:
    transceiver: Any
    track: ForwardedTrack


class Peer:
    """One browser connection: publishes its own tracks, receives others' forwarded ones."""

    def __init__(self, forwarder: "Forwarder", room: str, peer_id: str, pc: RTCPeerConnection) -> None:
        self.forwarder = forwarder
        self.room = room
        self.peer_id = peer_id
        self.pc = pc
        self.published: dict[str, PublishedTrack] = {}
        self.subscriptions: dict[tuple[str, str], Subscription] = {}
        self.tables: Optional[NegotiatedTables] = None
        self.ready = asyncio.Event()
        self.lock = asyncio.Lock()
        self.closed = False

    def end_published(self) -> None:
        for track in self.published.values():
            track.end()
            for subscriber in list(track.subscribers):
                subscriber.stop()


def _primary_ssrcs(offer_sdp: str) -> dict[str, int]:
    """mid -> the media (not RTX) SSRC the peer announced, for PLI."""
    found = {}
    for media in SessionDescription.parse(offer_sdp).media:
        if media.ssrc_group:
            for group in media.ssrc_group:
                if group.semantic == "FID" and group.items:
                    found[media.rtp.muxId] = int(group.items[0])
        if media.rtp.muxId not in found and media.ssrc:
            found[media.rtp.muxId] = media.ssrc[0].ssrc
    return found


_CANDIDATE_PREFIX = re.compile(r"^(a=)?candidate:")


class Forwarder:
    """
    All rooms and peers of one worker process. Each public coroutine is one
    op of the wire protocol (wecompany/sfu/worker.py); events go to ``emit``.
    """

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.peers: dict[str, Peer] = {}
        self.host_addresses: list[str] = ["127.0.0.1"]
        self.public_address: Optional[str] = None
        self.ice_servers: list[RTCIceServer] = []
        self.max_peers = 100
        self.configured = False
        self.recordings = Recordings(emit)
        self._tasks: set[asyncio.Task] = set()
        self._watchdog: Optional[asyncio.Task] = None

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log(f"sfu: background task failed: {task.exception()!r}")

    def _peer(self, peer_id: Any) -> Peer:
        if not isinstance(peer_id, str):
            raise InvalidInput("peer_id must be a string")
        peer = self.peers.get(peer_id)
        if peer is None or peer.pc.signalingState == "closed":
            # Closed here (its connection failed or ended) before the daemon heard of it: gone, not a fault.
            raise PeerNotFound(peer_id)
        return peer

    def _sdp(self, pc: RTCPeerConnection) -> str:
        return announce_address(pc.localDescription.sdp, self.host_addresses, self.public_address)

    # -- ops

    async def configure(self, host_addresses: list, public_address: Optional[str] = None,
                        udp_ports: Optional[list] = None, ice_servers: Optional[list] = None,
                        max_peers: int = 100) -> dict:
        # An empty list: every interface but loopback (aioice's own choice).
        if not isinstance(host_addresses, list) or not all(isinstance(a, str) for a in host_addresses):
            raise InvalidInput("host_addresses must be a list of strings")
        if public_address is not None and not isinstance(public_address, str):
            raise InvalidInput("public_address must be a string or null")
        if not isinstance(max_peers, int) or max_peers < 1:
            raise InvalidInput("max_peers must be a positive integer")
        servers = []
        for server in ice_servers or []:
            if not isinstance(server, dict) or not isinstance(server.get("urls"), list):
                raise InvalidInput("ice_servers entries need urls: [str]")
            servers.append(RTCIceServer(urls=server["urls"], username=server.get("username"),
                                        credential=server.get("credential")))
        if udp_ports is not None:
            if not (isinstance(udp_ports, list) and len(udp_ports) == 2
                    and all(isinstance(p, int) and not isinstance(p, bool) for p in udp_ports)
                    and 0 < udp_ports[0] <= udp_ports[1] <= 65535):
                raise InvalidInput("udp_ports must be [low, high]")
            # Every host candidate's socket is bound in the range (wecompany.sfu.ports).
            PortRange(*udp_ports).install(asyncio.get_running_loop())
        self.host_addresses = list(host_addresses)
        self.public_address = public_address
        self.ice_servers = servers
        self.max_peers = max_peers
        if self.host_addresses:
            aiortc_internals.restrict_host_addresses(self.host_addresses)
        self.configured = True
        if self._watchdog is None:
            self._watchdog = asyncio.ensure_future(self._watch_rtp())
        return {}

    async def open_peer(self, room: str, peer_id: str, offer_sdp: str) -> dict:
        if not self.configured:
            raise InvalidInput("configure first")
        if not all(isinstance(v, str) for v in (room, peer_id, offer_sdp)):
            raise InvalidInput("room, peer_id and offer_sdp must be strings")
        if peer_id in self.peers:
            raise InvalidInput(f"peer already open: {peer_id}")
        if len(self.peers) >= self.max_peers:
            raise Unavailable("worker has max_peers peers")
        try:
            ssrcs = _primary_ssrcs(offer_sdp)
        except Exception as e:  # aiortc's parser raises whatever the text trips
            raise InvalidInput(f"bad offer: {e!r}") from e
        if not any(m.kind in ("audio", "video") for m in SessionDescription.parse(offer_sdp).media):
            raise InvalidInput("bad offer: no audio or video section")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self.ice_servers))
        peer = Peer(self, room, peer_id, pc)
        self.peers[peer_id] = peer
        try:
            pc.on("track", lambda track: self._on_track(peer, track, ssrcs))
            pc.on("connectionstatechange", lambda: self._on_state(peer))
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            except Exception as e:  # aiortc raises ValueError, OperationError, ... for SDP it refuses
                raise InvalidInput(f"bad offer: {e!r}") from e
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
            peer.tables = NegotiatedTables.from_sdp(pc.localDescription.sdp)
        except BaseException:
            self.peers.pop(peer_id, None)
            await pc.close()
            raise
        finally:
            peer.ready.set()
        asyncio.get_running_loop().call_soon(
            self.emit, {"event": "gathering_complete", "peer_id": peer_id})
        return {"answer_sdp": self._sdp(pc)}

    def _on_track(self, peer: Peer, track: Any, ssrcs: dict[str, int]) -> None:
        transceiver = next(t for t in peer.pc.getTransceivers() if t.receiver.track is track)
        published = PublishedTrack(peer, transceiver, track.id, track.kind, ssrcs.get(transceiver.mid))
        peer.published[track.id] = published
        aiortc_internals.install_receiver_tap(transceiver.receiver, published.on_frame, published.end)

    def _on_state(self, peer: Peer) -> None:
        if peer.closed:
            return
        state = peer.pc.connectionState
        self.emit({"event": "connection_state", "peer_id": peer.peer_id, "state": state})
        if state in ("failed", "closed"):
            peer.end_published()

    async def add_candidate(self, peer_id: str, candidate: Optional[dict]) -> dict:
        peer = self._peer(peer_id)
        await peer.ready.wait()
        if candidate is None or not candidate.get("candidate"):
            await peer.pc.addIceCandidate(None)
            return {}
        if not isinstance(candidate, dict) or not isinstance(candidate.get("candidate"), str):
            raise InvalidInput("candidate must be an object with a candidate string")
        try:
            ice = candidate_from_sdp(_CANDIDATE_PREFIX.sub("", candidate["candidate"]))
        except (ValueError, IndexError) as e:
            raise InvalidInput(f"bad candidate: {e}") from e
        ice.sdpMid = candidate.get("sdpMid")
        ice.sdpMLineIndex = candidate.get("sdpMLineIndex")
        if ice.sdpMid is None and ice.sdpMLineIndex is None:
            ice.sdpMLineIndex = 0
        await peer.pc.addIceCandidate(ice)
        return {}

    async def renegotiate(self, peer_id: str, streams: list) -> dict:
        peer = self._peer(peer_id)
        if not isinstance(streams, list):
            raise InvalidInput("streams must be a list")
        wanted: dict[tuple[str, str], dict] = {}
        for stream in streams:
            if not isinstance(stream, dict) or not all(
                    isinstance(stream.get(k), str) for k in ("publisher_peer_id", "track_id", "kind", "stream_id")):
                raise InvalidInput("each stream needs publisher_peer_id, track_id, kind, stream_id")
            wanted[(stream["publisher_peer_id"], stream["track_id"])] = stream
        await peer.ready.wait()
        async with peer.lock:
            if peer.pc.signalingState != "stable":
                raise InvalidInput(f"an offer is pending ({peer.pc.signalingState})")
            for key in [k for k in peer.subscriptions if k not in wanted]:
                await self._unsubscribe(peer, key)
            for key, stream in wanted.items():
                if key not in peer.subscriptions:
                    self._subscribe(peer, key, stream)
            offer = await aiortc_internals.create_offer_with(
                peer.pc, peer.tables.codecs, peer.tables.header_extensions)
            await peer.pc.setLocalDescription(offer)
        return {"offer_sdp": self._sdp(peer.pc)}

    def _subscribe(self, peer: Peer, key: tuple[str, str], stream: dict) -> None:
        publisher = self.peers.get(key[0])
        source = publisher.published.get(key[1]) if publisher else None
        if publisher is None or source is None or publisher.room != peer.room or publisher is peer:
            log(f"sfu: {peer.peer_id}: no track {key} to forward in room {peer.room}")
            return
        codec = source.codec
        if codec is None and publisher.tables is not None:
            # No frame yet: the first codec of our answer is the one it sends.
            codec = next((c for c in publisher.tables.codecs.get(source.kind, [])
                          if not c.mimeType.lower().endswith("/rtx")), None)
        mine = peer.tables.codec_like(source.kind, codec) if codec is not None else None
        if mine is None:
            log(f"sfu: {peer.peer_id}: cannot receive {key} ({codec and codec.mimeType})")
            return
        track = ForwardedTrack(source, stream["stream_id"])
        transceiver = peer.pc.addTransceiver(track, direction="sendonly")
        aiortc_internals.set_stream_id(transceiver.sender, stream["stream_id"])
        aiortc_internals.on_keyframe_request(transceiver.sender, source.request_keyframe)
        preferences = [c for c in RTCRtpSender.getCapabilities(source.kind).codecs
                       if c.mimeType.lower() == mine.mimeType.lower() and c.parameters == mine.parameters][:1]
        preferences += [c for c in RTCRtpSender.getCapabilities(source.kind).codecs
                        if c.mimeType.lower().endswith("/rtx")]
        transceiver.setCodecPreferences(preferences)
        source.subscribers.add(track)
        peer.subscriptions[key] = Subscription(transceiver, track)

    async def _unsubscribe(self, peer: Peer, key: tuple[str, str]) -> None:
        subscription = peer.subscriptions.pop(key)
        subscription.track.stop()
        subscription.transceiver.direction = "inactive"
        # Sends RTCP BYE: an aiortc subscriber's track ends on it.
        await subscription.transceiver.sender.stop()

    async def apply_answer(self, peer_id: str, answer_sdp: str) -> dict:
        peer = self._peer(peer_id)
        if not isinstance(answer_sdp, str):
            raise InvalidInput("answer_sdp must be a string")
        async with peer.lock:
            if peer.pc.signalingState != "have-local-offer":
                raise InvalidInput("no offer is pending")
            try:
                await peer.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
            except Exception as e:  # as for offers
                raise InvalidInput(f"bad answer: {e!r}") from e
        return {}

    async def request_keyframe(self, peer_id: str) -> dict:
        peer = self._peer(peer_id)
        for track in peer.published.values():
            track.request_keyframe()
        return {}

    async def close_peer(self, peer_id: str) -> dict:
        if not isinstance(peer_id, str):
            raise InvalidInput("peer_id must be a string")
        peer = self.peers.pop(peer_id, None)
        if peer is None:
            return {}
        peer.closed = True
        peer.end_published()
        for subscription in peer.subscriptions.values():
            subscription.track.stop()
        peer.subscriptions.clear()
        await peer.pc.close()
        return {}

    async def stats(self) -> dict:
        """``packets``/``bytes``: encoded frames and their bytes received from publishers."""
        tracks = [t for p in self.peers.values() for t in p.published.values()]
        return {
            "peers": len(self.peers),
            "connected": sum(1 for p in self.peers.values() if p.pc.connectionState == "connected"),
            "streams_in": sum(1 for t in tracks if t.live),
            "streams_out": sum(len(p.subscriptions) for p in self.peers.values()),
            "packets": sum(t.frames for t in tracks),
            "bytes": sum(t.bytes for t in tracks),
        }

    async def start_recording(self, room: str, recording_id: str, path: str) -> dict:
        """Record every track published in ``room`` from now on (see :mod:`.recording`)."""
        tracks = [t for p in self.peers.values() if p.room == room for t in p.published.values() if t.live]
        await self.recordings.start(room, recording_id, path, tracks)
        return {}

    async def stop_recording(self, recording_id: str) -> dict:
        """Finish the file -> ``{duration, size, tracks, dropped}`` (``failed`` too if writing failed)."""
        return await self.recordings.stop(recording_id)

    async def close(self) -> None:
        """Finish the recordings, then close every peer (shutdown, EOF, SIGTERM)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        await self.recordings.close()
        for peer_id in list(self.peers):
            await self.close_peer(peer_id)

    async def _watch_rtp(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for peer in list(self.peers.values()):
                for track in peer.published.values():
                    if track.live and now - track.last_frame > RTP_TIMEOUT:
                        track.end()
