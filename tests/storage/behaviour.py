"""
What every :class:`~wecompany.storage.IFileStorage` must do, as a mixin:
a test case supplies ``make_storage()`` and runs it against a directory, a
fake S3 client, or (``tests/e2e/test_s3.py``) a real S3-compatible server.
"""

from __future__ import annotations

import os

from wecompany.errors import InvalidInput
from wecompany.storage import KeyMissing, check_key
from wecompany.storage.s3 import MIN_PART

BAD_KEYS = ("", "/etc/passwd", "../x", "a/../b", "a//b", "a/", ".hidden", "a/.b", "a/./b", "a\\b", "a b",
            "é.png", "x" * 600)


class StorageBehaviour:
    """``setUp`` must set ``self.storage``; tests are coroutines (trial's TestCase awaits them)."""

    def local_file(self, data: bytes) -> str:
        """A file on this node's disk holding ``data`` (as a spool file would)."""
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as out:
            out.write(data)
        return path

    async def test_put_bytes_then_read_ranges(self):
        await self.storage.put_bytes("avatars/1-ab.png", b"0123456789")
        self.assertEqual(await self.storage.size("avatars/1-ab.png"), 10)
        self.assertEqual(await self.storage.read("avatars/1-ab.png", 0, 4), b"0123")
        self.assertEqual(await self.storage.read("avatars/1-ab.png", 4, 100), b"456789")
        self.assertEqual(await self.storage.read("avatars/1-ab.png", 9, 1), b"9")
        self.assertEqual(await self.storage.read("avatars/1-ab.png", 10, 5), b"")
        self.assertEqual(await self.storage.read("avatars/1-ab.png", 99, 5), b"")

    async def test_a_put_replaces_the_file(self):
        await self.storage.put_bytes("avatars/x.png", b"old bytes, longer")
        await self.storage.put_bytes("avatars/x.png", b"new")
        self.assertEqual(await self.storage.read("avatars/x.png", 0, 100), b"new")
        self.assertEqual(await self.storage.size("avatars/x.png"), 3)

    async def test_nothing_stored(self):
        with self.assertRaises(KeyMissing):
            await self.storage.read("avatars/none.png", 0, 10)
        self.assertIsNone(await self.storage.size("avatars/none.png"))
        await self.storage.delete("avatars/none.png")  # no error

    async def test_delete(self):
        await self.storage.put_bytes("media/transfers/ab/one", b"1")
        await self.storage.put_bytes("media/transfers/ab/two", b"2")
        await self.storage.delete("media/transfers/ab/one")
        self.assertIsNone(await self.storage.size("media/transfers/ab/one"))
        with self.assertRaises(KeyMissing):
            await self.storage.read("media/transfers/ab/one", 0, 1)
        self.assertEqual(await self.storage.read("media/transfers/ab/two", 0, 1), b"2")

    async def test_empty_file(self):
        await self.storage.put_bytes("media/transfers/00/empty", b"")
        self.assertEqual(await self.storage.size("media/transfers/00/empty"), 0)
        self.assertEqual(await self.storage.read("media/transfers/00/empty", 0, 10), b"")

    async def test_put_file_moves_the_local_file_in(self):
        path = self.local_file(b"spooled bytes")
        await self.storage.put_file("media/transfers/cd/small", path)
        self.assertFalse(os.path.exists(path))
        self.assertEqual(await self.storage.read("media/transfers/cd/small", 0, 100), b"spooled bytes")

    async def test_a_large_file_in_and_out_a_block_at_a_time(self):
        data = bytes(range(251)) * ((2 * MIN_PART + 4321) // 251)  # more than two S3 parts
        path = self.local_file(data)
        await self.storage.put_file("media/transfers/ef/large", path)
        self.assertFalse(os.path.exists(path))
        self.assertEqual(await self.storage.size("media/transfers/ef/large"), len(data))
        blocks = []
        while sum(map(len, blocks)) < len(data):
            block = await self.storage.read("media/transfers/ef/large", sum(map(len, blocks)),
                                            self.storage.read_size)
            self.assertTrue(0 < len(block) <= self.storage.read_size)
            blocks.append(block)
        self.assertEqual(b"".join(blocks), data)

    async def test_malformed_keys_are_refused_before_anything_is_done(self):
        spooled = self.local_file(b"x")
        for key in BAD_KEYS:
            self.assertRaises(InvalidInput, check_key, key)
            for attempt in (self.storage.put_bytes(key, b"x"), self.storage.put_file(key, spooled),
                            self.storage.read(key, 0, 1), self.storage.size(key), self.storage.delete(key)):
                try:
                    await attempt
                except InvalidInput:
                    continue
                self.fail(f"{key!r} was accepted")
        self.assertTrue(os.path.exists(spooled))
        self.assertEqual(check_key("media/transfers/ab/0123abcd"), "media/transfers/ab/0123abcd")

    def test_describe_names_the_place(self):
        self.assertIsInstance(self.storage.describe(), str)
