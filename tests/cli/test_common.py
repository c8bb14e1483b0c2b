"""The commands' shared pieces, in process: option parsing and passwords."""

from __future__ import annotations

import io

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from wecompany.cli import WeCompanyOptions
from wecompany.cli.common import CommandFailed, read_passwords


class ParsingTests(SynchronousTestCase):
    def parse(self, *argv: str) -> WeCompanyOptions:
        options = WeCompanyOptions(environ={"WECOMPANY_DATA_DIR": "/tmp/wc-env"})
        options.parseOptions(list(argv))
        return options

    def test_daemon_options_then_options_around_the_arguments(self) -> None:
        options = self.parse("--max-frame", "2M", "user", "add", "alice", "--admin", "--email", "a@example.com")
        self.assertEqual((options.config.max_frame, options.config.data_dir), (2 << 20, "/tmp/wc-env"))
        add = options.subOptions.subOptions
        self.assertEqual((add.username, add["admin"], add["email"]), ("alice", 1, "a@example.com"))
        add = self.parse("user", "add", "--email=b@example.com", "bob").subOptions.subOptions
        self.assertEqual((add.username, add["email"], add["admin"]), ("bob", "b@example.com", 0))
        self.assertEqual(self.parse("user", "add", "--", "-odd").subOptions.subOptions.username, "-odd")

    def test_usage_errors(self) -> None:
        for argv in ((), ("user",), ("user", "add"), ("user", "add", "a", "b"), ("nope",),
                     ("backup",), ("--registration", "maybe", "migrate"), ("call-test", "--user", "a")):
            self.assertRaises(usage.UsageError, self.parse, *argv)


class PasswordTests(SynchronousTestCase):
    def test_lines_from_stdin(self) -> None:
        self.assertEqual(read_passwords(2, True, ["a", "b"], stdin=io.StringIO("one\r\ntwo\nthree\n")), ["one", "two"])
        self.assertRaises(CommandFailed, read_passwords, 2, True, ["a", "b"], stdin=io.StringIO("one\n"))
        self.assertRaises(CommandFailed, read_passwords, 1, True, ["a"], stdin=io.StringIO("\n"))
