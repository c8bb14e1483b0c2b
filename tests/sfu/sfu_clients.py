"""
Three aiortc peers forwarded by a real SFU worker (wecompany.sfu.worker), on loopback.

Run by tests/sfu/test_worker.py as its own process (aiortc is asyncio; the
tests run on Twisted):

    python sfu_clients.py [MEASURE_SECONDS]

It starts the worker, speaks the wire protocol to it and plays the domain's
part by hand: opens peers a, b and c (each publishing a sine tone and a
640x360 30 fps video of a moving pattern, pre-encoded once so the clients
spend no CPU encoding: a and b in H.264, c in VP8), renegotiates each with
the other two's streams once all are connected, measures the frames each
decodes per forwarded stream and the worker's CPU time, then closes c and
renegotiates a and b without it, and checks that their tracks of c end.

The clients' offers are rewritten to Chromium-like payload types and
header-extension ids, so the check that re-offers keep what was negotiated
means something (aiortc's defaults would match by chance).

Prints one JSON object on stdout; exits 0 when every check passed, else 1
(the failures are in the JSON, under "failures").
"""

from __future__ import annotations

import asyncio
import fractions
import json
import math
import os
import re
import sys
import time

import aioice.ice
import av
import numpy
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

FPS = 30
WIDTH, HEIGHT = 640, 360
TIMEOUT = 30.0
# aiortc's default payload types -> Chromium-like ones; extension ids shifted.
PAYLOAD_TYPES = {96: 111, 97: 96, 98: 97, 99: 102, 100: 103, 101: 106, 102: 107}
EXTENSION_SHIFT = 3


def chromium_like(sdp: str) -> str:
    def pt(number: str) -> str:
        return str(PAYLOAD_TYPES.get(int(number), int(number)))

    lines = []
    for line in sdp.split("\r\n"):
        if line.startswith(("m=audio ", "m=video ")):
            parts = line.split(" ")
            line = " ".join(parts[:3] + [pt(p) for p in parts[3:]])
        elif m := re.match(r"a=(rtpmap|fmtp|rtcp-fb):(\d+)(.*)$", line):
            rest = re.sub(r"apt=(\d+)", lambda a: "apt=" + pt(a.group(1)), m.group(3))
            line = f"a={m.group(1)}:{pt(m.group(2))}{rest}"
        elif m := re.match(r"a=extmap:(\d+)(.*)$", line):
            line = f"a=extmap:{int(m.group(1)) + EXTENSION_SHIFT}{m.group(2)}"
        lines.append(line)
    return "\r\n".join(lines)


def encode_clip(codec_name: str, frames: int = 2 * FPS) -> list[bytes]:
    """A 2 s moving pattern, keyframe every second, as encoded frames."""
    codec = av.CodecContext.create(codec_name, "w")
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    codec.time_base = fractions.Fraction(1, FPS)
    codec.framerate = FPS
    codec.gop_size = FPS
    codec.bit_rate = 500_000
    if codec_name == "libx264":
        codec.options = {"profile": "baseline", "tune": "zerolatency", "preset": "ultrafast", "bf": "0"}
    else:
        codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    out = []
    y, x = numpy.mgrid[0:HEIGHT, 0:WIDTH]
    for n in range(frames):
        image = numpy.zeros((HEIGHT, WIDTH, 3), numpy.uint8)
        image[..., 0] = ((x + 8 * n) % 256).astype(numpy.uint8)
        image[..., 1] = ((y + 4 * n) % 256).astype(numpy.uint8)
        image[..., 2] = 128
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        frame.pts = n
        frame.pict_type = av.video.frame.PictureType.I if n % FPS == 0 else av.video.frame.PictureType.NONE
        out.extend(bytes(p) for p in codec.encode(frame))
    out.extend(bytes(p) for p in codec.encode(None))
    return out[:frames]


class EncodedVideoTrack(MediaStreamTrack):
    """Loops a pre-encoded clip at FPS, as av.Packets (aiortc packetizes them without encoding)."""

    kind = "video"

    def __init__(self, clips: dict[str, list[bytes]]) -> None:
        super().__init__()
        self.clips = clips
        self.codec = "h264"
        self.sent = 0
        self._start = None

    async def recv(self) -> av.Packet:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.sent / FPS
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        clip = self.clips[self.codec]
        packet = av.Packet(clip[self.sent % len(clip)])
        packet.pts = self.sent * (90000 // FPS)
        packet.time_base = fractions.Fraction(1, 90000)
        self.sent += 1
        return packet


class SineTrack(MediaStreamTrack):
    """A 440 Hz tone, 20 ms frames."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self._start = None
        samples = numpy.arange(960)
        self._frames = [
            (8000 * numpy.sin(2 * math.pi * 440 * (samples + 960 * k) / 48000)).astype(numpy.int16).reshape(1, -1)
            for k in range(11)]

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.sent * 0.02
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        frame = av.AudioFrame.from_ndarray(self._frames[self.sent % 11], format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self.sent * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self.sent += 1
        return frame


class RemoteStream:
    def __init__(self, track, mid: str, stream_id: str) -> None:
        self.track = track
        self.kind = track.kind
        self.mid = mid
        self.stream_id = stream_id
        self.frames = 0
        self.ended = False
        self.task = asyncio.ensure_future(self._consume())

    async def _consume(self) -> None:
        try:
            while True:
                await self.track.recv()
                self.frames += 1
        except MediaStreamError:
            self.ended = True


class Client:
    def __init__(self, name: str, video_codec: str, clips: dict[str, list[bytes]]) -> None:
        self.name = name
        self.peer_id = f"sfu-{name}"
        self.signaling_id = f"sig-{name}"
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video = EncodedVideoTrack(clips)
        self.video.codec = video_codec
        audio = self.pc.addTransceiver(SineTrack(), direction="sendrecv")
        video = self.pc.addTransceiver(self.video, direction="sendrecv")
        caps = RTCRtpSender.getCapabilities("video").codecs
        h264 = [c for c in caps if c.mimeType == "video/H264" and c.parameters.get("profile-level-id") == "42e01f"]
        vp8 = [c for c in caps if c.mimeType == "video/VP8"]
        rtx = [c for c in caps if c.mimeType == "video/rtx"]
        video.setCodecPreferences((h264 + vp8 if video_codec == "h264" else vp8 + h264) + rtx)
        del audio
        self.remote: list[RemoteStream] = []
        self.first_answer = ""
        self.pending_tracks: list = []
        self.pc.on("track", self.pending_tracks.append)

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return chromium_like(self.pc.localDescription.sdp)

    async def answer_offer(self, offer_sdp: str) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        msids = {m.rtp.muxId: (m.msid or "").split(" ")[0] for m in SessionDescription.parse(offer_sdp).media}
        for track in self.pending_tracks:
            transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
            self.remote.append(RemoteStream(track, transceiver.mid, msids.get(transceiver.mid, "")))
        self.pending_tracks.clear()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp


def negotiated_mismatches(first_answer: str, offer: str) -> list[str]:
    """Payload types or extension ids in ``offer`` that differ from those of ``first_answer``."""
    def tables(sdp):
        codecs, extensions = {}, {}
        for media in SessionDescription.parse(sdp).media:
            for c in media.rtp.codecs:
                key = (media.kind, c.mimeType.lower(), c.clockRate, json.dumps(
                    {k: v for k, v in c.parameters.items() if k != "apt"}, sort_keys=True))
                codecs.setdefault(key, set()).add(c.payloadType)
            for e in media.rtp.headerExtensions:
                extensions.setdefault((media.kind, e.uri), set()).add(e.id)
        return codecs, extensions

    first_codecs, first_ext = tables(first_answer)
    codecs, ext = tables(offer)
    problems = []
    for key, pts in codecs.items():
        if key[1].endswith("/rtx"):
            continue
        if key not in first_codecs:
            problems.append(f"codec {key} was not negotiated")
        elif pts != first_codecs[key]:
            problems.append(f"codec {key}: payload types {sorted(pts)} != {sorted(first_codecs[key])}")
    for key, ids in ext.items():
        if key not in first_ext or ids != first_ext[key]:
            problems.append(f"extension {key}: ids {sorted(ids)} != {sorted(first_ext.get(key, []))}")
    return problems


class Worker:
    def __init__(self) -> None:
        self.replies: dict[int, asyncio.Future] = {}
        self.events: list[dict] = []
        self.event_added = asyncio.Condition()
        self.next_id = 1

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wecompany.sfu.worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=sys.stderr)
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while line := await self.process.stdout.readline():
            message = json.loads(line)
            if "event" in message:
                async with self.event_added:
                    self.events.append(message)
                    self.event_added.notify_all()
            elif message.get("id") in self.replies:
                self.replies.pop(message["id"]).set_result(message)
            elif message.get("id") is None and None in self.replies:
                # a line that is not JSON gets a reply without id
                self.replies.pop(None).set_result(message)

    async def send_raw(self, data: bytes, unparsable: bool = False) -> dict:
        request_id = None if unparsable else self.next_id
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.replies[request_id] = future
        self.process.stdin.write(data.replace(b"ID", str(request_id).encode()) if request_id else data)
        await self.process.stdin.drain()
        return await asyncio.wait_for(future, TIMEOUT)

    async def request(self, op: str, **args) -> dict:
        return await self.send_raw(json.dumps({"id": "ID", "op": op, "args": args}).replace(
            '"ID"', "ID").encode() + b"\n")

    async def call(self, op: str, **args):
        reply = await self.request(op, **args)
        if "error" in reply:
            raise RuntimeError(f"{op}: {reply['error']}")
        return reply["result"]

    async def wait_event(self, predicate, timeout: float = TIMEOUT) -> dict:
        async with self.event_added:
            try:
                await asyncio.wait_for(self.event_added.wait_for(
                    lambda: any(predicate(e) for e in self.events)), timeout)
            except asyncio.TimeoutError:
                # What the worker did say, for the report: its peers' connection states above all.
                states = [(e.get("peer_id"), e.get("state")) for e in self.events
                          if e.get("event") == "connection_state"]
                raise asyncio.TimeoutError(f"no such worker event within {timeout:g} s; connection states so far: "
                                           f"{states}; {len(self.events)} events in all") from None
            return next(e for e in self.events if predicate(e))

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return predicate()


async def run(measure_seconds: float) -> dict:
    failures: list[str] = []
    result: dict = {"failures": failures}
    clips = {"h264": encode_clip("libx264"), "vp8": encode_clip("libvpx")}
    worker = Worker()
    await worker.start()
    ready = await worker.wait_event(lambda e: e["event"] == "ready")
    result["aiortc"] = ready["aiortc"]
    await worker.call("configure", host_addresses=["127.0.0.1"], public_address=None, udp_ports=None,
                      ice_servers=[], max_peers=10)

    # The framing and dispatch, through the real process.
    result["malformed"] = (await worker.send_raw(b'{"id": 1, "op": \n', unparsable=True))["error"]["kind"]
    result["unknown_op"] = (await worker.request("frobnicate"))["error"]["kind"]
    result["unknown_peer"] = (await worker.request("renegotiate", peer_id="nobody", streams=[]))["error"]["kind"]

    clients = [Client("a", "h264", clips), Client("b", "h264", clips), Client("c", "vp8", clips)]
    for client in clients:
        offer = await client.offer()
        answer = (await worker.call("open_peer", room="room-1", peer_id=client.peer_id, offer_sdp=offer))["answer_sdp"]
        client.first_answer = answer
        await client.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    for client in clients:
        await worker.wait_event(lambda e, p=client.peer_id: e["event"] == "gathering_complete" and e["peer_id"] == p)
        await worker.wait_event(lambda e, p=client.peer_id: e == {
            "event": "connection_state", "peer_id": p, "state": "connected"})
    published: dict[str, list[dict]] = {}
    for client in clients:
        for kind in ("audio", "video"):
            event = await worker.wait_event(lambda e, p=client.peer_id, k=kind: e["event"] == "track_added"
                                            and e["peer_id"] == p and e["kind"] == k)
            published.setdefault(client.peer_id, []).append(
                {"publisher_peer_id": client.peer_id, "track_id": event["track_id"], "kind": kind,
                 "stream_id": client.signaling_id})

    async def renegotiate(client: Client, others: list[Client]) -> None:
        streams = [s for other in others for s in published[other.peer_id]]
        offer = (await worker.call("renegotiate", peer_id=client.peer_id, streams=streams))["offer_sdp"]
        for problem in negotiated_mismatches(client.first_answer, offer):
            failures.append(f"{client.name}: re-offer changed {problem}")
        if " 111 " not in offer.split("m=audio", 1)[1].split("\r\n", 1)[0] + " ":
            failures.append(f"{client.name}: re-offer lost the Chromium opus payload type 111")
        answer = await client.answer_offer(offer)
        await worker.call("apply_answer", peer_id=client.peer_id, answer_sdp=answer)

    for client in clients:
        await renegotiate(client, [o for o in clients if o is not client])
    for client in clients:
        await worker.call("request_keyframe", peer_id=client.peer_id)

    if not await until(lambda: all(len(c.remote) == 4 and all(r.frames > 0 for r in c.remote)
                                   for c in clients), TIMEOUT):
        failures.append("not every client receives 4 streams: " + json.dumps(
            {c.name: [(r.kind, r.stream_id, r.frames) for r in c.remote] for c in clients}))
    for client in clients:
        expected = sorted((o.signaling_id, k) for o in clients if o is not client for k in ("audio", "video"))
        got = sorted((r.stream_id, r.kind) for r in client.remote)
        if got != expected:
            failures.append(f"{client.name}: msid stream ids {got} != {expected}")

    await asyncio.sleep(1.0)  # past the first keyframe wait
    counts = {(c.name, r.stream_id, r.kind): r.frames for c in clients for r in c.remote}
    cpu_start, wall_start = worker.cpu_seconds(), time.monotonic()
    await asyncio.sleep(measure_seconds)
    cpu, wall = worker.cpu_seconds() - cpu_start, time.monotonic() - wall_start
    rates = {f"{n}<-{s}:{k}": round((r.frames - counts[(n, s, k)]) / wall, 1)
             for n, s, k, r in ((c.name, r.stream_id, r.kind, r) for c in clients for r in c.remote)}
    forwarded = sum(len(c.remote) for c in clients)
    result["rates_per_second"] = rates
    result["forwarded_streams"] = forwarded
    result["worker_cpu_percent"] = round(100 * cpu / wall, 2)
    result["worker_cpu_percent_per_forwarded_stream"] = round(100 * cpu / wall / max(1, forwarded), 3)
    result["stats"] = await worker.call("stats")
    for name, rate in rates.items():
        low = FPS * 0.8 if name.endswith(":video") else 50 * 0.8
        if rate < low:
            failures.append(f"{name}: {rate} frames/s, expected about {FPS if name.endswith(':video') else 50}")

    # c leaves: the domain closes it and renegotiates the others without it.
    a, b, c = clients
    await worker.call("close_peer", peer_id=c.peer_id)
    await worker.wait_event(lambda e: e["event"] == "track_ended" and e["peer_id"] == c.peer_id)
    await renegotiate(a, [b])
    await renegotiate(b, [a])
    ended = await until(lambda: all(r.ended for x in (a, b) for r in x.remote if r.stream_id == c.signaling_id), 10)
    if not ended:
        failures.append("a's and b's tracks of c did not end")
    before = {id(r): r.frames for x in (a, b) for r in x.remote if r.stream_id != c.signaling_id}
    await asyncio.sleep(1.0)
    still = [r for x in (a, b) for r in x.remote if r.stream_id != c.signaling_id and r.frames > before[id(r)]]
    if len(still) != 4:
        failures.append(f"after c left, a and b receive {len(still)} of their 4 streams")
    result["after_leave_ok"] = ended and len(still) == 4
    result["close_unknown"] = await worker.call("close_peer", peer_id="nobody")

    await worker.call("shutdown")
    result["exit_code"] = await asyncio.wait_for(worker.process.wait(), 15)
    for client in clients:
        await client.pc.close()
    if result["exit_code"] != 0:
        failures.append(f"worker exited {result['exit_code']}")
    for key, expected in (("malformed", "invalid"), ("unknown_op", "invalid"), ("unknown_peer", "peer_not_found")):
        if result[key] != expected:
            failures.append(f"{key}: {result[key]} != {expected}")
    return result


def main() -> None:
    measure = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    result = asyncio.run(asyncio.wait_for(run(measure), 180))
    print(json.dumps(result, sort_keys=True))
    sys.exit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
