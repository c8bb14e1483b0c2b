"""GET /health through the real resource tree, without sockets."""

import json

from treq.testing import StubTreq
from twisted.internet.defer import fail
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import FakeClient
from wecompany.domain.calls import CallService
from wecompany.domain.sessions import SessionRegistry
from wecompany.store.memory import MemoryStore
from wecompany.web.site import make_site


class BrokenStore:
    def ping(self):
        return fail(RuntimeError("database is gone"))


class HealthTests(SynchronousTestCase):
    def get(self, store, registry=None, calls=None, method="GET"):
        treq = StubTreq(make_site(store, registry, calls).resource)
        response = self.successResultOf(treq.request(method, "http://localhost/health"))
        body = self.successResultOf(response.content())
        return response, body

    def test_healthy(self):
        store = MemoryStore()
        store.start()
        registry = SessionRegistry()
        registry.attach(FakeClient("1"))
        response, body = self.get(store, registry, CallService(None))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])
        data = json.loads(body)
        self.assertEqual((data["status"], data["database"], data["online_users"], data["active_calls"]),
                         ("ok", "ok", 1, 0))

    def test_database_down_is_503(self):
        response, body = self.get(BrokenStore())
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(body)["database"], "unavailable")

    def test_stopped_store_is_503(self):
        response, _ = self.get(MemoryStore())  # never started
        self.assertEqual(response.code, 503)

    def test_head(self):
        store = MemoryStore()
        store.start()
        response, body = self.get(store, method="HEAD")
        self.assertEqual((response.code, body), (200, b""))

    def test_unknown_path_404(self):
        store = MemoryStore()
        store.start()
        treq = StubTreq(make_site(store).resource)
        response = self.successResultOf(treq.get("http://localhost/nope"))
        self.assertEqual(response.code, 404)
