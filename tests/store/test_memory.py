"""MemoryStore: the shared store behaviour, with no threads and no reactor."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.store.behaviour import MediaBehaviour, StoreBehaviour
from wecompany.errors import Unavailable, UsernameTaken
from wecompany.store.memory import MemoryStore


class MemoryStoreTests(StoreBehaviour, MediaBehaviour, TestCase):
    def make_store(self, user_caches=(), meeting_caches=()):
        return MemoryStore(user_caches=list(user_caches), meeting_caches=list(meeting_caches))

    async def count_rows(self, table):
        return len(getattr(self.store, f"_{table}"))


class FiredDeferredTests(SynchronousTestCase):
    """Every answer is already there when the call returns."""

    def test_answers_have_fired(self):
        store = MemoryStore()
        self.failureResultOf(store.get_user(1), Unavailable)
        self.assertIsNone(self.successResultOf(store.start()))
        alice = self.successResultOf(store.create_user("alice", "h", None, None, 1.0))
        self.assertEqual(self.successResultOf(store.get_user_by_login("ALICE")), alice)
        failure = self.failureResultOf(store.create_user("Alice", "h", None, None, 2.0), UsernameTaken)
        self.assertEqual(failure.value.error_code, 1001)
        self.assertIsNone(self.successResultOf(store.stop()))
