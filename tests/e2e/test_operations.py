"""
What an operator sees of the real daemon: the metrics listener, and the
log (its format, level and the access lines).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from tests.e2e.daemon import ENDPOINT, Daemon
from tests.e2e.test_daemon import DaemonTestCase


class OperationsTestCase(DaemonTestCase):
    def http(self):
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        return pool

    async def get(self, port: int, path: str, **kwargs):
        response = await treq.get(f"http://127.0.0.1:{port}{path}", pool=self.pool, timeout=5, **kwargs)
        return response, await response.content()

    def setUp(self) -> None:
        self.pool = self.http()


class MetricsListenerTests(OperationsTestCase):
    async def test_metrics_on_their_own_port_and_not_on_the_http_site(self) -> None:
        daemon = await self.start_daemon("--metrics-port", ENDPOINT)
        self.assertEqual(set(daemon.ports), {"tcp", "http", "metrics"}, daemon.report())
        response, body = await self.get(daemon.ports["metrics"], "/metrics")
        self.assertEqual(response.code, 200, body)
        self.assertIn(b"wecompany_http_requests_total", body)
        self.assertIn(b"wecompany_tcp_connections", body)
        for name in (b"wecompany_db_query_duration_seconds_bucket", b"wecompany_logins_total",
                     b"wecompany_tcp_frames_total", b"process_cpu_seconds_total", b"python_info",
                     b"python_gc_collections_total"):
            self.assertIn(name, body)
        self.assertNotIn(b"_created", body)
        response, _ = await self.get(daemon.http_port, "/metrics")
        self.assertEqual(response.code, 404)
        response, _ = await self.get(daemon.ports["metrics"], "/health")
        self.assertEqual(response.code, 404)  # only the metrics on that port

    async def test_without_a_metrics_port_metrics_are_on_the_http_site(self) -> None:
        daemon = await self.start_daemon()
        self.assertEqual(set(daemon.ports), {"tcp", "http"}, daemon.report())
        response, body = await self.get(daemon.http_port, "/metrics")
        self.assertEqual(response.code, 200, body)
        self.assertIn(b"wecompany_http_requests_total", body)


class LogTests(OperationsTestCase):
    async def test_json_lines_from_a_real_run(self) -> None:
        """--log-format json: every line of the log is one JSON object, the daemon's own lines among them."""
        daemon = await self.start_daemon("--log-format", "json")
        response, _ = await self.get(daemon.http_port, "/health", headers={"User-Agent": "e2e-probe/1.0"})
        self.assertEqual(response.code, 200)
        await daemon.wait_for(lambda: True if '"wecompany.access"' in daemon.log_text() else None,
                              "the access line")
        self.assertEqual(await daemon.stop(), 0)
        records = [json.loads(line) for line in daemon.log_text().splitlines()]
        for record in records:
            self.assertTrue({"time", "level", "namespace", "message"} <= set(record), record)
        messages = [record["message"] for record in records]
        self.assertIn("WeCompany is ready", messages)
        self.assertIn("WeCompany stopped", messages)
        listening = [r for r in records if r["message"].startswith("listening on port")]
        self.assertEqual(sorted((r["listener"], r["port_number"]) for r in listening),
                         sorted([("http", daemon.http_port), ("tcp", daemon.tcp_port)]))
        self.assertEqual({r["level"] for r in records} - {"info", "warn", "error", "critical"}, set())
        [access] = [r for r in records if r["namespace"] == "wecompany.access"]
        self.assertEqual((access["method"], access["path"], access["status"], access["user_agent"]),
                         ("GET", "/health", 200, "e2e-probe/1.0"))
        self.assertEqual(access["request_id"], response.headers.getRawHeaders("x-request-id")[0])
        self.assertIsInstance(access["duration_ms"], float)
        self.assertGreaterEqual(access["duration_ms"], 0.0)
        self.assertIn('"e2e-probe/1.0"', access["message"])

    async def test_log_level_warn_keeps_warnings_and_drops_the_rest(self) -> None:
        """
        --log-level warn with --log-format json: nothing below warn is written,
        warnings are. The listeners are UNIX sockets in the test's directory,
        since their "listening" lines (info) are what the harness learns
        ports from; the warning is the daemon's own about a data directory
        open to other users.
        """
        from twisted.internet.endpoints import UNIXClientEndpoint
        from twisted.web.client import Agent

        daemon = Daemon(self, "--log-format", "json", "--log-level", "warn")
        sockets = tempfile.mkdtemp(prefix="wc-", dir="/tmp")  # a UNIX socket's path is short (108 bytes)
        self.addCleanup(shutil.rmtree, sockets, True)
        http_socket = os.path.join(sockets, "http.sock")
        daemon.extra_args += ["--http-port", f"unix:{http_socket}", "--port",
                              f"unix:{os.path.join(sockets, 'tcp.sock')}"]
        os.makedirs(daemon.data_dir, mode=0o755)
        os.chmod(daemon.data_dir, 0o755)  # whatever the umask: open to others, which the daemon warns of
        daemon.spawn()
        agent = Agent.usingEndpointFactory(
            reactor, type("UnixSocket", (), {"endpointForURI": lambda self, uri: UNIXClientEndpoint(
                reactor, http_socket)})(), pool=self.pool)

        async def health():
            try:
                response = await agent.request(b"GET", b"http://daemon/health")
            except Exception:  # noqa: BLE001 - not listening yet
                return None
            await treq.content(response)
            return response.code

        async def poll():
            deadline = reactor.seconds() + 30
            while reactor.seconds() < deadline:
                code = await health()
                if code is not None:
                    return code
                self.assertTrue(daemon.running, daemon.report())
                await deferLater(reactor, 0.1, lambda: None)
            self.fail(f"the daemon did not answer on {http_socket}\n{daemon.report()}")

        self.assertEqual(await poll(), 200)
        self.assertEqual(await daemon.stop(), 0)
        records = [json.loads(line) for line in daemon.log_text().splitlines()]
        self.assertEqual({r["level"] for r in records} - {"warn", "error", "critical"}, set(), records)
        self.assertTrue(any(r["level"] == "warn" and "open to other local users" in r["message"]
                            for r in records), records)
        self.assertFalse(any(r["message"] == "WeCompany is ready" for r in records))  # info, filtered out
        self.assertFalse(any(r["namespace"] == "wecompany.access" for r in records))

    async def test_no_factory_start_and_stop_lines(self) -> None:
        daemon = await self.start_daemon()
        response, _ = await self.get(daemon.http_port, "/health")
        self.assertEqual(response.code, 200)
        self.assertEqual(await daemon.stop(), 0)
        text = daemon.log_text()
        self.assertIn("WeCompany stopped", text)
        self.assertNotIn("Starting factory", text)
        self.assertNotIn("Stopping factory", text)
