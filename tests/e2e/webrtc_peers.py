"""
Two real WebRTC peers (aiortc) negotiating through the daemon's signaling.

Run by tests/e2e/test_webrtc.py as its own process (aiortc is asyncio; the
tests run on Twisted):

    python webrtc_peers.py WS_BASE MEETING_ID UID_A TOKEN_A UID_B TOKEN_B

Both peers connect to /ws/signaling (A in the seed dialect, B in the numeric
one), join, and negotiate: A offers, B answers, and both send every ICE
candidate as an ``ice-candidate`` message, which the other adds. The script
waits for ICE ``connected`` on both sides and a data-channel round trip, and
exits 0 only then (1 on any failure, with the reason on stderr).

Only loopback is used: ICE gathers host candidates on 127.0.0.1 alone, and no
STUN or TURN server is given, so no packet leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp
import websockets

TIMEOUT = 30.0

# aioice leaves out 127.0.0.1 and takes every other interface; here only loopback may be used.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


class Peer:
    def __init__(self, name: str, numeric: bool) -> None:
        self.name = name
        self.numeric = numeric
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.ice_connected = asyncio.Event()
        self.pc.on("iceconnectionstatechange", self._ice_state)

    def _ice_state(self) -> None:
        print(f"{self.name}: ICE {self.pc.iceConnectionState}", file=sys.stderr)
        if self.pc.iceConnectionState in ("connected", "completed"):
            self.ice_connected.set()

    def t(self, kind: str):
        numbers = {"offer": 1, "answer": 2, "ice-candidate": 3, "join": 4, "room-info": 14}
        return numbers[kind] if self.numeric else kind

    async def connect(self, base: str, meeting_id: str, user_id: str, token: str) -> None:
        url = f"{base}/ws/signaling?meeting_id={meeting_id}&user_id={user_id}&peer_id={self.name}&token={token}"
        self.ws = await websockets.connect(url)
        await self.send({"type": self.t("join")})
        await self.expect(self.t("room-info"))

    async def send(self, obj: dict) -> None:
        await self.ws.send(json.dumps(obj))

    async def expect(self, kind) -> dict:
        while True:
            message = json.loads(await self.ws.recv())
            if message["type"] == kind:
                return message

    async def send_description_and_candidates(self, kind: str, to_peer: str) -> None:
        desc = self.pc.localDescription
        await self.send({"type": self.t(kind), "to_peer_id": to_peer, "payload": {"sdp": desc.sdp, "type": desc.type}})
        for line in desc.sdp.splitlines():
            if line.startswith("a=candidate:"):
                await self.send({"type": self.t("ice-candidate"), "to_peer_id": to_peer,
                                 "payload": {"candidate": line[2:], "sdpMid": "0", "sdpMLineIndex": 0}})

    async def add_candidates(self, count_hint: int) -> int:
        """Add ice-candidate messages that arrive within a short window after the description."""
        added = 0
        while True:
            try:
                message = json.loads(await asyncio.wait_for(self.ws.recv(), 2.0))
            except asyncio.TimeoutError:
                return added
            if message["type"] == self.t("ice-candidate"):
                payload = message["payload"]
                candidate = candidate_from_sdp(payload["candidate"].split(":", 1)[1])
                candidate.sdpMid = payload.get("sdpMid")
                candidate.sdpMLineIndex = payload.get("sdpMLineIndex")
                await self.pc.addIceCandidate(candidate)
                added += 1


async def main(base, meeting_id, uid_a, token_a, uid_b, token_b) -> None:
    a, b = Peer("peer-a", numeric=False), Peer("peer-b", numeric=True)
    await a.connect(base, meeting_id, uid_a, token_a)
    await b.connect(base, meeting_id, uid_b, token_b)

    channel = a.pc.createDataChannel("chat")
    opened = asyncio.Event()
    reply = asyncio.get_running_loop().create_future()
    channel.on("open", opened.set)
    channel.on("message", lambda m: reply.done() or reply.set_result(m))

    @b.pc.on("datachannel")
    def on_channel(remote):
        remote.on("message", lambda m: remote.send(f"echo: {m}"))

    await a.pc.setLocalDescription(await a.pc.createOffer())
    await a.send_description_and_candidates("offer", "peer-b")

    offer = await b.expect(b.t("offer"))
    await b.pc.setRemoteDescription(RTCSessionDescription(**offer["payload"]))
    b_candidates = await b.add_candidates(1)
    await b.pc.setLocalDescription(await b.pc.createAnswer())
    await b.send_description_and_candidates("answer", "peer-a")

    answer = await a.expect(a.t("answer"))
    await a.pc.setRemoteDescription(RTCSessionDescription(**answer["payload"]))
    a_candidates = await a.add_candidates(1)
    print(f"ICE candidates relayed: to b {b_candidates}, to a {a_candidates}", file=sys.stderr)
    if not (a_candidates and b_candidates):
        raise RuntimeError("no ICE candidate came through the signaling server")

    await asyncio.wait_for(asyncio.gather(a.ice_connected.wait(), b.ice_connected.wait()), TIMEOUT)
    await asyncio.wait_for(opened.wait(), TIMEOUT)
    channel.send("hello over webrtc")
    echoed = await asyncio.wait_for(reply, TIMEOUT)
    if echoed != "echo: hello over webrtc":
        raise RuntimeError(f"unexpected data-channel reply {echoed!r}")
    print(f"OK ICE a={a.pc.iceConnectionState} b={b.pc.iceConnectionState} reply={echoed!r}")
    for peer in (a, b):
        await peer.pc.close()
        await peer.ws.close()


if __name__ == "__main__":
    try:
        asyncio.run(asyncio.wait_for(main(*sys.argv[1:7]), TIMEOUT * 3))
    except Exception as e:  # report and fail
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
