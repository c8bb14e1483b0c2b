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


class Domain:
    """
    The whole domain wired as the composition root wires it, on a fake clock
    and the in-memory store, with hashing and disk work run in place.
    """

    def __init__(self, media_dir: str, clock=None, ring_timeout=30.0, max_duration=3600.0,
                 chunk_size=16, recorder=None):
        from twisted.internet.task import Clock

        from wecompany.domain.accounts import Accounts
        from wecompany.domain.calls import CallService
        from wecompany.domain.chat import ChatService
        from wecompany.domain.files import FileService
        from wecompany.domain.ids import IdGenerator
        from wecompany.domain.passwords import PasswordHasher
        from wecompany.domain.ratelimit import KeyedRateLimiter, LoginGuard
        from wecompany.domain.sessions import SessionRegistry
        from wecompany.domain.tokens import TokenIssuer
        from wecompany.store.memory import MemoryStore

        self.clock = clock or Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryStore()
        self.store.start()
        # The cheapest argon2id parameters: the tests check behaviour, not strength.
        self.hasher = PasswordHasher(synchronous_runner, time_cost=1, memory_cost=8, parallelism=1)
        self.tokens = TokenIssuer(b"k" * 32, self.clock)
        self.guard = LoginGuard(self.clock, per_address=20, per_target=5, window=60)
        self.auth_limiter = KeyedRateLimiter(self.clock, 1000, 1000)
        self.accounts = Accounts(self.store, self.hasher, self.tokens, self.clock, self.guard)
        self.registry = SessionRegistry()
        self.calls = CallService(self.clock, ring_timeout, max_duration, recorder=recorder)
        self.chat = ChatService(self.store, self.registry, self.calls, IdGenerator(self.clock, node=1), self.clock)
        self.files = FileService(self.store, self.chat, media_dir, synchronous_runner, self.clock,
                                 chunk_size=chunk_size)
        self.chat.files = self.files

    def make_user(self, username: str, password: str = "Secret-pass1") -> int:
        from twisted.internet.defer import Deferred
        d = Deferred.fromCoroutine(self.accounts.register(username, password))
        return d.result.id
