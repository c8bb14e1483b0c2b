"""
A real WebRTC check: two aiortc peers negotiate offer/answer/ICE through the
daemon's signaling, reach ICE ``connected`` on loopback and exchange a
data-channel message (see webrtc_peers.py, run as its own process).
"""

from __future__ import annotations

import os
import sys

from twisted.internet.utils import getProcessOutputAndValue

from tests.e2e.daemon import daemon_environment
from tests.e2e.test_daemon import DaemonTestCase
from tests.e2e.test_rest import Http

PEERS = os.path.join(os.path.dirname(__file__), "webrtc_peers.py")


class WebRTCTests(DaemonTestCase):
    timeout = 120

    async def test_two_aiortc_peers_connect_through_signaling(self) -> None:
        daemon = await self.start_daemon()
        http = Http(self, daemon)
        people = []
        for name in ("webrtca", "webrtcb"):
            await http.register(name)
            data = await http.login(name)
            people.append((str(data["user"]["id"]), data["token"]))
        code, body = await http.call("POST", "/api/v1/meetings", {"title": "webrtc"}, token=people[0][1])
        mid = body["data"]["meeting"]["id"]
        for _, token in people:
            code, body = await http.call("POST", f"/api/v1/meetings/{mid}/join", {}, token=token)
            self.assertEqual(code, 200, body)
        argv = [PEERS, f"ws://127.0.0.1:{daemon.http_port}", str(mid), *people[0], *people[1]]
        out, err, status = await getProcessOutputAndValue(sys.executable, argv, env=daemon_environment())
        report = out.decode() + err.decode()
        self.assertEqual(status, 0, report)
        self.assertIn("OK ICE", report)
        self.assertIn("reply='echo: hello over webrtc'", report)
