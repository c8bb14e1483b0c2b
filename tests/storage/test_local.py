"""DirectoryStorage against a temporary directory, its disk work run in place."""

from __future__ import annotations

import errno
import os
import stat

from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase

from tests.helpers import synchronous_runner
from tests.storage.behaviour import StorageBehaviour
from wecompany.errors import Unavailable
from wecompany.privatefs import storage_errors_unavailable
from wecompany.storage import KeyMissing
from wecompany.storage.local import DirectoryStorage


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class RecordingRunner:
    """Runs in place, remembering what it ran: all file work must go through the runner."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def __call__(self, f, *args):
        self.ran.append(f.__name__)
        return synchronous_runner(f, *args)


class DirectoryBehaviourTests(StorageBehaviour, TestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.runner = RecordingRunner()
        self.storage = DirectoryStorage(self.root, self.runner)


class DirectoryTests(TestCase):
    def setUp(self):
        previous = os.umask(0o022)  # as a daemon started from a login shell would have
        self.addCleanup(os.umask, previous)
        self.root = os.path.abspath(self.mktemp())
        self.runner = RecordingRunner()
        self.storage = DirectoryStorage(self.root, self.runner)

    def spooled(self, data: bytes, directory: str | None = None) -> str:
        directory = directory or os.path.abspath(self.mktemp())
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "spool-file")
        with open(path, "wb") as out:
            out.write(data)
        return path

    async def test_files_where_they_always_were_private_whatever_the_umask(self):
        await self.storage.put_bytes("avatars/1-ab.png", b"png")
        path = os.path.join(self.root, "avatars", "1-ab.png")
        with open(path, "rb") as back:
            self.assertEqual(back.read(), b"png")
        self.assertEqual((mode(self.root), mode(os.path.dirname(path)), mode(path)), (0o700, 0o700, 0o600))
        await self.storage.put_file("media/transfers/ab/x", self.spooled(b"moved"))
        moved = os.path.join(self.root, "media", "transfers", "ab", "x")
        self.assertEqual((mode(moved), mode(os.path.dirname(moved))), (0o600, 0o700))
        self.assertEqual(self.storage.path_of("media/transfers/ab/x"), moved)

    async def test_every_file_system_call_in_the_runner(self):
        await self.storage.put_bytes("avatars/a.png", b"a")
        await self.storage.put_file("avatars/b.png", self.spooled(b"b"))
        await self.storage.read("avatars/a.png", 0, 1)
        await self.storage.size("avatars/a.png")
        await self.storage.delete("avatars/a.png")
        self.assertEqual(self.runner.ran, ["_write_atomically", "_move_in", "_read", "_size", "_unlink"])

    async def test_a_write_leaves_no_temporary_file_even_when_it_fails(self):
        await self.storage.put_bytes("avatars/a.png", b"first")
        with self.assertRaises(TypeError):
            await self.storage.put_bytes("avatars/a.png", "not bytes")
        self.assertEqual(os.listdir(os.path.join(self.root, "avatars")), ["a.png"])
        self.assertEqual(await self.storage.read("avatars/a.png", 0, 10), b"first")  # the old file stands

    async def test_a_write_is_a_rename_over_the_old_file(self):
        # A reader holding the old file keeps reading the old bytes: the name
        # moved to a new file, which was complete before it got the name.
        await self.storage.put_bytes("avatars/a.png", b"old")
        reader = open(os.path.join(self.root, "avatars", "a.png"), "rb")
        self.addCleanup(reader.close)
        await self.storage.put_bytes("avatars/a.png", b"new")
        self.assertEqual(reader.read(), b"old")
        self.assertEqual(await self.storage.read("avatars/a.png", 0, 10), b"new")

    async def test_put_file_from_another_file_system_is_copied_then_renamed(self):
        other = "/dev/shm"
        os.makedirs(self.root)
        if not os.path.isdir(other) or os.stat(other).st_dev == os.stat(self.root).st_dev:
            raise SkipTest("no second file system (/dev/shm) to move a file in from")
        directory = os.path.join(other, f"wecompany-test-{os.getpid()}-{id(self)}")
        self.addCleanup(lambda: os.path.isdir(directory) and os.rmdir(directory))
        source = self.spooled(b"from tmpfs" * 1000, directory)
        await self.storage.put_file("media/transfers/ab/y", source)
        self.assertFalse(os.path.exists(source))
        target = os.path.join(self.root, "media", "transfers", "ab")
        self.assertEqual(os.listdir(target), ["y"])  # no temporary file left
        self.assertEqual(mode(os.path.join(target, "y")), 0o600)
        self.assertEqual(await self.storage.read("media/transfers/ab/y", 0, 100_000), b"from tmpfs" * 1000)

    async def test_a_failed_put_file_leaves_the_local_file(self):
        source = self.spooled(b"keep me")
        os.makedirs(self.root)
        with open(os.path.join(self.root, "media"), "wb"):
            pass  # a file where the directory should be
        with self.assertRaises(Unavailable):
            await self.storage.put_file("media/transfers/ab/z", source)
        self.assertTrue(os.path.exists(source))

    async def test_a_failing_directory_is_unavailable_and_logged(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        with open(self.root, "wb"):
            pass  # the storage's directory is a file (a mount gone wrong)
        with self.assertRaises(Unavailable) as caught:
            await self.storage.put_bytes("avatars/a.png", b"x")
        self.assertEqual((caught.exception.code, caught.exception.message),
                         (503, "file storage is unavailable right now: try again later"))
        logged = [e for e in events if e.get("log_namespace", "").endswith("DirectoryStorage")]
        self.assertEqual(len(logged), 1)
        self.assertIsInstance(logged[0]["error"], OSError)  # the cause, for the operator
        self.assertEqual((logged[0]["root"], logged[0]["key"]), (self.root, "avatars/a.png"))
        # Reads of what cannot be there are simply missing.
        with self.assertRaises(KeyMissing):
            await self.storage.read("avatars/a.png", 0, 1)

    async def test_a_full_disk_keeps_the_runners_own_message(self):
        def no_space(f, *args):
            return defer.fail(OSError(errno.ENOSPC, "No space left on device"))

        storage = DirectoryStorage(self.root, storage_errors_unavailable(no_space))
        with self.assertRaises(Unavailable) as caught:
            await storage.put_bytes("avatars/a.png", b"x")
        self.assertIn("disk full", caught.exception.message)
