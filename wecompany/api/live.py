"""
``GET /api/v1/admin/live``: the console's dashboard as server-sent events.

An administrator's request (Bearer token, like every admin route: the
console reads the stream with ``fetch``, which sends the header, so the
long-lived token is never put in a URL) is answered ``text/event-stream``:
``event: snapshot`` with the :class:`~wecompany.domain.dashboard.Dashboard`
snapshot as JSON whenever it changes (at most twice a second), a comment
line as keep-alive while nothing does, and ``event: end`` when the stream
is closed by the server (the caller is no longer an active administrator,
or its token expired: checked every ``recheck_every`` seconds).

Sending is bounded: the stream's :class:`~wecompany.backpressure.SendGate`
counts what is written while the connection's buffer is full, and a client
that falls more than ``send_limit`` bytes behind is disconnected.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from wecompany.api.envelope import dumps
from wecompany.api.routing import ADMIN, Call, endpoint
from wecompany.backpressure import SendGate
from wecompany.domain.dashboard import LatencyReading
from wecompany.errors import Unavailable, WeCompanyError

LIVE_PATH = "/v1/admin/live"
#: Bytes a dashboard may fall behind before it is disconnected (a few snapshots).
SEND_LIMIT = 256 << 10
#: Seconds between checks that the caller may still watch.
RECHECK_EVERY = 30.0


class LiveRoutes:
    """Mixin of :class:`~wecompany.api.app.RestAPI` (which provides ``live_feed``)."""

    @endpoint("GET", LIVE_PATH, summary="The console's live dashboard: server-sent events, a `snapshot` event "
              "(JSON: online users by transport, calls, rooms and members, messages per second, REST latency, "
              "cluster) whenever it changes", tag="admin", auth=ADMIN, produces="text/event-stream",
              errors=(503,))
    async def admin_live(self, call: Call):
        feed = self.live_feed
        if feed.subscriber_count >= feed.max_subscribers:
            raise Unavailable("too many live dashboards are open; close one")
        return LiveStream(feed, self.clock, lambda: self.authenticate(call.request, admin=True))


class LiveStream(Resource):
    """
    The stream of one dashboard. ``recheck`` is an ``async () -> user``
    that raises when the caller may no longer watch.
    """

    isLeaf = True

    def __init__(self, feed, clock, recheck, send_limit: int = SEND_LIMIT,
                 recheck_every: float = RECHECK_EVERY) -> None:
        super().__init__()
        self.feed = feed
        self.clock = clock
        self.recheck = recheck
        self.send_limit = send_limit
        self.recheck_every = recheck_every

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")  # nginx: pass each event on at once
        _Subscriber(request, self).start()
        return NOT_DONE_YET


class _Subscriber:
    """One open stream, subscribed to the feed until it ends."""

    log = Logger()

    def __init__(self, request, stream: LiveStream) -> None:
        self.request = request
        self.stream = stream
        self.gate = SendGate(stream.send_limit)
        self.closed = False
        self._recheck_call = None

    def start(self) -> None:
        self.request.registerProducer(self.gate, True)
        self.request.notifyFinish().addBoth(self._gone)
        self._write(b"retry: 3000\n\n")
        if not self.stream.feed.subscribe(self):
            self.end("too many live dashboards are open")
            return
        self._recheck_call = self.stream.clock.callLater(self.stream.recheck_every, self._recheck)

    # -- what the feed calls ----------------------------------------------------
    def send_snapshot(self, snapshot: dict) -> None:
        self._write(b"event: snapshot\ndata: " + dumps(snapshot) + b"\n\n")

    def keepalive(self) -> None:
        self._write(b": keepalive\n\n")

    # -- ending -----------------------------------------------------------------
    def end(self, reason: str) -> None:
        """Tell the client why, and finish the response."""
        if self.closed:
            return
        self._write(b"event: end\ndata: " + dumps({"reason": reason}) + b"\n\n")
        if self.closed:  # dropped: that was more than it could take
            return
        self._close()
        self.request.unregisterProducer()
        self.request.finish()

    def _write(self, data: bytes) -> None:
        if self.closed:
            return
        if not self.gate.admit(len(data)):
            self.log.info("dropped a live dashboard that fell {queued} bytes behind", queued=self.gate.queued)
            self._close()
            self.request.loseConnection()
            return
        self.request.write(data)

    def _close(self) -> None:
        self.closed = True
        self.stream.feed.unsubscribe(self)
        if self._recheck_call is not None and self._recheck_call.active():
            self._recheck_call.cancel()
        self._recheck_call = None

    def _gone(self, _result) -> None:
        if not self.closed:  # the client went away (or was dropped)
            self._close()

    def _recheck(self) -> None:
        self._recheck_call = None

        async def check() -> None:
            try:
                await self.stream.recheck()
            except WeCompanyError as error:
                self.end(error.message)
                return
            if not self.closed:
                self._recheck_call = self.stream.clock.callLater(self.stream.recheck_every, self._recheck)

        d = Deferred.fromCoroutine(check())
        d.addErrback(lambda f: (self.log.failure("checking a live dashboard's caller failed", f),
                                self.end("internal error")))


def timings_reader(timings, skip_routes=("/api" + LIVE_PATH,)):
    """
    A callable -> :class:`LatencyReading` of the site's request latencies
    (``Metrics.latency``, a :class:`~wecompany.domain.stats.Timings` by
    route), summed over the routes but ``skip_routes`` (the live stream
    itself lasts minutes); the counts are cumulative, as Prometheus's
    ``le`` buckets are, with ``inf`` last.
    """
    skipped = frozenset(skip_routes)

    def read() -> LatencyReading:
        width = len(timings.buckets) + 1
        per_bucket = [0] * width
        total = 0.0
        for route, row in list(timings.data.items()):
            if route in skipped:
                continue
            for index in range(width):
                per_bucket[index] += row[index]
            total += row[-1]
        cumulative, running = [], 0
        for n in per_bucket:
            running += n
            cumulative.append(float(running))
        bounds = (*timings.buckets, float("inf"))
        return LatencyReading(bounds, tuple(cumulative), total, float(running))

    return read
