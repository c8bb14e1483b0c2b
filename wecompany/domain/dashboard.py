"""
The web console's live dashboard: what is live on this node (and in the
cluster), as one JSON-ready snapshot, and the feed that pushes it to the
dashboards watching.

:class:`Dashboard` reads the live services of a
:class:`~wecompany.domain.core.Domain`; it keeps no state of its own but
the samples its rates are computed from. :class:`DashboardFeed` samples it
on the injected clock, only while someone watches, and tells each
subscriber the snapshot when it differs from the last one pushed: at most
once per ``interval``, however busy the node, and not at all while nothing
changes (a keep-alive then, so proxies keep the stream open).
"""

from __future__ import annotations

from collections import deque

import attrs
from twisted.logger import Logger

from wecompany.times import rfc3339

#: Seconds between two samples while a dashboard watches: a user who logs
#: in is on the dashboards within this (the console promises a second).
SAMPLE_INTERVAL = 0.5
#: Seconds without a change after which subscribers get a keep-alive.
KEEPALIVE = 15.0
#: The span rates and latencies are computed over.
RATE_SPAN = 10.0
#: The longest lists a snapshot carries (the counts are always complete).
MAX_LISTED = 100


@attrs.frozen
class LatencyReading:
    """
    A cumulative latency histogram at one moment: the buckets' upper bounds
    (seconds, the last one ``inf``), the cumulative count of each, the sum
    of the observed seconds and the count of observations.
    """

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    total: float
    count: float


class RateWindow:
    """
    How fast a counter grew over the last ``span`` seconds, from the
    samples given to :meth:`add` (a bounded deque: one sample per tick).
    """

    def __init__(self, span: float = RATE_SPAN, max_samples: int = 256) -> None:
        self.span = span
        self._samples: deque = deque(maxlen=max_samples)

    def add(self, now: float, value):
        """Note ``value`` at ``now``; -> the oldest sample within the span, as (time, value)."""
        self._samples.append((now, value))
        # Keep one sample at or before the start of the span: the baseline.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.span:
            self._samples.popleft()
        return self._samples[0]

    def rate(self, now: float, value: float) -> float:
        """Counted per second since the baseline (0 until there are two samples)."""
        then, before = self.add(now, value)
        return (value - before) / (now - then) if now > then else 0.0


def latency_summary(before: LatencyReading | None, after: LatencyReading | None, seconds: float) -> dict:
    """
    Requests per second, mean, median and 95th percentile (milliseconds, a
    bucket's upper bound: what a histogram can tell) of the requests
    observed between two readings.
    """
    if before is not None and after is not None and not before.bounds:  # nothing was observed before
        before = LatencyReading(after.bounds, (0.0,) * len(after.bounds), 0.0, 0.0)
    if before is None or after is None or seconds <= 0 or after.bounds != before.bounds:
        return {"requests_per_second": 0.0, "mean_ms": None, "p50_ms": None, "p95_ms": None}
    count = after.count - before.count
    if count <= 0:
        return {"requests_per_second": 0.0, "mean_ms": None, "p50_ms": None, "p95_ms": None}
    cumulative = [a - b for a, b in zip(after.cumulative, before.cumulative)]

    def quantile(q: float):
        for bound, seen in zip(after.bounds, cumulative):
            if seen >= q * count:
                # Beyond the last finite bound, the most a histogram says is "more than".
                finite = bound if bound != float("inf") else after.bounds[-2] if len(after.bounds) > 1 else None
                return None if finite is None else round(finite * 1000, 1)
        return None

    return {"requests_per_second": round(count / seconds, 1),
            "mean_ms": round((after.total - before.total) / count * 1000, 1),
            "p50_ms": quantile(0.5), "p95_ms": quantile(0.95)}


class Dashboard:
    """
    The dashboard's snapshot of one daemon.

    :param domain: the :class:`~wecompany.domain.core.Domain`.
    :param latency: a callable -> :class:`LatencyReading` of the REST API's
        request latencies (from the Prometheus histogram), or None.
    """

    def __init__(self, domain, latency=None, span: float = RATE_SPAN, max_listed: int = MAX_LISTED) -> None:
        self.domain = domain
        self.latency = latency
        self.max_listed = max_listed
        self._messages = RateWindow(span)
        self._requests = RateWindow(span)

    def snapshot(self, now: float) -> dict:
        """What is live now (JSON-ready); ``now`` also advances the rates' windows."""
        d = self.domain
        counts = d.live_counts()
        return {
            "online": self._online(counts),
            "calls": self._calls(counts),
            "rooms": self._rooms(counts),
            "messages_per_second": round(self._messages.rate(now, d.chat.texts_sent), 1),
            "rest": self._rest(now),
            "cluster": d.cluster.status(),
        }

    def _online(self, counts: dict) -> dict:
        registry = self.domain.registry
        by_transport = {"tcp": 0, "ws": 0}
        _, here = registry.online(0, registry.online_count)
        for ident in here:
            for session in registry.sessions_of(ident.user_id):
                by_transport[session.kind] = by_transport.get(session.kind, 0) + 1
        _, listed = self.domain.chat.online_users(0, self.max_listed)
        users = [{"user_id": ident.user_id, "username": ident.username,
                  "transports": sorted({s.kind for s in registry.sessions_of(ident.user_id)}) or ["elsewhere"]}
                 for ident in listed]
        return {"users": counts["online_users"], "sessions": counts["sessions"],
                "by_transport": by_transport, "list": users}

    def _calls(self, counts: dict) -> dict:
        calls = [{"call_id": call.call_id, "caller": call.caller.identity.username,
                  "callee": call.callee.identity.username, "state": call.state, "is_video": call.is_video,
                  "since": rfc3339(call.answered_at or call.created_at)}
                 for call in self.domain.calls.in_progress()[:self.max_listed]]
        return {"count": counts["calls"], "active": counts["active_calls"], "list": calls}

    def _rooms(self, counts: dict) -> dict:
        rooms = []
        for meeting_id, room in list(self.domain.rooms.rooms.items())[:self.max_listed]:
            members = [{"user_id": m.user_id, "username": m.username, "audio": m.audio_enabled,
                        "video": m.video_enabled, "screen": m.screen_sharing, "node": m.node}
                       for m in list(room.members.values())[:self.max_listed]]
            title = room.meeting.title if room.meeting is not None else None
            rooms.append({"meeting_id": meeting_id, "title": title, "member_count": len(room.members),
                          "members": members})
        return {"count": counts["rooms"], "list": rooms}

    def _rest(self, now: float) -> dict:
        reading = self.latency() if self.latency is not None else None
        then, before = self._requests.add(now, reading)
        return latency_summary(before, reading, now - then)


class DashboardFeed:
    """
    Pushes the :class:`Dashboard` snapshot to its subscribers.

    A subscriber has ``send_snapshot(snapshot: dict)`` and ``keepalive()``;
    both must return at once (a transport that cannot keep up drops its
    client). The clock only runs for the feed while there are subscribers.

    :param clock: ``IReactorTime``.
    :param max_subscribers: how many may watch at once (:meth:`subscribe` refuses more).
    """

    log = Logger()

    def __init__(self, dashboard: Dashboard, clock, interval: float = SAMPLE_INTERVAL,
                 keepalive: float = KEEPALIVE, max_subscribers: int = 32) -> None:
        self.dashboard = dashboard
        self.clock = clock
        self.interval = interval
        self.keepalive = keepalive
        self.max_subscribers = max_subscribers
        self._subscribers: list = []
        self._last: dict | None = None
        self._last_sent = 0.0
        self._timer = None

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self, subscriber) -> bool:
        """Start pushing to ``subscriber`` (the current snapshot at once); False when too many watch."""
        if len(self._subscribers) >= self.max_subscribers:
            return False
        self._subscribers.append(subscriber)
        if self._timer is None:
            self._last = None
            self._sample()  # the first subscriber: a fresh snapshot, and the ticks start
        else:
            subscriber.send_snapshot(self._stamped(self._last))
        return True

    def unsubscribe(self, subscriber) -> None:
        """Stop pushing to ``subscriber`` (idempotent); the ticks stop with the last one."""
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
        if not self._subscribers and self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _sample(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        try:
            snapshot = self.dashboard.snapshot(now)
        except Exception:
            self.log.failure("the dashboard's snapshot failed")
            snapshot = self._last
        if snapshot is not None and snapshot != self._last:
            self._last, self._last_sent = snapshot, now
            stamped = self._stamped(snapshot)
            for subscriber in list(self._subscribers):
                subscriber.send_snapshot(stamped)
        elif now - self._last_sent >= self.keepalive:
            self._last_sent = now
            for subscriber in list(self._subscribers):
                subscriber.keepalive()
        if self._subscribers:
            self._timer = self.clock.callLater(self.interval, self._sample)

    def _stamped(self, snapshot: dict | None) -> dict:
        return {**(snapshot or {}), "time": rfc3339(self.clock.seconds())}
