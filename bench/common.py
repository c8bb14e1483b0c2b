"""
Shared helpers for the benchmarks in ``bench/`` (not a test suite).

- :class:`Daemon` starts the real ``twistd wecompany`` in a subprocess on
  free loopback ports with a temporary data directory, waits for "WeCompany
  is ready", samples its RSS and CPU from ``/proc`` and stops it with SIGTERM.
- :func:`prepare_accounts` creates users before the daemon starts, all
  sharing one precomputed argon2id hash (so 5,000 accounts cost one hash),
  through the project's own ``SQLiteStore`` in a short child process, and
  writes the JWT secret the daemon will read; :func:`mint_tokens` signs
  access tokens with it for AUTH_TOKEN logins.
- :class:`FrameClient` is a lean asyncio client with its own ``u32``
  length-prefix framing, fast enough to run thousands of connections or
  thousands of media packets per second in one process.

Only loopback traffic; every wait is bounded by a timeout.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import math
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
# The code under test: this checkout, or another tree (e.g. a snapshot taken
# while the checkout is being edited) named by BENCH_REPO.
REPO_ROOT = os.path.abspath(os.environ.get("BENCH_REPO") or os.path.dirname(BENCH_DIR))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from wecompany.tcp import codec  # noqa: E402
from wecompany.tcp.codec import MsgType  # noqa: E402

U32 = struct.Struct(">I")
# Media payload header written by the benchmarks: send time, sequence number, sender index.
MEDIA_HEADER = struct.Struct(">QII")
PASSWORD = "Bench-Passw0rd!"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- process limits, ports ------------------------------------------------------------

def raise_nofile_limit() -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict:
    """The environment for child processes: no WECOMPANY_* options, the repo on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECOMPANY_")}
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def describe_code() -> str:
    """Which code is being measured: the tree, its git commit and whether it has local changes."""
    try:
        head = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO_ROOT, "status", "--porcelain", "--", "wecompany", "twisted"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        head, dirty = "", ""
    if not head:
        return f"code under test: {REPO_ROOT} (not a git checkout); client event loop: {LOOP}"
    changes = f", {len(dirty.splitlines())} files with uncommitted changes" if dirty else ""
    return (f"code under test: {REPO_ROOT} (git {head}{changes}); Python {sys.version.split()[0]}, "
            f"{os.cpu_count()} cores; client event loop: {LOOP}")


def listen_overflows() -> int:
    """The kernel's ListenOverflows counter (SYNs dropped because an accept queue was full), machine-wide."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split()[1:], values.split()[1:])).get("ListenOverflows", 0))
    return 0


# -- /proc sampling -----------------------------------------------------------------------

def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    """The live processes below ``pid`` (children, their children, ...), from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            parents.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """:func:`cpu_seconds` of ``pid`` and of every live process below it (the daemon and its AI workers)."""
    total = cpu_seconds(pid)
    for child in descendants(pid):
        try:
            total += cpu_seconds(child)
        except OSError:  # gone meanwhile
            pass
    return total


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Sampler:
    """Samples a process's RSS (KiB) and CPU time every ``interval`` seconds from an asyncio task."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int, float]] = []  # (monotonic, rss KiB, cpu s)
        self._task = None

    def sample(self) -> tuple[float, int, float]:
        s = (time.monotonic(), rss_kib(self.pid), cpu_seconds(self.pid))
        self.samples.append(s)
        return s

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        # Bounded by the caller's stop(); a sample every interval.
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            while True:
                self.sample()
                await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            self.sample()


def _proc_stat() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]  # user nice system idle iowait irq softirq steal ...


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent running something since boot (``/proc/stat``; idle, iowait, steal excluded)."""
    f = _proc_stat()
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / CLK_TCK


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave to someone else while this VM wanted to run."""
    return _proc_stat()[7] / CLK_TCK


def wait_for_quiet(max_wait: float = 180.0, threshold_pct: float = 25.0, window: float = 3.0) -> float:
    """
    On a shared machine, wait (at most ``max_wait`` s) until the whole
    machine has been less than ``threshold_pct`` % busy (of one core, CPU
    stolen by the hypervisor included) over a ``window``; returns the last
    busy figure. Benchmarks print it, and the
    "other processes" CPU during their run, so noise is visible.
    """
    if max_wait <= 0:
        return float("nan")
    deadline = time.monotonic() + max_wait
    warned = False
    while True:
        b0 = machine_busy_seconds() + steal_seconds()
        time.sleep(window)
        busy = 100.0 * (machine_busy_seconds() + steal_seconds() - b0) / window
        if busy < threshold_pct or time.monotonic() >= deadline:
            if busy >= threshold_pct:
                print(f"machine still {busy:.0f} % busy after {max_wait:g} s: measuring anyway (noisy)")
            return busy
        if not warned:
            print(f"machine is {busy:.0f} % busy (other processes): waiting up to {max_wait:g} s for quiet ...")
            warned = True


class CpuMeter:
    """
    CPU% between ``start()`` and ``stop()`` of the server, of this process,
    and of the whole machine (all cores, so other people's work on a shared
    machine shows up as noise).
    """

    def __init__(self, pid: int, *more: int, tree: bool = False) -> None:
        # Several pids (the nodes of a cluster, and Redis): their sum is "the server".
        self.pid = pid
        self.pids = (pid, *more)
        # tree: the server's CPU includes its child processes' (the AI worker processes).
        self._cpu = tree_cpu_seconds if tree else cpu_seconds

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.p0 = [self._cpu(p) for p in self.pids]
        self.o0 = own_cpu_seconds()
        self.m0 = machine_busy_seconds()
        self.s0 = steal_seconds()

    def stop(self) -> None:
        self.wall = time.monotonic() - self.t0
        #: CPU seconds of each pid, in the order given.
        self.per_pid_s = [self._cpu(p) - c for p, c in zip(self.pids, self.p0)]
        self.server_s = sum(self.per_pid_s)
        self.server_pct = 100.0 * self.server_s / self.wall
        self.client_pct = 100.0 * (own_cpu_seconds() - self.o0) / self.wall
        self.machine_s = machine_busy_seconds() - self.m0
        self.machine_pct = 100.0 * self.machine_s / self.wall
        self.steal_pct = 100.0 * (steal_seconds() - self.s0) / self.wall

    def others_pct(self, bench_client_s: float) -> float:
        """
        Roughly, busy CPU% (of one core) not used by the server or the given
        client CPU seconds (per-process and machine-wide accounting differ a
        little, hence the clamp).
        """
        return max(0.0, 100.0 * (self.machine_s - self.server_s - bench_client_s) / self.wall)

    def noise(self, bench_client_s: float) -> str:
        """Machine-wide figures that tell a quiet run from a noisy one."""
        return f"steal {self.steal_pct:.0f} %, other processes ~{self.others_pct(bench_client_s):.0f} %"


class LoopLag:
    """How late this process's event loop wakes up (client-side noise in latency figures)."""

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.lags_ms: list[float] = []
        self._task = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.period)
            self.lags_ms.append((time.perf_counter() - t - self.period) * 1000)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# -- accounts and tokens --------------------------------------------------------------------

_MAKE_USERS = r"""
import json, sys, time
from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults
from wecompany.store.sqlite import SQLiteStore
from wecompany.store.postgres import PostgreSQLStore

def main(reactor, database, names_file, password_hash):
    async def run():
        with open(names_file) as f:
            names = json.load(f)
        if database.startswith("postgresql://"):
            store = PostgreSQLStore(database, reactor=reactor)
        else:
            store = SQLiteStore(database, reactor=reactor)
        await store.start()  # applies the migrations
        ids = {}
        try:
            for i in range(0, len(names), 500):
                users = await gatherResults([
                    store.create_user(name, password_hash, None, None, time.time())
                    for name in names[i:i + 500]])
                ids.update((u.username, u.id) for u in users)
        finally:
            await store.stop()
        with open(names_file, "w") as f:
            json.dump(ids, f)
    return Deferred.fromCoroutine(run())

task.react(main, sys.argv[1:])
"""


def write_secret(data_dir: str) -> bytes:
    """Write ``<data_dir>/jwt.secret`` as the daemon would (64 hex chars, 0600); return the secret bytes."""
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    secret = secrets.token_hex(32).encode("ascii")
    path = os.path.join(data_dir, "jwt.secret")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
    # load_or_create_secret reads the file and strips it: the secret is the hex text itself.
    return secret


def prepare_accounts(data_dir: str, names: list[str], timeout: float = 300.0,
                     database: str | None = None) -> tuple[bytes, dict[str, int]]:
    """
    Before the daemon starts: write the JWT secret and create ``names`` as
    accounts in ``<data_dir>/wecompany.sqlite3`` (the daemon's default
    database), or in the PostgreSQL ``database`` (a URL) when given, all
    with one precomputed argon2id hash of :data:`PASSWORD`.
    Returns ``(secret, {username: user_id})``.
    """
    from wecompany.domain.passwords import PasswordHasher

    secret = write_secret(data_dir)
    # The daemon's own hasher and parameters, run once, synchronously.
    password_hash = PasswordHasher(lambda f, *a: f(*a))._hasher.hash(PASSWORD)
    names_file = os.path.join(data_dir, "bench-users.json")
    with open(names_file, "w") as f:
        json.dump(names, f)
    subprocess.run([sys.executable, "-c", _MAKE_USERS, database or os.path.join(data_dir, "wecompany.sqlite3"),
                    names_file, password_hash],
                   env=clean_env(), check=True, timeout=timeout)
    with open(names_file) as f:
        ids = json.load(f)
    os.unlink(names_file)
    return secret, ids


class _WallClock:
    def seconds(self) -> float:
        return time.time()


def mint_tokens(secret: bytes, ids: dict[str, int]) -> dict[str, str]:
    """An access token per user, signed like the daemon's (``TokenIssuer``)."""
    from wecompany.domain.tokens import TokenIssuer

    issuer = TokenIssuer(secret, _WallClock())
    return {name: issuer.issue(uid, name) for name, uid in ids.items()}


# -- the daemon -------------------------------------------------------------------------------

def _raise_child_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# Every client of a benchmark is 127.0.0.1: lift the per-address connection
# cap and the per-address budget of auth requests (TCP logins included).
LOOPBACK_CLIENTS = ("--max-connections-per-address", "1000000", "--auth-rate", "100000", "--auth-burst", "100000")


class Daemon:
    """
    The real daemon: ``twistd -n wecompany`` on free loopback ports.

    :param data_dir: prepared with :func:`prepare_accounts` (or empty).
    :param args: extra daemon options, e.g. ``["--max-frame", "4M"]``.
    """

    def __init__(self, data_dir: str, args: tuple[str, ...] = (), log_dir: str | None = None,
                 preamble: str = "", port_options: str = "") -> None:
        self.port_options = port_options  # e.g. ":backlog=1024", appended to the --port endpoint
        self.data_dir = data_dir
        self.args = list(args)
        self.preamble = preamble
        self.port = free_port()
        self.http_port = free_port()
        self.logfile = os.path.join(log_dir or data_dir, "wecompany.log")
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> None:
        cmd = [sys.executable, "-c", self.preamble + "\nfrom twisted.scripts.twistd import run; run()",
               "-n", "--pidfile=", f"--logfile={self.logfile}", "wecompany",
               "--port", f"tcp:{self.port}:interface=127.0.0.1{self.port_options}",
               "--http-port", f"tcp:{self.http_port}:interface=127.0.0.1",
               "--data-dir", self.data_dir, *LOOPBACK_CLIENTS, *self.args]
        self.proc = subprocess.Popen(cmd, env=clean_env(), cwd=self.data_dir, preexec_fn=_raise_child_nofile,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: "
                                   f"{self.proc.stderr.read().decode(errors='replace')}\n{self.log_tail()}")
            if "WeCompany is ready" in self.log_text():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"daemon not ready within {timeout} s\n{self.log_tail()}")

    def log_text(self) -> str:
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait (bounded), SIGKILL if it did not exit. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode


def terminate(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not exited within ``timeout``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


# -- a cluster: private Redis, a scratch PostgreSQL database, several daemons -----------------

DEFAULT_POSTGRESQL = os.environ.get("WECOMPANY_TEST_POSTGRESQL", "postgresql://postgres@127.0.0.1:5432/test")


class RedisServer:
    """
    A private ``redis-server`` on a free loopback port, keeping nothing on
    disk, so a benchmark neither disturbs nor is disturbed by the shared
    one, and its CPU can be read (``pid``).
    """

    def __init__(self, workdir: str, timeout: float = 10.0) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.proc = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                      "--appendonly", "no", "--dir", workdir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def stop(self) -> None:
        terminate(self.proc)


class ScratchDatabase:
    """A fresh ``wc_bench_<random>`` database on a PostgreSQL server, dropped by :meth:`drop`."""

    def __init__(self, server: str = DEFAULT_POSTGRESQL) -> None:
        import psycopg
        from psycopg import sql

        self._sql = sql
        try:
            self.admin = psycopg.connect(server, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as error:
            raise RuntimeError(f"no PostgreSQL at {server} (--postgresql): {error}".strip()) from None
        self.name = f"wc_bench_{secrets.token_hex(6)}"
        self.admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        head, _, _ = server.rpartition("/")
        self.url = f"{head}/{self.name}"

    def backend_pids(self) -> list[int]:
        """The PostgreSQL server processes serving this database now (the nodes' connections), for CPU figures."""
        rows = self.admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,)).fetchall()
        return [pid for (pid,) in rows if os.path.exists(f"/proc/{pid}/stat")]

    def drop(self) -> None:
        self.admin.execute(self._sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            self._sql.Identifier(self.name)))
        self.admin.close()


class ClusterNodes:
    """
    ``count`` daemons acting as one service, as ``docs/cluster.rst`` and
    the end-to-end cluster tests run them: one private Redis, one scratch
    PostgreSQL database made here (accounts are created in it before the
    start, as :func:`prepare_accounts` does for one daemon), a shared file
    storage directory, one JWT secret, each with its own ``--node-id`` and
    data directory. ``nodes`` are :class:`Daemon` s; :meth:`stop` stops
    them all (SIGTERM) and returns their exit statuses.
    """

    def __init__(self, workspace: "Workspace", count: int, names: list[str], args: tuple[str, ...] = (),
                 postgresql: str = DEFAULT_POSTGRESQL, preamble: str = "") -> None:
        self.redis = RedisServer(workspace.sub("redis"))
        self.database = None
        self.nodes: list[Daemon] = []
        try:
            self.database = ScratchDatabase(postgresql)
            first = workspace.sub("node1")
            self.secret, self.ids = prepare_accounts(first, names, database=self.database.url)
            files = workspace.sub("files")
            prefix = f"bench{secrets.token_hex(3)}:"
            for i in range(count):
                data_dir = first if i == 0 else workspace.sub(f"node{i + 1}")
                self.nodes.append(Daemon(data_dir, preamble=preamble, args=(
                    "--redis", self.redis.url, "--redis-prefix", prefix, "--node-id", f"n{i + 1}",
                    "--jwt-secret", self.secret.decode(), "--database", self.database.url,
                    "--file-storage", f"file:{files}", *args)))
        except BaseException:
            self.stop()
            raise

    def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            node.start(timeout)
        self.wait_for_peers(timeout)

    def wait_for_peers(self, timeout: float) -> None:
        """Until every node's /health lists every node (their heartbeats have been seen)."""
        want = {f"n{i + 1}" for i in range(len(self.nodes))}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(want <= set(health(node.http_port).get("cluster", {}).get("nodes", ())) for node in self.nodes):
                return
            time.sleep(0.2)
        raise RuntimeError("the nodes did not see each other within the timeout")

    @property
    def pids(self) -> list[int]:
        return [node.pid for node in self.nodes]

    def tokens(self) -> dict[str, str]:
        return mint_tokens(self.secret, self.ids)

    def stop(self) -> list:
        statuses = [node.stop() for node in self.nodes]
        self.redis.stop()
        if self.database is not None:
            self.database.drop()
            self.database = None
        return statuses


def cpu_seconds_of(pids) -> float:
    """utime + stime summed over ``pids``, skipping any that have gone (a database backend may close)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            total += cpu_seconds(pid)
    return total


HAPROXY_EXAMPLE = os.path.join(REPO_ROOT, "etc", "haproxy", "wecompany.cfg")


def haproxy_config(example: str, desktop_port: int, site_port: int, nodes, proxy_protocol: bool = False) -> str:
    """
    ``etc/haproxy/wecompany.cfg`` for ``nodes`` (:class:`Daemon` s) on
    loopback, as ``tests/e2e/test_haproxy.py`` rewrites it: its listeners on
    the given ports, no syslog or stats socket, a lower ``maxconn``, one
    ``server`` line per node (the example's two lines are the pattern). With
    ``proxy_protocol=False`` the PROXY header to the nodes is left out, so the
    same nodes can also be measured without HAProxy (the nodes then need plain
    ``tcp:`` endpoints, as :class:`Daemon` gives them).
    """
    text = example.replace("    log /dev/log local0\n", "").replace("maxconn 200000", "maxconn 4000")
    text = text.replace("    stats socket /run/haproxy/admin.sock mode 660 level admin\n", "")
    text = text.replace("bind :8888", f"bind 127.0.0.1:{desktop_port}").replace(
        "bind :80\n", f"bind 127.0.0.1:{site_port}\n")
    text = text.replace("default-server check port 8000 ", "default-server check ")
    if not proxy_protocol:
        text = text.replace(" check-send-proxy send-proxy-v2", "")
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("server node1 10.0.0.11:8888"):
            out += [f"    server node{i} 127.0.0.1:{n.port} port {n.http_port}" for i, n in enumerate(nodes, 1)]
        elif stripped.startswith("server node1 10.0.0.11:8000"):
            out += [f"    server node{i} 127.0.0.1:{n.http_port}" for i, n in enumerate(nodes, 1)]
        elif stripped.startswith("server node"):
            continue
        else:
            out.append(line)
    text = "\n".join(out) + "\n"
    if re.search(r"10\.0\.0\.1\d:", text) or (not proxy_protocol and "send-proxy" in text):
        raise RuntimeError("etc/haproxy/wecompany.cfg changed shape: update common.haproxy_config")
    return text


class HAProxy:
    """
    The real ``haproxy`` (``-db``: in the foreground) in front of ``nodes``,
    from the example config (:func:`haproxy_config`), on free loopback ports:
    ``site_port`` (HTTP and WebSocket) and ``desktop_port`` (TCP). Waits until
    ``/health`` answers through it and HAProxy's checks have run once.
    """

    def __init__(self, workdir: str, nodes, proxy_protocol: bool = False, timeout: float = 20.0) -> None:
        exe = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
        if exe is None:
            raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
        self.desktop_port, self.site_port = free_port(), free_port()
        with open(HAPROXY_EXAMPLE, encoding="utf-8") as f:
            self.config = haproxy_config(f.read(), self.desktop_port, self.site_port, nodes, proxy_protocol)
        self.path = os.path.join(workdir, f"haproxy-{self.site_port}.cfg")
        with open(self.path, "w", encoding="utf-8") as f:
            f.write(self.config)
        self.log = os.path.join(workdir, f"haproxy-{self.site_port}.log")
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen([exe, "-db", "-f", self.path], stdout=self._out, stderr=subprocess.STDOUT,
                                     preexec_fn=_raise_child_nofile)
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if health(self.site_port):
                time.sleep(2.5)  # one round of the checks (inter 2s)
                return
            time.sleep(0.2)
        self.stop()
        with open(self.log, errors="replace") as f:
            raise RuntimeError(f"haproxy did not serve /health on :{self.site_port}: {f.read()[-800:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()


def health(http_port: int) -> dict:
    """``GET /health`` of a daemon (blocking; for setup only): its JSON, or {} when it does not answer."""
    import urllib.request

    with contextlib.suppress(OSError, ValueError):
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=5) as answer:
            body = json.loads(answer.read())
            return body.get("data", body)
    return {}


class Baseline:
    """A baseline server of this folder (``forwarder.py``, ``ws_broadcast.py``) as a subprocess."""

    def __init__(self, script: str, *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, os.path.join(BENCH_DIR, script), str(self.port), *args],
                                     env=clean_env(), stdout=subprocess.PIPE, preexec_fn=_raise_child_nofile)
        line = self.proc.stdout.readline()  # bounded: the process prints "ready" or exits
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"baseline {script} did not start")
        self.pid = self.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def stop(self) -> None:
        terminate(self.proc)
        self.proc.stdout.close()


class Forwarder(Baseline):
    """The baseline relay, ``bench/forwarder.py`` (see its docstring)."""

    def __init__(self, keyed: bool = False) -> None:
        super().__init__("forwarder.py", *(["--keyed"] if keyed else []))


# Experiments, not the product: small patches applied to the daemon at start
# (``--experiment NAME`` in the scripts) to show what a product change would
# do. Each patch wraps WeCompanyProtocol.connectionMade.
EXPERIMENTS = {
    # TCP_NODELAY on every accepted connection (the product does not set it).
    "nodelay": "self.transport.setTcpNoDelay(True)",
    # Drop media only when more than 1 MiB (not Twisted's default 64 KiB) is
    # waiting in the connection's user-space write buffer.
    "buffer1m": "self.transport.bufferSize = 1 << 20",
}


def experiment_preamble(names) -> str:
    if not names:
        return ""
    body = "\n".join("    " + EXPERIMENTS[n] for n in names)
    return ("from wecompany.tcp.protocol import WeCompanyProtocol as _P\n"
            "_made = _P.connectionMade\n"
            "def _connection_made(self):\n"
            f"{body}\n"
            "    _made(self)\n"
            "_P.connectionMade = _connection_made\n")


def add_experiment_option(parser) -> None:
    parser.add_argument("--experiment", action="append", choices=sorted(EXPERIMENTS), default=[],
                        help="patch the daemon for an A/B experiment (not the product's figures): "
                             + "; ".join(f"{k}" for k in sorted(EXPERIMENTS)))


def experiment_note(names) -> str:
    return f" [EXPERIMENT: daemon patched with {', '.join(names)}]" if names else ""


class Workspace:
    """A temporary directory removed at exit (kept with ``keep=True`` for post-mortems)."""

    def __init__(self, prefix: str, keep: bool = False) -> None:
        self.path = tempfile.mkdtemp(prefix=f"wecompany-bench-{prefix}-")
        self.keep = keep

    def sub(self, name: str) -> str:
        p = os.path.join(self.path, name)
        os.makedirs(p, mode=0o700, exist_ok=True)
        return p

    def close(self) -> None:
        if self.keep:
            print(f"(kept {self.path})")
        else:
            shutil.rmtree(self.path, ignore_errors=True)


# -- the client ---------------------------------------------------------------------------------

class FrameClient(asyncio.Protocol):
    """
    One connection speaking ``u32`` length-prefixed frames.

    Control frames (anything but MEDIA_DATA) are decoded with
    ``codec.decode_server`` and handed to :meth:`control`; media frames go
    to :meth:`on_media` undecoded (``body``, offset of the payload) for speed.
    Subclasses or owners override :meth:`on_media` / set ``media_sink``.
    """

    def __init__(self) -> None:
        self.transport = None
        self._buf = bytearray()
        self._waiters: dict[int, list[asyncio.Future]] = {}
        self.unexpected: list = []
        self.errors: list = []  # ERROR frames received
        self.closed = asyncio.get_running_loop().create_future()
        self.media_sink = None  # callable(body: bytes, payload_offset: int)
        self.bytes_received = 0
        self.frames_received = 0
        self._write_ok: asyncio.Future | None = None
        self.user_id: str | None = None

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)
        for waiters in self._waiters.values():
            for w in waiters:
                if not w.done():
                    w.set_exception(ConnectionError("connection lost"))
        if self._write_ok is not None and not self._write_ok.done():
            self._write_ok.set_result(None)

    def pause_writing(self) -> None:
        if self._write_ok is None or self._write_ok.done():
            self._write_ok = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._write_ok is not None and not self._write_ok.done():
            self._write_ok.set_result(None)

    async def drain(self) -> None:
        if self._write_ok is not None and not self._write_ok.done():
            await self._write_ok

    def data_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        buf = self._buf
        buf += data
        pos, n = 0, len(buf)
        frames = []
        while n - pos >= 4:
            length = U32.unpack_from(buf, pos)[0]
            end = pos + 4 + length
            if end > n:
                break
            frames.append(bytes(buf[pos + 4:end]))
            pos = end
        if pos:
            del buf[:pos]
        self.frames_received += len(frames)
        for body in frames:
            if body and body[0] == MsgType.MEDIA_DATA and self.media_sink is not None:
                # [u8 6][qstr call_id][payload]
                self.media_sink(body, 5 + U32.unpack_from(body, 1)[0])
            else:
                self.control(body)

    # sending
    def send(self, body: bytes) -> None:
        self.transport.write(U32.pack(len(body)) + body)

    # control messages
    def control(self, body: bytes) -> None:
        try:
            msg = codec.decode_server(body)
        except Exception as e:  # a benchmark reports, it does not crash
            self.unexpected.append(("undecodable", body[:32], repr(e)))
            return
        waiters = self._waiters.get(msg.type)
        if waiters:
            fut = waiters.pop(0)
            if not fut.done():
                fut.set_result(msg)
                return
        if msg.type == MsgType.ERROR:
            self.errors.append(msg)
        elif msg.type not in (MsgType.PRESENCE,):
            self.unexpected.append(msg)

    async def expect(self, msg_type: int, timeout: float = 10.0):
        """The next message of ``msg_type`` (an ERROR instead fails it)."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(msg_type, []).append(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters[msg_type].remove(fut)

    async def login(self, token: str, timeout: float = 30.0) -> str:
        """AUTH_TOKEN; returns the user id or raises."""
        self.send(codec.u8(MsgType.AUTH_TOKEN) + codec.str16(token))
        msg = await self.expect(MsgType.AUTH_RESULT, timeout)
        if not msg["ok"]:
            raise RuntimeError(f"login failed: {msg['error']}")
        self.user_id = msg["user_id"]
        return self.user_id

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(port: int, factory=FrameClient, timeout: float = 30.0):
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(loop.create_connection(factory, "127.0.0.1", port), timeout)
    return proto


async def connect_and_login(port: int, tokens: list[str], concurrency: int = 100, factory=FrameClient,
                            timeout: float = 60.0):
    """
    Connect and log in one client per token, at most ``concurrency`` at a
    time (the daemon listens with Twisted's default backlog of 50).
    Returns ``(clients, login_latencies_s, failures)``; ``clients[i]`` is
    None where ``tokens[i]`` failed.
    """
    sem = asyncio.Semaphore(concurrency)
    clients: list = [None] * len(tokens)
    latencies: list[float] = []
    failures: list[str] = []

    async def one(i: int, token: str) -> None:
        async with sem:
            t = time.perf_counter()
            proto = None
            try:
                proto = await connect(port, factory, timeout)
                await proto.login(token, timeout)
            except Exception as e:
                failures.append(f"{type(e).__name__}: {e}")
                if proto is not None:
                    proto.close()
                return
            latencies.append(time.perf_counter() - t)
            clients[i] = proto

    await asyncio.gather(*(one(i, tok) for i, tok in enumerate(tokens)))
    return clients, latencies, failures


async def place_call(caller: FrameClient, callee: FrameClient, timeout: float = 30.0) -> str:
    """CALL_REQUEST from caller, CALL_ACCEPT by callee; returns the call id once both are told."""
    ringing = asyncio.ensure_future(caller.expect(MsgType.CALL_RINGING, timeout))
    incoming = asyncio.ensure_future(callee.expect(MsgType.CALL_REQUEST, timeout))
    await asyncio.sleep(0)  # register the waiters before anything can arrive
    caller.send(codec.u8(MsgType.CALL_REQUEST) + codec.qstr(callee.user_id) + codec.u8(0))
    call_id = (await incoming)["call_id"]
    await ringing
    accepted = [asyncio.ensure_future(c.expect(MsgType.CALL_ACCEPT, timeout)) for c in (caller, callee)]
    await asyncio.sleep(0)
    callee.send(codec.u8(MsgType.CALL_ACCEPT) + codec.qstr(call_id))
    await asyncio.gather(*accepted)
    return call_id


MEDIA_TYPE_BYTE = bytes((MsgType.MEDIA_DATA,))


# -- profiling (optional; needs py-spy: pip install py-spy) -------------------------------------------

class Profile:
    """``py-spy record`` of the daemon for ``seconds``, in collapsed-stack form, summarised as text."""

    def __init__(self, pid: int, seconds: float, path: str, rate: int = 200) -> None:
        self.path = path
        self.rate = rate
        exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        self.proc = subprocess.Popen([exe, "record", "-p", str(pid), "-d", str(max(1, int(seconds))),
                                      "-r", str(rate), "-f", "raw", "-o", path, "--nonblocking"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def finish(self, timeout: float = 60.0, early: bool = False) -> None:
        """Wait for the recording to end (``early``: end it now; py-spy writes what it has on SIGINT)."""
        if early and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        err = self.proc.stderr.read().decode(errors="replace")
        self.proc.stderr.close()
        if self.proc.returncode:
            print(f"py-spy failed: {err.strip()[-300:]}")

    def summary(self, top: int = 15) -> str:
        """
        Where the reactor thread spends its time (own and inclusive samples
        per function), and the thread pools' (database, hashing) own time.
        py-spy only samples threads that are running, so idle waits are not in it.
        """
        stacks: dict[str, list[tuple[list[str], int]]] = {"reactor": [], "pool": []}
        try:
            with open(self.path) as f:
                lines = f.readlines()
        except FileNotFoundError:
            return "(no profile)"
        for line in lines:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = [_short(fr) for fr in stack.split(";")]
            kind = "pool" if any("_bootstrap" in fr for fr in frames[:3]) else "reactor"
            # Leave out the frames every reactor stack starts with (twistd, run, mainLoop).
            cut = next((i for i, fr in enumerate(frames) if fr.startswith("ReactorBase.mainLoop")), -1)
            frames = frames[cut + 1:] or frames
            stacks[kind].append((frames, int(count)))
        out = []
        for kind, title in (("reactor", "reactor thread"), ("pool", "thread-pool threads")):
            total = sum(n for _, n in stacks[kind])
            if not total:
                continue
            own: dict[str, int] = {}
            incl: dict[str, int] = {}
            for frames, n in stacks[kind]:
                own[frames[-1]] = own.get(frames[-1], 0) + n
                for fr in set(frames):
                    incl[fr] = incl.get(fr, 0) + n
            seconds = total / self.rate
            out.append(f"{title}: {total} samples (~{seconds:.1f} s of CPU)")
            out.append("  own time (top):")
            for fr, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
                out.append(f"    {100 * n / total:5.1f} %  {fr}")
            if kind == "reactor":
                out.append("  inclusive time (top; below the reactor's mainLoop):")
                for fr, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
                    out.append(f"    {100 * n / total:5.1f} %  {fr}")
        return "\n".join(out) if out else "(empty profile)"


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)": figures per function, not per line
    name, _, where = frame.partition(" (")
    return f"{name} ({os.path.basename(where.rstrip(')')).rsplit(':', 1)[0]})" if where else name


# -- figures -------------------------------------------------------------------------------------

def percentile(values, p: float) -> float:
    """Nearest-rank percentile of ``values`` (sorted or not); NaN when empty."""
    if not len(values):
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def table(rows, title: str | None = None) -> str:
    """A plain text table from a list of tuples (the first is the header)."""
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    if title:
        out.append(title)
    sep = "  ".join("-" * w for w in widths)
    for n, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            out.append(sep)
    return "\n".join(out)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def fmt(x: float, digits: int = 2) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    return f"{x:,.{digits}f}"


def _pick_loop() -> str:
    wanted = os.environ.get("BENCH_LOOP", "auto")
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
        return "uvloop"
    except ImportError:
        if wanted == "uvloop":
            raise
        return "asyncio"


# The clients' event loop: uvloop when installed (about half the client CPU
# per packet, so the clients disturb the daemon less on a small machine),
# else asyncio's; BENCH_LOOP=asyncio or uvloop forces one.
LOOP = _pick_loop()


def arun(coro):
    """Run a coroutine on the clients' event loop (:data:`LOOP`)."""
    if LOOP == "uvloop":
        import uvloop
        return uvloop.run(coro)
    return asyncio.run(coro)


def run(main_coro, hard_timeout: float):
    """Run the benchmark coroutine with an overall time limit."""
    async def bounded():
        return await asyncio.wait_for(main_coro, hard_timeout)
    return arun(bounded())


# -- media -----------------------------------------------------------------------------------------

class MediaClient(FrameClient):
    """
    A call party that sends and times MEDIA_DATA packets.

    Each payload starts with :data:`MEDIA_HEADER` (send time from
    ``perf_counter_ns`` -- CLOCK_MONOTONIC, comparable across processes --,
    sequence number, sender index), padded to ``size`` bytes. Received
    packets are counted and, once ``measure_from_ns`` has passed, their
    one-way relay latency is recorded (with the receive time when
    ``keep_times``).
    """

    def __init__(self, size: int = 1000, index: int = 0, with_call_id: bool = True,
                 keep_times: bool = False) -> None:
        super().__init__()
        self.media_sink = self._on_media
        self.index = index
        self.with_call_id = with_call_id
        self.keep_times = keep_times
        self.set_size(size)
        self.seq = 0
        self.received = 0
        self.received_bytes = 0
        self.max_seq = 0
        self.reordered = 0
        self.lat_ns: list[int] = []
        self.recv_at_ns: list[int] = []
        self.measure_from_ns = 0
        self.progress: asyncio.Event | None = None

    def set_size(self, size: int) -> None:
        self.size = size
        self._prefix = U32.pack(1 + size) + MEDIA_TYPE_BYTE
        self._pad = bytes(size - MEDIA_HEADER.size)

    def frame(self) -> bytes:
        self.seq += 1
        return self._prefix + MEDIA_HEADER.pack(time.perf_counter_ns(), self.seq, self.index) + self._pad

    def send_media(self) -> None:
        self.seq += 1
        self.transport.write(self._prefix + MEDIA_HEADER.pack(time.perf_counter_ns(), self.seq, self.index)
                             + self._pad)

    def data_received(self, data: bytes) -> None:
        # Media frames are read in place (no copy); the daemon sends
        # [u8 6][qstr call_id][payload], the baseline forwarder our own
        # [u8 6][payload] back unchanged.
        self.bytes_received += len(data)
        buf = self._buf
        buf += data
        pos, n = 0, len(buf)
        controls = []
        while n - pos >= 4:
            length = U32.unpack_from(buf, pos)[0]
            end = pos + 4 + length
            if end > n:
                break
            if length and buf[pos + 4] == MsgType.MEDIA_DATA:
                off = pos + 5
                if self.with_call_id:
                    off += 4 + U32.unpack_from(buf, off)[0]
                self._media(buf, off, end)
            else:
                controls.append(bytes(buf[pos + 4:end]))
            pos = end
        if pos:
            del buf[:pos]
        for body in controls:
            self.control(body)

    def _on_media(self, body: bytes, off: int) -> None:
        self._media(body, off, len(body))

    def _media(self, buf, off: int, end: int) -> None:
        now = time.perf_counter_ns()
        ts, seq, _sender = MEDIA_HEADER.unpack_from(buf, off)
        self.received += 1
        self.received_bytes += end - off
        if seq > self.max_seq:
            self.max_seq = seq
        else:
            self.reordered += 1
        if ts >= self.measure_from_ns:
            self.lat_ns.append(now - ts)
            if self.keep_times:
                self.recv_at_ns.append(now)
        if self.progress is not None:
            self.progress.set()


async def pace(senders: list[MediaClient], rate: float, duration: float, start_at: float,
               groups: int = 10) -> list[float]:
    """
    Every sender sends ``rate`` packets/s for ``duration`` s from loop time
    ``start_at``. Senders are split into ``groups`` evenly staggered slots of
    the period (like unsynchronised real clients); each slot's packets go out
    as one batch. Returns how late each slot fired, in seconds.
    """
    groups = max(1, min(groups, len(senders)))
    slot = 1.0 / rate / groups
    by_group = [senders[g::groups] for g in range(groups)]
    lateness = []
    for k in range(int(round(duration * rate * groups))):
        due = start_at + k * slot
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        lateness.append(time.monotonic() - due)
        for c in by_group[k % groups]:
            if not c.closed.done():
                c.send_media()
    return lateness


async def wait_for_start(start_value, timeout: float = 300.0) -> float:
    """Poll a ``multiprocessing.Value('d')`` set by the orchestrator to the (monotonic) start time."""
    deadline = time.monotonic() + timeout
    while start_value.value <= 0:
        if time.monotonic() > deadline:
            raise TimeoutError("no start signal from the orchestrator")
        await asyncio.sleep(0.01)
    return start_value.value


def worker_process(target, *args):
    """A forked child process running ``target(*args)`` (a plain function)."""
    import multiprocessing
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=target, args=args, daemon=True)
    p.start()
    return p


def worker_arrays(results: list[dict], expected: int, what: str, *keys: str) -> list[array.array]:
    """
    The results of ``expected`` worker processes: raise if one failed or sent
    none; -> for each of ``keys``, its int64 arrays (sent as bytes) joined.
    """
    failed = [r["error"] for r in results if "error" in r]
    if failed or len(results) < expected:
        raise RuntimeError(f"{what} failures: {failed or 'missing results'}")
    joined = []
    for key in keys:
        values = array.array("q")
        for r in results:
            values.frombytes(r[key])
        joined.append(values)
    return joined


def mp_context():
    import multiprocessing
    return multiprocessing.get_context("fork")


def summarize_ms(lat_ns) -> tuple[float, float, float, float]:
    """(p50, p99, p99.9, max) in ms."""
    if not len(lat_ns):
        return (math.nan,) * 4
    s = sorted(lat_ns)
    return tuple(percentile(s, p) / 1e6 for p in (50, 99, 99.9)) + (s[-1] / 1e6,)


# -- HTTP (REST benchmarks) ---------------------------------------------------------------------

def task_cpu_seconds(pid: int, tid: int) -> float:
    """utime + stime of one thread ``tid`` of ``pid`` (the reactor thread is ``tid == pid``), in seconds."""
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class HttpConnection(asyncio.Protocol):
    """
    One keep-alive HTTP/1.1 client connection, one request at a time (no
    pipelining), with its own small response parser (``Content-Length`` or
    chunked bodies), to keep the load generator's CPU per request low: it
    shares 2 cores with the daemon. Use :func:`http_connect` and :meth:`request`.
    """

    def __init__(self, host: str) -> None:
        self.host = host.encode()
        self.transport = None
        self._buf = bytearray()
        self._waiter: asyncio.Future | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._waiter is None or self._waiter.done():
            return
        parsed = self._parse()
        if parsed is not None:
            self._waiter.set_result(parsed)

    def _parse(self):
        """(status, headers, body) when a whole response is buffered, else None (and it stays buffered)."""
        buf = self._buf
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        lines = bytes(buf[:head_end]).split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        pos = head_end + 4
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = bytearray()
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
                if size == 0:
                    end = buf.find(b"\r\n\r\n", eol)  # no trailers expected: "0\r\n\r\n"
                    if end < 0:
                        return None
                    pos = end + 4
                    break
                if len(buf) < eol + 2 + size + 2:
                    return None
                body += buf[eol + 2:eol + 2 + size]
                pos = eol + 2 + size + 2
            body = bytes(body)
        else:
            length = int(headers.get(b"content-length", b"0"))
            if len(buf) < pos + length:
                return None
            body = bytes(buf[pos:pos + length])
            pos += length
        del buf[:pos]
        return status, headers, body

    async def request(self, method: str, path: str, token: str | None = None, body=None,
                      timeout: float = 30.0) -> tuple[int, bytes]:
        """Send one request and wait (bounded) for its response: ``(status, body)``. ``body``: JSON-able or bytes."""
        if self.closed.done():
            raise ConnectionError("connection closed")
        parts = [f"{method} {path} HTTP/1.1\r\n".encode(), b"Host: " + self.host + b"\r\n"]
        if token:
            parts.append(f"Authorization: Bearer {token}\r\n".encode())
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
            parts.append(b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data))
        else:
            data = b""
        parts.append(b"\r\n")
        parts.append(data)
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(b"".join(parts))
        try:
            status, headers, payload = await asyncio.wait_for(self._waiter, timeout)
        finally:
            self._waiter = None
        if headers.get(b"connection", b"").lower() == b"close":
            self.transport.close()
        return status, payload

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def http_connect(port: int, timeout: float = 30.0) -> HttpConnection:
    """A keep-alive :class:`HttpConnection` to 127.0.0.1:``port``."""
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: HttpConnection(f"127.0.0.1:{port}"), "127.0.0.1", port), timeout)
    return proto


async def api(conn: HttpConnection, method: str, path: str, token: str | None = None, body=None,
              timeout: float = 30.0) -> tuple[int, dict]:
    """A JSON API call over ``conn``: ``(status, decoded envelope)``."""
    status, payload = await conn.request(method, path, token, body, timeout)
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, {"raw": payload[:200].decode(errors="replace")}
