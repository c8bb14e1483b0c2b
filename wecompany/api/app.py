"""
The REST API: one Klein app whose routes come from the mixins below, all
declared with :func:`~wecompany.api.routing.endpoint`.
"""

from __future__ import annotations

import secrets

from klein import Klein

from wecompany.api.admin import AdminRoutes
from wecompany.api.ai import AIRoutes
from wecompany.api.auth import AuthRoutes
from wecompany.api.live import LiveRoutes
from wecompany.api.media import MediaRoutes
from wecompany.api.meetings import MeetingRoutes, RenderedPages
from wecompany.api.recordings import RecordingRoutes
from wecompany.api.signaling import SignalingRoutes
from wecompany.api.routing import PUBLIC, Call, ErrorMapping, endpoint, install
from wecompany.api.users import UserRoutes
from wecompany.api.webrtc import WebRTCRoutes
from wecompany.errors import Forbidden, Unauthenticated

CSRF_SCHEMA = {"type": "object", "required": ["csrf_token"], "properties": {"csrf_token": {"type": "string"}}}


@install
class RestAPI(ErrorMapping, AuthRoutes, UserRoutes, MeetingRoutes, AdminRoutes, LiveRoutes, SignalingRoutes,
              MediaRoutes, AIRoutes, WebRTCRoutes, RecordingRoutes):
    """
    Everything under ``/api``, over one :class:`~wecompany.domain.core.Domain`
    whose services the routes call (and nothing else).

    :param live_feed: the :class:`~wecompany.domain.dashboard.DashboardFeed`
        of ``GET /api/v1/admin/live`` (default: one over ``domain`` without
        REST latencies; the daemon's reads them from its metrics).
    """

    app = Klein()

    def __init__(self, domain, live_feed=None) -> None:
        self.domain = domain
        self.store = domain.store
        self.accounts = domain.accounts
        self.credentials = domain.credentials
        self.lifecycle = domain.lifecycle
        self.meetings = domain.meetings
        self.ice_servers = domain.ice
        self.rooms = domain.rooms
        self.clock = domain.clock
        self.address_limiter = domain.auth_limiter  # the auth routes' budget, shared with the TCP port
        self.file_storage = domain.storage
        self.media = domain.media
        self.processing = domain.processing
        self.ai = domain.ai
        self.sfu = domain.sfu_routes  # the SfuService, or in a cluster its router
        self.sfu_limiter = domain.sfu_limiter
        self.recordings = domain.recordings
        self.rendered_pages = RenderedPages()
        self._openapi = None
        if live_feed is None:
            from wecompany.domain.dashboard import Dashboard, DashboardFeed
            live_feed = DashboardFeed(Dashboard(domain), domain.clock)
        self.live_feed = live_feed

    def resource(self):
        return self.app.resource()

    async def authenticate(self, request, admin: bool = False):
        """The user of the request's Bearer token, or :class:`Unauthenticated`."""
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("missing bearer token")
        user = await self.accounts.authenticate_token(token.strip())
        if admin and user.role != "admin":
            raise Forbidden("administrators only")
        return user

    @staticmethod
    def client_address(request) -> str:
        address = request.getClientAddress()
        return getattr(address, "host", None) or str(address)

    @endpoint("GET", "/v1/csrf-token", summary="A CSRF token for browser clients (not enforced: "
              "the API authenticates with bearer tokens, which browsers never send on their own)",
              tag="system", auth=PUBLIC, data=CSRF_SCHEMA)
    async def csrf_token(self, call: Call):
        return {"csrf_token": secrets.token_urlsafe(32)}

    @endpoint("GET", "/v1/openapi.json", summary="This API's OpenAPI 3 document", tag="system", auth=PUBLIC)
    async def openapi(self, call: Call):
        from wecompany.api.envelope import dumps
        from wecompany.api.openapi import build_document
        if self._openapi is None:
            self._openapi = dumps(build_document(type(self)))
        call.request.setHeader(b"content-type", b"application/json")
        return self._openapi
