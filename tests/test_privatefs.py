"""Private files and directories, whatever the umask."""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from wecompany.privatefs import (
    create_private_file, exposure_warnings, make_private_dir, open_private, too_open, write_private,
)


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class LaxUmask:
    """Run the test under umask 022, as a daemon started from a login shell would."""

    def setUp(self):
        previous = os.umask(0o022)
        self.addCleanup(os.umask, previous)
        self.base = os.path.abspath(self.mktemp())
        os.mkdir(self.base)


class PrivateFilesTests(LaxUmask, SynchronousTestCase):
    def test_directories_are_made_0700(self):
        deep = os.path.join(self.base, "a", "b", "c")
        make_private_dir(deep)
        for path in (os.path.join(self.base, "a"), os.path.join(self.base, "a", "b"), deep):
            self.assertEqual(mode(path), 0o700, path)
        make_private_dir(deep)  # again: nothing to do
        self.assertEqual(mode(self.base), 0o755)  # what existed is not ours to change

    def test_files_are_made_0600(self):
        for how in ("xb", "wb", "ab"):
            path = os.path.join(self.base, how)
            with open_private(path, how) as out:
                out.write(b"secret")
            self.assertEqual(mode(path), 0o600, how)
        self.assertRaises(FileExistsError, open_private, os.path.join(self.base, "xb"), "xb")
        path = os.path.join(self.base, "whole")
        write_private(path, b"data")
        with open(path, "rb") as back:
            self.assertEqual(back.read(), b"data")
        self.assertEqual(mode(path), 0o600)
        self.assertTrue(create_private_file(os.path.join(self.base, "empty")))
        self.assertFalse(create_private_file(os.path.join(self.base, "empty")))
        self.assertEqual(mode(os.path.join(self.base, "empty")), 0o600)

    def test_what_others_can_read_is_found(self):
        shared = os.path.join(self.base, "shared")
        with open(shared, "wb"):
            pass
        private = os.path.join(self.base, "private")
        make_private_dir(private)
        self.assertEqual(too_open(shared), 0o644)
        self.assertIsNone(too_open(private))
        self.assertIsNone(too_open(os.path.join(self.base, "missing")))
        warnings = exposure_warnings([shared, private, self.base])
        self.assertEqual(len(warnings), 2)
        self.assertIn(f"{shared} is open to other local users (mode 0644)", warnings[0])
        self.assertIn(f"chmod 600 {shared}", warnings[0])
        self.assertIn(f"chmod 700 {self.base}", warnings[1])
