"""The metrics registry: the names a scrape has, and values that move with what happens."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import make_domain, make_user
from tests.tcp.test_protocol import PASSWORD, Conn, s16
from wecompany.api.metrics import GC_BUCKETS, Metrics
from wecompany.domain.stats import Timings
from wecompany.errors import RateLimited
from wecompany.tcp.codec import MsgType
from wecompany.tcp.protocol import WeCompanyFactory

#: Every family a scrape of a daemon on its own has (a rename fails here first).
EXPECTED = {
    "wecompany_http_requests", "wecompany_http_request_duration_seconds",
    "wecompany_logins", "wecompany_tcp_frames", "wecompany_tcp_bytes",
    "wecompany_ws_connections", "wecompany_ws_connections_open", "wecompany_ws_messages",
    "wecompany_rate_limit_refusals", "wecompany_db_query_duration_seconds", "wecompany_gc_pause_seconds",
    "wecompany_online_users", "wecompany_sessions", "wecompany_active_calls", "wecompany_calls",
    "wecompany_rooms", "wecompany_tcp_connections", "wecompany_media_jobs_running", "wecompany_media_jobs_queued",
    "wecompany_media_packets",
    # prometheus_client's process, GC and platform collectors.
    "process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds",
    "python_gc_objects_collected", "python_gc_collections", "python_info",
}


class MetricsTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.domain = make_domain(self)
        self.factory = WeCompanyFactory(self.domain, max_frame=4096, auth_fail_delay=1.0)
        self.gc_pauses = Timings(GC_BUCKETS)
        self.metrics = Metrics(self.domain, self.factory, gc_pauses=self.gc_pauses)

    def scrape(self) -> dict:
        """name -> {labels tuple (sorted items) -> value} of every sample."""
        text = self.metrics.render().decode()
        self.text = text
        samples: dict = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
        return samples

    def value(self, name: str, **labels) -> float:
        return self.scrape().get(name, {}).get(tuple(sorted(labels.items())), 0.0)


class NameTests(MetricsTestCase):
    def test_the_expected_families(self) -> None:
        metrics = Metrics(self.domain, self.factory, gc_pauses=self.gc_pauses)
        metrics.query_timings = Timings((0.1,))
        metrics.query_timings.observe("ping", 0.01)
        self.gc_pauses.observe("0", 0.001)
        self.metrics = metrics
        self.scrape()
        names = {family.name for family in text_string_to_metric_families(self.text)}
        self.assertEqual(EXPECTED - names, set())
        self.assertEqual({name for name in names if name.startswith("wecompany_")},
                         {name for name in EXPECTED if name.startswith("wecompany_")})

    def test_no_created_series(self) -> None:
        self.metrics.observe("/health", "GET", 200, 0.001)
        self.domain.stats.login("tcp", ok=True)
        self.scrape()
        self.assertNotIn("_created", self.text)
        self.assertIn('wecompany_http_requests_total{method="GET",route="/health",status="200"} 1.0', self.text)

    def test_a_histogram_is_cumulative(self) -> None:
        for seconds in (0.0001, 0.004, 0.004, 3.0):
            self.gc_pauses.observe("2", seconds)
        samples = self.scrape()
        buckets = samples["wecompany_gc_pause_seconds_bucket"]
        self.assertEqual(buckets[(("generation", "2"), ("le", "0.0001"))], 1)
        self.assertEqual(buckets[(("generation", "2"), ("le", "0.005"))], 3)
        self.assertEqual(buckets[(("generation", "2"), ("le", "+Inf"))], 4)
        self.assertEqual(samples["wecompany_gc_pause_seconds_count"][(("generation", "2"),)], 4)
        self.assertAlmostEqual(samples["wecompany_gc_pause_seconds_sum"][(("generation", "2"),)], 3.0081)


class TCPCountTests(MetricsTestCase):
    def conn(self) -> Conn:
        return Conn(self.factory, "10.0.0.1")

    def test_a_login_ok_and_a_login_failed_move_the_login_counter(self) -> None:
        make_user(self.domain, "alice")
        good = self.conn()
        good.send(bytes((MsgType.LOGIN,)) + s16("alice") + s16(PASSWORD))
        bad = self.conn()
        bad.send(bytes((MsgType.LOGIN,)) + s16("alice") + s16("wrong password"))
        self.assertEqual(self.value("wecompany_logins_total", transport="tcp", outcome="ok"), 1)
        self.assertEqual(self.value("wecompany_logins_total", transport="tcp", outcome="failed"), 1)
        self.assertEqual(self.value("wecompany_logins_total", transport="rest", outcome="ok"), 0)

    def test_frames_and_bytes_by_type_and_direction(self) -> None:
        make_user(self.domain, "alice")
        conn = self.conn()
        conn.send(bytes((MsgType.LOGIN,)) + s16("alice") + s16(PASSWORD))
        conn.send(b"\x07", b"\x07", b"\x07", b"\xee")  # three heartbeats and a type no one defined
        sent = conn.transport.value()
        self.assertEqual(self.value("wecompany_tcp_frames_total", type="heartbeat", direction="in"), 3)
        self.assertEqual(self.value("wecompany_tcp_bytes_total", type="heartbeat", direction="in"), 3 * 5)
        self.assertEqual(self.value("wecompany_tcp_frames_total", type="login", direction="in"), 1)
        self.assertEqual(self.value("wecompany_tcp_frames_total", type="other", direction="in"), 1)
        self.assertEqual(self.value("wecompany_tcp_frames_total", type="auth_result", direction="out"), 1)
        out = sum(v for k, v in self.scrape()["wecompany_tcp_bytes_total"].items() if ("direction", "out") in k)
        self.assertEqual(out, len(sent))  # every byte written is counted, under one type or another
        self.assertNotIn("0xee", self.text)


class RateLimitTests(MetricsTestCase):
    def test_a_refusal_is_counted_by_limiter(self) -> None:
        domain = make_domain(self, auth_rate="1", auth_burst="1")
        metrics = Metrics(domain)
        self.successResultOf(domain.auth_limiter.hit("10.0.0.1"))
        self.failureResultOf(domain.auth_limiter.hit("10.0.0.1"), RateLimited)
        self.failureResultOf(domain.auth_limiter.hit("10.0.0.1"), RateLimited)
        self.metrics = metrics
        self.assertEqual(self.value("wecompany_rate_limit_refusals_total", limiter="auth"), 2)
        self.assertEqual(self.value("wecompany_rate_limit_refusals_total", limiter="login_guesses"), 0)

    def test_a_tcp_login_refused_by_the_auth_budget(self) -> None:
        domain = make_domain(self, auth_rate="1", auth_burst="1")
        factory = WeCompanyFactory(domain, max_frame=4096)
        self.metrics = Metrics(domain, factory)
        make_user(domain, "alice")
        for _ in range(2):
            Conn(factory, "10.0.0.9").send(bytes((MsgType.LOGIN,)) + s16("alice") + s16(PASSWORD))
        self.assertEqual(self.value("wecompany_rate_limit_refusals_total", limiter="auth"), 1)
        self.assertEqual(self.value("wecompany_logins_total", transport="tcp", outcome="failed"), 1)
        self.assertEqual(self.value("wecompany_logins_total", transport="tcp", outcome="ok"), 1)

