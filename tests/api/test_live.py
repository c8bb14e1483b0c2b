"""GET /api/v1/admin/live: the dashboard's server-sent events, through the daemon's site."""

from __future__ import annotations

import json

import treq
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from tests.api.harness import Api
from tests.helpers import FakeClient
from wecompany.api.live import LiveStream, timings_reader
from wecompany.api.metrics import Metrics
from wecompany.domain.dashboard import Dashboard, DashboardFeed
from wecompany.errors import Forbidden

LIVE = "http://localhost/api/v1/admin/live"


def events(chunks: list[bytes]) -> list[tuple[str, object]]:
    """The stream's events as (name, parsed data), and comments as ("comment", text)."""
    found = []
    for block in b"".join(chunks).decode("utf-8").split("\n\n"):
        if not block:
            continue
        name, data = "message", None
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "":
                found.append(("comment", value))
            elif field == "event":
                name = value
            elif field == "data":
                data = json.loads(value)
            elif field == "retry":
                name, data = "retry", int(value)
        if data is not None or name != "message":
            found.append((name, data))
    return [e for e in found if e[0] != "message"]


def snapshots(chunks) -> list[dict]:
    return [data for name, data in events(chunks) if name == "snapshot"]


class LiveEndpointTests(SynchronousTestCase):
    def setUp(self):
        self.api = Api(self)
        self.clock = self.api.clock
        boss = self.api.register("boss")
        self.api.domain.store.update_user(boss["id"], {"role": "admin"})
        self.boss_id = boss["id"]
        self.admin = self.api.login("boss")["token"]

    def open(self, token: str | None):
        headers = {"Authorization": [f"Bearer {token}"]} if token else {}
        d = self.api.treq.request("GET", LIVE, headers=headers)
        self.api.agent.flush()
        response = self.successResultOf(d)
        chunks: list[bytes] = []
        done = treq.collect(response, chunks.append)
        self.api.agent.flush()
        return response, chunks, done

    def tick(self, seconds: float = 0.5):
        self.clock.advance(seconds)
        self.api.agent.flush()

    def test_admins_only(self):
        response, _, done = self.open(None)
        self.successResultOf(done)
        self.assertEqual(response.code, 401)
        response, _, done = self.open(self.api.user("alice"))
        self.successResultOf(done)
        self.assertEqual(response.code, 403)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json; charset=utf-8"])

    def test_a_stream_of_snapshots(self):
        response, chunks, done = self.open(self.admin)
        self.assertNoResult(done)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/event-stream; charset=utf-8"])
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])
        self.assertEqual(events(chunks)[0], ("retry", 3000))
        [first] = snapshots(chunks)
        self.assertEqual(first["online"]["by_transport"], {"tcp": 0, "ws": 0})

    def test_a_tcp_login_is_pushed_within_the_interval(self):
        _, chunks, _ = self.open(self.admin)
        alice = self.api.register("alice")
        self.api.domain.chat.open_session(FakeClient(str(alice["id"]), "alice", kind="tcp"))
        self.tick(0.5)
        latest = snapshots(chunks)[-1]
        self.assertEqual(latest["online"]["by_transport"]["tcp"], 1)
        self.assertEqual([u["username"] for u in latest["online"]["list"]], ["alice"])

    def test_rest_requests_appear_in_the_latency(self):
        metrics = Metrics(self.api.domain)
        dashboard = Dashboard(self.api.domain, latency=timings_reader(metrics.latency))
        dashboard.snapshot(self.clock.seconds())
        metrics.observe("/api/v1/users/profile", "GET", 200, 0.004)
        metrics.observe("/api/v1/admin/live", "GET", 200, 600.0)  # a stream that ended: not a latency
        self.clock.advance(1)
        rest = dashboard.snapshot(self.clock.seconds())["rest"]
        self.assertEqual(rest, {"requests_per_second": 1.0, "mean_ms": 4.0, "p50_ms": 5.0, "p95_ms": 5.0})

    def test_the_stream_ends_when_the_caller_is_no_longer_an_admin(self):
        _, chunks, done = self.open(self.admin)
        self.api.domain.store.update_user(self.boss_id, {"role": "user"})
        self.tick(30)
        self.successResultOf(done)
        self.assertEqual(events(chunks)[-1], ("end", {"reason": "administrators only"}))
        self.assertEqual(self.api.rest.live_feed.subscriber_count, 0)

    def test_a_client_that_goes_away_is_unsubscribed(self):
        _, _, done = self.open(self.admin)
        self.assertEqual(self.api.rest.live_feed.subscriber_count, 1)
        for pump in self.api.agent._pumps:
            pump.clientIO.loseConnection()
        self.api.agent.flush()
        self.failureResultOf(done)
        self.assertEqual(self.api.rest.live_feed.subscriber_count, 0)
        self.clock.advance(0)  # the access log's flush
        self.assertEqual(self.clock.getDelayedCalls(), [])  # neither the feed's tick nor the recheck

    def test_too_many_dashboards_is_503(self):
        api = Api(self)
        boss = api.register("boss")
        api.domain.store.update_user(boss["id"], {"role": "admin"})
        token = api.login("boss")["token"]
        api.rest.live_feed.max_subscribers = 0
        code, body, _ = api.request("GET", "/api/v1/admin/live", token=token)
        self.assertEqual((code, body["message"]), (503, "too many live dashboards are open; close one"))

    def test_the_document_says_it_is_a_stream(self):
        code, body, _ = self.api.request("GET", "/api/v1/openapi.json")
        operation = body["paths"]["/api/v1/admin/live"]["get"]
        self.assertEqual(list(operation["responses"]["200"]["content"]), ["text/event-stream"])
        self.assertEqual(operation["security"], [{"bearerAuth": []}])


class FakeStreamRequest:
    """What LiveStream uses of a request, recording it: a connection whose buffer the test fills."""

    def __init__(self):
        self.headers: dict[bytes, bytes] = {}
        self.written: list[bytes] = []
        self.producer = None
        self.finished = self.lost = False
        self._finish = Deferred()

    def setHeader(self, name, value):
        self.headers[name] = value

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def notifyFinish(self):
        return self._finish

    def write(self, data):
        self.written.append(data)

    def finish(self):
        self.finished = True
        self._finish.callback(None)

    def loseConnection(self):
        self.lost = True
        self._finish.errback(ConnectionError("lost"))


class BackPressureTests(SynchronousTestCase):
    def setUp(self):
        self.api = Api(self)
        self.feed = DashboardFeed(Dashboard(self.api.domain), self.api.clock)

    def stream(self, recheck=lambda: succeed(None), send_limit=4096):
        request = FakeStreamRequest()
        LiveStream(self.feed, self.api.clock, recheck, send_limit=send_limit).render_GET(request)
        return request

    def test_a_client_that_cannot_keep_up_is_dropped(self):
        request = self.stream()
        request.producer.pauseProducing()  # its send buffer is full, and stays full
        for i in range(200):
            self.api.domain.chat.open_session(FakeClient(str(100 + i), f"someone-with-a-long-name-{i}"))
            self.api.clock.advance(0.5)
            if request.lost:
                break
        self.assertTrue(request.lost)
        self.assertEqual(self.feed.subscriber_count, 0)
        # Written since the buffer filled (after the retry line and the first snapshot): at most the limit.
        self.assertLessEqual(sum(map(len, request.written[2:])), 4096)

    def test_a_client_that_drains_is_kept(self):
        request = self.stream(send_limit=64 << 10)
        for i in range(200):
            request.producer.pauseProducing()
            self.api.domain.chat.open_session(FakeClient(str(100 + i), f"someone-with-a-long-name-{i}"))
            self.api.clock.advance(0.5)
            request.producer.resumeProducing()
        self.assertFalse(request.lost)
        self.assertEqual(len(snapshots(request.written)), 201)

    def test_a_failed_recheck_ends_the_stream(self):
        async def recheck():
            raise Forbidden("you are banned")

        request = self.stream(recheck)
        self.api.clock.advance(30)
        self.assertTrue(request.finished)
        self.assertEqual(events(request.written)[-1], ("end", {"reason": "you are banned"}))
        self.assertIsNone(request.producer)
        self.assertEqual(self.feed.subscriber_count, 0)
