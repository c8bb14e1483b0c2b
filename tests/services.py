"""
The real servers some tests need (Redis now), found where the environment
says, and started privately when a test must stop or restart one.

``WECOMPANY_TEST_REDIS`` (default ``redis://127.0.0.1:6379/0``) names the
shared Redis; tests use keys under a prefix of their own and never flush it.
When it cannot be reached the test is skipped, except under CI (``CI`` set),
where it fails: CI's ``.ci/run`` starts the servers, so a missing one is a
broken machine, not a reason to pass.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess

from twisted.trial.unittest import SkipTest

from wecompany.config import parse_redis

REDIS_ENV = "WECOMPANY_TEST_REDIS"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def _missing(testcase, why: str):
    if os.environ.get("CI"):
        testcase.fail(f"{why} (CI is set: the servers the tests need must be running)")
    raise SkipTest(why)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_url(testcase) -> str:
    """The shared Redis's URL, or the test is skipped (failed under CI)."""
    url = os.environ.get(REDIS_ENV, DEFAULT_REDIS)
    address = parse_redis(REDIS_ENV, url)
    if not _reachable(address.host, address.port):
        _missing(testcase, f"no Redis answers at {address} (set {REDIS_ENV})")
    return url


def unique_prefix(what: str = "test") -> str:
    """A key prefix no other test (nor run) uses."""
    return f"wecompany-{what}-{secrets.token_hex(4)}:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """
    A redis-server of the test's own on a free loopback port, without
    persistence, that the test may stop and start again (on the same port).
    Killed in the test's cleanup.
    """

    def __init__(self, testcase) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            _missing(testcase, "redis-server is not installed")
        self.testcase = testcase
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        testcase.addCleanup(self.stop)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> "PrivateRedis":
        """Start it and wait (on the reactor, polling) until it answers PING."""
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = reactor.seconds() + 10
        while not _reachable("127.0.0.1", self.port):
            if self.process.poll() is not None or reactor.seconds() > deadline:
                self.testcase.fail(f"redis-server did not start on port {self.port}")
            await deferLater(reactor, 0.02, lambda: None)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None
