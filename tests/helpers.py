"""Fakes shared by the unit tests."""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from wecompany.domain.core import HashCost
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


TEST_SECRET = b"k" * 32
# The cheapest argon2id parameters: the tests check behaviour, not strength.
CHEAP_HASH = HashCost(time_cost=1, memory_cost=8, parallelism=1)


def make_domain(test, clock=None, mailer=None, store=None, redis_link=None, id_node=1, s3_client=None,
                node_links=None, run_job=None, run_ai=None, ai_http=None, ai_engines=None, media_engine=None,
                **options):
    """
    The daemon's domain, built by the daemon's own :func:`build_domain`, on
    a fake clock (at 2023-11-14), the in-memory store (or ``store``: nodes
    of one cluster share theirs) and runners that do their thread work in
    place. ``options`` are :class:`Config` fields; the per-address auth
    budget is lifted unless given (many tests log in from one address).
    ``s3_client`` is the (fake) client of ``file_storage="s3://..."``;
    ``run_job`` runs media jobs (default: in a child process, as the daemon does).
    ``run_ai``, ``ai_http`` and ``ai_engines`` go to ``build_domain`` (AI
    work runs in place unless ``run_ai`` says otherwise). ``media_engine``:
    the SFU's (a fake), without which there is no SFU.
    """
    from twisted.internet.task import Clock

    from wecompany.config import Config
    from wecompany.domain.core import build_domain
    from wecompany.domain.meetingpages import MeetingPages
    from wecompany.domain.usercache import UserCache
    from wecompany.store.memory import MemoryStore

    if clock is None:
        clock = Clock()
        clock.advance(1_700_000_000)
    options = {"auth_rate": 1000, "auth_burst": 1000, **options}
    user_cache, meeting_pages = UserCache(clock), MeetingPages(clock)
    if store is None:
        store = MemoryStore(user_caches=[user_cache], meeting_caches=[meeting_pages])
        store.start()
    else:
        # Nodes of one cluster test share the store: each node's caches hear
        # every write, as if through a perfect bus (the bus itself is tested
        # in tests/mirror/test_caches.py and end to end).
        store.user_caches.append(user_cache)
        store.meeting_caches.append(meeting_pages)
    return build_domain(Config(data_dir=test.mktemp(), **options), clock, store, secret=TEST_SECRET,
                        run_hash=synchronous_runner, run_disk=synchronous_runner, user_cache=user_cache,
                        meeting_pages=meeting_pages, hash_cost=CHEAP_HASH, mailer=mailer, id_node=id_node,
                        redis_link=redis_link, node_links=node_links, run_job=run_job,
                        s3_client_factory=None if s3_client is None else lambda: s3_client,
                        run_ai=run_ai or synchronous_runner, ai_http=ai_http, ai_engines=ai_engines,
                        media_engine=media_engine)


def make_user(domain, username: str, password: str = "Secret-pass1") -> int:
    """Register ``username`` (at once: everything runs in place) -> its id."""
    from twisted.internet.defer import Deferred
    d = Deferred.fromCoroutine(domain.accounts.register(username, password))
    return d.result.id
