"""The console dashboard's snapshot and its feed, on a fake clock."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import FakeClient, make_domain, make_user
from wecompany.domain.dashboard import (Dashboard, DashboardFeed, LatencyReading, RateWindow,
                                        latency_summary)

INF = float("inf")


def run(coro):
    return Deferred.fromCoroutine(coro)


class RecordingSubscriber:
    def __init__(self):
        self.snapshots: list[dict] = []
        self.keepalives = 0

    def send_snapshot(self, snapshot):
        self.snapshots.append(snapshot)

    def keepalive(self):
        self.keepalives += 1


class SnapshotTests(SynchronousTestCase):
    def setUp(self):
        self.domain = make_domain(self)
        self.clock = self.domain.clock
        self.dashboard = Dashboard(self.domain)

    def online(self, name: str, kind: str = "tcp") -> FakeClient:
        client = FakeClient(str(make_user(self.domain, name)), name, kind=kind)
        self.domain.chat.open_session(client)
        return client

    def test_empty(self):
        snap = self.dashboard.snapshot(self.clock.seconds())
        self.assertEqual(snap["online"], {"users": 0, "sessions": 0, "by_transport": {"tcp": 0, "ws": 0},
                                          "list": []})
        self.assertEqual((snap["calls"], snap["rooms"]), ({"count": 0, "active": 0, "list": []},
                                                          {"count": 0, "list": []}))
        self.assertEqual((snap["messages_per_second"], snap["cluster"]), (0.0, {"enabled": False}))
        self.assertEqual(snap["rest"]["requests_per_second"], 0.0)

    def test_online_users_by_transport(self):
        self.online("alice")
        bob = self.online("bob")
        self.domain.chat.open_session(FakeClient(bob.identity.user_id, "bob", kind="ws"))
        self.online("carol", kind="ws")
        online = self.dashboard.snapshot(self.clock.seconds())["online"]
        self.assertEqual((online["users"], online["sessions"], online["by_transport"]),
                         (3, 4, {"tcp": 2, "ws": 2}))
        self.assertEqual([(u["username"], u["transports"]) for u in online["list"]],
                         [("alice", ["tcp"]), ("bob", ["tcp", "ws"]), ("carol", ["ws"])])

    def test_the_lists_are_bounded_but_the_counts_are_not(self):
        for i in range(5):
            self.online(f"user{i}")
        online = Dashboard(self.domain, max_listed=2).snapshot(self.clock.seconds())["online"]
        self.assertEqual((online["users"], len(online["list"])), (5, 2))

    def test_calls_in_progress(self):
        alice, bob = self.online("alice"), self.online("bob")
        call = self.successResultOf(run(self.domain.chat.place_call(alice, "bob", True)))
        calls = self.dashboard.snapshot(self.clock.seconds())["calls"]
        self.assertEqual((calls["count"], calls["active"]), (1, 0))
        self.assertEqual([(c["caller"], c["callee"], c["state"], c["is_video"]) for c in calls["list"]],
                         [("alice", "bob", "ringing", True)])
        self.domain.calls.accept(bob, call.call_id)
        calls = self.dashboard.snapshot(self.clock.seconds())["calls"]
        self.assertEqual((calls["active"], calls["list"][0]["state"]), (1, "active"))

    def test_rooms_and_their_members(self):
        host_id = make_user(self.domain, "host")
        host = self.successResultOf(self.domain.store.get_user(host_id))
        meeting, _ = self.successResultOf(run(self.domain.meetings.create(host, title="all hands")))
        self.successResultOf(run(self.domain.meetings.join(host, meeting.id)))
        client = FakeClient(str(host_id), "host", kind="ws")
        record = self.successResultOf(run(self.domain.rooms.admit(host_id, meeting.id, client)))
        self.domain.rooms.join(client, record, host, "peer-1")
        rooms = self.dashboard.snapshot(self.clock.seconds())["rooms"]
        self.assertEqual(rooms["count"], 1)
        [room] = rooms["list"]
        self.assertEqual((room["meeting_id"], room["title"], room["member_count"]), (meeting.id, "all hands", 1))
        self.assertEqual([(m["username"], m["audio"], m["node"]) for m in room["members"]], [("host", True, None)])

    def test_messages_per_second_over_the_window(self):
        alice, _ = self.online("alice"), self.online("bob")
        self.dashboard.snapshot(self.clock.seconds())
        for _ in range(20):
            self.successResultOf(run(self.domain.chat.send_text(alice, "bob", "hi")))
        self.clock.advance(4)
        self.assertEqual(self.dashboard.snapshot(self.clock.seconds())["messages_per_second"], 5.0)
        self.clock.advance(30)  # nothing sent for longer than the window
        self.dashboard.snapshot(self.clock.seconds())
        self.clock.advance(1)
        self.assertEqual(self.dashboard.snapshot(self.clock.seconds())["messages_per_second"], 0.0)

    def test_rest_latency_from_the_histogram_readings(self):
        bounds = (0.01, 0.1, INF)
        readings = iter([LatencyReading(bounds, (0, 0, 0), 0.0, 0),
                         LatencyReading(bounds, (8, 9, 10), 0.5, 10)])
        dashboard = Dashboard(self.domain, latency=lambda: next(readings))
        dashboard.snapshot(self.clock.seconds())
        self.clock.advance(2)
        rest = dashboard.snapshot(self.clock.seconds())["rest"]
        self.assertEqual(rest, {"requests_per_second": 5.0, "mean_ms": 50.0, "p50_ms": 10.0, "p95_ms": 100.0})


class LatencySummaryTests(SynchronousTestCase):
    def test_beyond_the_last_bound_reports_that_bound(self):
        bounds = (0.01, 0.1, INF)
        summary = latency_summary(LatencyReading(bounds, (0, 0, 0), 0, 0),
                                  LatencyReading(bounds, (0, 0, 4), 40.0, 4), 1.0)
        self.assertEqual((summary["p50_ms"], summary["mean_ms"]), (100.0, 10000.0))

    def test_nothing_observed(self):
        reading = LatencyReading((0.1, INF), (3, 3), 0.3, 3)
        self.assertEqual(latency_summary(reading, reading, 1.0)["mean_ms"], None)
        self.assertEqual(latency_summary(None, reading, 1.0)["requests_per_second"], 0.0)


class RateWindowTests(SynchronousTestCase):
    def test_the_baseline_moves_with_the_span(self):
        window = RateWindow(span=10)
        for t in range(0, 31):
            rate = window.rate(float(t), t * 2.0 if t < 20 else 38.0)
        self.assertEqual(rate, 0.0)  # flat for the last ten seconds
        self.assertLessEqual(len(window._samples), 12)


class FeedTests(SynchronousTestCase):
    def setUp(self):
        self.domain = make_domain(self)
        self.clock = self.domain.clock
        self.feed = DashboardFeed(Dashboard(self.domain), self.clock, interval=0.5, keepalive=15.0)

    def test_a_snapshot_at_once_then_only_changes(self):
        subscriber = RecordingSubscriber()
        self.assertTrue(self.feed.subscribe(subscriber))
        self.assertEqual(len(subscriber.snapshots), 1)
        self.assertIn("time", subscriber.snapshots[0])
        self.clock.advance(0.5)
        self.clock.advance(0.5)
        self.assertEqual(len(subscriber.snapshots), 1)  # nothing changed
        self.domain.chat.open_session(FakeClient("7", "dora"))
        self.clock.advance(0.5)
        self.assertEqual(len(subscriber.snapshots), 2)
        self.assertEqual(subscriber.snapshots[-1]["online"]["list"][0]["username"], "dora")

    def test_at_most_one_push_per_interval(self):
        subscriber = RecordingSubscriber()
        self.feed.subscribe(subscriber)
        for i in range(10):  # ten changes within one interval
            self.domain.chat.open_session(FakeClient(str(10 + i)))
        self.clock.advance(0.25)
        self.assertEqual(len(subscriber.snapshots), 1)
        self.clock.advance(0.25)
        self.assertEqual(len(subscriber.snapshots), 2)
        self.assertEqual(subscriber.snapshots[-1]["online"]["users"], 10)

    def test_keepalive_while_nothing_changes(self):
        subscriber = RecordingSubscriber()
        self.feed.subscribe(subscriber)
        self.clock.pump([0.5] * 30)
        self.assertEqual((len(subscriber.snapshots), subscriber.keepalives), (1, 1))

    def test_the_clock_runs_only_while_someone_watches(self):
        subscriber, other = RecordingSubscriber(), RecordingSubscriber()
        self.feed.subscribe(subscriber)
        self.feed.subscribe(other)
        self.assertEqual(len(other.snapshots), 1)  # the last snapshot, at once
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.feed.unsubscribe(subscriber)
        self.feed.unsubscribe(other)
        self.feed.unsubscribe(other)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        again = RecordingSubscriber()
        self.feed.subscribe(again)
        self.assertEqual(len(again.snapshots), 1)

    def test_subscribers_are_bounded(self):
        feed = DashboardFeed(Dashboard(self.domain), self.clock, max_subscribers=1)
        self.assertTrue(feed.subscribe(RecordingSubscriber()))
        self.assertFalse(feed.subscribe(RecordingSubscriber()))
        self.assertEqual(feed.subscriber_count, 1)

    def test_a_failing_snapshot_is_logged_and_the_feed_goes_on(self):
        class Broken(Dashboard):
            fail = False

            def snapshot(self, now):
                if self.fail:
                    raise RuntimeError("boom")
                return super().snapshot(now)

        dashboard = Broken(self.domain)
        feed = DashboardFeed(dashboard, self.clock)
        subscriber = RecordingSubscriber()
        feed.subscribe(subscriber)
        dashboard.fail = True
        self.clock.advance(0.5)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        dashboard.fail = False
        self.domain.chat.open_session(FakeClient("3"))
        self.clock.advance(0.5)
        self.assertEqual(len(subscriber.snapshots), 2)
