"""The REST API through the daemon's own site, without sockets or wall time."""

from __future__ import annotations

import json

from tests.helpers import make_domain
from tests.sitetesting import site_client
from wecompany.proxies import TrustedProxies
from wecompany.api.ai import ai_body_limits
from wecompany.api.app import RestAPI
from wecompany.api.metrics import Metrics
from wecompany.web.site import make_site

PASSWORD = "Secret-pass1"


class RecordingMailer:
    def __init__(self):
        self.sent = []

    async def send(self, to, subject, body):
        self.sent.append((to, subject, body))


class Api:
    """
    The daemon's RestAPI and site on a test domain (:func:`make_domain`, given
    ``domain_options``), and a client for them.
    """

    def __init__(self, test, address_rate: float = 1000.0, address_burst: float = 1000.0, trusted_proxies=None,
                 **domain_options):
        self.test = test
        self.mailer = RecordingMailer()
        self.domain = d = make_domain(test, mailer=self.mailer, auth_rate=address_rate, auth_burst=address_burst,
                                      **domain_options)
        self.clock = d.clock
        self.auth_limiter = d.auth_limiter
        self.credentials, self.ice, self.rooms = d.credentials, d.ice, d.rooms
        self.meetings, self.lifecycle = d.meetings, d.lifecycle
        self.metrics = Metrics(d)
        self.rest = RestAPI(d)
        self.site = make_site(d.store, d, reactor=d.clock, api=self.rest, metrics=self.metrics,
                              body_limits=((b"/api/v1/users/upload-avatar", 3 << 20),
                                           *ai_body_limits(d.config.ai_max_audio_bytes)),
                              trusted_proxies=TrustedProxies.of(trusted_proxies))
        # Through the site itself: its body limits, deadlines and metrics apply.
        self.treq, self.agent = site_client(self.site)

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
        self.agent.flush()
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
