"""
The HTTP site. Its root is a plain ``Resource`` so the Klein REST API
(``/api``) and the Autobahn WebSocket endpoint (``/ws``) can be mounted
beside each other; ``/health`` is here from the start.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from wecompany import __version__


class HealthResource(Resource):
    """
    ``GET /health``: 200 when the database answers, 503 otherwise; JSON body
    ``{"status": "ok"|"unavailable", "database": ..., "version": ...,
    "online_users": N, "active_calls": N}``.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, store, registry=None, calls=None) -> None:
        super().__init__()
        self.store = store
        self.registry = registry
        self.calls = calls

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
        body = {
            "status": "ok" if db_ok else "unavailable",
            "database": "ok" if db_ok else "unavailable",
            "version": __version__,
        }
        if self.registry is not None:
            body["online_users"] = self.registry.online_count
        if self.calls is not None:
            body["active_calls"] = self.calls.active_count
        return (200 if db_ok else 503), body

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


def make_site(store, registry=None, calls=None, reactor=None) -> Site:
    root = Resource()
    root.putChild(b"health", HealthResource(store, registry, calls))
    site = Site(root, reactor=reactor)
    site.displayTracebacks = False
    return site
