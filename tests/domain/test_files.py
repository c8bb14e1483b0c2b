"""FileService without a protocol: where uploads go, and what an earlier run left unfinished."""

import hashlib
import os

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import FakeClient, make_domain, make_user
from tests.storage.fakes3 import FakeS3Client


def run(coroutine):
    return Deferred.fromCoroutine(coroutine)


class SpoolTests(SynchronousTestCase):
    """Chunks go to a spool file on this node's disk; the storage gets only complete, verified files."""

    def setUp(self):
        self.s3 = FakeS3Client(buckets=["media"])
        self.d = make_domain(self, file_storage="s3://media/wc", s3_client=self.s3)
        self.alice, self.bob = make_user(self.d, "alice"), make_user(self.d, "bob")
        self.sender = FakeClient(str(self.alice), "alice")

    def test_chunks_are_spooled_then_the_whole_file_stored(self):
        data = b"0123456789" * 10
        record = self.successResultOf(run(self.d.files.offer(self.sender, "t1", "bob", "a.txt", len(data),
                                                             hashlib.sha256(data).digest())))
        self.assertIsNone(self.successResultOf(run(self.d.files.chunk(self.sender, "t1", 0, data[:60]))))
        spooled = os.listdir(self.d.files.spool_dir)
        self.assertEqual(len(spooled), 1)
        self.assertEqual(self.s3.objects, {})  # nothing half-written where other nodes read
        done, _ = self.successResultOf(run(self.d.files.chunk(self.sender, "t1", 60, data[60:])))
        self.assertEqual(done.status, "complete")
        self.assertEqual(os.listdir(self.d.files.spool_dir), [])
        self.assertEqual(self.s3.objects, {("media", f"wc/media/{record.path}"): data})

    def test_a_cancelled_or_failed_upload_leaves_nothing(self):
        for how in ("cancel", "mismatch"):
            record = self.successResultOf(run(self.d.files.offer(self.sender, how, "bob", "a", 3, b"\x00" * 32)))
            if how == "cancel":
                self.successResultOf(run(self.d.files.cancel(self.sender, how)))
            else:
                self.failureResultOf(run(self.d.files.chunk(self.sender, how, 0, b"abc")))
            self.assertIsNone(self.d.store.get_file(record.id).result)
        self.assertEqual((os.listdir(self.d.files.spool_dir), self.s3.objects), ([], {}))


class InterruptedUploadTests(SynchronousTestCase):
    def setUp(self):
        self.s3 = FakeS3Client(buckets=["media"])
        self.d = make_domain(self, file_storage="s3://media", s3_client=self.s3)
        self.files = self.d.files
        self.alice, self.bob = make_user(self.d, "alice"), make_user(self.d, "bob")

    def left_over(self, name: str, at: float, stored: bool = False):
        """A 'receiving' row and its partial spool file, as a stopped run leaves them (and its bytes, if stored)."""
        path = f"transfers/ab/{name}"
        os.makedirs(self.files.spool_dir, exist_ok=True)
        with open(os.path.join(self.files.spool_dir, name), "wb") as f:
            f.write(b"half of it")
        record = self.d.store.create_file(self.alice, name, 100, "00" * 32, path, at, recipient_id=self.bob).result
        if stored:  # it had reached the storage when the run stopped, not yet recorded complete
            self.s3.objects[("media", f"media/{path}")] = b"x" * 100
        return record

    def test_removes_rows_spool_files_and_bytes_of_uploads_begun_before_the_start(self):
        started_at = self.d.clock.seconds()
        old = self.left_over("old", started_at - 3600, stored=True)
        orphan = self.left_over("orphan", started_at - 60)
        self.d.store.delete_file(orphan.id)  # a spool file whose row is gone already
        # An upload begun by a client of this run, before the housekeeping ran.
        sender = FakeClient(str(self.alice), "alice")
        data = b"new file"
        new = self.successResultOf(run(self.files.offer(sender, "t1", "bob", "n", len(data),
                                                        hashlib.sha256(data).digest())))
        removed = self.successResultOf(run(self.files.remove_interrupted(started_at)))
        self.assertEqual(removed, 1)
        self.assertIsNone(self.d.store.get_file(old.id).result)
        self.assertEqual(self.s3.objects, {})
        self.assertEqual(len(os.listdir(self.files.spool_dir)), 1)  # the new upload's only
        self.assertEqual(self.d.store.get_file(new.id).result, new)
        # ... which completes untouched.
        done, _ = self.successResultOf(run(self.files.chunk(sender, "t1", 0, data)))
        self.assertEqual(self.s3.objects, {("media", f"media/{new.path}"): data})

    def test_missing_bytes_are_no_error(self):
        started_at = self.d.clock.seconds()
        record = self.left_over("gone", started_at - 1)
        os.remove(os.path.join(self.files.spool_dir, "gone"))
        self.assertEqual(self.successResultOf(run(self.files.remove_interrupted(started_at))), 1)
        self.assertIsNone(self.d.store.get_file(record.id).result)

    def test_the_directories_of_others_in_the_spool_are_left_alone(self):
        """The meeting recordings' files wait in spool/recordings for their own recovery at start."""
        started_at = self.d.clock.seconds()
        self.left_over("gone", started_at - 1)
        recordings = os.path.join(self.files.spool_dir, "recordings")
        os.makedirs(recordings)
        with open(os.path.join(recordings, "1-abc.mkv"), "wb") as f:
            f.write(b"cut short")
        self.assertEqual(self.successResultOf(run(self.files.remove_interrupted(started_at))), 1)
        self.assertEqual(os.listdir(self.files.spool_dir), ["recordings"])
        self.assertEqual(os.listdir(recordings), ["1-abc.mkv"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_storage_that_is_down_does_not_stop_the_housekeeping(self):
        from tests.storage.fakes3 import FakeConnectionError
        started_at = self.d.clock.seconds()
        self.left_over("one", started_at - 10, stored=True)
        self.left_over("two", started_at - 10, stored=True)
        self.s3.fail("DeleteObject", FakeConnectionError("refused"))
        self.assertEqual(self.successResultOf(run(self.files.remove_interrupted(started_at))), 2)
        self.assertEqual(os.listdir(self.files.spool_dir), [])
        self.assertEqual(len(self.flushLoggedErrors()), 2)  # what is left in the storage is in the log


class ClusterUploadTests(SynchronousTestCase):
    """Nodes of a cluster share the files table: each cleans up only its own unfinished uploads."""

    def setUp(self):
        from tests.mirror.fakeredis import FakeLink, FakeRedisServer
        from wecompany.store.memory import MemoryStore

        self.store = MemoryStore(user_caches=[], meeting_caches=[])  # the nodes add their caches
        self.store.start()
        server = FakeRedisServer(None)
        self.a = make_domain(self, store=self.store, redis_link=FakeLink(server), node_id="a")
        self.b = make_domain(self, store=self.store, redis_link=FakeLink(server), node_id="b", clock=self.a.clock)
        self.alice, self.bob = make_user(self.a, "alice"), make_user(self.a, "bob")

    def offer(self, domain, transfer: str):
        sender = FakeClient(str(self.alice), "alice")
        return self.successResultOf(run(domain.files.offer(sender, transfer, "bob", "f", 10, b"\x00" * 32)))

    def test_a_restarted_node_leaves_the_others_uploads_alone(self):
        on_a, on_b = self.offer(self.a, "t1"), self.offer(self.b, "t2")
        self.assertTrue(on_a.path.startswith("transfers/a/"), on_a.path)
        self.a.clock.advance(10)
        # a restarts (a new FileService on the same data dir and database) and tidies up.
        restarted = make_domain(self, store=self.store, redis_link=self.a.cluster.link, node_id="a",
                                clock=self.a.clock)
        self.assertEqual(self.successResultOf(run(restarted.files.remove_interrupted(self.a.clock.seconds()))), 1)
        self.assertIsNone(self.store.get_file(on_a.id).result)
        self.assertEqual(self.store.get_file(on_b.id).result, on_b)  # still on its way on b

    def test_the_uploads_of_a_dead_node_are_removed_by_a_survivor(self):
        on_b = self.offer(self.b, "t1")
        on_a = self.offer(self.a, "t2")
        self.assertEqual(self.successResultOf(run(self.a.files.remove_uploads_of("b"))), 1)
        self.assertIsNone(self.store.get_file(on_b.id).result)
        self.assertEqual(self.store.get_file(on_a.id).result, on_a)
