"""GET /health through the real resource tree, without sockets."""

import json

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import FakeClient, make_domain
from wecompany.store.memory import MemoryStore
from wecompany.web.site import make_site


class BrokenStore:
    def ping(self):
        return fail(RuntimeError("database is gone"))


class HealthTests(SynchronousTestCase):
    def get(self, store, live=None, method="GET"):
        treq = StubTreq(make_site(store, live).resource)
        response = self.successResultOf(treq.request(method, "http://localhost/health"))
        body = self.successResultOf(response.content())
        return response, body

    def test_healthy(self):
        domain = make_domain(self)
        domain.chat.open_session(FakeClient("1"))
        response, body = self.get(domain.store, domain)
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


class StorageHealthTests(SynchronousTestCase):
    """With the disk full, /health must not say ok."""

    def check(self, store, free_space=None):
        from wecompany.web.site import HealthResource
        return self.successResultOf(Deferred.fromCoroutine(HealthResource(store, free_space=free_space)._check()))

    def started(self):
        store = MemoryStore()
        store.start()
        return store

    def test_a_store_that_cannot_write_is_503(self):
        store = self.started()
        store.storage_problem = "disk full"
        status, body = self.check(store)
        self.assertEqual((status, body["status"], body["database"], body["storage"]),
                         (503, "unavailable", "ok", "disk full"))

    def test_low_free_space_is_503(self):
        from wecompany.web.site import MIN_FREE_BYTES
        status, body = self.check(self.started(), lambda: succeed(MIN_FREE_BYTES - 1))
        self.assertEqual((status, body["storage"], body["free_bytes"]), (503, "low", MIN_FREE_BYTES - 1))
        status, body = self.check(self.started(), lambda: succeed(MIN_FREE_BYTES))
        self.assertEqual((status, body["storage"]), (200, "ok"))

    def test_a_failing_space_check_is_logged_not_fatal(self):
        status, body = self.check(self.started(), lambda: fail(OSError("statvfs failed")))
        self.assertEqual((status, body["storage"]), (200, "ok"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_the_disk_is_looked_at_at_most_once_a_second(self):
        from twisted.internet.task import Clock

        from wecompany.web.site import HealthResource
        clock, looks = Clock(), []
        health = HealthResource(self.started(), free_space=lambda: looks.append(1) or succeed(10**12), clock=clock)
        for _ in range(50):  # a flood of checks
            self.successResultOf(Deferred.fromCoroutine(health._check()))
        clock.advance(1)
        self.successResultOf(Deferred.fromCoroutine(health._check()))
        self.assertEqual(len(looks), 2)

    def test_free_bytes_of_a_real_directory(self):
        from wecompany.web.site import free_bytes
        self.assertGreater(free_bytes("."), 0)


class DiskErrorTests(SynchronousTestCase):
    def test_a_full_disk_is_unavailable(self):
        import errno

        from tests.helpers import synchronous_runner
        from wecompany.errors import Unavailable
        from wecompany.privatefs import storage_errors_unavailable
        run = storage_errors_unavailable(synchronous_runner)

        def write(error):
            raise error

        for number, text in ((errno.ENOSPC, "disk full"), (errno.EDQUOT, "quota"), (errno.EIO, "I/O")):
            failure = self.failureResultOf(run(write, OSError(number, "no")), Unavailable)
            self.assertIn(text, failure.value.message)
        self.failureResultOf(run(write, FileNotFoundError(errno.ENOENT, "gone")), FileNotFoundError)
        self.assertEqual(self.successResultOf(run(lambda: 5)), 5)


class AccessLogTests(SynchronousTestCase):
    def test_one_line_per_request_without_the_query(self):
        from twisted.logger import formatEvent, globalLogPublisher

        from tests.sitetesting import site_client

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        store = MemoryStore()
        store.start()
        site = make_site(store)
        treq, agent = site_client(site)
        responses = []
        for query in ("token=secret", "x=1"):
            d = treq.get(f"http://localhost/health?{query}",
                         headers={"User-Agent": "probe/1.0", "Authorization": "Bearer s3cret-token",
                                  "Cookie": "session=s3cret-cookie"})
            agent.flush()
            responses.append(self.successResultOf(d))
            self.successResultOf(responses[-1].content())
        d = treq.get("http://localhost/nowhere")
        agent.flush()
        responses.append(self.successResultOf(d))
        self.successResultOf(responses[-1].content())
        self.assertEqual(self.access(events), [])  # at the end of the reactor's turn
        site.reactor.advance(0)
        [event] = self.access(events)
        lines = formatEvent(event).split("\n")
        self.assertEqual(len(lines), 3)
        ids = [response.headers.getRawHeaders("x-request-id")[0] for response in responses]
        self.assertEqual(len(set(ids)), 3)  # one per request, each response carrying its own
        for line, path, code, rid, agent_ in zip(lines, ["/health", "/health", "/nowhere"], [200, 200, 404], ids,
                                                 ["probe/1.0", "probe/1.0", ""]):
            self.assertRegex(line, rf'^\S+ GET {path} {code} \d+ \d+\.\dms {rid} "{agent_}"$')
        self.assertNotIn("s3cret", formatEvent(event))
        self.assertNotIn("s3cret", repr(event))
        self.assertEqual([(r["method"], r["path"], r["status"], r["request_id"], r["user_agent"])
                          for r in event["requests"]],
                         [("GET", "/health", 200, ids[0], "probe/1.0"), ("GET", "/health", 200, ids[1], "probe/1.0"),
                          ("GET", "/nowhere", 404, ids[2], "")])

    def test_the_duration_is_from_the_request_in_to_its_end(self):
        from twisted.logger import globalLogPublisher
        from twisted.web.resource import Resource
        from twisted.web.server import NOT_DONE_YET

        from tests.sitetesting import site_client
        from wecompany.web.site import WeCompanySite

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        waiting = []

        class Slow(Resource):
            isLeaf = True

            def render_GET(self, request):
                waiting.append(request)
                return NOT_DONE_YET

        from twisted.internet.testing import MemoryReactorClock
        site = WeCompanySite(Slow(), reactor=MemoryReactorClock())
        treq, agent = site_client(site)
        d = treq.get("http://localhost/slow")
        agent.flush()
        site.reactor.advance(0.25)
        waiting[0].write(b"done")
        waiting[0].finish()
        agent.flush()
        self.successResultOf(d)
        site.reactor.advance(0)
        [request] = [r for e in self.access(events) for r in e["requests"]]
        self.assertEqual(request["duration_ms"], 250.0)

    def test_a_user_agent_cannot_break_the_line(self):
        from twisted.internet.task import Clock
        from twisted.logger import formatEvent, globalLogPublisher

        from wecompany.web.site import AccessLog

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        log = AccessLog(Clock())
        log.add("127.0.0.1", "GET", "/", 200, 1, duration=0.001, request_id="r1",
                user_agent='evil" 200\n127.0.0.1 GET /admin')
        log.flush()
        [event] = self.access(events)
        self.assertEqual(formatEvent(event), '127.0.0.1 GET / 200 1 1.0ms r1 "evil\\x22 200\\x0a127.0.0.1 GET /admin"')

    @staticmethod
    def access(events):
        return [e for e in events if e.get("log_namespace") == "wecompany.access"]

    def test_lines_waiting_are_bounded_and_flushed_on_stop(self):
        from twisted.internet.task import Clock
        from twisted.logger import globalLogPublisher

        from wecompany.web.site import AccessLog

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        log = AccessLog(clock, max_lines=3)
        for n in range(7):
            log.add("127.0.0.1", "GET", f"/{n}", 200, 10)
        self.assertEqual([len(e["requests"]) for e in self.access(events)], [3, 3])
        log.flush()  # as the site does when it stops
        self.assertEqual([len(e["requests"]) for e in self.access(events)], [3, 3, 1])
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(0)
        self.assertEqual(len(self.access(events)), 3)


class ClientAddressTests(SynchronousTestCase):
    """The access log names the client a trusted proxy's X-Forwarded-For gives, and no other."""

    def logged_clients(self, trusted: str | None, forwarded: str, peer: str = "127.0.0.1") -> list:
        from twisted.internet.address import IPv4Address
        from twisted.logger import globalLogPublisher

        from tests.sitetesting import SiteAgent, WholeBody
        from treq.client import HTTPClient
        from wecompany.config import parse_networks
        from wecompany.proxies import TrustedProxies

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        store = MemoryStore()
        store.start()
        proxies = TrustedProxies.of(parse_networks("trusted-proxies", trusted) if trusted else None)
        site = make_site(store, trusted_proxies=proxies)
        agent = SiteAgent(site, IPv4Address("TCP", peer, 40000))
        treq = HTTPClient(agent, data_to_body_producer=WholeBody)
        d = treq.get("http://localhost/health", headers={"X-Forwarded-For": [forwarded]})
        agent.flush()
        self.successResultOf(self.successResultOf(d).content())
        site.reactor.advance(0)
        return [r["client"] for e in events if e.get("log_namespace") == "wecompany.access" for r in e["requests"]]

    def test_from_a_trusted_proxy(self):
        self.assertEqual(self.logged_clients("127.0.0.1", "198.51.100.1, 203.0.113.9"), ["203.0.113.9"])
        self.assertEqual(self.logged_clients("127.0.0.1", "2001:db8::9"), ["2001:db8::9"])

    def test_spoofed_or_malformed(self):
        self.assertEqual(self.logged_clients(None, "203.0.113.9"), ["127.0.0.1"])
        self.assertEqual(self.logged_clients("10.0.0.0/8", "203.0.113.9"), ["127.0.0.1"])
        self.assertEqual(self.logged_clients("127.0.0.1", "not-an-address"), ["127.0.0.1"])
