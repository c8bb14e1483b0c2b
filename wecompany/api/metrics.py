"""
Prometheus metrics, in a registry of their own (no process-global state).

Requests are labelled by route template (``/api/v1/meetings/{meeting_id}``),
never by raw path, and by method only among the methods HTTP defines, so a
client cannot grow the label set.

Everything here is counted in plain ints (:mod:`wecompany.domain.stats`,
the services' own counters) and turned into metric families when scraped:
the hot paths (a TCP frame, a WebSocket message, a request) pay an index or
a dict look-up and an addition, and no ``_created`` series are exposed --
``prometheus_client``'s own Counter and Histogram would add one per child,
and can only be told not to process-wide (``disable_created_metrics``).
The process, GC and platform collectors of ``prometheus_client`` are
registered on the same registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from wecompany.domain.stats import Stats, Timings
from wecompany.tcp.codec import MsgType

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
        sfu = self.m.sfu
        if sfu is not None:
            yield from _sfu_families(sfu)
        router = self.m.sfu_router
        if router is not None:
            yield from _sfu_router_families(router)
        calls = self.m.calls
        if calls is not None:
            counter = CounterMetricFamily("wecompany_media_packets", "Call media packets", labels=["outcome"])
            counter.add_metric(["relayed"], calls.relayed_packets)
            counter.add_metric(["dropped"], calls.dropped_packets)
            yield counter


def _sfu_families(sfu):
    """The meeting SFU's gauges and counters (:class:`~wecompany.domain.sfu.SfuService`)."""
    gauges = sfu.gauges()
    for name, text, value in (("wecompany_sfu_peers", "SFU connections open", gauges.peers),
                              ("wecompany_sfu_peers_connected", "SFU connections connected", gauges.connected),
                              ("wecompany_sfu_forwarded_streams", "Tracks the SFU forwards to subscribers",
                               gauges.forwarded_streams),
                              ("wecompany_sfu_rooms", "Rooms with SFU connections", gauges.rooms)):
        gauge = GaugeMetricFamily(name, text)
        gauge.add_metric([], value)
        yield gauge
    counts = sfu.counters
    closed = CounterMetricFamily("wecompany_sfu_peers_closed", "SFU connections closed, by reason", labels=["reason"])
    for reason, count in sorted(counts.peers_closed.items()):
        closed.add_metric([reason], count)
    yield closed
    for name, text, value in (
            ("wecompany_sfu_peers_opened", "SFU connections opened", counts.peers_opened),
            ("wecompany_sfu_offers", "Renegotiation offers the SFU made", counts.offers),
            ("wecompany_sfu_answers", "Answers to them applied", counts.answers),
            ("wecompany_sfu_keyframe_requests", "Keyframes asked of publishers", counts.keyframes_requested),
            ("wecompany_sfu_engine_errors", "Media-engine calls that failed", counts.engine_errors)):
        counter = CounterMetricFamily(name, text)
        counter.add_metric([], value)
        yield counter
    candidates = CounterMetricFamily("wecompany_sfu_candidates", "ICE candidates", labels=["outcome"])
    candidates.add_metric(["received"], counts.candidates_received)
    candidates.add_metric(["sent"], counts.candidates_sent)
    candidates.add_metric(["dropped"], counts.candidates_dropped)
    yield candidates


def _sfu_router_families(router):
    """The SFU's side of a cluster (:class:`~wecompany.mirror.sfu.SfuRouter`)."""
    gauge = GaugeMetricFamily("wecompany_sfu_rooms_served", "Rooms whose SFU this node serves for the cluster")
    gauge.add_metric([], router.owned_count())
    yield gauge
    counts = router.counters
    calls = CounterMetricFamily("wecompany_sfu_cluster_calls", "SFU calls by where they were served: forwarded "
                                "to the room's node, served here for another node, or served here because Redis "
                                "could not say where", labels=["outcome"])
    calls.add_metric(["forwarded"], counts.forwarded)
    calls.add_metric(["served_for_others"], counts.served)
    calls.add_metric(["alone"], counts.alone)
    yield calls
    moved = CounterMetricFamily("wecompany_sfu_rooms_moved", "Rooms this node served that another node turned out "
                                "to serve (after a Redis outage): their connections here were closed")
    moved.add_metric([], counts.moved)
    yield moved


#: Database operations: seconds from the call to its answer (the pool's queue included).
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Garbage-collector pauses.
GC_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# The TCP counts are indexed by the type byte: the MsgType names, "other" for the rest.
def _type_name(code: int) -> str:
    try:
        return MsgType(code).name.lower()
    except ValueError:
        return "other"


_TYPE_NAMES = tuple(_type_name(code) for code in range(256))


def histogram(name: str, text: str, label: str, timings: Timings) -> HistogramMetricFamily:
    """A :class:`~wecompany.domain.stats.Timings` as a Prometheus histogram labelled ``label``."""
    family = HistogramMetricFamily(name, text, labels=[label])
    bounds = [repr(float(b)) for b in timings.buckets] + ["+Inf"]
    for value, row in sorted(timings.data.items()):
        cumulative, buckets = 0, []
        for bound, count in zip(bounds, row):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric([value], buckets, row[-1])
    return family


def _by_type(name: str, text: str, per_direction) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=["type", "direction"])
    for direction, counts in per_direction:
        totals: dict[str, int] = {}
        for code, count in enumerate(counts):
            if count:
                kind = _TYPE_NAMES[code]
                totals[kind] = totals.get(kind, 0) + count
        for kind, count in sorted(totals.items()):
            family.add_metric([kind, direction], count)
    return family


class _Counts:
    """Reads the plain counts (requests, logins, frames, limits, timings) when scraped."""

    def __init__(self, metrics: "Metrics") -> None:
        self.m = metrics

    def collect(self):
        m = self.m
        requests = CounterMetricFamily("wecompany_http_requests", "HTTP requests", labels=["route", "method", "status"])
        for (route, method, status), row in sorted(m._requests.items()):
            requests.add_metric([route, method, str(status)], row[0])
        yield requests
        yield histogram("wecompany_http_request_duration_seconds", "HTTP request latency", "route", m.latency)
        stats = m.stats
        logins = CounterMetricFamily("wecompany_logins", "Logins by transport (tcp, rest, ws) and outcome",
                                     labels=["transport", "outcome"])
        for (transport, outcome), count in sorted(stats.logins.items()):
            logins.add_metric([transport, outcome], count)
        yield logins
        yield _by_type("wecompany_tcp_frames", "Binary-protocol frames by message type and direction",
                       (("in", stats.tcp_frames_in), ("out", stats.tcp_frames_out)))
        yield _by_type("wecompany_tcp_bytes", "Binary-protocol bytes (length prefix included) by message type "
                       "and direction", (("in", stats.tcp_bytes_in), ("out", stats.tcp_bytes_out)))
        connections = CounterMetricFamily("wecompany_ws_connections", "WebSocket signaling connections",
                                          labels=["event"])
        connections.add_metric(["opened"], stats.ws_opened)
        connections.add_metric(["closed"], stats.ws_closed)
        yield connections
        open_now = GaugeMetricFamily("wecompany_ws_connections_open", "WebSocket signaling connections open")
        open_now.add_metric([], stats.ws_opened - stats.ws_closed)
        yield open_now
        messages = CounterMetricFamily("wecompany_ws_messages", "WebSocket signaling messages", labels=["direction"])
        messages.add_metric(["in"], stats.ws_messages_in)
        messages.add_metric(["out"], stats.ws_messages_out)
        yield messages
        refusals = CounterMetricFamily("wecompany_rate_limit_refusals", "Requests and attempts refused by a "
                                       "rate limit", labels=["limiter"])
        for name, limiter in m.limiters:
            refusals.add_metric([name], limiter.refused)
        yield refusals
        if m.query_timings is not None:
            yield histogram("wecompany_db_query_duration_seconds", "Database operations, from the call to the "
                            "answer", "operation", m.query_timings)
        if m.gc_pauses is not None:
            yield histogram("wecompany_gc_pause_seconds", "Garbage-collector pauses by generation", "generation",
                            m.gc_pauses)


class Metrics:
    """
    The daemon's metrics: the site's requests, the counts the transports and
    the store keep (``domain.stats``, ``store.query_timings``), the rate
    limits' refusals, ``gc_pauses`` (a :class:`~wecompany.domain.stats.Timings`
    the daemon's :class:`~wecompany.runtime.CollectorTuning` feeds), gauges
    read from ``domain`` and the TCP factory when scraped, and
    ``prometheus_client``'s process, GC and platform collectors.
    """

    def __init__(self, domain=None, tcp_factory=None, gc_pauses: Timings | None = None) -> None:
        self.registry_state = domain.registry if domain is not None else None
        self.calls = domain.calls if domain is not None else None
        self.tcp_factory = tcp_factory
        self.rooms = domain.rooms.room_count if domain is not None else None
        self.cluster = domain.cluster if domain is not None else None
        self.media_jobs = domain.processing.jobs if domain is not None else None
        self.sfu = domain.sfu if domain is not None else None
        self.sfu_router = domain.sfu_router if domain is not None else None
        self.stats = domain.stats if domain is not None else Stats()
        self.query_timings = getattr(domain.store, "query_timings", None) if domain is not None else None
        self.gc_pauses = gc_pauses
        self.limiters = []
        if domain is not None:
            self.limiters = [("auth", domain.auth_limiter), ("login_guesses", domain.guard)]
            anonymous = getattr(domain.ai, "anonymous_limiter", None)
            if anonymous is not None:
                self.limiters.append(("ai_anonymous", anonymous))
        self.latency = Timings(LATENCY_BUCKETS)
        # (route, method, status) -> [count]; route -> the latency row. As
        # bounded as the label sets.
        self._requests: dict[tuple[str, str, int], list] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Counts(self))
        self.registry.register(_LiveState(self))
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in METHODS:
            method = "other"
        key = (route, method, status)
        row = self._requests.get(key)
        if row is None:
            row = self._requests[key] = [0]
        row[0] += 1
        self.latency.observe(route, seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
