"""
Running the real ``wecompany`` command (``python -m wecompany``) in a
subprocess, on the reactor, with what it reads on standard input, and
daemons on short data directories (their control socket's address must
fit in a Unix socket's).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol

from tests.e2e.daemon import Daemon, daemon_environment

PASSWORD = "Secret-pass1"
#: Seconds one command may take (an argon2id hash at the daemon's cost is about a tenth of that).
COMMAND_TIMEOUT = 30.0


@attrs.frozen
class Outcome:
    status: int
    out: str
    err: str


class _Command(ProcessProtocol):
    def __init__(self, stdin: bytes) -> None:
        self.stdin = stdin
        self.out, self.err = bytearray(), bytearray()
        self.done: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason) -> None:
        value = reason.value
        status = 0 if isinstance(value, ProcessDone) else (value.exitCode if value.exitCode is not None
                                                            else -value.signal)
        self.done.callback(Outcome(status, self.out.decode("utf-8", "replace"), self.err.decode("utf-8", "replace")))


async def wecompany(testcase, *args: str, stdin: str = "", environ: dict | None = None) -> Outcome:
    """``python -m wecompany ARGS`` with ``stdin`` -> its exit status and output."""
    command = _Command(stdin.encode("utf-8"))
    argv = [sys.executable, "-m", "wecompany", *args]
    reactor.spawnProcess(command, argv[0], argv, env=environ or daemon_environment(), path=testcase.mktemp_dir())
    command.done.addTimeout(COMMAND_TIMEOUT, reactor)
    return await command.done


def short_dir(testcase) -> str:
    """A fresh directory under the system's temporary one, removed after the test."""
    path = tempfile.mkdtemp(prefix="wc-")
    testcase.addCleanup(shutil.rmtree, path, True)
    return path


class CommandTestMixin:
    """For trial TestCases: a data directory of the test's own, the command, and a daemon on it."""

    def setUp(self) -> None:
        self.base = short_dir(self)
        self.data_dir = os.path.join(self.base, "data")

    def mktemp_dir(self) -> str:
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        return path

    async def cli(self, *args: str, stdin: str = "", data_dir: str | None = None,
                  environ_path: str | None = None) -> Outcome:
        """The command on this test's data directory (with ``PATH`` set to ``environ_path``, if given)."""
        environ = daemon_environment()
        if environ_path is not None:
            environ["PATH"] = environ_path
        return await wecompany(self, "--data-dir", data_dir or self.data_dir, *args, stdin=stdin, environ=environ)

    async def ok(self, *args: str, stdin: str = "") -> Outcome:
        """The command, which must succeed."""
        outcome = await self.cli(*args, stdin=stdin)
        self.assertEqual(outcome.status, 0, outcome)
        return outcome

    async def add_user(self, name: str, *more: str, password: str = PASSWORD) -> Outcome:
        return await self.ok("user", "add", name, "--password-stdin", *more, stdin=password + "\n")

    async def daemon(self, *extra_args: str) -> Daemon:
        return await Daemon(self, *extra_args, data_dir=self.data_dir).start()
