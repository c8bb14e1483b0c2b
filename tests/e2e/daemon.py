"""
Run the real daemon (``twistd -n wecompany``) in a subprocess for a test.

The daemon listens on free loopback ports (``tcp:0``); the harness learns the
actual ports from the log file twistd writes, polling it on the real reactor
(never sleeping it) until the daemon says it is ready, or failing the test
with the log after a timeout. The child sees the source tree (``PYTHONPATH``
is the repository root, so twistd finds the plugin there) and none of the
caller's ``WECOMPANY_*`` variables. Every daemon a test starts is killed in
the test's cleanup, whatever happened.
"""

from __future__ import annotations

import os
import re
import signal
import sys

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

POLL_INTERVAL = 0.02
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0

# The daemon's own line per listener (wecompany.service): "listening on port 8000 for http",
# in the text log and, as the "text" field, in the JSON one.
_LISTENING = re.compile(r"listening on port (\d+) for ([\w-]+)")
_READY = "WeCompany is ready"

# Both listen on a free loopback port; the log says which.
ENDPOINT = "tcp:0:interface=127.0.0.1"


def daemon_environment() -> dict[str, str]:
    """The caller's environment without ``WECOMPANY_*``, importing the source tree."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("WECOMPANY_")}
    env["PYTHONPATH"] = REPO_ROOT
    return env


class _DaemonProcess(ProcessProtocol):
    """Collects stdout and stderr and reports the exit status."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.status: int | None = None
        self._waiters: list[Deferred] = []

    def connectionMade(self) -> None:
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        value = reason.value
        if isinstance(value, ProcessDone):
            self.status = 0
        elif value.exitCode is not None:
            self.status = value.exitCode
        else:
            self.status = -value.signal  # killed by a signal, like subprocess reports it
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(self.status)

    def exited(self) -> Deferred:
        """A Deferred firing with the exit status (at once if the process is gone)."""
        d = Deferred()
        if self.status is not None:
            d.callback(self.status)
        else:
            self._waiters.append(d)
        return d


class Daemon:
    """
    One WeCompany daemon for one test: ``await start()``, talk to
    ``tcp_port`` / ``http_port``, ``await stop()``.

    :param testcase: the trial TestCase; failures are its ``failureException``
        and the process is killed in its cleanup.
    :param extra_args: more ``wecompany`` options (``"--ring-timeout", "0.5"``).
    :param data_dir: the data directory; a fresh temporary one by default. It
        is kept across :meth:`restart`.
    :param environ: the child's environment instead of :func:`daemon_environment`.
    """

    def __init__(self, testcase, *extra_args: str, data_dir: str | None = None, reactor=None,
                 environ: dict[str, str] | None = None) -> None:
        self.testcase = testcase
        self.extra_args = list(extra_args)
        self.environ = environ
        self.reactor = reactor or global_reactor
        self.base_dir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.base_dir)
        self.data_dir = data_dir or os.path.join(self.base_dir, "data")
        self.runs = 0
        self.log_path: str | None = None
        self.tcp_port: int | None = None
        self.http_port: int | None = None
        #: Each listener's port by name ("tcp", "http", "metrics", ...), from the log.
        self.ports: dict[str, int] = {}
        self._process: _DaemonProcess | None = None
        testcase.addCleanup(self.kill)

    # -- the process ----------------------------------------------------------
    def argv(self, log_path: str) -> list[str]:
        return [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", f"--logfile={log_path}",
            "wecompany", "--port", ENDPOINT, "--http-port", ENDPOINT,
            "--data-dir", self.data_dir, *self.extra_args,
        ]

    def spawn(self) -> None:
        """Start the process (a fresh log file per run) without waiting for anything."""
        if self.running:
            self.testcase.fail("the daemon is already running")
        self.runs += 1
        self.log_path = os.path.join(self.base_dir, f"daemon-{self.runs}.log")
        self.tcp_port = self.http_port = None
        self.ports = {}
        self._process = _DaemonProcess()
        argv = self.argv(self.log_path)
        self.reactor.spawnProcess(self._process, argv[0], argv, env=self.environ or daemon_environment(),
                                  path=self.base_dir)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.status is None

    @property
    def output(self) -> str:
        """What the current (or last) process wrote to stdout and stderr."""
        return self._process.output.decode("utf-8", "replace") if self._process else ""

    def log_text(self) -> str:
        """The current (or last) run's twistd log file, or '' if there is none yet."""
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return log.read()
        except FileNotFoundError:
            return ""

    def report(self) -> str:
        """Everything known about the current run, for failure messages."""
        status = self._process.status if self._process else None
        return (f"exit status: {status}\n--- log {self.log_path} ---\n{self.log_text()}"
                f"--- stdout/stderr ---\n{self.output}")

    # -- lifecycle ------------------------------------------------------------
    async def start(self, timeout: float = START_TIMEOUT) -> "Daemon":
        """Spawn the daemon and wait until it is ready; learns both ports."""
        self.spawn()

        def ready():
            text = self.log_text()
            if _READY not in text:
                return None
            ports = {name: int(port) for port, name in _LISTENING.findall(text)}
            if "tcp" not in ports or "http" not in ports:
                self.testcase.fail(f"the daemon is ready but did not log both ports\n{self.report()}")
            return ports

        self.ports = await self.wait_for(ready, "the daemon to be ready", timeout)
        self.tcp_port, self.http_port = self.ports["tcp"], self.ports["http"]
        return self

    async def wait_for(self, condition, what: str, timeout: float = START_TIMEOUT,
                       fail_on_exit: bool = True):
        """
        Poll ``condition()`` on the reactor until it returns something other
        than None; fail with the log after ``timeout`` seconds, or if the
        process exits first and ``fail_on_exit``.
        """
        deadline = self.reactor.seconds() + timeout
        while True:
            result = condition()
            if result is not None:
                return result
            if fail_on_exit and not self.running:
                self.testcase.fail(f"the daemon exited while waiting for {what}\n{self.report()}")
            if self.reactor.seconds() >= deadline:
                self.testcase.fail(f"timed out after {timeout} s waiting for {what}\n{self.report()}")
            await deferLater(self.reactor, POLL_INTERVAL, lambda: None)

    async def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """The exit status of the current process, failing the test after ``timeout`` seconds."""
        if self._process is None:
            self.testcase.fail("the daemon was never started")
        d = self._process.exited()
        d.addTimeout(timeout, self.reactor)
        try:
            return await d
        except TimeoutError:
            self.testcase.fail(f"the daemon did not exit within {timeout} s\n{self.report()}")

    async def run_to_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """Spawn the daemon and wait for it to exit by itself (bad options)."""
        self.spawn()
        return await self.wait_exit(timeout)

    async def stop(self, signal: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``signal`` and return the exit status (0 for a clean graceful stop)."""
        if not self.running:
            self.testcase.fail(f"the daemon is not running\n{self.report()}")
        self._process.transport.signalProcess(signal)
        return await self.wait_exit(timeout)

    async def restart(self, timeout: float = START_TIMEOUT) -> "Daemon":
        """Stop gracefully (the exit status must be 0) and start again on the same data dir."""
        status = await self.stop()
        if status != 0:
            self.testcase.fail(f"graceful stop exited with status {status}\n{self.report()}")
        return await self.start(timeout)

    async def kill(self) -> None:
        """Cleanup: SIGKILL the process if it still runs and reap it."""
        if self.running:
            self._process.transport.signalProcess(signal.SIGKILL)
            await self.wait_exit()
