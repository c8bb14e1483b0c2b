"""build_domain: one domain, wired once, the same for the daemon and the tests."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import FakeClient, make_domain, make_user
from tests.storage.fakes3 import FakeS3Client
from wecompany.storage.local import DirectoryStorage
from wecompany.storage.s3 import S3Storage


class BuildDomainTests(SynchronousTestCase):
    def test_the_configuration_reaches_every_service(self):
        d = make_domain(self, ring_timeout=5, max_call=60, token_ttl=600, login_failures_per_account=3,
                        login_failures_per_address=7, login_failure_window=30, max_frame=4096,
                        stun_servers="stun:stun.example.com:3478")
        self.assertEqual((d.calls.ring_timeout, d.calls.max_duration, d.tokens.ttl), (5, 60, 600))
        self.assertEqual((d.guard.targets.max_failures, d.guard.addresses.max_failures, d.guard.targets.window),
                         (3, 7, 30))
        self.assertEqual(d.files.chunk_size, 4096 - 64)
        self.assertEqual(d.ice.stun_urls, ("stun:stun.example.com:3478",))
        self.assertIsInstance(d.storage, DirectoryStorage)
        self.assertEqual(d.storage.root, d.config.data_dir)  # where files always were
        self.assertIs(d.files.storage, d.storage)
        self.assertEqual(d.files.spool_dir, os.path.join(d.config.data_dir, "spool"))
        self.assertIsNone(d.recorder)

    def test_file_storage_for_every_node(self):
        shared = os.path.abspath(self.mktemp())
        d = make_domain(self, file_storage=f"file:{shared}")
        self.assertEqual((type(d.storage), d.storage.root), (DirectoryStorage, shared))
        self.assertEqual(d.files.spool_dir, os.path.join(d.config.data_dir, "spool"))  # spooling stays local
        client = FakeS3Client(buckets=["media"])
        d = make_domain(self, file_storage="s3://media/wc?endpoint=http://127.0.0.1:9000", s3_client=client)
        self.assertIsInstance(d.storage, S3Storage)
        self.assertEqual((d.storage.bucket, d.storage.prefix), ("media", "wc/"))
        self.assertIs(d.files.storage, d.storage)
        self.assertIs(d.storage.client(), client)
        self.assertEqual(d.files.read_size, d.storage.read_size)  # 1 MiB: whole 64 KiB chunks

    def test_one_of_each_shared(self):
        d = make_domain(self)
        self.assertIs(d.accounts.guard, d.guard)
        self.assertIs(d.meetings.guard, d.guard)
        self.assertIs(d.credentials.lifecycle, d.lifecycle)
        self.assertIs(d.lifecycle.registry, d.registry)
        self.assertIs(d.chat.registry, d.registry)
        self.assertIs(d.files.directory, d.chat.directory)
        self.assertEqual(d.meetings.listeners, [d.rooms])

    def test_file_transfers_follow_sessions_as_a_listener(self):
        # No collaborator set after construction: files learn of sessions as the chat's listener.
        d = make_domain(self)
        self.assertEqual(d.chat.listeners, (d.files,))
        self.assertFalse(hasattr(d.chat, "files"))
        alice = FakeClient(str(make_user(d, "alice")), "alice")
        d.chat.open_session(alice)
        d.chat.close_session(alice)  # the files' side of it ran without error
        self.assertEqual(d.files.upload_count, 0)

    def test_the_store_must_invalidate_the_caches(self):
        from tests.helpers import CHEAP_HASH, TEST_SECRET, synchronous_runner
        from twisted.internet.task import Clock

        from wecompany.config import Config
        from wecompany.domain.core import build_domain
        from wecompany.domain.meetingpages import MeetingPages
        from wecompany.domain.usercache import UserCache
        from wecompany.store.memory import MemoryStore

        d = make_domain(self)
        self.assertIs(d.accounts.users, d.user_cache)
        self.assertIs(d.meetings.pages, d.meeting_pages)
        self.assertEqual((d.store.user_caches, d.store.meeting_caches), ([d.user_cache], [d.meeting_pages]))
        clock = Clock()
        users, pages = UserCache(clock), MeetingPages(clock)
        for store in (MemoryStore(), MemoryStore(user_caches=[users]), MemoryStore(meeting_caches=[pages])):
            with self.assertRaises(ValueError):
                build_domain(Config(data_dir=self.mktemp()), clock, store, secret=TEST_SECRET,
                             run_hash=synchronous_runner, run_disk=synchronous_runner, user_cache=users,
                             meeting_pages=pages, hash_cost=CHEAP_HASH)
