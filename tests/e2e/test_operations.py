"""
What an operator sees of the real daemon: the metrics listener, and the
log (its format, level and the access lines).
"""

from __future__ import annotations

import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from tests.e2e.daemon import ENDPOINT
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
