"""The REST API over the real site and resource tree, without sockets or wall time."""

from __future__ import annotations

import json

from treq.testing import StubTreq

from tests.helpers import Domain, synchronous_runner
from wecompany.api.app import RestAPI
from wecompany.api.metrics import Metrics
from wecompany.domain.accounts import Credentials
from wecompany.domain.ice import IceServers
from wecompany.domain.lifecycle import AccountLifecycle
from wecompany.domain.meetings import MeetingService
from wecompany.domain.rooms import RoomService
from wecompany.times import rfc3339
from wecompany.domain.ratelimit import KeyedRateLimiter
from wecompany.web.site import make_site

PASSWORD = "Secret-pass1"


class RecordingMailer:
    def __init__(self):
        self.sent = []

    async def send(self, to, subject, body):
        self.sent.append((to, subject, body))


class Api:
    """A RestAPI on the test Domain, and a client for it."""

    def __init__(self, test, address_rate: float = 1000.0, address_burst: float = 1000.0):
        self.test = test
        self.domain = d = Domain(test.mktemp())
        self.clock = d.clock
        self.mailer = RecordingMailer()
        self.ice = IceServers(d.clock)
        self.rooms = RoomService(d.store, self.ice, d.clock, format_time=rfc3339)
        self.meetings = MeetingService(d.store, d.hasher, d.clock, d.guard, listeners=[self.rooms])
        self.lifecycle = AccountLifecycle(d.store, d.registry, d.clock, self.meetings)
        self.credentials = Credentials(d.accounts, self.lifecycle, self.mailer)
        self.metrics = Metrics(d.registry, d.calls)
        self.auth_limiter = KeyedRateLimiter(d.clock, address_rate, address_burst)
        self.rest = RestAPI(store=d.store, accounts=d.accounts, credentials=self.credentials,
                            lifecycle=self.lifecycle, meetings=self.meetings,
                            ice_servers=self.ice, rooms=self.rooms, registry=d.registry, calls=d.calls,
                            clock=d.clock,
                            address_limiter=self.auth_limiter,
                            run_in_thread=synchronous_runner,
                            avatar_dir=test.mktemp())
        self.site = make_site(d.store, d.registry, d.calls, reactor=d.clock, api=self.rest, metrics=self.metrics,
                              body_limits=((b"/api/v1/users/upload-avatar", 3 << 20),))
        self.treq = StubTreq(self.site.resource)
        # Serve through our Site (body limits, metrics), not the stub's default one.
        self.treq._agent._serverFactory = self.site

    def request(self, method: str, path: str, body=None, token: str | None = None, headers=None,
                raw: bytes | None = None):
        """-> (status, parsed JSON or raw bytes, response)"""
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        d = self.treq.request(method, "http://localhost" + path, data=data,
                              headers={k: [v] for k, v in hdrs.items()})
        self.treq.flush()
        response = self.test.successResultOf(d)
        content = self.test.successResultOf(response.content())
        ctype = (response.headers.getRawHeaders("content-type") or [""])[0]
        parsed = json.loads(content) if ctype.startswith("application/json") and content else content
        return response.code, parsed, response

    def register(self, username: str, email: str | None = None, password: str = PASSWORD) -> dict:
        code, body, _ = self.request("POST", "/api/v1/auth/register",
                                     {"username": username, "email": email or f"{username}@example.com",
                                      "password": password})
        assert code == 200, body
        return body["data"]

    def login(self, username: str, password: str = PASSWORD) -> dict:
        code, body, _ = self.request("POST", "/api/v1/auth/login", {"username": username, "password": password})
        assert code == 200, body
        return body["data"]

    def user(self, username: str) -> str:
        """Register and log in; -> access token."""
        self.register(username)
        return self.login(username)["token"]
