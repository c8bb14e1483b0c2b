"""
The meeting SFU through the real daemon, with browser-like aiortc clients (sfu_peers.py,
run as its own process) on loopback.

The daemon runs with ``--sfu-addresses 127.0.0.1`` and ``--stun-servers`` naming a
STUN server this test runs on loopback (:class:`StunServer`), so room-info's
``ice_servers`` send the clients' STUN queries to it and nothing leaves the machine.
Each test stops the daemon gracefully at its end and checks its log holds no
traceback.
"""

from __future__ import annotations

import json
import os
import sys

import treq
from aioice import stun
from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue

from tests.e2e.daemon import daemon_environment
from tests.e2e.test_daemon import DaemonTestCase
from tests.e2e.test_rest import Http
from tests.e2e.test_signaling import MeetingPeople, next_message, ws_connect

PEERS = os.path.join(os.path.dirname(__file__), "sfu_peers.py")
MEASURE_SECONDS = 5
FLOOR = 0.6  # of the frames sent: the machine is shared and noisy
PEER_NOT_FOUND = "peer not found"
OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


class StunServer(DatagramProtocol):
    """A STUN binding responder on loopback (RFC 5389): the clients' only ICE server."""

    def __init__(self) -> None:
        self.requests = 0

    def datagramReceived(self, data, addr) -> None:
        try:
            request = stun.parse_message(data)
        except ValueError:
            return
        if request.message_method != stun.Method.BINDING or request.message_class != stun.Class.REQUEST:
            return
        self.requests += 1
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=request.transaction_id,
                                attributes={"XOR-MAPPED-ADDRESS": addr})
        response.add_fingerprint()
        self.transport.write(bytes(response), addr)


class SfuDaemonCase(MeetingPeople, DaemonTestCase):
    """A daemon with its SFU on loopback, and sfu_peers.py's scenarios against it."""

    timeout = 240

    def start_stun(self) -> str:
        """The loopback STUN server of the test (started once) -> its URL."""
        if getattr(self, "stun", None) is None:
            self.stun = StunServer()
            port = reactor.listenUDP(0, self.stun, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            self.stun_url = f"stun:127.0.0.1:{port.getHost().port}"
        return self.stun_url

    async def start_sfu_daemon(self, *extra_args: str, daemon=None):
        """A daemon with the SFU on loopback (``daemon``: start that one again, on its data)."""
        self.start_stun()
        if daemon is not None:
            return await daemon.start()
        return await self.start_daemon("--sfu-addresses", "127.0.0.1", "--stun-servers", self.stun_url,
                                       *extra_args)

    async def run_peers(self, daemon, scenario: str, seconds: float = MEASURE_SECONDS, nodes=None) -> dict:
        """
        Run sfu_peers.py's ``scenario`` against ``daemon`` (its pid is the
        scenario's DAEMON_PID), or against every one of ``nodes`` (daemons of
        a cluster, in order).
        """
        daemons = nodes or [daemon]
        argv = [PEERS, scenario, ",".join(f"http://127.0.0.1:{d.http_port}" for d in daemons),
                str(daemon._process.transport.pid), str(seconds)]
        out, err, status = await getProcessOutputAndValue(sys.executable, argv, env=daemon_environment())
        self.peers_log = err.decode()
        self.assertEqual(status, 0, "\n".join([self.peers_log, *(d.report() for d in daemons)]))
        result = json.loads(out)
        shown = {k: v for k, v in result.items() if k != "token"}
        print(f"sfu_peers {scenario}:", json.dumps(shown, sort_keys=True))  # kept in the test log
        return result

    async def stop_clean(self, daemon) -> None:
        """A graceful stop (status 0) and a log without a traceback."""
        status = await daemon.stop()
        self.assertEqual(status, 0, daemon.report())
        self.assertNotIn("Traceback", daemon.log_text(), daemon.report())


class SfuEndToEndTests(SfuDaemonCase):
    def check_ice(self, client: dict) -> None:
        """The client used room-info's ice_servers (our STUN server) and trickled its candidates."""
        self.assertEqual(client["ice_servers"][0]["urls"], [self.stun_url])
        self.assertTrue(client["candidates_sent"], client)
        self.assertEqual(set(client["candidates_sent"]), {200}, client)

    async def test_three_participants_forward_audio_and_video(self) -> None:
        daemon = await self.start_sfu_daemon()
        result = await self.run_peers(daemon, "mesh")
        report = json.dumps({k: v for k, v in result.items() if k != "clients"}, indent=1)
        clients = {c["name"]: c for c in result["clients"]}
        self.assertTrue(result["all_receiving"], json.dumps(result["clients"], indent=1))
        self.assertGreater(self.stun.requests, 0)
        ids = {name: c["signaling_id"] for name, c in clients.items()}
        for name, client in clients.items():
            self.check_ice(client)
            # msid stream id = the publisher's signaling peer_id, audio and video alike
            expected = sorted((ids[o], kind) for o in clients if o != name for kind in ("audio", "video"))
            self.assertEqual(sorted((s["publisher"], s["kind"]) for s in client["streams"]), expected, name)
            self.assertEqual(result["labels"][name], {ids[o]: o for o in clients if o != name}, name)
            for offer in client["offers"]:
                self.assertEqual(offer["answer_status"], 200, client)
                self.assertEqual(offer["mismatches"], [], f"{name}: a re-offer changed what was negotiated")
        streams = result["measure"]["streams"]
        self.assertEqual(len(streams), 12, report)
        for s in streams:
            self.assertGreater(s["sent_per_s"], 0, report)
            self.assertGreaterEqual(s["received_per_s"], FLOOR * s["sent_per_s"], report)
        # carol leaves: alice's and bob's tracks of her end, after the server's re-offer
        self.assertEqual(result["leave"]["status"], 200, report)
        self.assertTrue(result["carol_tracks_ended"], json.dumps(result["clients"], indent=1))
        left_at = result["leave"]["at"]
        for name, other in (("alice", "bob"), ("bob", "alice")):
            client = clients[name]
            # Before: the other two's audio and video; the server's re-offer after carol left drops hers
            # (her m-lines inactive), which is what ends a browser's tracks. aiortc ends them already on
            # the RTCP BYE the worker sends when it stops those senders, as it makes that re-offer.
            self.assertIn(sorted([ids[p], k] for p in (other, "carol") for k in ("audio", "video")),
                          [o["sending"] for o in client["offers"] if o["at"] < left_at], name)
            after = [o for o in client["offers"] if o["at"] >= left_at]
            self.assertTrue(after, f"{name} got no offer after carol left")
            self.assertEqual(after[-1]["sending"], sorted([ids[other], k] for k in ("audio", "video")), name)
            for s in client["streams"]:
                if s["publisher"] == ids["carol"]:
                    self.assertIsNotNone(s["ended_at"], name)
                    self.assertGreaterEqual(s["ended_at"], left_at, name)
                else:
                    self.assertIsNone(s["ended_at"], name)
        self.assertEqual(result["still_flowing_after_leave"], 4, report)
        for route, (status, message) in result["stale_peer"].items():
            self.assertEqual(status, 404, route)
            self.assertIn(PEER_NOT_FOUND, message, route)
        self.assertTrue(result["measure"]["worker_pids"], report)
        await self.stop_clean(daemon)

    async def test_ending_the_meeting_closes_every_connection(self) -> None:
        daemon = await self.start_sfu_daemon()
        result = await self.run_peers(daemon, "end")
        self.assertTrue(result["all_receiving"], json.dumps(result, indent=1))
        self.assertEqual(result["end"][0], 200, result)
        for client in result["clients"]:
            self.check_ice(client)
            self.assertIsNotNone(client["peer_gone"], client)
            gone_at, route, message = client["peer_gone"]
            self.assertIn(PEER_NOT_FOUND, message)
            self.assertGreaterEqual(gone_at, result["end"][1])
            # The server closed its end: DTLS close_notify closed the client's PeerConnection before the poll.
            self.assertIn(client["reconnect"]["state_before"], ("closed", "failed"), client)
            # The browser then reconnects: a new POST /answer, refused now the meeting is over.
            self.assertEqual(client["reconnect"]["status"], 403, client)
        for route, (status, message) in result["stale_peer"].items():
            self.assertEqual((status, PEER_NOT_FOUND in message), (404, True), route)
        self.assertEqual(result["peers_after_end"][0], 404, result)
        await self.stop_clean(daemon)

    async def test_peers_and_stats_show_the_room(self) -> None:
        daemon = await self.start_sfu_daemon()
        result = await self.run_peers(daemon, "stats")
        self.assertTrue(result["all_receiving"], json.dumps(result, indent=1))
        clients = {c["name"]: c for c in result["clients"]}
        room = clients["alice"]["room_id"]
        status, peers = result["peers"]
        self.assertEqual(status, 200, peers)
        self.assertEqual((peers["room_id"], peers["count"]), (room, 2))
        self.assertEqual(sorted((p["peer_id"], p["user_id"], p["media_type"], p["status"]) for p in peers["peers"]),
                         sorted((c["peer_id"], c["user_id"], "audio_video", "connected") for c in clients.values()))
        for p in peers["peers"]:
            self.assertTrue(p["created_at"] and p["last_activity"], p)
        status, stats = result["stats"]
        self.assertEqual(status, 200, stats)
        self.assertEqual(stats, {"room_id": room, "total_peers": 2, "connected_peers": 2, "audio_streams": 2,
                                 "video_streams": 2, "screen_shares": 0})
        # bob's token on alice's connection
        for key in ("other_token_poll", "other_token_candidate", "other_token_leave"):
            self.assertEqual(result[key][0], 403, (key, result[key]))
        for leave in result["leaves"]:
            self.assertEqual(leave["status"], 200, leave)
            self.assertEqual(leave["rest_leave"], 200, leave)
        status, body, _ = result["peers_after_leave"]
        self.assertTrue(status == 404 or body["count"] == 0, result["peers_after_leave"])
        await self.stop_clean(daemon)

    async def test_an_answer_whose_client_went_away_still_applies(self) -> None:
        """
        A browser may abort route 5 in flight (the tab closes, pagehide): the
        answer reached the server, so the connection must carry on, with no
        500 and no traceback in the log.
        """
        daemon = await self.start_sfu_daemon()
        result = await self.run_peers(daemon, "abort")
        alice = result["clients"][0]
        self.assertEqual(alice["offers"][0]["answer_status"], "dropped", alice)
        self.assertIsNone(alice["peer_gone"], alice)
        self.assertTrue(result["alice_receiving"], alice)
        await self.stop_clean(daemon)

    async def test_refusals(self) -> None:
        daemon = await self.start_sfu_daemon()
        http = Http(self, daemon)
        people, mid = await self.meeting_of(http, "refusals", names=("alice", "bob"))
        (alice_id, alice_token), (_, bob_token) = people["alice"], people["bob"]
        code, body = await http.call("POST", f"/api/v1/meetings/{mid}/join", {}, token=alice_token)
        room = body["data"]["room_id"]

        async def call(method, path, body=None, token=None, raw=None):
            headers = {b"Content-Type": [b"application/json"]}
            if token:
                headers[b"Authorization"] = [f"Bearer {token}".encode()]
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            response = await treq.request(method, http.base + path, data=data, headers=headers, pool=http.pool,
                                          timeout=10)
            content = await response.content()
            return response.code, (json.loads(content) if content else None)

        def answer(user_id, sdp=OFFER):
            return {"room_id": room, "user_id": str(user_id), "offer": {"type": "offer", "sdp": sdp}}

        # Made-up peer ids: 404 "peer not found" on every peer route.
        for method, path, body in (
                ("GET", "/api/v1/webrtc/peer/made-up/ice-candidates", None),
                ("GET", "/api/v1/webrtc/peer/made-up/offer", None),
                ("POST", "/api/v1/webrtc/peer/made-up/answer", {"answer": {"type": "answer", "sdp": OFFER}}),
                ("POST", "/api/v1/webrtc/ice-candidate", {"peer_id": "made-up", "candidate": {
                    "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0}})):
            code, reply = await call(method, path, body)
            self.assertEqual(code, 404, (path, reply))
            self.assertIn(PEER_NOT_FOUND, reply["message"], (path, reply))

        # Joined over REST but no signaling session in the room: 403.
        code, reply = await call("POST", "/api/v1/webrtc/answer", answer(alice_id))
        self.assertEqual(code, 403, reply)
        self.assertIn("signaling", reply["message"])

        # Alice in the room over signaling; bob's token on her behalf: 403.
        alice_ws = await ws_connect(self, daemon.http_port, mid, alice_id, "web_alice001", alice_token)
        alice_ws.send({"type": 4})
        await next_message(alice_ws, 14)
        code, reply = await call("POST", "/api/v1/webrtc/answer", answer(alice_id), token=bob_token)
        self.assertEqual(code, 403, reply)
        # A user who is not in the meeting at all, with his own token: 403.
        await http.register("mallory")
        mallory = await http.login("mallory")
        code, reply = await call("POST", "/api/v1/webrtc/answer", answer(mallory["user"]["id"]),
                                 token=mallory["token"])
        self.assertEqual(code, 403, reply)

        # Malformed bodies: 400 naming what is wrong.
        for path, body, raw, words in (
                ("/api/v1/webrtc/answer", None, b"{not json", ("json",)),
                ("/api/v1/webrtc/answer", {"room_id": room, "user_id": str(alice_id)}, None, ("offer",)),
                ("/api/v1/webrtc/answer", {"room_id": room, "offer": {"type": "offer", "sdp": OFFER}}, None,
                 ("user_id",)),
                ("/api/v1/webrtc/answer", answer("abc"), None, ("user_id",)),
                ("/api/v1/webrtc/answer", {**answer(alice_id), "room_id": ""}, None, ("room_id",)),
                ("/api/v1/webrtc/answer", {**answer(alice_id), "offer": {"type": "answer", "sdp": OFFER}}, None,
                 ("type",)),
                ("/api/v1/webrtc/answer", answer(alice_id, "not an sdp"), None, ("sdp",)),
                ("/api/v1/webrtc/ice-candidate", {"candidate": None}, None, ("peer_id",)),
                ("/api/v1/webrtc/peer/made-up/answer", {"sdp": OFFER}, None, ("answer",)),
                (f"/api/v1/webrtc/room/{room}/leave", {}, None, ("user_id",))):
            code, reply = await call("POST", path, body, raw=raw)
            self.assertEqual(code, 400, (path, body, raw, reply))
            message = (reply["message"] + " " + json.dumps(reply.get("error", ""))).lower()
            for word in words:
                self.assertIn(word, message, (path, body, reply))

        # Unknown rooms.
        for route in ("peers", "stats"):
            code, reply = await call("GET", f"/api/v1/webrtc/room/nowhere/{route}")
            self.assertEqual(code, 404, reply)
        alice_ws.send({"type": 5})
        alice_ws.sendClose()
        await alice_ws.closed
        # The daemon announces the WebSocket's end to watchers from its store: let that finish before
        # the stop (a background task that finds the store stopped logs a traceback: see the report).
        await deferLater(reactor, 0.5, lambda: None)
        await self.stop_clean(daemon)
