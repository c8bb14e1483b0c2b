"""
Browser-like aiortc clients of the daemon's SFU, following the browser's contract
(/work/shared/spec/sfu.md, "Session order") step by step.

Run by tests/e2e/test_sfu.py as its own process (aiortc is asyncio; the tests run
on Twisted):

    python sfu_peers.py SCENARIO HTTP_BASE[,HTTP_BASE...] DAEMON_PID [MEASURE_SECONDS]

Each client registers and logs in over REST, joins the meeting (POST
/meetings/:id/join gives room_id), joins signaling (WS /ws/signaling, ``join``,
waits for ``room-info`` and takes its ``ice_servers``), then opens one
RTCPeerConnection with two sendrecv transceivers, audio then video (H.264
first), carrying a sine tone and a pre-encoded 640x360 30 fps clip
(tests/sfu/sfu_clients.py), offers (POST /webrtc/answer with no token, the
offer without candidates, which follow over POST /ice-candidate with the
Bearer token, as Chromium trickles them), and polls the server's candidates
every 600 ms and its offers every 800 ms, answering each new offer. Leaving is
WS ``leave``, POST /webrtc/room/:room_id/leave, closing WS and PC, REST leave.

Scenarios:

* ``mesh``: alice, bob and carol publish; all receive; frames are counted over
  MEASURE_SECONDS with the CPU of the daemon's sfu.worker children and vmstat;
  carol leaves; what alice and bob receive of her must end after a re-offer.
* ``stats``: alice and bob connected; the room's /peers and /stats, calls on
  alice's peer with bob's token; both leave; /peers until the room is gone.
* ``end``: alice and bob connected; alice ends the meeting over REST; both
  polls must turn to 404 ``peer not found``; the reconnect the browser then
  makes must be refused.
* ``record``, ``record-end``, ``record-term``, ``record-kill``: alice, bob and
  carol publish in a meeting with ``enable_recording``; alice (the host)
  records MEASURE_SECONDS, then stops it, ends the meeting, or sends the
  daemon SIGTERM or SIGKILL (the test restarts it and reads the recording).
* ``abort``: alice drops the connection of her answer to the server's first
  offer right after sending it (a fetch aborted as a tab closes); her
  connection must live on.
* ``cluster`` (two bases, two nodes of one cluster): alice's REST and
  signaling go to the first node and her SFU calls to the second, bob's the
  other way round; each must receive the other's audio and video.
* ``failover`` (three bases; DAEMON_PID is the third node's): alice's REST
  and signaling on the first node, bob's on the second; their SFU calls are
  spread over the three nodes as a load balancer would (one after another,
  skipping a node that refuses connections), alice's first on the third
  node, which so serves the room. Once both receive, the third node is
  killed (SIGKILL); both browsers must reconnect when a poll answers
  ``peer not found`` and receive each other again through the new room's
  node.

The script collects facts and prints them as one JSON object on stdout; the
test asserts on them. It exits 0 unless the scenario could not run at all (an
exception: then 1 with the reason on stderr). Only loopback is used: ICE
gathers on 127.0.0.1 alone (the tests.sfu.sfu_clients import patches aioice)
and the only STUN server is the one room-info names, which the test runs on
loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import struct
import sys
import time
import urllib.parse
import uuid

import websockets
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.sdp import SessionDescription, candidate_from_sdp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.sfu.sfu_clients import (  # noqa: E402  (patches aioice to gather on 127.0.0.1 only)
    EncodedVideoTrack, RemoteStream, SineTrack, chromium_like, encode_clip, negotiated_mismatches,
)

PASSWORD = "Secret-pass1"
ICE_POLL, OFFER_POLL = 0.6, 0.8
SHORT_TIMEOUT, LONG_TIMEOUT = 2.5, 10.0  # the browser's, per route
TIMEOUT = 40.0
START = time.monotonic()


def now() -> float:
    return round(time.monotonic() - START, 3)


def log(*parts) -> None:
    print(f"[{now():8.3f}]", *parts, file=sys.stderr, flush=True)


# -- HTTP (a small HTTP/1.1 client on asyncio streams: no asyncio HTTP library is installed) --------------
class Api:
    def __init__(self, base: str) -> None:
        url = urllib.parse.urlsplit(base)
        self.host, self.port = url.hostname, url.port
        self.base = base

    async def call(self, method: str, path: str, body=None, token: str | None = None, raw: bytes | None = None,
                   timeout: float = LONG_TIMEOUT):
        """-> (status, parsed JSON body or None when empty)."""
        return await asyncio.wait_for(self._call(method, path, body, token, raw), timeout)

    async def _call(self, method, path, body, token, raw):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Connection: close",
                "Content-Type: application/json", f"Content-Length: {len(data)}"]
        if token:
            head.append(f"Authorization: Bearer {token}")
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
            response = await reader.read()
        finally:
            writer.close()
        header, _, content = response.partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if headers.get("transfer-encoding") == "chunked":
            content = _dechunk(content)
        return status, (json.loads(content) if content else None)


    async def send_and_drop(self, method: str, path: str, body) -> None:
        """Send a request and close the connection without waiting for the reply (an aborted fetch)."""
        data = json.dumps(body).encode()
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Connection: close",
                "Content-Type: application/json", f"Content-Length: {len(data)}"]
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await writer.drain()
        # A reset, not a FIN: the daemon does not read a connection while it handles a request on it
        # (no pipelining), but sees a reset at once. A moment first, so the request is read before it.
        await asyncio.sleep(0.001)
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()


class Balancer:
    """
    Calls spread over nodes one after another, as a round-robin load
    balancer spreads them; a node that refuses connections (killed) is
    skipped, as the balancer's health check would take it out.
    """

    def __init__(self, apis: list[Api]) -> None:
        self.apis = apis
        self.next = 0
        self.used: list[str] = []  # the base of each call, in order

    async def call(self, *args, **kw):
        for _ in range(len(self.apis)):
            api = self.apis[self.next % len(self.apis)]
            self.next += 1
            try:
                result = await api.call(*args, **kw)
            except (ConnectionRefusedError, ConnectionResetError):
                continue
            self.used.append(api.base)
            return result
        raise ConnectionRefusedError("no node answers")


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return bytes(out)


def message_of(body) -> str:
    """What the browser shows of an error: ``message``, else ``error``."""
    if not isinstance(body, dict):
        return ""
    return str(body.get("message") or body.get("error") or "")


# -- the browser -------------------------------------------------------------------------------------------
class Stream(RemoteStream):
    """A received track, decoded frame by frame (aiortc decodes), with when it ended."""

    def __init__(self, track, mid, stream_id, kind) -> None:
        self.ended_at = None
        self.created_at = now()
        super().__init__(track, mid, stream_id)
        self.kind = kind

    async def _consume(self) -> None:
        await super()._consume()
        self.ended_at = now()


class Browser:
    def __init__(self, name: str, api: Api, clips, sfu_api=None) -> None:
        self.name = name
        self.api = api  # REST and signaling
        self.sfu_api = sfu_api or api  # the SFU's calls (another node, or a Balancer, in a cluster)
        self.clips = clips
        self.signaling_id = f"web_{uuid.uuid4().hex[:8]}"  # as the browser makes them
        self.user_id = self.token = self.room_id = self.meeting_id = None
        self.pc = None
        self.peer_id = None
        self.remote: list[Stream] = []
        self.pending_tracks: list = []
        self.first_answer = ""
        self.last_offer = None
        self.offers: list[dict] = []  # server offers handled: time, streams, mismatches
        self.poll_log: list[tuple] = []  # (time, route, status, message) of every non-2xx poll
        self.candidates_received = 0
        self.candidates_sent: list[int] = []
        self.peer_gone = None  # (time, route, message) of the first 404 "peer not found"
        self.reconnect = None  # what the reconnect after peer_gone got
        self.polls: list[asyncio.Task] = []
        self.stopping = False  # disconnectSfu: the timers stop, requests in flight finish
        self.abort_first_answer = False  # drop the connection of the first POST .../answer (an aborted fetch)
        self.ws = None
        self.ws_messages: list[dict] = []
        self.room_info = None
        self.room_info_event = asyncio.Event()
        self.ice_connected = asyncio.Event()

    # REST and signaling
    async def register_login(self) -> None:
        status, body = await self.api.call("POST", "/api/v1/auth/register", {
            "username": self.name, "email": f"{self.name}@example.com", "password": PASSWORD})
        assert status == 200, (status, body)
        status, body = await self.api.call("POST", "/api/v1/auth/login",
                                           {"username": self.name, "password": PASSWORD})
        assert status == 200, (status, body)
        self.user_id, self.token = str(body["data"]["user"]["id"]), body["data"]["token"]

    async def join_meeting(self, meeting_id) -> None:
        self.meeting_id = meeting_id
        status, body = await self.api.call("POST", f"/api/v1/meetings/{meeting_id}/join", {}, token=self.token)
        assert status == 200, (status, body)
        self.room_id = str(body["data"]["room_id"])

    async def join_signaling(self) -> None:
        query = urllib.parse.urlencode({"meeting_id": self.meeting_id, "user_id": self.user_id,
                                        "peer_id": self.signaling_id, "token": self.token})
        self.ws = await websockets.connect(f"ws://{self.api.host}:{self.api.port}/ws/signaling?{query}")
        self.ws_reader = asyncio.ensure_future(self._read_ws())
        await self.ws.send(json.dumps({"type": 4}))  # join, in the browser's numeric dialect
        await asyncio.wait_for(self.room_info_event.wait(), LONG_TIMEOUT)

    async def _read_ws(self) -> None:
        try:
            async for text in self.ws:
                message = json.loads(text)
                self.ws_messages.append(message)
                if message.get("type") in (14, "room-info"):
                    self.room_info = message["payload"]
                    self.room_info_event.set()
        except websockets.ConnectionClosed:
            pass

    def ice_servers(self) -> list:
        return [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
                for s in self.room_info["ice_servers"]]

    # the SFU connection (connectSfu)
    def new_pc(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self.ice_servers()))
        self.audio = SineTrack()
        self.video = EncodedVideoTrack(self.clips)
        pc.addTransceiver(self.audio, direction="sendrecv")
        video = pc.addTransceiver(self.video, direction="sendrecv")
        caps = RTCRtpSender.getCapabilities("video").codecs
        h264 = [c for c in caps if c.mimeType == "video/H264" and c.parameters.get("profile-level-id") == "42e01f"]
        others = [c for c in caps if c not in h264]
        video.setCodecPreferences(h264 + others)  # preferH264ForTransceiver
        pc.on("track", self.pending_tracks.append)
        pc.on("iceconnectionstatechange", self._ice_state)
        return pc

    def _ice_state(self) -> None:
        if self.pc is not None and self.pc.iceConnectionState in ("connected", "completed"):
            self.ice_connected.set()

    async def connect_sfu(self):
        """-> (status, body) of POST /answer; on 200 the polls run."""
        self.pc = self.new_pc()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer, candidates = split_candidates(chromium_like(self.pc.localDescription.sdp))
        status, body = await self.sfu_api.call("POST", "/api/v1/webrtc/answer", {
            "room_id": self.room_id, "user_id": self.user_id, "offer": {"type": "offer", "sdp": offer}})
        if status != 200:
            return status, body
        self.peer_id = body["peer_id"]
        self.first_answer = body["answer"]["sdp"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.first_answer, type="answer"))
        for candidate in candidates:  # queued before peer_id was known; route 2 carries the JWT
            status2, body2 = await self.sfu_api.call("POST", "/api/v1/webrtc/ice-candidate", {
                "peer_id": self.peer_id, "candidate": candidate}, token=self.token, timeout=SHORT_TIMEOUT)
            self.candidates_sent.append(status2)
        self.polls = [asyncio.ensure_future(self._ice_poll(self.peer_id)),
                      asyncio.ensure_future(self._offer_poll(self.peer_id))]
        log(self.name, "peer", self.peer_id, "signaling", self.signaling_id)
        return status, body

    def _gone(self, route: str, status: int, body) -> bool:
        message = message_of(body)
        self.poll_log.append((now(), route, status, message))
        if status == 404 and "peer not found" in message:
            if self.peer_gone is None:
                self.peer_gone = (now(), route, message)
            return True
        return False

    async def _ice_poll(self, peer_id: str) -> None:
        while True:
            started = time.monotonic()
            try:
                status, body = await self.sfu_api.call("GET", f"/api/v1/webrtc/peer/{peer_id}/ice-candidates",
                                                   timeout=SHORT_TIMEOUT)
            except asyncio.TimeoutError:
                status, body = 0, None
            if status == 200:
                for c in body["candidates"]:
                    line = c["candidate"].removeprefix("a=")
                    candidate = candidate_from_sdp(line.split(":", 1)[1])
                    candidate.sdpMid, candidate.sdpMLineIndex = c.get("sdpMid"), c.get("sdpMLineIndex")
                    await self.pc.addIceCandidate(candidate)
                    self.candidates_received += 1
                if body["complete"] and (not body["candidates"] or self.ice_connected.is_set()):
                    return
            elif self._gone("ice-candidates", status, body):
                return await self._peer_not_found()
            await asyncio.sleep(max(0.0, ICE_POLL - (time.monotonic() - started)))
            if self.stopping:
                return

    async def _offer_poll(self, peer_id: str) -> None:
        while True:
            started = time.monotonic()
            try:
                status, body = await self.sfu_api.call("GET", f"/api/v1/webrtc/peer/{peer_id}/offer",
                                                   timeout=SHORT_TIMEOUT)
            except asyncio.TimeoutError:
                status, body = 0, None
            if status == 200 and body["offer"]["sdp"] != self.last_offer:
                await self._answer_server_offer(peer_id, body["offer"]["sdp"])
            elif status not in (200, 204) and self._gone("offer", status, body):
                return await self._peer_not_found()
            await asyncio.sleep(max(0.0, OFFER_POLL - (time.monotonic() - started)))
            if self.stopping:
                return

    async def _answer_server_offer(self, peer_id: str, sdp: str) -> None:
        self.last_offer = sdp
        received = now()
        mismatches = negotiated_mismatches(self.first_answer, sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        msids = {m.rtp.muxId: (m.msid or "").split(" ")[0] for m in SessionDescription.parse(sdp).media}
        for track in self.pending_tracks:
            transceiver = next(t for t in self.pc.getTransceivers() if t.receiver.track is track)
            self.remote.append(Stream(track, transceiver.mid, msids.get(transceiver.mid, ""), track.kind))
        self.pending_tracks.clear()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        answer = {"answer": {"type": "answer", "sdp": self.pc.localDescription.sdp}}
        if self.abort_first_answer:
            self.abort_first_answer = False
            await self.api.send_and_drop("POST", f"/api/v1/webrtc/peer/{peer_id}/answer", answer)
            status, body = "dropped", None
        else:
            status, body = await self.sfu_api.call("POST", f"/api/v1/webrtc/peer/{peer_id}/answer", answer)
        # What the server sends this peer after this offer: (msid stream id, kind) of its sending m-lines.
        sending = sorted([(m.msid or "").split(" ")[0], m.kind] for m in SessionDescription.parse(sdp).media
                         if m.direction in ("sendrecv", "sendonly") and m.msid)
        self.offers.append({"at": received, "answer_status": status, "mismatches": mismatches,
                            "sending": sending})
        log(self.name, "answered offer", len(self.offers), "->", status, message_of(body))

    async def _peer_not_found(self) -> None:
        """The browser tears down and reconnects 0.5 s later (a new PC, a new POST /answer)."""
        for task in self.polls:
            if task is not asyncio.current_task():
                task.cancel()
        if self.reconnect is not None:
            return
        self.reconnect = {"state_before": self.pc.connectionState}
        await self.pc.close()
        await asyncio.sleep(0.5)
        status, body = await self.connect_sfu()
        self.reconnect.update(status=status, message=message_of(body))
        log(self.name, "reconnect ->", status, message_of(body))

    def stop_polls(self) -> None:
        for task in self.polls:
            task.cancel()

    async def leave(self) -> dict:
        """The leave button: WS leave, route 6, close WS and PC, REST leave."""
        started = now()
        await self.ws.send(json.dumps({"type": 5}))
        status, body = await self.sfu_api.call("POST", f"/api/v1/webrtc/room/{self.room_id}/leave",
                                           {"user_id": self.user_id}, timeout=SHORT_TIMEOUT)
        self.stopping = True  # the browser clears its timers; a fetch in flight still completes
        if self.polls:
            await asyncio.wait(self.polls, timeout=LONG_TIMEOUT + 1)
        self.stop_polls()
        await self.ws.close()
        await self.pc.close()
        rest, _ = await self.api.call("POST", f"/api/v1/meetings/{self.meeting_id}/leave", {}, token=self.token)
        return {"status": status, "body": body, "rest_leave": rest, "at": started}

    def label(self, stream_id: str):
        """The username room-info gives for a signaling peer id, as getSpeakerLabel finds it (None: fallback)."""
        return next((p["username"] for p in self.room_info["participants"] if p["peer_id"] == stream_id), None)

    def receiving(self, count: int) -> bool:
        return len(self.remote) >= count and all(r.frames > 0 for r in self.remote)

    def receiving_since(self, at: float, count: int) -> bool:
        """``count`` streams that came after ``at`` (a new connection's), each with frames."""
        fresh = [r for r in self.remote if r.created_at >= at]
        return len(fresh) >= count and all(r.frames > 0 for r in fresh)


def split_candidates(sdp: str):
    """The offer without its candidates, and those of the first m-section as RTCIceCandidate.toJSON()."""
    parsed = SessionDescription.parse(sdp)
    first = parsed.media[0]
    ufrag = first.ice.usernameFragment if first.ice else None
    candidates = [{"candidate": line[2:], "sdpMid": first.rtp.muxId, "sdpMLineIndex": 0, "usernameFragment": ufrag}
                  for line in _section(sdp, 0) if line.startswith("a=candidate:")]
    stripped = "\r\n".join(line for line in sdp.split("\r\n")
                           if not line.startswith(("a=candidate:", "a=end-of-candidates")))
    return stripped, candidates


def _section(sdp: str, index: int) -> list[str]:
    sections = re.split(r"\r\n(?=m=)", sdp)
    return sections[index + 1].split("\r\n")


# -- measuring ----------------------------------------------------------------------------------------------
def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def worker_pids(daemon_pid: int) -> list[int]:
    """The daemon's children running wecompany.sfu.worker."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(_stat(int(entry))[1]) != daemon_pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"wecompany.sfu.worker" in f.read():
                    pids.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return sorted(pids)


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_vmstat(text: str) -> dict:
    lines = [line.split() for line in text.splitlines() if line.strip()]
    header = next(line for line in lines if "st" in line and "us" in line)
    rows = [line for line in lines if line and line[0].isdigit()][1:]  # the first is since boot
    columns = {name: [int(row[header.index(name)]) for row in rows] for name in ("us", "sy", "id", "st")}
    return {name: values for name, values in columns.items()}


async def measure(browsers: list[Browser], daemon_pid: int, seconds: float) -> dict:
    workers = worker_pids(daemon_pid)
    vmstat = await asyncio.create_subprocess_exec("vmstat", "1", str(int(seconds) + 1),
                                                  stdout=asyncio.subprocess.PIPE)
    frames0 = {(b.name, id(r)): r.frames for b in browsers for r in b.remote}
    sent0 = {b.signaling_id: (b.audio.sent, b.video.sent) for b in browsers}
    cpu0 = {pid: cpu_seconds(pid) for pid in workers + [daemon_pid]}
    wall0 = time.monotonic()
    await asyncio.sleep(seconds)
    wall = time.monotonic() - wall0
    cpu = {pid: cpu_seconds(pid) - cpu0[pid] for pid in cpu0}
    sent = {b.signaling_id: {"audio": (b.audio.sent - sent0[b.signaling_id][0]) / wall,
                             "video": (b.video.sent - sent0[b.signaling_id][1]) / wall} for b in browsers}
    out, _ = await vmstat.communicate()
    streams = []
    for b in browsers:
        for r in b.remote:
            streams.append({"receiver": b.name, "publisher": r.stream_id, "kind": r.kind,
                            "received_per_s": round((r.frames - frames0[(b.name, id(r))]) / wall, 2),
                            "sent_per_s": round(sent.get(r.stream_id, {}).get(r.kind, 0.0), 2)})
    forwarded = len(streams)
    worker_cpu = sum(cpu[pid] for pid in workers)
    return {"seconds": round(wall, 2), "streams": streams, "forwarded_streams": forwarded,
            "worker_pids": workers,
            "worker_cpu_percent": {str(pid): round(100 * cpu[pid] / wall, 2) for pid in workers},
            "worker_cpu_percent_per_forwarded_stream": round(100 * worker_cpu / wall / max(1, forwarded), 3),
            "daemon_cpu_percent": round(100 * cpu[daemon_pid] / wall, 2),
            "vmstat": parse_vmstat(out.decode())}


async def until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return predicate()


# -- scenarios ------------------------------------------------------------------------------------------
async def meeting(api: Api, names: list[str], settings: dict | None = None) -> list[Browser]:
    clips = {"h264": encode_clip("libx264")}
    browsers = [Browser(name, api, clips) for name in names]
    for b in browsers:
        await b.register_login()
    host = browsers[0]
    status, body = await api.call("POST", "/api/v1/meetings", {"title": "sfu e2e", **(
        {"settings": settings} if settings else {})}, token=host.token)
    assert status in (200, 201), (status, body)
    meeting_id = body["data"]["meeting"]["id"]
    for b in browsers:
        await b.join_meeting(meeting_id)
    for b in browsers:
        await b.join_signaling()
    for b in browsers:
        status, body = await b.connect_sfu()
        assert status == 200, (b.name, status, body)
    return browsers


def facts(b: Browser) -> dict:
    """What ``b`` saw until now (a copy: the clients go on)."""
    return json.loads(json.dumps({"name": b.name, "user_id": b.user_id, "signaling_id": b.signaling_id, "peer_id": b.peer_id,
            "room_id": b.room_id, "ice_servers": b.room_info["ice_servers"],
            "streams": [{"publisher": r.stream_id, "kind": r.kind, "frames": r.frames, "ended_at": r.ended_at}
                        for r in b.remote],
            "offers": b.offers, "poll_errors": b.poll_log[-5:], "candidates_sent": b.candidates_sent,
            "candidates_received": b.candidates_received, "peer_gone": b.peer_gone, "reconnect": b.reconnect,
            "connection_state": b.pc.connectionState if b.pc else None}))


async def stale(api: Api, peer_id: str) -> dict:
    out = {}
    for route in ("ice-candidates", "offer"):
        status, body = await api.call("GET", f"/api/v1/webrtc/peer/{peer_id}/{route}")
        out[route] = [status, message_of(body)]
    return out


async def mesh(api: Api, daemon_pid: int, seconds: float) -> dict:
    browsers = await meeting(api, ["alice", "bob", "carol"])
    result: dict = {}
    result["all_receiving"] = await until(lambda: all(b.receiving(4) for b in browsers), TIMEOUT)
    result["receiving_at"] = now()
    # The browser labels a tile by looking its stream id up in room-info's participants (the latest one).
    result["labels"] = {b.name: {r.stream_id: b.label(r.stream_id) for r in b.remote} for b in browsers}
    await asyncio.sleep(1.0)  # past the first keyframe wait
    result["measure"] = await measure(browsers, daemon_pid, seconds)
    alice, bob, carol = browsers
    result["leave"] = await carol.leave()
    theirs = [r for b in (alice, bob) for r in b.remote if r.stream_id == carol.signaling_id]
    result["carol_tracks_ended"] = await until(lambda: all(r.ended for r in theirs), 20)
    before = {id(r): r.frames for b in (alice, bob) for r in b.remote if r.stream_id != carol.signaling_id}
    await asyncio.sleep(1.5)
    result["still_flowing_after_leave"] = sum(
        1 for b in (alice, bob) for r in b.remote if r.stream_id != carol.signaling_id and r.frames > before[id(r)])
    result["stale_peer"] = await stale(api, carol.peer_id)
    result["clients"] = [facts(b) for b in browsers]
    for b in (alice, bob):
        await b.leave()
    return result


async def pair(api: Api, scenario: str) -> dict:
    browsers = await meeting(api, ["alice", "bob"])
    alice, bob = browsers
    result: dict = {"all_receiving": await until(lambda: all(b.receiving(2) for b in browsers), TIMEOUT)}
    room = alice.room_id
    if scenario == "stats":
        # Media flows both ways and every renegotiation is answered: what /peers and /stats then say.
        await until(lambda: all(b.offers for b in browsers), 5)
        for name, path in (("peers", f"/api/v1/webrtc/room/{room}/peers"), ("stats", f"/api/v1/webrtc/room/{room}/stats")):
            status, body = await api.call("GET", path)
            result[name] = [status, body]
        # Another user's Bearer token on alice's connection.
        status, body = await api.call("GET", f"/api/v1/webrtc/peer/{alice.peer_id}/offer", token=bob.token)
        result["other_token_poll"] = [status, message_of(body)]
        status, body = await api.call("POST", "/api/v1/webrtc/ice-candidate", {
            "peer_id": alice.peer_id, "candidate": None}, token=bob.token)
        result["other_token_candidate"] = [status, message_of(body)]
        status, body = await api.call("POST", f"/api/v1/webrtc/room/{room}/leave", {"user_id": alice.user_id},
                                      token=bob.token)
        result["other_token_leave"] = [status, message_of(body)]
        result["leaves"] = [await b.leave() for b in browsers]
        gone = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, body = await api.call("GET", f"/api/v1/webrtc/room/{room}/peers")
            gone = [status, body, now()]
            if status == 404 or (status == 200 and body["count"] == 0):
                break
            await asyncio.sleep(0.2)
        result["peers_after_leave"] = gone
    else:
        status, body = await api.call("POST", f"/api/v1/meetings/{alice.meeting_id}/end", token=alice.token)
        result["end"] = [status, now()]
        await until(lambda: all(b.reconnect is not None and "status" in b.reconnect for b in browsers), 15)
        result["stale_peer"] = await stale(api, alice.peer_id)
        status, body = await api.call("GET", f"/api/v1/webrtc/room/{room}/peers")
        result["peers_after_end"] = [status, message_of(body)]
        for b in browsers:
            b.stop_polls()
            await b.ws.close()
    result["clients"] = [facts(b) for b in browsers]
    for b in browsers:
        await b.pc.close()
    return result


async def abort(api: Api) -> dict:
    """alice drops the connection of her answer to the server's first offer (a fetch aborted by the tab)."""
    clips = {"h264": encode_clip("libx264")}
    alice, bob = Browser("alice", api, clips), Browser("bob", api, clips)
    alice.abort_first_answer = True
    for b in (alice, bob):
        await b.register_login()
    status, body = await api.call("POST", "/api/v1/meetings", {"title": "abort"}, token=alice.token)
    for b in (alice, bob):
        await b.join_meeting(body["data"]["meeting"]["id"])
        await b.join_signaling()
        status, reply = await b.connect_sfu()
        assert status == 200, (b.name, status, reply)
    await until(lambda: alice.offers and alice.offers[0]["answer_status"] == "dropped", TIMEOUT)
    # The answer reached the server: the connection lives on and alice receives bob.
    result = {"alice_receiving": await until(lambda: alice.receiving(2) and alice.offers[-1]["answer_status"] == 200
                                             or alice.peer_gone is not None, TIMEOUT)}
    await asyncio.sleep(2.0)
    result["clients"] = [facts(b) for b in (alice, bob)]
    for b in (alice, bob):
        b.stop_polls()
        await b.ws.close()
        await b.pc.close()
    return result


def recording_messages(b: Browser) -> list:
    return [m.get("payload") for m in b.ws_messages if m.get("type") in (15, "recording")]


async def record(api: Api, daemon_pid: int, seconds: float, scenario: str) -> dict:
    """
    alice (the host), bob and carol publish in a meeting with enable_recording;
    carol (a participant) may not start a recording, alice does; it runs
    ``seconds``, then: ``record`` stops it over REST and reads the routes;
    ``record-end`` ends the meeting; ``record-term`` / ``record-kill`` send the
    daemon SIGTERM / SIGKILL with the recording running (the test restarts it).
    """
    browsers = await meeting(api, ["alice", "bob", "carol"], {"enable_recording": True})
    alice, bob, carol = browsers
    result: dict = {"all_receiving": await until(lambda: all(b.receiving(4) for b in browsers), TIMEOUT)}
    await asyncio.sleep(1.0)  # past the first keyframes
    meeting_id = alice.meeting_id
    result.update(meeting_id=meeting_id, token=alice.token,
                  users={b.name: b.user_id for b in browsers}, peers={b.name: b.peer_id for b in browsers})
    status, body = await api.call("POST", f"/api/v1/meetings/{meeting_id}/recording/start", {}, token=carol.token)
    result["participant_start"] = [status, message_of(body)]
    status, body = await api.call("POST", f"/api/v1/meetings/{meeting_id}/recording/start",
                                  {"title": "weekly"}, token=alice.token)
    result["start"] = [status, body]
    started = time.monotonic()
    result["told_started"] = await until(lambda: all(recording_messages(b) for b in browsers), 5)
    await asyncio.sleep(seconds)
    if scenario in ("record-term", "record-kill"):
        result["ran_s"] = time.monotonic() - started
        os.kill(daemon_pid, signal.SIGTERM if scenario == "record-term" else signal.SIGKILL)
        for b in browsers:  # the tabs close (bounded: the server is going or gone)
            b.stop_polls()
            for closing in (b.ws.close(), b.pc.close()):
                try:
                    await asyncio.wait_for(closing, 5)
                except (asyncio.TimeoutError, OSError):
                    pass
        return result
    if scenario == "record-end":
        status, body = await api.call("POST", f"/api/v1/meetings/{meeting_id}/end", token=alice.token)
        result["end"] = [status, message_of(body)]
    else:
        status, body = await api.call("POST", f"/api/v1/meetings/{meeting_id}/recording/stop", {},
                                      token=alice.token)
        result["stop"] = [status, body]
    result["ran_s"] = time.monotonic() - started
    result["told"] = {b.name: recording_messages(b) for b in browsers}
    await until(lambda: all(len(recording_messages(b)) >= 2 for b in browsers), 5)
    result["told"] = {b.name: recording_messages(b) for b in browsers}
    for b in browsers:
        b.stop_polls()
        await b.ws.close()
        await b.pc.close()
    return result


async def cluster_meeting(browsers: list[Browser]) -> None:
    """Each registers and logs in on its own node; the first creates the meeting; all join it there."""
    for b in browsers:
        await b.register_login()
    host = browsers[0]
    status, body = await host.api.call("POST", "/api/v1/meetings", {"title": "sfu cluster"}, token=host.token)
    assert status in (200, 201), (status, body)
    for b in browsers:
        await b.join_meeting(body["data"]["meeting"]["id"])
    for b in browsers:
        await b.join_signaling()


async def cluster(apis: list[Api]) -> dict:
    """alice: REST and signaling on the first node, SFU calls on the second; bob the other way round."""
    first, second = apis
    clips = {"h264": encode_clip("libx264")}
    alice, bob = Browser("alice", first, clips, sfu_api=second), Browser("bob", second, clips, sfu_api=first)
    await cluster_meeting([alice, bob])
    result: dict = {}
    for b in (alice, bob):
        status, body = await b.connect_sfu()
        assert status == 200, (b.name, status, body)
    result["all_receiving"] = await until(lambda: alice.receiving(2) and bob.receiving(2), TIMEOUT)
    await until(lambda: all(b.offers for b in (alice, bob)), 5)
    result["clients"] = [facts(b) for b in (alice, bob)]
    # Either node answers for the room: its peers, and either connection's offer poll.
    room = alice.room_id
    result["peers"] = {}
    for api in apis:
        status, body = await api.call("GET", f"/api/v1/webrtc/room/{room}/peers")
        result["peers"][api.base] = [status, sorted(p["peer_id"] for p in body["peers"]) if status == 200 else body]
    result["leaves"] = [await b.leave() for b in (alice, bob)]
    # A leave without a token closes a connection once its signaling session has left the room: on the
    # room's node, as soon as the leave over the other node's WebSocket has reached it.
    gone = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, body = await first.call("GET", f"/api/v1/webrtc/room/{room}/peers")
        gone = [status, body, now()]
        if status == 404 or (status == 200 and body["count"] == 0):
            break
        await asyncio.sleep(0.2)
    result["peers_after_leave"] = gone
    result["stale_peer"] = {api.base: await stale(api, alice.peer_id) for api in apis}
    return result


async def failover(apis: list[Api], victim_pid: int) -> dict:
    """Both receive through the room's node (the third); it is killed; both reconnect elsewhere."""
    n1, n2, n3 = apis
    clips = {"h264": encode_clip("libx264")}
    alice = Browser("alice", n1, clips, sfu_api=Balancer([n3, n1, n2]))
    bob = Browser("bob", n2, clips, sfu_api=Balancer([n1, n2, n3]))
    browsers = [alice, bob]
    await cluster_meeting(browsers)
    for b in browsers:
        status, body = await b.connect_sfu()
        assert status == 200, (b.name, status, body)
    result: dict = {"all_receiving": await until(lambda: all(b.receiving(2) for b in browsers), TIMEOUT)}
    result["before"] = [facts(b) for b in browsers]
    await asyncio.sleep(1.0)
    killed_at = now()
    os.kill(victim_pid, signal.SIGKILL)
    log("killed the room's node at", killed_at)
    result["killed_at"] = killed_at
    result["reconnected"] = await until(lambda: all(b.reconnect is not None and "status" in b.reconnect
                                                    for b in browsers), TIMEOUT)
    result["receiving_again"] = await until(lambda: all(b.receiving_since(killed_at, 2) for b in browsers), TIMEOUT)
    result["receiving_again_at"] = now()
    result["after"] = [facts(b) for b in browsers]
    result["calls_through"] = {b.name: sorted(set(b.sfu_api.used)) for b in browsers}
    for b in browsers:
        b.stop_polls()
        await b.ws.close()
        await b.pc.close()
    return result


async def main(scenario: str, base: str, daemon_pid: int, seconds: float) -> dict:
    if scenario == "cluster":
        return await cluster([Api(b) for b in base.split(",")])
    if scenario == "failover":
        return await failover([Api(b) for b in base.split(",")], daemon_pid)
    api = Api(base)
    if scenario == "mesh":
        return await mesh(api, daemon_pid, seconds)
    if scenario.startswith("record"):
        return await record(api, daemon_pid, seconds, scenario)
    if scenario == "abort":
        return await abort(api)
    return await pair(api, scenario)


if __name__ == "__main__":
    scenario, base, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 4.0
    try:
        result = asyncio.run(asyncio.wait_for(main(scenario, base, pid, seconds), 240))
    except BaseException as e:  # report and fail
        import traceback
        traceback.print_exc()
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result, sort_keys=True))
