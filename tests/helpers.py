"""Fakes shared by the unit tests."""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from wecompany.domain.interfaces import IClient
from wecompany.domain.sessions import Identity


@implementer(IClient)
class FakeClient:
    """An IClient that records what the domain sends it."""

    def __init__(self, user_id: str, username: str | None = None, account: bool = True, kind: str = "tcp"):
        self.identity = Identity(user_id, username or f"user{user_id}", int(user_id) if account else None)
        self.kind = kind
        self.events: list = []
        self.media: list = []
        self.disconnected = None
        self.blocked = False

    def send_event(self, event):
        self.events.append(event)

    def send_media(self, call_id, data):
        if self.blocked:
            return False
        self.media.append((call_id, data))
        return True

    def disconnect(self, error):
        self.disconnected = error

    def take(self):
        events, self.events = self.events, []
        return events

    def __repr__(self):
        return f"<FakeClient {self.identity.user_id}>"


def synchronous_runner(f, *args, **kwargs):
    """A run_in_thread that runs in place: for unit tests of thread-using code."""
    return defer.maybeDeferred(f, *args, **kwargs)
