"""SpoolUpload: writes in the disk pool one job at a time, back-pressure, failure and discard."""

from __future__ import annotations

import hashlib
import os

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase

from wecompany.errors import TooLarge, Unavailable
from wecompany.web.spool import SpoolUpload


class ManualRunner:
    """A disk pool whose jobs run only when the test says so."""

    def __init__(self):
        self.jobs: list[tuple[Deferred, object, tuple]] = []

    def __call__(self, f, *args):
        d = Deferred()
        self.jobs.append((d, f, args))
        return d

    def run_one(self):
        d, f, args = self.jobs.pop(0)
        maybeDeferred(f, *args).chainDeferred(d)

    def run_all(self):
        while self.jobs:
            self.run_one()


class Producer:
    def __init__(self):
        self.paused = False
        self.pauses = self.resumes = 0

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False
        self.resumes += 1


class SpoolTests(SynchronousTestCase):
    def setUp(self):
        self.runner = ManualRunner()
        self.producer = Producer()
        self.directory = self.mktemp()
        self.upload = SpoolUpload(self.directory, self.runner, self.producer, max_size=10_000,
                                  high_water=1000, low_water=300, max_batch=600)
        self.errors = []
        self.upload.when_failed(self.errors.append)
        self.upload.open("file", "a.bin", "application/octet-stream")

    def test_back_pressure(self):
        data = b""
        for i in range(12):
            chunk = bytes([i]) * 100
            data += chunk
            self.upload.write(chunk)
        # One batch at a time: the first took 100 bytes, the rest wait.
        self.assertEqual(self.upload.waiting, 1200)
        self.assertTrue(self.producer.paused)  # more than 1000 bytes wait for the disk
        jobs = 0
        while self.producer.paused:
            self.assertLessEqual(len(self.runner.jobs), 2)  # a batch's write and hash, side by side
            self.assertGreater(self.upload.waiting, 300)
            self.runner.run_one()
            jobs += 1
        self.assertLessEqual(self.upload.waiting, 300)  # resumed at the low-water mark
        self.assertEqual(self.producer.resumes, 1)
        self.assertGreater(jobs, 3)
        self.upload.close()
        d = Deferred.fromCoroutine(self.upload.result())
        self.runner.run_all()
        spooled = self.successResultOf(d)
        self.assertEqual((spooled.size, spooled.sha256), (1200, hashlib.sha256(data).hexdigest()))
        with open(spooled.path, "rb") as fh:
            self.assertEqual(fh.read(), data)

    def test_past_the_limit(self):
        self.upload.write(b"x" * 10_000)
        self.assertRaises(TooLarge, self.upload.write, b"x")

    def test_one_file(self):
        from wecompany.errors import InvalidInput
        self.assertRaises(InvalidInput, self.upload.open, "file", "b.bin", None)

    def test_discard_waits_for_the_write_under_way(self):
        self.upload.write(b"a" * 2000)
        self.assertTrue(self.producer.paused)
        d = self.upload.discard()
        self.assertFalse(self.producer.paused)  # nothing waits any more
        self.runner.run_all()
        self.successResultOf(d)
        self.assertEqual(os.listdir(self.directory), [])
        self.upload.write(b"more")  # ignored
        self.assertEqual(self.runner.jobs, [])
        self.assertIs(self.upload.discard(), d)

    def test_a_failed_write(self):
        os.makedirs(self.directory)
        with open(self.upload.path, "wb"):
            pass  # "xb" cannot open it
        self.upload.write(b"a")
        self.runner.run_all()
        self.assertEqual(len(self.errors), 1)
        self.assertIsInstance(self.errors[0], Unavailable)
        self.flushLoggedErrors()
        d = Deferred.fromCoroutine(self.upload.result())
        self.runner.run_all()
        self.failureResultOf(d, Unavailable)

    def test_refused(self):
        self.upload.write(b"a" * 10)
        self.upload.refuse(TooLarge("quota"))
        self.assertEqual([e.message for e in self.errors], ["quota"])
        self.runner.run_all()
        self.assertFalse(os.path.exists(self.upload.path))
        d = Deferred.fromCoroutine(self.upload.result())
        self.assertEqual(self.failureResultOf(d, TooLarge).value.message, "quota")


class SyncTests(SynchronousTestCase):
    """What arrives is synced to disk as it goes (beside the writes), so the end has little left to sync."""

    def setUp(self):
        self.runner = ManualRunner()
        self.producer = Producer()
        self.directory = self.mktemp()
        self.upload = SpoolUpload(self.directory, self.runner, self.producer, max_size=10_000,
                                  high_water=5000, low_water=300, max_batch=400, sync_every=500)
        self.errors = []
        self.upload.when_failed(self.errors.append)
        self.upload.open("file", "a.bin", "application/octet-stream")

    def names(self):
        return [f.__name__ for _, f, _ in self.runner.jobs]

    def run_named(self, name):
        index = self.names().index(name)
        d, f, args = self.runner.jobs.pop(index)
        maybeDeferred(f, *args).chainDeferred(d)

    def test_synced_every_so_many_bytes_beside_the_writes(self):
        self.upload.write(b"a" * 400)
        self.runner.run_all()  # open, write, hash: 400 written, no sync yet
        self.upload.write(b"b" * 400)
        self.runner.run_one()
        self.runner.run_one()  # 800 written since the start: a sync begins
        self.upload.write(b"c" * 100)
        self.assertEqual(sorted(self.names()), ["hash", "sync", "write"])  # the next batch does not wait for it
        d = Deferred.fromCoroutine(self.upload.result())
        self.run_named("write")
        self.run_named("hash")
        self.assertNoResult(d)  # every byte written, but the sync under way is awaited
        self.assertEqual(self.names(), ["sync"])
        self.runner.run_all()  # the sync, then the finish
        self.assertEqual(self.successResultOf(d).size, 900)
        self.assertEqual(self.errors, [])

    def test_a_failed_sync_fails_the_upload(self):
        self.upload.write(b"a" * 400)
        self.runner.run_all()
        self.upload.write(b"b" * 400)
        self.runner.run_one()
        self.runner.run_one()
        d, f, _ = self.runner.jobs.pop(0)
        self.assertEqual(f.__name__, "sync")
        d.errback(OSError(5, "Input/output error"))
        self.assertEqual(len(self.errors), 1)
        self.assertIsInstance(self.errors[0], Unavailable)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.runner.run_all()
        self.assertFalse(os.path.exists(self.upload.path))  # discarded
        result = Deferred.fromCoroutine(self.upload.result())
        self.failureResultOf(result, Unavailable)

    def test_discard_waits_for_the_sync(self):
        self.upload.write(b"a" * 400)
        self.runner.run_all()
        self.upload.write(b"b" * 400)
        self.runner.run_one()
        self.runner.run_one()
        self.assertEqual(self.names(), ["sync"])
        d = self.upload.discard()
        self.assertEqual(self.names(), ["sync"])  # the file is not closed under the sync
        self.runner.run_one()
        self.runner.run_all()
        self.successResultOf(d)
        self.assertFalse(os.path.exists(self.upload.path))
