"""
Prometheus metrics, in a registry of their own (no process-global state).

Requests are labelled by route template (``/api/v1/meetings/{meeting_id}``),
never by raw path, and by method only among the methods HTTP defines, so a
client cannot grow the label set.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

#: Methods counted by name; any other is counted as "other".
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"))

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


# Gauges read from the live services at scrape time: (name, help, source attribute, reading).
# Each node reports its own (Prometheus sums over the nodes); the cluster's
# totals are in /api/v1/admin/stats.
_GAUGES = (
    ("wecompany_online_users", "Users with at least one live session on this node", "registry_state",
     lambda r: r.online_count),
    ("wecompany_sessions", "Live sessions (TCP and WebSocket) on this node", "registry_state",
     lambda r: r.session_count),
    ("wecompany_active_calls", "Calls in the active state", "calls", lambda c: c.active_count),
    ("wecompany_calls", "Calls ringing or active", "calls", lambda c: c.count),
    ("wecompany_rooms", "Meeting rooms with live participants", "rooms", lambda rooms: rooms()),
    ("wecompany_tcp_connections", "Open binary-protocol connections", "tcp_factory", lambda f: len(f.connections)),
    ("wecompany_media_jobs_running", "Media-processing jobs running on this node", "media_jobs",
     lambda q: q.counts()["running"]),
    ("wecompany_media_jobs_queued", "Media-processing jobs waiting for a worker on this node", "media_jobs",
     lambda q: q.counts()["queued"]),
)

# Only when clustered (--redis): (name, help, reading of Cluster.status()).
_CLUSTER_GAUGES = (
    ("wecompany_redis_up", "1 while this node is connected to Redis", lambda st: int(st["redis"] == "ok")),
    ("wecompany_cluster_nodes", "Nodes this node sees alive (itself included)", lambda st: len(st["nodes"])),
)


class _LiveState:
    """Reads gauges from the live services when scraped."""

    def __init__(self, metrics: "Metrics") -> None:
        self.m = metrics

    def collect(self):
        for name, text, source, read in _GAUGES:
            target = getattr(self.m, source)
            if target is not None:
                gauge = GaugeMetricFamily(name, text)
                gauge.add_metric([], read(target))
                yield gauge
        cluster = self.m.cluster
        if cluster is not None and cluster.enabled:
            status = cluster.status()
            for name, text, read in _CLUSTER_GAUGES:
                gauge = GaugeMetricFamily(name, text)
                gauge.add_metric([], read(status))
                yield gauge
            links = cluster.links
            if links is not None:
                gauge = GaugeMetricFamily("wecompany_node_links_up", "Other nodes this node has a media link with")
                gauge.add_metric([], len(links.links))
                yield gauge
                counter = CounterMetricFamily("wecompany_node_link_packets", "Call media packets over node links",
                                              labels=["outcome"])
                counter.add_metric(["sent"], links.sent)
                counter.add_metric(["dropped"], links.dropped)
                counter.add_metric(["received"], links.received_packets)
                yield counter
        calls = self.m.calls
        if calls is not None:
            counter = CounterMetricFamily("wecompany_media_packets", "Call media packets", labels=["outcome"])
            counter.add_metric(["relayed"], calls.relayed_packets)
            counter.add_metric(["dropped"], calls.dropped_packets)
            yield counter


class Metrics:
    """The site's metrics: its requests, and gauges read from ``domain`` (and the TCP factory) when scraped."""

    def __init__(self, domain=None, tcp_factory=None) -> None:
        self.registry_state = domain.registry if domain is not None else None
        self.calls = domain.calls if domain is not None else None
        self.tcp_factory = tcp_factory
        self.rooms = domain.rooms.room_count if domain is not None else None
        self.cluster = domain.cluster if domain is not None else None
        self.media_jobs = domain.processing.jobs if domain is not None else None
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("wecompany_http_requests", "HTTP requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("wecompany_http_request_duration_seconds", "HTTP request latency",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_LiveState(self))
        # (route, method, status) -> the counter and histogram children. The
        # label look-up takes a lock and builds a tuple of strings each time;
        # the keys are as bounded as the label sets.
        self._children: dict[tuple[str, str, int], tuple] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in METHODS:
            method = "other"
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(route, method, str(status)),
                                              self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
