"""
The HTTP site. Its root is a plain ``Resource`` so the Klein REST API
(``/api``) and the Autobahn WebSocket endpoint (``/ws``) can be mounted
beside each other; ``/health`` is here from the start.
"""

from __future__ import annotations

import json
import os

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from wecompany import __version__
from wecompany.proxies import NO_PROXIES
from wecompany.web.channel import DeadlineChannel, TimeoutPolicy
from wecompany.web.multipart import FormLimits
from wecompany.web.request import DEFAULT_MAX_BODY, LimitedRequest


#: Below this much free space where the data lives, /health reports the storage as low (503).
MIN_FREE_BYTES = 64 << 20


def free_bytes(path: str) -> int:
    """Bytes an unprivileged process may still write on ``path``'s file system (blocking: run in a thread)."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


class HealthResource(Resource):
    """
    ``GET /health``: 200 when the database answers and can store, 503
    otherwise; JSON body ``{"status": "ok"|"degraded"|"unavailable",
    "database": ..., "storage": "ok"|"full"|"low"|..., "version": ...,
    "online_users": N, "active_calls": N, "cluster": {...}}`` (and
    ``free_bytes`` where the data lives, when a ``free_space`` check is
    given: a callable -> Deferred of bytes free).

    ``live`` is the :class:`~wecompany.domain.core.Domain` (its
    ``live_counts()`` and ``cluster``). A clustered node that lost Redis
    answers 200 with status ``degraded``: it still serves its own clients,
    and a load balancer that took every such node out would take the whole
    service down with Redis.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, store, live=None, free_space=None, min_free: int = MIN_FREE_BYTES, clock=None) -> None:
        super().__init__()
        self.store = store
        self.live = live
        self.free_space = free_space
        self.min_free = min_free
        self.clock = clock
        self._free: tuple[float, int] | None = None  # (when, bytes free), kept for a second

    def render_GET(self, request):
        gone: list = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = Deferred.fromCoroutine(self._check())
        d.addCallback(self._respond, request, gone)
        d.addErrback(lambda f: self.log.failure("health check failed", f))
        return NOT_DONE_YET

    render_HEAD = render_GET

    async def _check(self) -> tuple[int, dict]:
        try:
            db_ok = bool(await self.store.ping())
        except Exception:
            db_ok = False
        # A database that answers reads may still be unable to write (disk full).
        storage = getattr(self.store, "storage_problem", None) or "ok"
        free = None
        if self.free_space is not None:
            try:
                free = await self._free_space()
            except Exception:
                self.log.failure("checking free disk space failed")
            else:
                if free < self.min_free and storage == "ok":
                    storage = "low"
        ok = db_ok and storage == "ok"
        cluster = self.live.cluster.status() if self.live is not None else {"enabled": False}
        degraded = cluster.get("redis", "ok") != "ok" or cluster.get("node_id_in_use", False)
        body = {
            "status": ("degraded" if degraded else "ok") if ok else "unavailable",
            "database": "ok" if db_ok else "unavailable",
            "storage": storage,
            "version": __version__,
        }
        if free is not None:
            body["free_bytes"] = free
        if self.live is not None:
            counts = self.live.live_counts()
            body["online_users"], body["active_calls"] = counts["online_users"], counts["active_calls"]
            body["cluster"] = cluster
        return (200 if ok else 503), body

    async def _free_space(self) -> int:
        # /health is public and load balancers poll it: the disk is looked at
        # at most once a second, so a flood of checks cannot fill the disk threads.
        now = self.clock.seconds() if self.clock is not None else None
        if self._free is not None and now is not None and now - self._free[0] < 1.0:
            return self._free[1]
        free = await self.free_space()
        if now is not None:
            self._free = (now, free)
        return free

    def _respond(self, result, request, gone) -> None:
        status, body = result
        if gone:  # the client hung up meanwhile
            return
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if request.method != b"HEAD":
            request.write(json.dumps(body, separators=(",", ":")).encode())
        request.finish()


class MetricsResource(Resource):
    """``GET /metrics``: Prometheus text format."""

    isLeaf = True

    def __init__(self, metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return self.metrics.render()


class WeCompanySite(Site):
    """
    The one HTTP site: deadlines for each phase of a request
    (:class:`~wecompany.web.channel.DeadlineChannel`), bodies limited per path
    before they are stored and forms parsed as they arrive
    (:class:`~wecompany.web.request.LimitedRequest`), every finished request
    counted by route, and an access log without query strings (they can
    carry tokens): :class:`AccessLog`. ``trusted_proxies`` (a
    :class:`~wecompany.proxies.TrustedProxies`) are the peers whose
    X-Forwarded-For names the client (``LimitedRequest.getClientAddress``).
    """

    protocol = DeadlineChannel
    noisy = False

    def __init__(self, resource, *, reactor, metrics=None, body_limits=(), max_body=DEFAULT_MAX_BODY,
                 timeouts: TimeoutPolicy | None = None, form_limits: FormLimits | None = None, upload_sinks=(),
                 trusted_proxies=NO_PROXIES):
        # Bodies are parsed by the API, which answers malformed ones in its
        # envelope (Twisted would send a bare 400 and drop the connection).
        super().__init__(resource, requestFactory=LimitedRequest, reactor=reactor, parsePOSTFormSubmission=False,
                         timeout=None)
        self.displayTracebacks = False
        self.metrics = metrics
        self.timeouts = timeouts or TimeoutPolicy()
        self.form_limits = form_limits or FormLimits()
        self._body_limits = tuple(body_limits)  # (path prefix bytes, limit)
        # (path bytes, make_sink(request, declared length) -> SpoolUpload): the
        # paths whose file parts are streamed to disk (wecompany.web.spool).
        self._upload_sinks = dict(upload_sinks)
        self._max_body = max_body
        self.access_log = AccessLog(reactor)
        self.trusted_proxies = trusted_proxies

    def max_body_for(self, path: bytes) -> int:
        for prefix, limit in self._body_limits:
            if path.startswith(prefix):
                return limit
        return self._max_body

    def upload_sink_for(self, path: bytes):
        """What makes the file sink of a multipart body to ``path``, or None to keep its parts in memory."""
        return self._upload_sinks.get(path.rstrip(b"/")) if self._upload_sinks else None

    def log(self, request) -> None:
        if self.metrics is not None:
            ep = getattr(request, "wecompany_endpoint", None)
            route = ep.label if ep is not None else _static_route(request.path)
            started = getattr(request, "wecompany_started", None)
            elapsed = self.reactor.seconds() - started if started is not None else 0.0
            self.metrics.observe(route, request.method.decode("ascii", "replace"), request.code, elapsed)
        self._log_access(request)

    def _log_access(self, request) -> None:
        started = getattr(request, "wecompany_started", None)
        user_agent = request.requestHeaders.getRawHeaders(b"user-agent", [b""])[0]
        self.access_log.add(getattr(request.getClientAddress(), "host", "-"),
                            request.method.decode("ascii", "replace"), request.path.decode("ascii", "replace")[:200],
                            request.code, request.sentLength,
                            duration=self.reactor.seconds() - started if started is not None else None,
                            request_id=getattr(request, "wecompany_request_id", None) or "-",
                            user_agent=user_agent.decode("latin-1")[:MAX_USER_AGENT])

    def stopFactory(self) -> None:
        self.access_log.flush()
        super().stopFactory()


# At module level: a Logger that is a class attribute is made anew, named
# after the class, at every access (Logger.__get__), which lost this name.
_access_log = Logger(namespace="wecompany.access")


#: Characters of a User-Agent header kept in the access log.
MAX_USER_AGENT = 200


def _quoted(text: str) -> str:
    """``text`` in double quotes, its quotes, backslashes and control characters escaped: one field, one line."""
    if text.isprintable() and '"' not in text and "\\" not in text:  # nearly always
        return f'"{text}"'
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\x{ord(c):02x}" for c in text) + '"'


class AccessLog:
    """
    One line per finished request, in the ``wecompany.access`` log: client
    address, method, path without the query string, status, bytes sent,
    duration, request id (the ``X-Request-Id`` the response carries) and the
    quoted user agent::

        203.0.113.9 GET /api/v1/users/me 200 312 1.8ms 5f0c...0001 "WeCompanyQt/2.1"

    Nothing else of the request is logged: no query string (it can carry a
    token), no Authorization or Cookie header, no body.

    The lines of the requests finished in one turn of the reactor go out as
    one event, at the end of the turn (or once ``max_lines`` are waiting):
    the log's observers format and write each event on the reactor thread
    (a timestamp, the format, a write() to the log file), which cost a
    quarter of a cheap authenticated request when every request was an
    event of its own. The event's text is the lines, one per request;
    ``requests`` holds them as dicts (``client``, ``method``, ``path``,
    ``status``, ``bytes``, ``duration_ms``, ``request_id``, ``user_agent``),
    in the same order; the JSON log writes one object per request from them
    (:mod:`wecompany.logs`).
    """

    def __init__(self, reactor, max_lines: int = 1000) -> None:
        self.reactor = reactor
        self.max_lines = max_lines
        self._lines: list[str] = []
        self._requests: list[tuple] = []
        self._flush_call = None

    def add(self, client: str, method: str, path: str, code: int, length: int, *, duration: float | None = None,
            request_id: str = "-", user_agent: str = "") -> None:
        ms = round(duration * 1000, 3) if duration is not None else None
        shown = f"{ms:.1f}ms" if ms is not None else "-"
        self._lines.append(f"{client} {method} {_quoted(path)[1:-1]} {code} {length} {shown} {request_id} "
                           f"{_quoted(user_agent)}")
        self._requests.append({"client": client, "method": method, "path": path, "status": code, "bytes": length,
                               "duration_ms": ms, "request_id": request_id, "user_agent": user_agent})
        if len(self._lines) >= self.max_lines:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Emit the waiting lines now."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if not self._lines:
            return
        lines, requests, self._lines, self._requests = self._lines, self._requests, [], []
        _access_log.info("{lines}", lines="\n".join(lines), requests=requests)

_REFUSED = b'{"code":503,"message":"too many connections from your address","error":"too many connections"}'
#: What a connection over the per-address cap is sent (it is then closed).
TOO_MANY_CONNECTIONS = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 10\r\n"
                        b"Content-Type: application/json; charset=utf-8\r\n"
                        b"Content-Length: " + str(len(_REFUSED)).encode() + b"\r\n\r\n" + _REFUSED)


def _static_route(path: bytes) -> str:
    # Unmatched paths are folded into one label so clients cannot grow the label set.
    for known in (b"/health", b"/metrics"):
        if path == known:
            return known.decode()
    return "unmatched"


def make_site(store, live=None, reactor=None, api=None, metrics=None,
              body_limits=(), signaling=None, timeouts: TimeoutPolicy | None = None, free_space=None,
              trusted_proxies=NO_PROXIES, console: bool = False, web_root: str | None = None,
              run_disk=None, serve_metrics: bool = True) -> Site:
    """
    The root: ``/health``, ``/metrics``, ``/api`` when a REST API is given
    (and ``/api/docs/``, Swagger UI on its document),
    and ``/ws/signaling`` when a signaling factory is. ``live``: the
    domain, whose live counts ``/health`` reports. ``trusted_proxies``: whose
    X-Forwarded-For is believed. ``metrics`` counts the site's requests; with
    ``serve_metrics`` false they are not served here (``--metrics-port``
    serves them on :func:`make_metrics_site`), and ``/metrics`` is a 404.

    Every other path is static files (:mod:`wecompany.web.static`): those
    of ``web_root`` (a single-page app; the console then at ``/console/``)
    or, with ``console``, the built-in web console; otherwise 404. They are
    read with ``run_disk`` (default: in place).
    """
    if reactor is None:  # tests without a clock
        from twisted.internet.task import Clock
        reactor = Clock()
    root = _root(console, web_root, run_disk)
    root.putChild(b"health", HealthResource(store, live, free_space, clock=reactor))
    if metrics is not None and serve_metrics:
        root.putChild(b"metrics", MetricsResource(metrics))
    elif metrics is not None:
        # On a listener of its own: here a plain 404, not the console's page.
        from twisted.web.resource import NoResource
        root.putChild(b"metrics", NoResource())
    upload_sinks = ()
    if api is not None:
        # /api/docs/ (Swagger UI, HTML) beside the API's JSON endpoints, which are everything else under /api.
        from wecompany.web.static import FallbackRoot, api_docs_files
        api_root = FallbackRoot(api.resource())
        api_root.putChild(b"docs", api_docs_files(run_disk))
        root.putChild(b"api", api_root)
        # The API's own upload paths: their body limits and file sinks.
        body_limits = (*getattr(api, "body_limits", tuple)(), *body_limits)
        upload_sinks = getattr(api, "upload_sinks", tuple)()
    if signaling is not None:
        from autobahn.twisted.resource import WebSocketResource
        ws = Resource()
        ws.putChild(b"signaling", WebSocketResource(signaling))
        root.putChild(b"ws", ws)
        # A Site does not start the factories of the resources it serves.
        signaling.startFactory()
    return WeCompanySite(root, reactor=reactor, metrics=metrics, body_limits=body_limits, timeouts=timeouts,
                         upload_sinks=upload_sinks, trusted_proxies=trusted_proxies)


def _root(console: bool, web_root: str | None, run_disk) -> Resource:
    if web_root is None and not console:
        return Resource()
    from wecompany.web import static
    if web_root is None:
        return static.FallbackRoot(static.console_files(run_disk))
    root = static.FallbackRoot(static.web_root_files(web_root, run_disk))
    if console:
        root.putChild(b"console", static.console_files(run_disk, mount=b"/console/"))
    return root


class MetricsSite(Site):
    """
    The ``--metrics-port`` listener's site: ``/metrics`` and nothing else
    (Synapse and LiveKit serve their metrics the same way, apart from the
    clients). Scrapes are not access-logged: a Prometheus polling every few
    seconds would drown the log.
    """

    noisy = False

    def log(self, request) -> None:
        pass


def make_metrics_site(metrics, reactor) -> Site:
    """A site of its own serving ``metrics`` (a :class:`~wecompany.api.metrics.Metrics`) at ``/metrics``."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(metrics))
    site = MetricsSite(root, reactor=reactor)
    site.displayTracebacks = False
    return site
