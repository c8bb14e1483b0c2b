"""
SFU benchmark: synthetic 640x360 30 fps H.264 publishers in rooms where
everyone subscribes to everyone, forwarded by a real SFU media worker
(``python -m wecompany.sfu.worker``), against a pure packet forwarder
(``bench/sfu_baseline.py``) carrying the same streams in the same run.

    python bench/sfu.py            # rooms of 2, 3, 4, ... until one fails  (~5 min)
    python bench/sfu.py --quick    # rooms of 2 and 3, short windows         (< 30 s)

Worker-direct: this script speaks the worker's wire protocol itself (stdin/
stdout JSON lines, as the daemon does; the domain's part is played by hand
as in tests/sfu/sfu_clients.py, whose ``Worker`` and ``encode_clip`` it
imports). The clients are aiortc peer connections in ``--procs`` forked
processes (default 1: on 2 cores, one core for the worker, one for the
clients). They never encode or decode:

- each publisher loops a 2 s clip encoded once at start (libx264 baseline,
  ultrafast, zerolatency, 500 kbit/s, a keyframe every second), handed to
  aiortc's sender as ``av.Packet`` objects; before each frame it puts an H.264
  SEI NAL unit (user data unregistered, our UUID) holding the publisher's
  index, the frame's sequence number and its send time (``perf_counter_ns``,
  CLOCK_MONOTONIC, comparable across processes on one machine). The SFU
  forwards NAL units unchanged, so the stamp arrives with the frame;
- each subscriber's receivers get the SFU's own receive tap
  (``wecompany.sfu.aiortc_internals.install_receiver_tap``): the jitter
  buffer's assembled frames are counted (by stamp: which frames of which
  publisher arrived), never decoded;
- latency is taken per frame at the RTP level, when the subscriber receives
  the last packet of the frame (marker bit) after SRTP decryption, minus the
  stamp: one hop publisher -> worker -> subscriber, without the subscriber's
  own jitter buffer (a browser renders on the marker; aiortc's jitter buffer
  releases a frame only when the next one starts).

Figures, per room size N (N*(N-1) forwarded video streams), each with the
steal time and other processes' CPU during its window: the worker's CPU
(``/proc/<pid>/stat``, percent of one core) and **CPU per forwarded stream**
(target <= 1.5 %); frames sent, lost (any frame of a publisher sent in the
window that some subscriber did not get); **latency per hop** p50/p99/max
(target p99 < 20 ms); the clients' CPU and send lateness (when they fall
behind, the room is client-limited, not worker-limited). Rooms grow until
a frame is lost, the worker reaches ~95 % of a core, the clients cannot
keep 30 fps, or ``--max-n``: **the largest room one core serves with no
frame loss** is the last N that held.

The baseline runs at each N right after the SFU room (the same clip, stamps,
pacing and counting, sent as plain RTP over UDP): ``plain`` forwards each
packet unchanged, ``srtp`` decrypts once and encrypts per subscriber as an
SFU must (see bench/sfu_baseline.py for exactly what it does and does not).

``--daemon`` (on by default in the full run) then runs one room of 3 through
the real daemon's HTTP routes (accounts, REST join, signaling WebSocket,
``/api/v1/webrtc`` answer/offer/ice polls, as the browser does) and reports
frames and latency there: it shows that the whole path works; its CPU is the
daemon's process tree (daemon + worker).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import fractions
import json
import math
import os
import socket
import sys
import time

import common
from common import fmt, percentile, table, verdict

from tests.sfu import sfu_clients  # noqa: E402  (common put the repository on sys.path)

import av  # noqa: E402
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription  # noqa: E402
from aiortc.codecs.h264 import H264Encoder  # noqa: E402
from aiortc.rtp import RtpPacket  # noqa: E402

from wecompany.sfu import aiortc_internals  # noqa: E402
import sfu_baseline  # noqa: E402

FPS = sfu_clients.FPS
CLOCK = 90000
TARGET_CPU_PER_STREAM = 1.5   # % of one core
TARGET_P99_MS = 20.0
CPU_LIMIT = 95.0              # % of one core: the room no longer "fits"
FPS_KEPT = 0.95               # publishers below this share of 30 fps: client-limited

# -- the stamp (an H.264 SEI NAL unit) ------------------------------------------------------------

STAMP_UUID = bytes.fromhex("57656343 6f6d7061 6e795346 55a1b2c3".replace(" ", ""))
# payload: 16 hex digits send time, 8 hex digits sequence, 4 hex digits publisher (ASCII:
# never a zero byte, so no start code can appear inside it)
STAMP_LEN = 16 + 8 + 4


def stamp_nal(publisher: int, seq: int, t_ns: int) -> bytes:
    body = STAMP_UUID + b"%016x%08x%04x" % (t_ns, seq & 0xFFFFFFFF, publisher)
    return b"\x00\x00\x00\x01\x06\x05" + bytes([len(body)]) + body + b"\x80"


def read_stamp(data: bytes, start: int = 0):
    """(publisher, seq, send ns) from the first stamp in ``data``, or None."""
    i = data.find(STAMP_UUID, start)
    if i < 0 or len(data) < i + 16 + STAMP_LEN:
        return None
    s = data[i + 16:i + 16 + STAMP_LEN]
    try:
        return int(s[24:28], 16), int(s[16:24], 16), int(s[:16], 16)
    except ValueError:
        return None


class Window:
    """The measurement window, in perf_counter_ns; nothing is recorded before it is set."""

    def __init__(self) -> None:
        self.t0 = math.inf
        self.t1 = math.inf

    def __contains__(self, t: int) -> bool:
        return self.t0 <= t < self.t1


# -- client side (runs in the client processes) -----------------------------------------------------

class Publisher:
    """Paces a pre-encoded clip at FPS and stamps each frame."""

    def __init__(self, index: int, clip: list[bytes]) -> None:
        self.index = index
        self.clip = clip
        self.sent = 0
        self.sent_at = array.array("q")
        self.late_ms = array.array("d")
        self._start = None

    async def next_frame(self) -> tuple[int, bytes]:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.sent / FPS
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self.late_ms.append(max(0.0, time.monotonic() - due) * 1000)
        seq = self.sent
        now = time.perf_counter_ns()
        self.sent_at.append(now)
        self.sent += 1
        return seq, stamp_nal(self.index, seq, now) + self.clip[seq % len(self.clip)]

    def sent_in(self, window: Window) -> int:
        return sum(1 for t in self.sent_at if t in window)


class StampedTrack(MediaStreamTrack):
    """What the publisher's aiortc sender reads: stamped pre-encoded frames (packetized, never encoded)."""

    kind = "video"

    def __init__(self, publisher: Publisher) -> None:
        super().__init__()
        self.publisher = publisher

    async def recv(self) -> av.Packet:
        seq, data = await self.publisher.next_frame()
        packet = av.Packet(data)
        packet.pts = seq * (CLOCK // FPS)
        packet.time_base = fractions.Fraction(1, CLOCK)
        return packet


class Sink:
    """One received stream at one subscriber: which stamped frames arrived, and their latency."""

    def __init__(self, window: Window, count_on_marker: bool = False) -> None:
        self.window = window
        self.count_on_marker = count_on_marker
        self.frames = 0
        self.publishers: set[int] = set()  # whose frames arrived at all
        self.seen: dict[int, set] = {}     # publisher -> sequence numbers of its frames sent in the window
        self.lat_ns = array.array("q")
        self._pending: dict[int, tuple] = {}

    def on_packet(self, payload: bytes, timestamp: int, marker: bool) -> None:
        stamp = read_stamp(payload) if STAMP_UUID[:4] in payload else None
        if stamp is not None:
            if len(self._pending) > 256:
                self._pending.clear()
            self._pending[timestamp] = stamp
        if marker:
            stamp = self._pending.pop(timestamp, None)
            if stamp is not None:
                if stamp[2] in self.window:
                    self.lat_ns.append(time.perf_counter_ns() - stamp[2])
                if self.count_on_marker:
                    self._count(stamp)

    def on_frame(self, codec, data: bytes, timestamp: int) -> None:
        stamp = read_stamp(data)
        if stamp is not None:
            self._count(stamp)

    def _count(self, stamp) -> None:
        self.frames += 1
        self.publishers.add(stamp[0])
        if stamp[2] in self.window:
            self.seen.setdefault(stamp[0], set()).add(stamp[1])

    def on_end(self) -> None:
        pass


def hook_rtp(receiver, sink: Sink) -> None:
    """Let ``sink`` see each RTP packet (after SRTP) before aiortc's receiver handles it (bench-only)."""
    original = receiver._handle_rtp_packet

    async def handle(packet, arrival_time_ms):
        sink.on_packet(packet.payload, packet.timestamp, packet.marker)
        await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = handle


class SfuParticipant:
    """An aiortc peer: publishes one stamped video track, counts what it receives."""

    def __init__(self, index: int, clip: list[bytes], window: Window) -> None:
        self.index = index
        self.window = window
        self.publisher = Publisher(index, clip)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        transceiver = self.pc.addTransceiver(StampedTrack(self.publisher), direction="sendrecv")
        caps = RTCRtpSender.getCapabilities("video").codecs
        h264 = [c for c in caps if c.mimeType == "video/H264" and c.parameters.get("profile-level-id") == "42e01f"]
        transceiver.setCodecPreferences(h264 + [c for c in caps if c.mimeType == "video/rtx"])
        self.sinks: list[Sink] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track) -> None:
        transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
        sink = Sink(self.window)
        aiortc_internals.install_receiver_tap(transceiver.receiver, sink.on_frame, sink.on_end)
        hook_rtp(transceiver.receiver, sink)
        self.sinks.append(sink)

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return sfu_clients.chromium_like(self.pc.localDescription.sdp)

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def reoffer(self, sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def close(self) -> None:
        await self.pc.close()


class UdpParticipant(asyncio.DatagramProtocol):
    """The baseline's client: the same stamped frames, packetized by aiortc's H.264 packetizer, as plain RTP/UDP."""

    def __init__(self, index: int, clip: list[bytes], window: Window, srtp: bool) -> None:
        self.index = index
        self.publisher = Publisher(index, clip)
        self.sink = Sink(window, count_on_marker=True)
        self.sinks = [self.sink]
        self.transport = None
        self.welcome = asyncio.get_running_loop().create_future()
        self.ssrc = 0x5EB0000 + index
        self.seq = index * 1000
        self.packer = H264Encoder()
        self.tx = sfu_baseline.srtp_session("up", index, inbound=False) if srtp else None
        self.rx = sfu_baseline.srtp_session("down", index, inbound=True) if srtp else None
        self.task = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def datagram_received(self, data: bytes, addr) -> None:
        if data == b"WELCOME":
            if not self.welcome.done():
                self.welcome.set_result(None)
            return
        if self.rx is not None:
            data = self.rx.unprotect(data)
        offset = 12 + 4 * (data[0] & 0x0F)
        if data[0] & 0x10:  # header extension
            offset += 4 + 4 * int.from_bytes(data[offset + 2:offset + 4], "big")
        self.sink.on_packet(data[offset:], int.from_bytes(data[4:8], "big"), bool(data[1] & 0x80))

    async def publish(self) -> None:
        while True:
            seq, data = await self.publisher.next_frame()
            packet = av.Packet(data)
            packet.pts = seq * (CLOCK // FPS)
            packet.time_base = fractions.Fraction(1, CLOCK)
            payloads, timestamp = self.packer.pack(packet)
            last = len(payloads) - 1
            for k, payload in enumerate(payloads):
                rtp = RtpPacket(payload_type=102, marker=int(k == last), sequence_number=self.seq,
                                timestamp=timestamp & 0xFFFFFFFF, ssrc=self.ssrc, payload=payload).serialize()
                self.seq = (self.seq + 1) & 0xFFFF
                if self.tx is not None:
                    rtp = self.tx.protect(rtp)
                self.transport.sendto(rtp)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.sendto(b"BYE")
            self.transport.close()


async def client_main(conn, clip: list[bytes]) -> None:
    """A client process: runs participants on request of the orchestrator (one request at a time)."""
    loop = asyncio.get_running_loop()
    window = Window()
    parts: dict[int, object] = {}
    lag = common.LoopLag()
    lag.start()

    async def handle(op: str, args: tuple):
        if op == "sfu_open":
            (index,) = args
            parts[index] = SfuParticipant(index, clip, window)
            return await parts[index].offer()
        if op == "sfu_answer":
            index, sdp = args
            return await parts[index].answer(sdp)
        if op == "sfu_reoffer":
            index, sdp = args
            return await parts[index].reoffer(sdp)
        if op == "udp_open":
            index, port, room, srtp = args
            _, part = await loop.create_datagram_endpoint(
                lambda: UdpParticipant(index, clip, window, srtp), remote_addr=("127.0.0.1", port))
            parts[index] = part
            for _ in range(20):  # UDP: say hello until welcomed (bounded)
                part.transport.sendto(b"HELLO %s %d" % (room.encode(), index))
                try:
                    await asyncio.wait_for(asyncio.shield(part.welcome), 0.25)
                    break
                except asyncio.TimeoutError:
                    pass
            else:
                raise TimeoutError("the baseline forwarder did not answer HELLO")
            return None
        if op == "udp_start":
            for part in parts.values():
                part.task = asyncio.ensure_future(part.publish())
            return None
        if op == "progress":
            return {i: len(set().union(*(s.publishers for s in p.sinks))) for i, p in parts.items()}
        if op == "window":
            window.t0, window.t1 = args
            lag.lags_ms.clear()
            return None
        if op == "results":
            out = {}
            for i, p in parts.items():
                seen: dict[int, set] = {}
                lat = array.array("q")
                for s in p.sinks:
                    for pub, seqs in s.seen.items():
                        seen.setdefault(pub, set()).update(seqs)
                    lat.extend(s.lat_ns)
                late = [x for x, t in zip(p.publisher.late_ms, p.publisher.sent_at) if t in window]
                out[i] = {"sent": p.publisher.sent_in(window), "seen": {k: len(v) for k, v in seen.items()},
                          "lat": lat.tobytes(), "late_p99_ms": percentile(late, 99)}
            return {"parts": out, "loop_lag_p99_ms": percentile(lag.lags_ms, 99)}
        if op == "close":
            for part in parts.values():
                await part.close()
            parts.clear()
            window.t0 = window.t1 = math.inf
            return None
        raise ValueError(f"unknown op {op}")

    while True:
        message = await loop.run_in_executor(None, conn.recv)
        op, args = message
        if op == "quit":
            conn.send(("ok", None))
            return
        try:
            result = await handle(op, args)
        except Exception as e:  # noqa: BLE001 - reported to the orchestrator
            conn.send(("error", f"{type(e).__name__}: {e}"))
        else:
            conn.send(("ok", result))


def client_process(conn, clip: list[bytes]) -> None:
    asyncio.events._set_running_loop(None)  # forked: no loop is running here
    try:
        asyncio.run(client_main(conn, clip))
    except (EOFError, KeyboardInterrupt):
        pass


class ClientProc:
    """The orchestrator's handle on one client process."""

    def __init__(self, clip: list[bytes]) -> None:
        ctx = common.mp_context()
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=client_process, args=(child, clip), daemon=True)
        self.process.start()
        child.close()
        self.pid = self.process.pid
        self.lock = None

    def _recv(self, timeout: float):
        if not self.conn.poll(timeout):
            raise TimeoutError("client process did not answer")
        return self.conn.recv()

    async def call(self, op: str, *args, timeout: float = 60.0):
        if self.lock is None:
            self.lock = asyncio.Lock()
        async with self.lock:
            self.conn.send((op, args))
            status, value = await asyncio.get_running_loop().run_in_executor(None, self._recv, timeout)
        if status != "ok":
            raise RuntimeError(f"client {op}: {value}")
        return value

    def stop(self) -> None:
        try:
            self.conn.send(("quit", ()))
        except OSError:
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


# -- the worker -----------------------------------------------------------------------------------------

# --experiment marker: the worker's aiortc jitter buffer hands a video frame on as soon as
# its marker-bit packet (the frame's last) is in, instead of when the next frame's first
# packet arrives (aiortc 1.16's rule, which holds every frame about one frame interval).
EXPERIMENTS = {"marker": r"""
import aiortc.jitterbuffer as jb

_original = jb.JitterBuffer._remove_frame


def _remove_frame(self, sequence_number):
    if not self._is_video:
        return _original(self, sequence_number)
    packets, timestamp = [], None
    for count in range(self.capacity):
        packet = self._packets[(self._origin + count) % self._capacity]
        if packet is None:
            return None
        if timestamp is None:
            timestamp = packet.timestamp
        elif packet.timestamp != timestamp:
            self.remove(count)
            return jb.JitterFrame(data=b"".join(x._data for x in packets), timestamp=timestamp)
        packets.append(packet)
        if packet.marker:
            self.remove(count + 1)
            return jb.JitterFrame(data=b"".join(x._data for x in packets), timestamp=timestamp)
    return None


jb.JitterBuffer._remove_frame = _remove_frame
"""}


class Worker(sfu_clients.Worker):
    """tests/sfu/sfu_clients.py's worker handle, optionally with an --experiment patch applied at start."""

    def __init__(self, experiment: str | None = None) -> None:
        super().__init__()
        self.experiment = experiment

    async def start(self) -> None:
        if not self.experiment:
            return await super().start()
        code = EXPERIMENTS[self.experiment] + "\nfrom wecompany.sfu.worker import main\nmain()\n"
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=sys.stderr)
        self.reader = asyncio.ensure_future(self._read())


# -- orchestration ------------------------------------------------------------------------------------

def room_figures(n: int, results: list[dict], meter: common.CpuMeter, pid_names: list[str], measure: float) -> dict:
    parts = {}
    lag_p99 = 0.0
    for r in results:
        parts.update(r["parts"])
        lag_p99 = max(lag_p99, r["loop_lag_p99_ms"])
    sent = {i: p["sent"] for i, p in parts.items()}
    expected = received = 0
    for sub, p in parts.items():
        for pub, count in sent.items():
            if pub != sub:
                expected += count
                received += min(count, p["seen"].get(pub, 0))
    lat = array.array("q")
    for p in parts.values():
        lat.frombytes(p["lat"])
    cpu = {name: 100.0 * s / meter.wall for name, s in zip(pid_names, meter.per_pid_s)}
    streams = n * (n - 1)
    fps = sum(sent.values()) / max(1, len(sent)) / measure
    return {
        "n": n, "streams": streams, "cpu": cpu, "server_pct": cpu[pid_names[0]],
        "per_stream_pct": cpu[pid_names[0]] / streams,
        "clients_pct": sum(v for k, v in cpu.items() if k.startswith("client")),
        "expected": expected, "lost": expected - received,
        "p50": percentile(lat, 50) / 1e6, "p99": percentile(lat, 99) / 1e6,
        "max": max(lat) / 1e6 if lat else math.nan, "latency_samples": len(lat),
        "fps": fps, "late_p99_ms": max((p["late_p99_ms"] for p in parts.values()
                                        if not math.isnan(p["late_p99_ms"])), default=math.nan),
        "loop_lag_p99_ms": lag_p99,
        "steal_pct": meter.steal_pct, "others_pct": None, "load": os.getloadavg()[0],
        # how long the server's thread was ready to run but had no CPU: the machine's share of its latency
        "wait_pct": getattr(meter, "server_wait_pct", math.nan),
    }


def run_queue_wait_s(pid: int) -> float:
    """Seconds ``pid``'s main thread was runnable but waited for a CPU (``/proc/<pid>/schedstat``)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return math.nan


async def measure_window(procs: list[ClientProc], server_pid: int, measure: float,
                         grace: float = 1.0) -> tuple[list[dict], common.CpuMeter, float]:
    t0 = time.perf_counter_ns() + 200_000_000
    t1 = t0 + int(measure * 1e9)
    for proc in procs:
        await proc.call("window", t0, t1)
    await asyncio.sleep(max(0.0, (t0 - time.perf_counter_ns()) / 1e9))
    meter = common.CpuMeter(server_pid, *(p.pid for p in procs))
    own0 = common.own_cpu_seconds()
    wait0 = run_queue_wait_s(server_pid)
    meter.start()
    await asyncio.sleep(measure)
    meter.stop()
    own = common.own_cpu_seconds() - own0
    meter.server_wait_pct = 100.0 * (run_queue_wait_s(server_pid) - wait0) / meter.wall
    await asyncio.sleep(grace)  # frames of the window still in flight
    results = [await proc.call("results") for proc in procs]
    return results, meter, own


async def wait_receiving(procs: list[ClientProc], n: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = {}
        for proc in procs:
            progress.update(await proc.call("progress"))
        if len(progress) == n and all(count >= n - 1 for count in progress.values()):
            return True
        await asyncio.sleep(0.2)
    return False


class SetUpFailed(Exception):
    """A room's peers did not all connect and publish (not a measure of forwarding: the room is tried again)."""


async def sfu_room(n: int, procs: list[ClientProc], measure: float, experiment: str | None = None) -> dict:
    worker = Worker(experiment)
    await worker.start()
    figures = {"n": n, "streams": n * (n - 1)}
    owner = {i: procs[i % len(procs)] for i in range(n)}
    try:
        await worker.wait_event(lambda e: e["event"] == "ready")
        await worker.call("configure", host_addresses=["127.0.0.1"], public_address=None, udp_ports=None,
                          ice_servers=[], max_peers=n + 4)
        for i in range(n):
            offer = await owner[i].call("sfu_open", i)
            answer = (await worker.call("open_peer", room="bench", peer_id=f"p{i}", offer_sdp=offer))["answer_sdp"]
            await owner[i].call("sfu_answer", i, answer)
        streams = {}
        for i in range(n):
            state = await worker.wait_event(lambda e, p=f"p{i}": e["event"] == "connection_state"
                                            and e["peer_id"] == p and e["state"] in ("connected", "failed", "closed"))
            if state["state"] != "connected":
                raise SetUpFailed(f"peer {i} of {n}: its connection {state['state']}")
            event = await worker.wait_event(lambda e, p=f"p{i}": e["event"] == "track_added" and e["peer_id"] == p
                                            and e["kind"] == "video")
            streams[i] = {"publisher_peer_id": f"p{i}", "track_id": event["track_id"], "kind": "video",
                          "stream_id": f"s{i}"}
        for i in range(n):
            offer = (await worker.call("renegotiate", peer_id=f"p{i}",
                                       streams=[s for j, s in streams.items() if j != i]))["offer_sdp"]
            answer = await owner[i].call("sfu_reoffer", i, offer)
            await worker.call("apply_answer", peer_id=f"p{i}", answer_sdp=answer)
        for i in range(n):
            await worker.call("request_keyframe", peer_id=f"p{i}")
        if not await wait_receiving(procs, n, 30.0):
            figures["error"] = "not every subscriber received every stream within 30 s"
            return figures
        await asyncio.sleep(1.5)  # past the first keyframes
        results, meter, own = await measure_window(procs, worker.process.pid, measure)
        figures.update(room_figures(n, results, meter, ["worker"] + [f"client{k}" for k in range(len(procs))],
                                    measure))
        figures["others_pct"] = meter.others_pct(own)
        figures["stats"] = await worker.call("stats")
        return figures
    finally:
        for i in range(n):
            try:
                await worker.call("close_peer", peer_id=f"p{i}")
            except Exception:  # noqa: BLE001 - tearing down
                pass
        for proc in procs:
            await proc.call("close")
        try:
            await worker.call("shutdown")
            await asyncio.wait_for(worker.process.wait(), 15)
        except Exception:  # noqa: BLE001
            worker.process.kill()
            await worker.process.wait()


async def baseline_room(n: int, procs: list[ClientProc], measure: float, srtp: bool) -> dict:
    cmd = [sys.executable, os.path.join(common.BENCH_DIR, "sfu_baseline.py"), "--port", "0"] + (
        ["--srtp"] if srtp else [])
    forwarder = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.PIPE,
                                                     stdout=asyncio.subprocess.PIPE, env=common.clean_env())
    figures = {"n": n, "streams": n * (n - 1)}
    try:
        line = await asyncio.wait_for(forwarder.stdout.readline(), 15)
        port = int(line.split()[1])
        owner = {i: procs[i % len(procs)] for i in range(n)}
        for i in range(n):
            await owner[i].call("udp_open", i, port, "bench", srtp)
        for proc in procs:
            await proc.call("udp_start")
        if not await wait_receiving(procs, n, 15.0):
            figures["error"] = "not every subscriber received every stream within 15 s"
            return figures
        await asyncio.sleep(0.5)
        results, meter, own = await measure_window(procs, forwarder.pid, measure, grace=0.5)
        figures.update(room_figures(n, results, meter, ["forwarder"] + [f"client{k}" for k in range(len(procs))],
                                    measure))
        figures["others_pct"] = meter.others_pct(own)
        return figures
    finally:
        for proc in procs:
            await proc.call("close")
        forwarder.stdin.close()
        try:
            await asyncio.wait_for(forwarder.wait(), 10)
        except asyncio.TimeoutError:
            forwarder.kill()
            await forwarder.wait()


async def daemon_room(n: int, procs: list[ClientProc], measure: float) -> dict:
    """One room of ``n`` through the real daemon: REST join, signaling join, /api/v1/webrtc as the browser calls it."""
    import shutil
    import tempfile

    import signaling

    figures = {"n": n, "streams": n * (n - 1)}
    data_dir = tempfile.mkdtemp(prefix="sfubench-")
    names = [f"sfu{i}" for i in range(n)]
    daemon = None
    room_id = None
    ids: dict = {}
    sockets, pollers, conns = [], [], []
    stop = asyncio.Event()
    try:
        secret, ids = common.prepare_accounts(data_dir, names)
        tokens = common.mint_tokens(secret, ids)
        daemon = common.Daemon(data_dir, ("--sfu-addresses", "127.0.0.1", "--sfu-workers", "1"))
        daemon.start()
        port = daemon.http_port
        rest = await common.http_connect(port)
        conns.append(rest)
        status, env = await common.api(rest, "POST", "/api/v1/meetings", tokens[names[0]],
                                       {"title": "sfu bench", "max_participants": n})
        if status != 201:
            raise RuntimeError(f"creating the meeting: {status} {env}")
        meeting_id = env["data"]["meeting"]["id"]
        for name in names:
            status, env = await common.api(rest, "POST", f"/api/v1/meetings/{meeting_id}/join", tokens[name], {})
            if status != 200:
                raise RuntimeError(f"{name} joining: {status} {env}")
            room_id = env["data"]["room_id"]
        stats = signaling.Stats()
        for i, name in enumerate(names):
            sockets.append(await signaling.open_client(port, {
                "meeting_id": meeting_id, "user_id": ids[name], "peer_id": f"web_{name}",
                "token": tokens[name], "index": i}, stats))
        owner = {i: procs[i % len(procs)] for i in range(n)}
        peer_ids = {}
        for i, name in enumerate(names):
            offer = await owner[i].call("sfu_open", i)
            status, body = await common.api(rest, "POST", "/api/v1/webrtc/answer", None, {
                "room_id": str(room_id), "user_id": str(ids[name]), "offer": {"type": "offer", "sdp": offer}})
            if status != 200:
                raise RuntimeError(f"{name}: POST /api/v1/webrtc/answer: {status} {body}")
            peer_ids[i] = body["peer_id"]
            await owner[i].call("sfu_answer", i, body["answer"]["sdp"])
        offers = {"count": 0}

        async def poll(i: int) -> None:
            # The browser's offer poll (every 800 ms there; 200 ms here, to set up faster).
            conn = await common.http_connect(port)
            conns.append(conn)
            last = None
            while not stop.is_set():
                status, body = await common.api(conn, "GET", f"/api/v1/webrtc/peer/{peer_ids[i]}/offer")
                if status == 200 and body["offer"]["sdp"] != last:
                    last = body["offer"]["sdp"]
                    offers["count"] += 1
                    answer = await owner[i].call("sfu_reoffer", i, last)
                    status, body = await common.api(conn, "POST", f"/api/v1/webrtc/peer/{peer_ids[i]}/answer",
                                                    None, {"answer": {"type": "answer", "sdp": answer}})
                    if status != 200:
                        raise RuntimeError(f"POST answer: {status} {body}")
                elif status not in (200, 204):
                    raise RuntimeError(f"GET offer: {status} {body}")
                try:
                    await asyncio.wait_for(stop.wait(), 0.2)
                except asyncio.TimeoutError:
                    pass

        pollers = [asyncio.ensure_future(poll(i)) for i in range(n)]
        if not await wait_receiving(procs, n, 45.0):
            failed = [p.exception() for p in pollers if p.done() and p.exception()]
            figures["error"] = f"not every subscriber received every stream within 45 s {failed or ''}"
            return figures
        await asyncio.sleep(1.5)
        # The daemon's process tree: the daemon and its media worker.
        t0 = time.perf_counter_ns() + 200_000_000
        t1 = t0 + int(measure * 1e9)
        for proc in procs:
            await proc.call("window", t0, t1)
        await asyncio.sleep(max(0.0, (t0 - time.perf_counter_ns()) / 1e9))
        workers = common.descendants(daemon.pid)
        meter = common.CpuMeter(daemon.pid, *workers, *(p.pid for p in procs))
        own0 = common.own_cpu_seconds()
        meter.start()
        await asyncio.sleep(measure)
        meter.stop()
        own = common.own_cpu_seconds() - own0
        await asyncio.sleep(1.0)
        results = [await proc.call("results") for proc in procs]
        names_cpu = ["daemon"] + [f"worker{k}" for k in range(len(workers))] + [f"client{k}" for k in range(len(procs))]
        figures.update(room_figures(n, results, meter, names_cpu, measure))
        worker_pct = sum(v for k, v in figures["cpu"].items() if k.startswith("worker"))
        figures["server_pct"] = figures["cpu"]["daemon"] + worker_pct
        figures["per_stream_pct"] = figures["server_pct"] / figures["streams"]
        figures["daemon_pct"], figures["worker_pct"] = figures["cpu"]["daemon"], worker_pct
        figures["others_pct"] = meter.others_pct(own)
        figures["server_offers"] = offers["count"]
        return figures
    finally:
        stop.set()
        for task in pollers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
        if room_id is not None and conns:  # the browser's leave route, for each user
            for i, name in enumerate(names):
                with contextlib.suppress(Exception):
                    await common.api(conns[0], "POST", f"/api/v1/webrtc/room/{room_id}/leave", None,
                                     {"user_id": str(ids[name])})
        for proc in procs:
            await proc.call("close")
        for ws in sockets:
            await ws.aclose()
        for conn in conns:
            conn.close()
        if daemon is not None:
            figures["exit_status"] = daemon.stop()
            figures["tracebacks"] = daemon.log_text().count("Traceback")
        shutil.rmtree(data_dir, ignore_errors=True)


def held(f: dict) -> tuple[bool, str]:
    """Did the room fit: no frame lost, worker under CPU_LIMIT, clients kept 30 fps? -> (ok, why not)."""
    if "error" in f:
        return False, f["error"]
    if f["lost"] > 0:
        return False, f"{f['lost']} of {f['expected']} frames lost"
    if f["server_pct"] >= CPU_LIMIT:
        return False, f"the worker used {f['server_pct']:.0f} % of a core"
    if f["fps"] < FPS_KEPT * FPS:
        return False, f"client-limited: publishers sent {f['fps']:.1f} fps (clients {f['clients_pct']:.0f} % CPU)"
    return True, ""


def row(label: str, f: dict) -> tuple:
    if "error" in f:
        return (label, f["n"], f["streams"]) + ("-",) * 12 + (f["error"],)
    return (label, f["n"], f["streams"], fmt(f["server_pct"], 1), fmt(f["per_stream_pct"], 2),
            f"{f['lost']}/{f['expected']}", fmt(f["p50"], 1), fmt(f["p99"], 1), fmt(f["max"], 1),
            fmt(f["clients_pct"], 0), fmt(f["fps"], 1), fmt(f["late_p99_ms"], 1), fmt(f["steal_pct"], 1),
            fmt(f["others_pct"], 0), fmt(f["wait_pct"], 0), held(f)[1] or "held")


HEADER = ("run", "N", "streams", "CPU %", "CPU/stream %", "lost/frames", "lat p50 ms", "p99", "max",
          "clients CPU %", "pub fps", "send late p99 ms", "steal %", "others %", "run-queue wait %", "")


def clip_description(clip: list[bytes]) -> str:
    kbps = sum(len(c) for c in clip) / len(clip) * 8 * FPS / 1000
    packer = H264Encoder()
    pkts = 0
    for k, c in enumerate(clip):
        packet = av.Packet(stamp_nal(0, k, 0) + c)
        packet.pts, packet.time_base = k * 3000, fractions.Fraction(1, CLOCK)
        pkts += len(packer.pack(packet)[0])
    return (f"each stream: 640x360 H.264 (libx264 baseline) {FPS} fps, ~{kbps:.0f} kbit/s, "
            f"~{pkts / len(clip) * FPS:.0f} RTP packets/s (SEI stamp included)")


async def run(args, procs: list[ClientProc], clip: list[bytes]) -> dict:
    started = time.monotonic()
    sfu_rows, base_rows = [], []
    largest, why = None, "reached --max-n"
    for n in range(args.min_n, args.max_n + 1):
        if time.monotonic() - started > args.budget:
            why = f"time budget ({args.budget:g} s) spent"
            break
        for attempt in (1, 2):
            # Setting a room up (ICE and DTLS for every peer at once, on loopback) now and then fails
            # in the aiortc clients; that is not forwarding, so a room gets a second try before it
            # counts as the one that did not fit, with the figures of the rooms before it.
            try:
                f = await sfu_room(n, procs, args.measure, args.experiment)
                break
            except (asyncio.TimeoutError, SetUpFailed) as e:
                why_not = str(e) or f"not every peer connected and published within {sfu_clients.TIMEOUT:g} s"
                print(f"room of {n}, attempt {attempt}: set-up failed ({why_not})", flush=True)
                f = {"n": n, "streams": n * (n - 1), "error": f"set-up failed twice: {why_not}"}
        sfu_rows.append(f)
        ok, reason = held(f)
        print(table([HEADER, row("sfu worker", f)]), flush=True)
        for mode in args.baseline:
            b = await baseline_room(n, procs, args.baseline_measure, srtp=(mode == "srtp"))
            b["mode"] = mode
            base_rows.append(b)
            print(table([HEADER, row(f"baseline {mode}", b)]), flush=True)
        if not ok:
            why = reason
            break
        largest = n
    daemon_row = None
    if args.daemon:
        daemon_row = await daemon_room(args.daemon_n, procs, args.measure)
        print(table([HEADER, row("daemon (HTTP)", daemon_row)]), flush=True)
    return {"sfu": sfu_rows, "baseline": base_rows, "largest": largest, "why": why, "daemon": daemon_row}


def report(args, out: dict, quiet: float) -> int:
    sfu_rows, base_rows = out["sfu"], out["baseline"]
    rows = [HEADER]
    for f in sfu_rows:
        rows.append(row("sfu worker", f))
        rows.extend(row(f"baseline {b['mode']}", b) for b in base_rows if b["n"] == f["n"])
    print()
    print(table(rows, title="Rooms where everyone subscribes to everyone (worker-direct; CPU in % of one core, "
                            "latency one hop publisher -> forwarder -> subscriber)"))
    largest = out["largest"]
    good = [f for f in sfu_rows if held(f)[0]]
    head = good[-1] if good else None
    summary = [("figure", "value", "target", "verdict")]
    if head is not None:
        summary.append((f"CPU per forwarded stream (worker, N={head['n']}, {head['streams']} streams)",
                        f"{head['per_stream_pct']:.2f} % of a core", f"<= {TARGET_CPU_PER_STREAM} %",
                        verdict(head["per_stream_pct"] <= TARGET_CPU_PER_STREAM)))
        summary.append((f"latency per hop p99 (worker, N={head['n']})", f"{head['p99']:.1f} ms (p50 {head['p50']:.1f})",
                        f"< {TARGET_P99_MS:g} ms", verdict(head["p99"] < TARGET_P99_MS)))
        for b in base_rows:
            if b["n"] == head["n"] and "error" not in b:
                summary.append((f"  baseline {b['mode']} at N={b['n']}: CPU per stream / p99",
                                f"{b['per_stream_pct']:.2f} % / {b['p99']:.1f} ms", "", ""))
        lat2 = next((f for f in sfu_rows if f["n"] == 2 and "p99" in f), None)
        if lat2 is not None and lat2 is not head:
            summary.append(("latency per hop p99 (worker, N=2)", f"{lat2['p99']:.1f} ms (p50 {lat2['p50']:.1f})",
                            f"< {TARGET_P99_MS:g} ms", verdict(lat2["p99"] < TARGET_P99_MS)))
    summary.append(("largest room one core serves with no frame loss",
                    f"N={largest} ({largest * (largest - 1)} streams)" if largest else "none",
                    "", f"stopped: {out['why']}"))
    d = out.get("daemon")
    if d is not None:
        rows = [HEADER, row("daemon (HTTP)", d)]
        print()
        print(table(rows, title=f"One room of {d['n']} through the real daemon (REST join, signaling join, "
                                "/api/v1/webrtc answer + offer polls); CPU = daemon + its media worker"))
        if "error" not in d:
            print(f"daemon {d['daemon_pct']:.1f} % + worker {d['worker_pct']:.1f} % of a core; "
                  f"{d['server_offers']} server offers answered; daemon exit status {d.get('exit_status')}, "
                  f"{d.get('tracebacks')} tracebacks in its log")
            summary.append((f"whole path through the daemon (N={d['n']})", f"{d['lost']}/{d['expected']} frames lost, "
                            f"p99 {d['p99']:.1f} ms", "0 lost", verdict(d["lost"] == 0 and d["latency_samples"] > 0)))
        else:
            summary.append((f"whole path through the daemon (N={d['n']})", d["error"], "0 lost", "FAIL"))
    print()
    print(table(summary, title="Summary"))
    print(f"machine before the run: {fmt(quiet, 0)} % busy; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; steal per row above")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=str)
    return 0 if head is not None else 1


def main(args) -> int:
    print(common.describe_code())
    os.environ["PYTHONPATH"] = common.clean_env()["PYTHONPATH"]  # the worker imports the tree under test
    common.raise_nofile_limit()
    t = time.monotonic()
    clip = sfu_clients.encode_clip("libx264")
    print(clip_description(clip) + f" (encoded once in {time.monotonic() - t:.1f} s)")
    if args.experiment:
        print(f"EXPERIMENT {args.experiment}: the worker is patched at start; these figures are not the product's")
    print(f"clients: {args.procs} process(es), aiortc peers, no decoding or encoding; "
          f"baseline: {', '.join(args.baseline) or 'none'}")
    procs = [ClientProc(clip) for _ in range(args.procs)]  # forked before any event loop runs
    try:
        quiet = common.wait_for_quiet(args.max_wait)
        out = common.run(run(args, procs, clip), args.hard_timeout)
    finally:
        for proc in procs:
            proc.stop()
    return report(args, out, quiet)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--min-n", type=int, default=2, help="smallest room tried (the rooms below it are skipped)")
    p.add_argument("--max-n", type=int, default=16, help="largest room tried")
    p.add_argument("--measure", type=float, default=8.0, help="seconds measured per SFU room")
    p.add_argument("--baseline-measure", type=float, default=5.0, help="seconds measured per baseline room")
    p.add_argument("--baseline", default="plain,srtp",
                   help="baseline forwarder modes run at each N: plain, srtp, both (default) or none")
    p.add_argument("--procs", type=int, default=1, help="client processes")
    p.add_argument("--daemon", action=argparse.BooleanOptionalAction, default=None,
                   help="also run one room through the real daemon's HTTP routes (default: on, off with --quick)")
    p.add_argument("--daemon-n", type=int, default=3, help="participants of the daemon room")
    p.add_argument("--budget", type=float, default=360.0, help="start no new room after this many seconds")
    p.add_argument("--quick", action="store_true", help="smoke test: rooms of 2 and 3, short windows (< 30 s)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--experiment", choices=sorted(EXPERIMENTS),
                   help="patch the worker at start to test a product change (the figures are then not the product's)")
    p.add_argument("--max-wait", type=float, default=180.0,
                   help="seconds to wait for the (shared) machine to be quiet before measuring")
    args = p.parse_args(argv)
    if args.quick:
        args.max_n, args.measure, args.baseline_measure, args.max_wait = 3, 2.0, 1.0, 0.0
    args.baseline = [] if args.baseline == "none" else (
        ["plain", "srtp"] if args.baseline == "both" else [m for m in args.baseline.split(",") if m])
    if any(m not in ("plain", "srtp") for m in args.baseline):
        p.error("--baseline: plain, srtp, both or none")
    if args.daemon is None:
        args.daemon = not args.quick
    args.hard_timeout = args.budget + 300.0
    return args


if __name__ == "__main__":
    sys.exit(main(parse()))
