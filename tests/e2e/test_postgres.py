"""
The real daemon on a real PostgreSQL database (``--database postgresql://...``):
what the store tests fake nowhere, proven once end to end.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from twisted.internet import reactor

from tests import pgtesting
from tests.e2e.daemon import Daemon
from tests.e2e.test_daemon import DaemonTestCase
from tests.e2e.test_rest import Http
from wecompany.times import rfc3339


class PostgreSQLDaemonTests(DaemonTestCase):
    async def test_data_outlives_a_restart(self) -> None:
        url = pgtesting.scratch_database(self)
        daemon = await self.start_daemon("--database", url)
        http = Http(self, daemon)
        await http.register("hostuser")
        host = (await http.login("hostuser"))["token"]
        code, body = await http.call("POST", "/api/v1/meetings", {
            "title": "Launch review", "start_time": rfc3339(reactor.seconds() + 120), "meeting_type": "video",
            "max_participants": 8}, token=host)
        self.assertEqual(code, 201, body)
        mid = body["data"]["meeting"]["id"]
        await http.register("guest")
        guest = (await http.login("guest"))["token"]
        code, body = await http.call("POST", f"/api/v1/meetings/{mid}/join", {}, token=guest)
        self.assertEqual(code, 200, body)
        for token, text in [(host, "agenda"), (guest, "hello from the guest")]:
            code, body = await http.call("POST", f"/api/v1/meetings/{mid}/messages", {"content": text}, token=token)
            self.assertEqual(code, 201, body)

        self.assertEqual(await daemon.stop(), 0, daemon.report())
        await daemon.start()
        http = Http(self, daemon)
        guest = (await http.login("GUEST"))["token"]  # case-insensitive, from the database
        code, body = await http.call("GET", f"/api/v1/meetings/{mid}/messages", token=guest)
        self.assertEqual(code, 200, body)
        self.assertEqual([m["content"] for m in body["data"]["list"]], ["agenda", "hello from the guest"])
        code, body = await http.call("GET", f"/api/v1/meetings/{mid}/participants", token=guest)
        self.assertEqual(sorted(p["username"] for p in body["data"]), ["guest", "hostuser"])

        log = daemon.log_text()
        self.assertIn(f"Using the PostgreSQL database {_without_password(url)}", log)
        self.assertNotIn("Traceback", log)
        password = urlsplit(url).password
        if password:
            self.assertNotIn(password, log)
        # Nothing went to a SQLite file instead.
        self.assertEqual([name for name in os.listdir(daemon.data_dir) if "sqlite" in name], [])

    async def test_an_unreachable_database_stops_the_daemon_before_it_listens(self) -> None:
        closed = socket.socket()  # bound, not listening: connections are refused
        self.addCleanup(closed.close)
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        daemon = Daemon(self, "--database", f"postgresql://wc:e2e-s3cret@127.0.0.1:{port}/wecompany")
        status = await daemon.run_to_exit(timeout=30)
        report = daemon.report()
        self.assertNotEqual(status, 0, report)
        self.assertIn(f"cannot connect to the PostgreSQL database postgresql://wc@127.0.0.1:{port}/wecompany", report)
        self.assertNotIn("e2e-s3cret", report)
        self.assertNotIn("listening on", report)  # no port was opened
        self.assertNotIn("Traceback", report)  # one line an operator reads, as for a port in use
        self.assertIn(f"wecompany: cannot connect to the PostgreSQL database postgresql://wc@127.0.0.1:{port}/",
                      daemon.output)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql://{user}{parts.hostname}{port}{parts.path}"
