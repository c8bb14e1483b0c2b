"""
The daemon side of the SFU media engine: worker processes, as mediasoup runs its workers.

:class:`WorkerEngine` is the :class:`~wecompany.domain.interfaces.IMediaEngine`
the domain talks to. It starts ``N`` worker processes (``python -m
wecompany.sfu.worker``, one per core by default) through the injected
reactor, speaks the line-delimited JSON protocol of ``wire.md`` over their
stdin/stdout, places every room on one worker, and supervises them: a worker
that dies fails what was pending on it, is reported with ``engine_lost``
and is started again after a growing back-off.

Nothing here touches media: that is the worker's job, in another process,
so the reactor of the daemon never runs aiortc.

Choices worth knowing:

* A room stays on its worker while it has peers *or* recordings, so that a
  recording can outlive a moment with nobody in the room.
* Calls for peers the engine does not know fail with ``PeerNotFound`` at
  once; ``close_peer`` forgets the peer at once, whatever the worker says.
* A request times out after ``request_timeout`` (``Unavailable``), but the
  worker is kept: only a dead, silent (never ready), line-limit breaking or
  stdin-stuck worker is killed and restarted.
* Workers that exit during :meth:`WorkerEngine.stop` are not reported with
  ``engine_lost``: the caller asked for it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer, error as ierror
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wecompany.domain.interfaces import IMediaEngine
from wecompany.errors import InternalError, InvalidInput, PeerNotFound, Unavailable, WeCompanyError

#: A line of the protocol longer than this is a protocol error (wire.md).
MAX_LINE = 1 << 20

#: The listener method each event is delivered to, and the fields it takes, in order.
_EVENTS: dict[str, tuple[str, ...]] = {
    "candidate": ("peer_id", "candidate"),
    "gathering_complete": ("peer_id",),
    "connection_state": ("peer_id", "state"),
    "track_added": ("peer_id", "track_id", "kind"),
    "track_ended": ("peer_id", "track_id"),
    "recording_failed": ("recording_id", "reason"),
}

#: Stats fields summed over the workers.
_STATS = ("peers", "connected", "streams_in", "streams_out", "packets", "bytes")


def default_worker_count() -> int:
    """One worker per core this process may run on, at least one."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def map_error(kind: Any, message: Any, peer_id: str | None) -> WeCompanyError:
    """The domain error for a worker's ``{"error": {kind, message}}`` reply."""
    text = message if isinstance(message, str) and message else None
    if kind == "peer_not_found":
        return PeerNotFound(peer_id if peer_id is not None else "?")
    if kind == "invalid":
        return InvalidInput(text)
    if kind == "busy":
        return Unavailable(text or "media worker busy")
    # "internal" and anything unknown: the worker's text goes to the log only.
    return InternalError()


class LineTooLong(Exception):
    """More than the line limit arrived without a newline."""


class LineBuffer:
    """
    Splits a byte stream into lines (without their ``\\n``); a line longer
    than ``max_line`` bytes raises :class:`LineTooLong` (the rest of the
    stream is then meaningless: the caller drops the connection).
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        start = len(self._buffer)
        self._buffer += data
        lines = []
        begin = 0
        # Only the new bytes can hold a newline the old ones did not.
        search = start
        while True:
            end = self._buffer.find(b"\n", search)
            if end < 0:
                break
            if end - begin > self.max_line:
                raise LineTooLong(end - begin)
            lines.append(bytes(self._buffer[begin:end]))
            begin = search = end + 1
        del self._buffer[:begin]
        if len(self._buffer) > self.max_line:
            raise LineTooLong(len(self._buffer))
        return lines

    @property
    def pending(self) -> bytes:
        return bytes(self._buffer)


class _RateLimiter:
    """A token bucket on the injected clock: ``burst`` lines at once, ``rate`` a second after."""

    def __init__(self, clock, rate: float, burst: int) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._tokens = float(burst)
        self._last = clock.seconds()
        self.suppressed = 0

    def allow(self) -> bool:
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.suppressed += 1
        return False


@attrs.define(eq=False)
class _Pending:
    op: str
    deferred: defer.Deferred
    timer: Any
    peer_id: str | None


@implementer(IPushProducer)
class WorkerProtocol(ProcessProtocol):
    """
    One worker process: framing, requests and replies, events, stderr.

    It knows nothing of rooms or peers; it hands events and its fate to its
    :class:`_Slot` in the engine. Writes to the worker's stdin are bounded:
    the process transport pauses us (we are its streaming producer) when its
    buffer is full, and once more than ``stdin_limit`` bytes are queued
    while paused, the worker is taken for stuck and killed.
    """

    _log = Logger()

    def __init__(self, slot: _Slot, clock, *, request_timeout: float, max_line: int = MAX_LINE,
                 stdin_limit: int = 1 << 20, stderr_rate: float = 20.0, stderr_burst: int = 200,
                 max_stderr_line: int = 4096) -> None:
        self.slot = slot
        self._clock = clock
        self._request_timeout = request_timeout
        self._max_line = max_line
        self._stdout = LineBuffer(max_line)
        self._stderr = bytearray()
        self._max_stderr_line = max_stderr_line
        self._stderr_limit = _RateLimiter(clock, stderr_rate, stderr_burst)
        self._stdin_limit = stdin_limit
        self._stdin_paused = False
        self._stdin_queued = 0
        self._next_id = 0
        self._pending: dict[int, _Pending] = {}
        self.pid: int | None = None
        self.ready_event: dict | None = None
        self.configured = False
        self._announced = False
        self.lost_reason: str | None = None  # set once the worker is given up on
        self.ended = False
        self._ended_waiters: list[defer.Deferred] = []
        self._stop_timers: list[Any] = []

    # -- process lifecycle -------------------------------------------------

    def connectionMade(self) -> None:
        self.pid = getattr(self.transport, "pid", None)
        register = getattr(self.transport, "registerProducer", None)
        if register is not None:
            register(self, True)
        self.slot.worker_started(self)

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        for timer in self._stop_timers:
            if timer.active():
                timer.cancel()
        self._stop_timers = []
        code = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        self.lose(f"exited (code {code}, signal {signal})")
        # A partial stderr line is still worth logging.
        if self._stderr:
            self._log_stderr(bytes(self._stderr))
            self._stderr.clear()
        self.slot.worker_ended(self)
        waiters, self._ended_waiters = self._ended_waiters, []
        for d in waiters:
            d.callback(None)

    def when_ended(self) -> defer.Deferred:
        """A Deferred fired (with None) when the process is gone."""
        if self.ended:
            return defer.succeed(None)
        d = defer.Deferred()
        self._ended_waiters.append(d)
        return d

    def lose(self, reason: str) -> None:
        """
        Give up on this worker (idempotent): fail what is pending, tell the
        slot, and kill the process if it still runs.
        """
        if self.lost_reason is not None:
            return
        self.lost_reason = reason
        if not self.ended:
            self._log.warn("SFU worker {pid} lost: {reason}", pid=self.pid, reason=reason)
        pending, self._pending = self._pending, {}
        for p in pending.values():
            if p.timer.active():
                p.timer.cancel()
        for p in pending.values():
            p.deferred.errback(Unavailable("media worker gone"))
        self.slot.worker_lost(self)
        if not self.ended:
            self.signal("KILL")

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except (ierror.ProcessExitedAlready, OSError):
            pass

    def shutdown(self, term_after: float, kill_after: float) -> None:
        """Ask the worker to exit; SIGTERM after ``term_after`` s, SIGKILL ``kill_after`` s later."""
        if self.ended:
            return
        if not self.usable:
            # Still starting (importing aiortc): it holds nothing to finish, and
            # would read the request only once started.
            self.signal("TERM")
        elif self.lost_reason is None:
            self.request("shutdown", {}, timeout=term_after + kill_after).addErrback(lambda f: None)
        self._stop_timers.append(self._clock.callLater(term_after, self.signal, "TERM"))
        self._stop_timers.append(self._clock.callLater(term_after + kill_after, self.signal, "KILL"))

    # -- requests ----------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self.lost_reason is None and self.configured and self.ready_event is not None

    def request(self, op: str, args: dict, *, peer_id: str | None = None,
                timeout: float | None = None) -> defer.Deferred:
        """Send one request; -> Deferred of its ``result`` (or a WeCompanyError)."""
        if self.lost_reason is not None or self.ended:
            return defer.fail(Unavailable("media worker gone"))
        self._next_id += 1
        request_id = self._next_id
        line = json.dumps({"id": request_id, "op": op, "args": args},
                          separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(line) > self._max_line:
            return defer.fail(InvalidInput(f"{op} request too large"))

        def cancel(d):
            p = self._pending.pop(request_id, None)
            if p is not None and p.timer.active():
                p.timer.cancel()

        d = defer.Deferred(cancel)
        timer = self._clock.callLater(self._request_timeout if timeout is None else timeout,
                                      self._timed_out, request_id)
        self._pending[request_id] = _Pending(op, d, timer, peer_id)
        self._write(line + b"\n")
        return d

    def _timed_out(self, request_id: int) -> None:
        p = self._pending.pop(request_id, None)
        if p is None:
            return
        self._log.warn("SFU worker {pid}: {op} timed out", pid=self.pid, op=p.op)
        p.deferred.errback(Unavailable("media worker did not answer in time"))

    def _write(self, data: bytes) -> None:
        if self._stdin_paused:
            self._stdin_queued += len(data)
            if self._stdin_queued > self._stdin_limit:
                # Written anyway (the request is already pending); the kill fails it.
                self.transport.write(data)
                self.lose(f"stdin backlog over {self._stdin_limit} bytes")
                return
        self.transport.write(data)

    # IPushProducer, for the transport's stdin buffer.
    def pauseProducing(self) -> None:
        self._stdin_paused = True

    def resumeProducing(self) -> None:
        self._stdin_paused = False
        self._stdin_queued = 0

    def stopProducing(self) -> None:
        self._stdin_paused = True

    # -- input -------------------------------------------------------------

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self._stdout_received(data)
        elif childFD == 2:
            self._stderr_received(data)

    def _stdout_received(self, data: bytes) -> None:
        if self.lost_reason is not None:
            return
        try:
            lines = self._stdout.feed(data)
        except LineTooLong:
            self.lose(f"protocol error: a line over {self._max_line} bytes")
            return
        for line in lines:
            if self.lost_reason is not None:
                return
            self._line_received(line)

    def _line_received(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            message = None
        if not isinstance(message, dict):
            # A stray print in the worker: not ours, so log it (rate-limited) rather than kill.
            if self._stderr_limit.allow():
                self._log.warn("SFU worker {pid}: not a protocol message on stdout: {line!r}",
                               pid=self.pid, line=line[:200])
            return
        if "event" in message:
            self._event_received(message)
        elif "id" in message:
            self._reply_received(message)
        else:
            self._log.warn("SFU worker {pid}: message with neither id nor event", pid=self.pid)

    def _reply_received(self, message: dict) -> None:
        p = self._pending.pop(message["id"], None) if isinstance(message["id"], int) else None
        if p is None:
            # Its request timed out or was cancelled: the answer comes too late.
            self._log.debug("SFU worker {pid}: late or unknown reply {id}", pid=self.pid, id=message["id"])
            return
        if p.timer.active():
            p.timer.cancel()
        if "error" in message:
            err = message["error"] if isinstance(message["error"], dict) else {}
            kind, text = err.get("kind"), err.get("message")
            if kind not in ("peer_not_found", "invalid", "busy"):
                self._log.error("SFU worker {pid}: {op} failed: {kind} {text}",
                                pid=self.pid, op=p.op, kind=kind, text=text)
            p.deferred.errback(map_error(kind, text, p.peer_id))
        else:
            p.deferred.callback(message.get("result"))

    def _event_received(self, message: dict) -> None:
        name = message["event"]
        if name == "ready":
            self.ready_event = message
            self._log.info("SFU worker {pid} ready (aiortc {version})",
                           pid=message.get("pid", self.pid), version=message.get("aiortc"))
            self._maybe_usable()
            return
        self.slot.worker_event(self, name, message)

    def configure(self, args: dict, ready_timeout: float) -> defer.Deferred:
        """The first request; the worker is usable once it is answered and ``ready`` was seen."""
        # Its answer may wait for the worker's start-up (importing aiortc): the ready timeout bounds it.
        d = self.request("configure", args, timeout=ready_timeout)

        def done(_):
            self.configured = True
            self._maybe_usable()

        def failed(f):
            self.lose(f"configure failed: {f.getErrorMessage()}")

        d.addCallbacks(done, failed)
        return d

    def _maybe_usable(self) -> None:
        if self.usable and not self._announced:
            self._announced = True
            self.slot.worker_usable(self)

    def _stderr_received(self, data: bytes) -> None:
        self._stderr += data
        while True:
            end = self._stderr.find(b"\n")
            if end < 0:
                break
            line = bytes(self._stderr[:end])
            del self._stderr[:end + 1]
            self._log_stderr(line)
        if len(self._stderr) > self._max_stderr_line:
            self._log_stderr(bytes(self._stderr))
            self._stderr.clear()

    def _log_stderr(self, line: bytes) -> None:
        if not self._stderr_limit.allow():
            return
        if self._stderr_limit.suppressed:
            self._log.warn("SFU worker {pid}: {count} stderr lines not logged (rate limit)",
                           pid=self.pid, count=self._stderr_limit.suppressed)
            self._stderr_limit.suppressed = 0
        text = line[:self._max_stderr_line].decode("utf-8", "replace").rstrip()
        self._log.info("SFU worker {pid}: {line}", pid=self.pid, line=text)


#: Seconds a recording may take to finish (its late tracks merged in).
STOP_RECORDING_TIMEOUT = 300.0


@attrs.define(eq=False)
class _Slot:
    """
    One place for a worker, across its restarts: the current process, its
    rooms, its peer count and the back-off before the next start.
    """

    engine: WorkerEngine
    index: int
    backoff: float
    protocol: WorkerProtocol | None = None
    rooms: set = attrs.Factory(set)
    peers: int = 0
    restarts: int = 0
    usable_since: float | None = None
    waiters: list = attrs.Factory(list)
    restart_call: Any = None
    ready_call: Any = None

    @property
    def usable(self) -> bool:
        return self.protocol is not None and self.protocol.usable

    # Called by the protocol.
    def worker_started(self, protocol: WorkerProtocol) -> None:
        self.engine._worker_started(self, protocol)

    def worker_usable(self, protocol: WorkerProtocol) -> None:
        if protocol is self.protocol:
            self.engine._worker_usable(self)

    def worker_event(self, protocol: WorkerProtocol, name: str, message: dict) -> None:
        if protocol is self.protocol:
            self.engine._worker_event(self, name, message)

    def worker_lost(self, protocol: WorkerProtocol) -> None:
        if protocol is self.protocol:
            self.engine._worker_lost(self)

    def worker_ended(self, protocol: WorkerProtocol) -> None:
        if protocol is self.protocol:
            self.engine._worker_ended(self)


@attrs.define(eq=False)
class _Peer:
    room: str
    slot: _Slot


@implementer(IMediaEngine)
class WorkerEngine:
    """
    An :class:`~wecompany.domain.interfaces.IMediaEngine` backed by worker
    processes.

    :param reactor: provides ``IReactorProcess`` and ``IReactorTime``; every
        process and timer goes through it.
    :param command: the worker's argv; ``argv[0]`` is the executable.
    :param env: the workers' environment (default: this process's).
    :param workers: how many (default :func:`default_worker_count`).
    :param host_addresses, public_address, udp_ports, ice_servers, max_peers:
        the ``configure`` arguments each worker gets (``max_peers`` per worker).
    :param request_timeout: seconds before a request fails with ``Unavailable``.
    :param ready_timeout: seconds a new worker has to be ready and configured.
    :param start_wait: seconds a request waits for its worker to become usable.
    :param restart_backoff: ``(first, cap)`` delays before a restart; doubles
        each time, back to ``first`` once a worker ran ``stable_after`` seconds.
    :param stop_timeout, kill_timeout: :meth:`stop` sends SIGTERM that long
        after ``shutdown``, then SIGKILL ``kill_timeout`` later (at once to a
        worker still starting).
    :param lazy: start the workers with the first room, not in :meth:`start`.
    """

    _log = Logger()

    def __init__(self, reactor, *, command: list[str] | None = None, env: dict | None = None,
                 workers: int | None = None, host_addresses=("127.0.0.1",),
                 public_address: str | None = None, udp_ports: tuple[int, int] | None = None,
                 ice_servers=(), max_peers: int = 500, request_timeout: float = 10.0,
                 ready_timeout: float = 30.0, start_wait: float | None = None,
                 restart_backoff: tuple[float, float] = (0.5, 30.0), stable_after: float = 60.0,
                 stop_timeout: float = 10.0, kill_timeout: float = 5.0, max_line: int = MAX_LINE,
                 stdin_limit: int = 1 << 20, lazy: bool = False) -> None:
        self._reactor = reactor
        self._lazy = lazy
        self._spawned = False
        # -P: "-m" would otherwise put the daemon's working directory first on the
        # worker's sys.path, where a stray wecompany/ would shadow the installed one.
        self._command = list(command) if command else [sys.executable, "-P", "-m", "wecompany.sfu.worker"]
        self._env = dict(os.environ) if env is None else dict(env)
        self._count = workers if workers is not None else default_worker_count()
        if self._count < 1:
            raise ValueError("at least one SFU worker")
        self._configure = {
            "host_addresses": list(host_addresses),
            "public_address": public_address,
            "udp_ports": list(udp_ports) if udp_ports is not None else None,
            "ice_servers": [dict(s) for s in ice_servers],
            "max_peers": max_peers,
        }
        self._request_timeout = request_timeout
        self._ready_timeout = ready_timeout
        self._start_wait = request_timeout if start_wait is None else start_wait
        self._backoff_first, self._backoff_cap = restart_backoff
        self._stable_after = stable_after
        self._stop_timeout = stop_timeout
        self._kill_timeout = kill_timeout
        self._max_line = max_line
        self._stdin_limit = stdin_limit
        self._listener = None
        self._slots: list[_Slot] = []
        self._rooms: dict[str, _Slot] = {}
        self._room_peers: dict[str, set[str]] = {}
        self._room_recordings: dict[str, set[str]] = {}
        self._peers: dict[str, _Peer] = {}
        self._recordings: dict[str, tuple[str, _Slot]] = {}
        self._stopping = False
        self._stopped: defer.Deferred | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self, listener) -> None:
        """
        Begin, reporting to ``listener``. With ``lazy`` the worker processes
        start with the first room (a daemon whose meetings never send media
        runs none); otherwise now.
        """
        if self._slots:
            raise RuntimeError("WorkerEngine already started")
        self._listener = listener
        self._slots = [_Slot(self, i, self._backoff_first) for i in range(self._count)]
        if not self._lazy:
            self._spawn_all()

    def _spawn_all(self) -> None:
        self._spawned = True
        for slot in self._slots:
            if slot.protocol is None and slot.restart_call is None:
                self._spawn(slot)

    def stop(self) -> defer.Deferred:
        """
        ``shutdown`` to every worker (they finish recordings and close their
        peers), SIGTERM then SIGKILL to those that outstay the timeouts.
        -> Deferred fired when every worker is gone. No ``engine_lost`` is
        reported for workers that exit now: the caller asked for it.
        """
        if self._stopped is not None:
            return self._wait_stopped()
        self._stopping = True
        waiting = []
        for slot in self._slots:
            for call in (slot.restart_call, slot.ready_call):
                if call is not None and call.active():
                    call.cancel()
            slot.restart_call = slot.ready_call = None
            self._fail_waiters(slot)
            if slot.protocol is not None and not slot.protocol.ended:
                waiting.append(slot.protocol.when_ended())
                slot.protocol.shutdown(self._stop_timeout, self._kill_timeout)
        self._stopped = defer.gatherResults(waiting, consumeErrors=True)
        self._stopped.addCallback(lambda _: None)
        return self._wait_stopped()

    def _wait_stopped(self) -> defer.Deferred:
        d = defer.Deferred()
        self._stopped.addBoth(lambda r: (d.callback(None), r)[1])
        return d

    def _spawn(self, slot: _Slot) -> None:
        slot.restart_call = None
        protocol = WorkerProtocol(slot, self._reactor, request_timeout=self._request_timeout,
                                  max_line=self._max_line, stdin_limit=self._stdin_limit)
        slot.protocol = protocol
        try:
            self._reactor.spawnProcess(protocol, self._command[0], self._command, env=self._env)
        except Exception:
            self._log.failure("could not start SFU worker {index}", index=slot.index)
            slot.protocol = None
            self._schedule_restart(slot)

    def _worker_started(self, slot: _Slot, protocol: WorkerProtocol) -> None:
        self._log.info("SFU worker {index} started, pid {pid}", index=slot.index, pid=protocol.pid)
        slot.ready_call = self._reactor.callLater(self._ready_timeout, self._not_ready, slot, protocol)
        protocol.configure(self._configure, self._ready_timeout).addErrback(lambda f: None)

    def _not_ready(self, slot: _Slot, protocol: WorkerProtocol) -> None:
        slot.ready_call = None
        if protocol is slot.protocol and not protocol.usable:
            protocol.lose(f"not ready after {self._ready_timeout} s")

    def _worker_usable(self, slot: _Slot) -> None:
        if slot.ready_call is not None and slot.ready_call.active():
            slot.ready_call.cancel()
        slot.ready_call = None
        slot.usable_since = self._reactor.seconds()
        waiters, slot.waiters = slot.waiters, []
        for d, timer in waiters:
            if timer.active():
                timer.cancel()
            d.callback(None)

    def _worker_lost(self, slot: _Slot) -> None:
        """The current worker of ``slot`` is given up on: its rooms and peers are gone."""
        if slot.ready_call is not None and slot.ready_call.active():
            slot.ready_call.cancel()
        slot.ready_call = None
        rooms = sorted(slot.rooms)
        recordings = [rid for rid, (_, s) in self._recordings.items() if s is slot]
        for room in rooms:
            for peer_id in self._room_peers.pop(room, ()):
                self._peers.pop(peer_id, None)
            self._room_recordings.pop(room, None)
            self._rooms.pop(room, None)
        for rid in recordings:
            del self._recordings[rid]
        slot.rooms.clear()
        slot.peers = 0
        # Requests waiting for this worker to come up were meant for rooms that are gone now.
        self._fail_waiters(slot, "media worker gone")
        if self._stopping:
            return
        for rid in recordings:
            self._tell("recording_failed", rid, "media worker gone")
        if rooms:
            self._tell("engine_lost", rooms)

    def _worker_ended(self, slot: _Slot) -> None:
        protocol = slot.protocol
        slot.protocol = None
        if self._stopping:
            return
        ran = (self._reactor.seconds() - slot.usable_since) if slot.usable_since is not None else 0.0
        if ran >= self._stable_after:
            slot.backoff = self._backoff_first
        slot.usable_since = None
        self._log.warn("SFU worker {index} (pid {pid}) ended: {reason}; restart in {delay} s",
                       index=slot.index, pid=protocol.pid if protocol else None,
                       reason=protocol.lost_reason if protocol else None, delay=slot.backoff)
        self._schedule_restart(slot)

    def _schedule_restart(self, slot: _Slot) -> None:
        if self._stopping:
            return
        delay = slot.backoff
        slot.backoff = min(self._backoff_cap, slot.backoff * 2)
        slot.restarts += 1
        slot.restart_call = self._reactor.callLater(delay, self._spawn, slot)

    def _fail_waiters(self, slot: _Slot, why: str = "media engine stopping") -> None:
        waiters, slot.waiters = slot.waiters, []
        for d, timer in waiters:
            if timer.active():
                timer.cancel()
            d.errback(Unavailable(why))

    def _tell(self, method: str, *args) -> None:
        if self._listener is None:
            return
        try:
            getattr(self._listener, method)(*args)
        except Exception:
            self._log.failure("SFU engine listener failed on {method}", method=method)

    def _worker_event(self, slot: _Slot, name: str, message: dict) -> None:
        fields = _EVENTS.get(name)
        if fields is None:
            self._log.warn("SFU worker {index}: unknown event {name}", index=slot.index, name=name)
            return
        if any(f not in message for f in fields):
            self._log.warn("SFU worker {index}: event {name} lacks a field", index=slot.index, name=name)
            return
        args = [message[f] for f in fields]
        # Events about peers or recordings that are no longer this worker's are stale.
        if "peer_id" in fields:
            peer = self._peers.get(args[0])
            if peer is None or peer.slot is not slot:
                return
        elif name == "recording_failed":
            if self._recordings.get(args[0], (None, None))[1] is not slot:
                return
            self._forget_recording(args[0])
        self._tell(name, *args)

    # -- placement ---------------------------------------------------------

    def _place(self) -> _Slot:
        """The worker for a new room: the usable one with fewest peers, else any with fewest."""
        usable = [s for s in self._slots if s.usable]
        return min(usable or self._slots, key=lambda s: (s.peers, s.index))

    def _ensure_room(self, room: str) -> _Slot:
        slot = self._rooms.get(room)
        if slot is None:
            if not self._spawned:
                self._spawn_all()
            slot = self._place()
            self._rooms[room] = slot
            slot.rooms.add(room)
        return slot

    def _maybe_forget_room(self, room: str) -> None:
        if self._room_peers.get(room) or self._room_recordings.get(room):
            return
        self._room_peers.pop(room, None)
        self._room_recordings.pop(room, None)
        slot = self._rooms.pop(room, None)
        if slot is not None:
            slot.rooms.discard(room)

    def _forget_peer(self, peer_id: str) -> None:
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return
        peer.slot.peers -= 1
        self._room_peers.get(peer.room, set()).discard(peer_id)
        self._maybe_forget_room(peer.room)

    def _forget_recording(self, recording_id: str) -> None:
        entry = self._recordings.pop(recording_id, None)
        if entry is None:
            return
        room = entry[0]
        self._room_recordings.get(room, set()).discard(recording_id)
        self._maybe_forget_room(room)

    async def _call(self, slot: _Slot, op: str, args: dict, peer_id: str | None = None,
                    timeout: float | None = None) -> Any:
        """One request to ``slot``'s worker, waiting (bounded) while it starts."""
        if self._stopping:
            raise Unavailable("media engine stopping")
        if not slot.usable:
            await self._wait_usable(slot)
        return await slot.protocol.request(op, args, peer_id=peer_id, timeout=timeout)

    def _wait_usable(self, slot: _Slot) -> defer.Deferred:
        d = defer.Deferred()

        def expire():
            slot.waiters[:] = [(w, t) for w, t in slot.waiters if w is not d]
            d.errback(Unavailable("media worker not ready"))

        timer = self._reactor.callLater(self._start_wait, expire)
        slot.waiters.append((d, timer))
        return d

    def _peer(self, peer_id: str) -> _Peer:
        peer = self._peers.get(peer_id)
        if peer is None:
            raise PeerNotFound(peer_id)
        return peer

    def _peer_call(self, peer_id: str, op: str, args: dict) -> defer.Deferred:
        try:
            peer = self._peer(peer_id)
        except PeerNotFound as e:
            return defer.fail(e)
        return defer.Deferred.fromCoroutine(self._call(peer.slot, op, args, peer_id))

    # -- IMediaEngine ------------------------------------------------------

    def open_peer(self, room: str, peer_id: str, offer_sdp: str) -> defer.Deferred:
        if self._stopping or not self._slots:
            return defer.fail(Unavailable("media engine not running"))
        if peer_id in self._peers:
            return defer.fail(InvalidInput("peer already open"))
        slot = self._ensure_room(room)
        self._peers[peer_id] = peer = _Peer(room, slot)
        self._room_peers.setdefault(room, set()).add(peer_id)
        slot.peers += 1
        return defer.Deferred.fromCoroutine(self._open_peer(peer, peer_id, offer_sdp))

    async def _open_peer(self, peer: _Peer, peer_id: str, offer_sdp: str) -> str:
        try:
            result = await self._call(peer.slot, "open_peer",
                                      {"room": peer.room, "peer_id": peer_id, "offer_sdp": offer_sdp}, peer_id)
            return _field(result, "answer_sdp")
        except Exception as e:
            if self._peers.get(peer_id) is peer:
                self._forget_peer(peer_id)
                if peer.slot.usable and not isinstance(e, InvalidInput):
                    # It may have been made (a timeout, a bad result): make sure it does not linger.
                    peer.slot.protocol.request("close_peer", {"peer_id": peer_id}).addErrback(lambda f: None)
            raise

    def add_candidate(self, peer_id: str, candidate) -> defer.Deferred:
        d = self._peer_call(peer_id, "add_candidate", {"peer_id": peer_id, "candidate": candidate})
        return d.addCallback(lambda _: None)

    def renegotiate(self, peer_id: str, streams) -> defer.Deferred:
        wire = [attrs.asdict(s) if attrs.has(type(s)) else dict(s) for s in streams]
        d = self._peer_call(peer_id, "renegotiate", {"peer_id": peer_id, "streams": wire})
        return d.addCallback(_field, "offer_sdp")

    def apply_answer(self, peer_id: str, answer_sdp: str) -> defer.Deferred:
        d = self._peer_call(peer_id, "apply_answer", {"peer_id": peer_id, "answer_sdp": answer_sdp})
        return d.addCallback(lambda _: None)

    def request_keyframe(self, peer_id: str) -> defer.Deferred:
        return self._peer_call(peer_id, "request_keyframe", {"peer_id": peer_id}).addCallback(lambda _: None)

    def close_peer(self, peer_id: str) -> defer.Deferred:
        peer = self._peers.get(peer_id)
        if peer is None:
            return defer.succeed(None)
        # Forgotten at once: the domain is done with it whatever the worker says.
        self._forget_peer(peer_id)
        # Through _call, so that it queues behind an open_peer still waiting for a starting worker.
        d = defer.Deferred.fromCoroutine(self._call(peer.slot, "close_peer", {"peer_id": peer_id}, peer_id))

        def gone(f):
            # A worker that died took the peer with it; nothing left to close.
            f.trap(Unavailable, PeerNotFound)

        return d.addCallbacks(lambda _: None, gone)

    def start_recording(self, room: str, recording_id: str, path: str) -> defer.Deferred:
        if self._stopping or not self._slots:
            return defer.fail(Unavailable("media engine not running"))
        if recording_id in self._recordings:
            return defer.fail(InvalidInput("recording already started"))
        slot = self._ensure_room(room)
        self._recordings[recording_id] = (room, slot)
        self._room_recordings.setdefault(room, set()).add(recording_id)
        return defer.Deferred.fromCoroutine(self._start_recording(slot, room, recording_id, path))

    async def _start_recording(self, slot: _Slot, room: str, recording_id: str, path: str) -> None:
        try:
            await self._call(slot, "start_recording", {"room": room, "recording_id": recording_id, "path": path})
        except Exception:
            if self._recordings.get(recording_id, (None, None))[1] is slot:
                self._forget_recording(recording_id)
            raise

    def stop_recording(self, recording_id: str) -> defer.Deferred:
        entry = self._recordings.get(recording_id)
        if entry is None:
            return defer.fail(InvalidInput("no such recording"))
        return defer.Deferred.fromCoroutine(self._stop_recording(entry[1], recording_id))

    async def _stop_recording(self, slot: _Slot, recording_id: str) -> dict:
        try:
            # Finishing may merge the tracks that joined late into the file:
            # about 17 s for an hour of six streams (wecompany.sfu.recording).
            result = await self._call(slot, "stop_recording", {"recording_id": recording_id},
                                      timeout=max(self._request_timeout, STOP_RECORDING_TIMEOUT))
        finally:
            if self._recordings.get(recording_id, (None, None))[1] is slot:
                self._forget_recording(recording_id)
        if not isinstance(result, dict):
            raise InternalError()
        return result

    def stats(self) -> defer.Deferred:
        """The sum of every usable worker's ``stats``, with ``workers`` (running) and ``restarts``."""
        return defer.Deferred.fromCoroutine(self._stats())

    async def _stats(self) -> dict:
        running = [s for s in self._slots if s.usable]
        results = await defer.DeferredList(
            [s.protocol.request("stats", {}) for s in running], consumeErrors=True)
        total: dict[str, Any] = {name: 0 for name in _STATS}
        for ok, result in results:
            if ok and isinstance(result, dict):
                for name in _STATS:
                    value = result.get(name)
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        total[name] += value
        total["workers"] = len(running)
        total["restarts"] = sum(s.restarts for s in self._slots)
        return total


def _field(result: Any, name: str) -> Any:
    if not isinstance(result, dict) or not isinstance(result.get(name), str):
        raise InternalError()
    return result[name]


class WorkerEngineService(service.Service):
    """
    Runs a :class:`WorkerEngine` as a twistd service: started with
    ``listener``, and ``stopService`` returns :meth:`WorkerEngine.stop`'s
    Deferred, so twistd waits for the workers to exit.
    """

    def __init__(self, engine: WorkerEngine, listener) -> None:
        self.engine = engine
        self.listener = listener

    def startService(self) -> None:
        super().startService()
        self.engine.start(self.listener)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return self.engine.stop()
