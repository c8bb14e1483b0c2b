"""
A real S3-compatible server for a test: moto's (``moto[server]``, a test
extra) in a subprocess on a free loopback port.

It is asked for port 0 and says which port it got ("Running on
http://127.0.0.1:N"); the harness waits for that line as it arrives (no
polling, no sleeping), failing the test with the output after a timeout.
The process is killed and reaped in the test's cleanup, whatever happened.

Where moto's server is not installed the test is skipped, saying so,
except under CI (``CI`` set), where it fails: CI must run it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import sys

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest

START_TIMEOUT = 20.0
_RUNNING = re.compile(rb"Running on http://127\.0\.0\.1:(\d+)")
#: What the test process and the daemons give boto: fixed keys moto accepts, and no user's AWS files.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "wecompany-test", "AWS_SECRET_ACCESS_KEY": "wecompany-test-secret"}
_ISOLATION = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
              "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
          "AWS_ENDPOINT_URL_S3", "AWS_CA_BUNDLE")


def require_s3_server(testcase) -> None:
    """Skip ``testcase`` (fail it under CI) unless moto's server and boto3 can be imported."""
    missing = [name for name in ("boto3", "moto", "flask", "flask_cors") if importlib.util.find_spec(name) is None]
    if not missing:
        return
    why = f"moto's S3 server is not installed (no {', '.join(missing)}): pip install '.[dev]'"
    if os.environ.get("CI"):
        testcase.fail(f"CI must run the S3 integration tests, but {why}")
    raise SkipTest(why)


def boto_environment(base=None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the test's credentials and nothing of the user's AWS set-up."""
    env = {key: value for key, value in (os.environ if base is None else base).items() if key not in _UNSET}
    env.update(CREDENTIALS)
    env.update(_ISOLATION)
    return env


def use_test_credentials(testcase) -> None:
    """Give this process's boto (the standard chain: the environment) the test's credentials, until cleanup."""
    saved = dict(os.environ)

    def restore():
        os.environ.clear()
        os.environ.update(saved)

    testcase.addCleanup(restore)
    wanted = boto_environment()
    for key in list(os.environ):
        if key not in wanted:
            del os.environ[key]
    os.environ.update(wanted)


class _ServerProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.port: int | None = None
        self.status: int | None = None
        self._started: Deferred = Deferred()
        self._ended: Deferred = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self.port is None:
            match = _RUNNING.search(self.output)
            if match:
                self.port = int(match.group(1))
                self._started.callback(self.port)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.status = 0 if isinstance(reason.value, ProcessDone) else (reason.value.exitCode or -1)
        if not self._started.called:
            self._started.errback(RuntimeError("moto's server exited before it listened"))
        self._ended.callback(self.status)


class S3Server:
    """One moto S3 server for one test: ``await start()``, use ``endpoint``; stopped in cleanup."""

    def __init__(self, testcase, reactor=None) -> None:
        self.testcase = testcase
        self.reactor = reactor or global_reactor
        self._process: _ServerProcess | None = None
        testcase.addCleanup(self.stop)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._process.port}"

    async def start(self) -> "S3Server":
        require_s3_server(self.testcase)
        self._process = _ServerProcess()
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"]
        env = boto_environment()
        env["PYTHONUNBUFFERED"] = "1"  # the "Running on" line as soon as it is written
        self.reactor.spawnProcess(self._process, argv[0], argv, env=env)
        started = self._process._started
        started.addTimeout(START_TIMEOUT, self.reactor)
        try:
            await started
        except (TimeoutError, RuntimeError) as error:
            self.testcase.fail(f"moto's S3 server did not start ({error}):\n"
                               f"{self._process.output.decode('utf-8', 'replace')}")
        return self

    async def stop(self) -> None:
        if self._process is not None and self._process.status is None:
            self._process.transport.signalProcess(signal.SIGKILL)
            await self._process._ended
