"""FileService housekeeping that needs no protocol: uploads an earlier run left unfinished."""

import os

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import make_domain, make_user


class InterruptedUploadTests(SynchronousTestCase):
    def setUp(self):
        self.media = self.mktemp()
        self.d = make_domain(self)
        self.files = self.d.files
        self.alice, self.bob = make_user(self.d, "alice"), make_user(self.d, "bob")

    def upload(self, name: str, at: float):
        """A 'receiving' row and its partial bytes on disk, as a stopped run leaves them."""
        path = os.path.join("transfers", "ab", name)
        os.makedirs(os.path.join(self.files.media_dir, "transfers", "ab"), exist_ok=True)
        with open(os.path.join(self.files.media_dir, path), "wb") as f:
            f.write(b"half of it")
        return self.d.store.create_file(self.alice, name, 100, "00" * 32, path, at, recipient_id=self.bob).result

    def test_removes_rows_and_bytes_of_uploads_begun_before_the_start(self):
        started_at = self.d.clock.seconds()
        old = self.upload("old", started_at - 3600)
        new = self.upload("new", started_at)  # begun by a client of this run
        removed = self.successResultOf(Deferred.fromCoroutine(self.files.remove_interrupted(started_at)))
        self.assertEqual(removed, 1)
        self.assertIsNone(self.d.store.get_file(old.id).result)
        self.assertFalse(os.path.exists(os.path.join(self.files.media_dir, old.path)))
        self.assertEqual(self.d.store.get_file(new.id).result, new)
        self.assertTrue(os.path.exists(os.path.join(self.files.media_dir, new.path)))

    def test_missing_bytes_are_no_error(self):
        started_at = self.d.clock.seconds()
        record = self.upload("gone", started_at - 1)
        os.remove(os.path.join(self.files.media_dir, record.path))
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(self.files.remove_interrupted(started_at))), 1)
        self.assertIsNone(self.d.store.get_file(record.id).result)
