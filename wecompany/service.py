"""
The daemon's top-level service: ordered start-up and graceful shutdown.

Start-up does everything that can fail for a reason an operator must fix
*synchronously*, before twistd runs the reactor: the database schema is
prepared (migrations) and every port listens. twistd reports an exception
there and exits non-zero, so "address in use" or "database newer than this
server" never looks like a successful start; a port that cannot listen is
one line (:class:`CannotStart`), ``wecompany: cannot listen on tcp:8888
(port): address already in use``. What remains (connection pool,
thread pools) starts with the reactor; should that fail, the daemon stops
and still exits non-zero.

Stop (SIGTERM, Ctrl-C): stop accepting, end calls, tell every client (ERROR
503) and close them, stop the recorder, flush and close the store. twistd
waits for the Deferred :meth:`stopService` returns.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from wecompany.store.schema import CannotPrepare


@attrs.frozen
class Listener:
    """
    A port to listen on: a name for logs, an ``IStreamServerEndpoint``, a
    factory, and optionally ``on_listening(port)``, told the port once it
    listens (the media link announces its address).
    """

    name: str
    endpoint: object
    factory: object
    on_listening: object = None
    #: The endpoint string and the option it came from, for the one line a failure to listen is.
    description: str | None = None
    option: str | None = None


class CannotStart(Exception):
    """
    Start-up cannot go on for a reason the operator must fix (a port in
    use); the message is the whole story, so it is reported as one line
    (:func:`report_start_failures`), not as a traceback.
    """


def listen_failure(listener: Listener, error: BaseException) -> CannotStart:
    """``cannot listen on tcp:8888 (port): address already in use`` for a failed listen."""
    where = listener.description or listener.name
    if listener.option:
        where = f"{where} ({listener.option})"
    reason = getattr(error, "socketError", None) or error
    number = getattr(reason, "errno", None)
    text = os.strerror(number).lower() if isinstance(number, int) else str(reason)
    return CannotStart(f"cannot listen on {where}: {text}")


def report_start_failures() -> None:
    """
    Make a :class:`CannotStart` that ends the process print one line,
    ``wecompany: <message>``, on the original standard error.

    twistd lets an exception from ``privilegedStartService`` end the process
    (after removing its pid file, and telling a daemon's parent, which prints
    it and exits 1); Python would print its traceback, into the log, where
    twistd has redirected standard error. Only the daemon's composition root
    (:func:`wecompany.tap.makeService`) calls this; every other exception is
    reported as before.
    """
    previous = sys.excepthook

    def hook(kind, value, tb):
        if isinstance(value, CannotStart):
            stream = sys.__stderr__
            if stream is not None:
                stream.write(f"wecompany: {value}\n")
                stream.flush()
            return
        previous(kind, value, tb)

    sys.excepthook = hook


class WeCompanyService(MultiService):
    """
    :param store: the IStore; ``prepare()`` (if it has one) runs synchronously
        before listening, ``start()`` with the reactor, ``stop()`` last.
    :param listeners: :class:`Listener` s.
    :param tcp_factory: the binary protocol's factory (for its graceful shutdown).
    :param calls: the CallService (ends every call on shutdown).
    :param threadpools: ``ThreadPool`` s for hashing and disk work.
    :param process_pools: pools of worker processes (the AI engines'):
        ``start()`` with the reactor, ``stop() -> Deferred`` (bounded: it
        kills what does not exit) after the store.
    :param recorder: optional CallRecorder.
    :param collector: optional :class:`~wecompany.runtime.CollectorTuning`
        for the process's garbage collector (the daemon's, not in tests).
    :param files: optional FileService; uploads an earlier run left
        unfinished are removed once the store has started.
    :param media_jobs: optional :class:`~wecompany.media.jobs.JobQueue`,
        stopped before the thread pools.
    :param sfu: optional ``(engine, service)``: the meeting SFU's
        :class:`~wecompany.domain.interfaces.IMediaEngine` (its worker
        processes), started with the service as its listener, and the
        :class:`~wecompany.domain.sfu.SfuService`, whose housekeeping runs
        while the daemon does. Stopped once the clients are gone and before
        the store, so that recordings are finished and stored.
    :param recordings: optional
        :class:`~wecompany.domain.meetingrecordings.MeetingRecordings`: what
        a crash left is recovered once the store has started; at stop every
        recording is finished and stored before the media engine stops.
    :param cluster_node: optional :class:`~wecompany.mirror.cluster.ClusterNode`,
        started with the store and stopped (the node leaves the cluster)
        once the clients are gone.
    :param chat: optional :class:`~wecompany.domain.chat.ChatService`: once
        the connections are closed, its presence announcements (which read
        the store) are waited for (``settle()``) before the store closes.
    """

    log = Logger()

    def __init__(self, *, store, listeners, tcp_factory, calls, threadpools=(), process_pools=(), recorder=None,
                 reactor, shutdown_grace: float = 3.0, handle_signals: bool = False,
                 startup_warnings=(), signaling=None, collector=None, files=None, cluster_node=None,
                 media_jobs=None, sfu=None, recordings=None, chat=None) -> None:
        super().__init__()
        self.sfu = sfu
        self.recordings = recordings
        self.chat = chat
        self.store = store
        self.listeners = list(listeners)
        self.media_jobs = media_jobs
        self.tcp_factory = tcp_factory
        self.calls = calls
        self.threadpools = list(threadpools)
        self.process_pools = list(process_pools)
        self.recorder = recorder
        self.reactor = reactor
        self.shutdown_grace = shutdown_grace
        self.handle_signals = handle_signals
        self.startup_warnings = list(startup_warnings)
        self.signaling = signaling
        self.collector = collector
        self.files = files
        self.cluster_node = cluster_node
        self.ready: Deferred = Deferred()
        self.ports: dict[str, object] = {}
        self._pending: list[tuple[str, Deferred]] = []
        self._prepared = False
        self._failed_listener: Listener | None = None
        self._starting: Deferred | None = None
        self._stopping = False

    # -- start ------------------------------------------------------------------
    def privilegedStartService(self) -> None:
        """Prepare the schema and listen, raising on failure (twistd exits non-zero)."""
        super().privilegedStartService()
        self._prepared = True
        for warning in self.startup_warnings:
            # Not a field named "warning": trial (and twisted.logger's legacy bridge) take that for a Python warning.
            self.log.warn("{problem}", problem=warning)
        if self.collector is not None:
            self.collector.at_start()
        prepare = getattr(self.store, "prepare", None)
        if prepare is not None:
            try:
                prepare()
            except CannotPrepare as error:  # unreachable, or newer than this server: one line
                self.log.critical("{problem}", problem=str(error))
                raise CannotStart(str(error)) from error
        try:
            for listener in self.listeners:
                self._listen(listener)
        except Exception as error:
            self._stop_ports()
            failure = listen_failure(self._failed_listener, error)
            self.log.critical("{problem}", problem=str(failure))
            raise failure from error
        except BaseException:
            self._stop_ports()
            raise

    def _listen(self, listener: Listener) -> None:
        self._failed_listener = listener  # until it listens
        d = listener.endpoint.listen(listener.factory)
        outcome: list = []

        def look(result):
            outcome.append(result)
            if listener.on_listening is not None and not isinstance(result, Failure):
                listener.on_listening(result)
            return result  # leave the port (or failure) in the Deferred

        d.addBoth(look)
        if not outcome:  # an endpoint that listens later (systemd, some TLS set-ups)
            self._pending.append((listener.name, d))
        elif isinstance(outcome[0], Failure):
            d.addErrback(lambda f: None)  # raised below instead
            outcome[0].raiseException()
        else:
            self._listening(listener.name, outcome[0])

    def _listening(self, name: str, port) -> None:
        """Keep the port, and say where it listens: one line per listener (the e2e harness reads it)."""
        self.ports[name] = port
        host = port.getHost()
        where = getattr(host, "port", None)
        if where is None:  # a UNIX socket
            where = getattr(host, "name", host)
        self.log.info("listening on port {port_number} for {listener}", port_number=where, listener=name)

    def startService(self) -> None:
        if not self._prepared:
            self.privilegedStartService()
        super().startService()
        if self.handle_signals:
            # After the reactor's own handlers, which are installed during start-up.
            self.reactor.callLater(0, self._install_signal_handlers)
        self._starting = Deferred.fromCoroutine(self._start())
        self._starting.addErrback(self._start_failed)

    async def _start(self) -> None:
        started_at = self.reactor.seconds()
        for pool in self.threadpools:
            pool.start()
        for pool in self.process_pools:
            if not pool.started:
                pool.start()  # not awaited: the models load while the daemon gets ready
        if self.sfu is not None:
            engine, sfu = self.sfu
            engine.start(sfu)  # not awaited: the workers load aiortc while the daemon gets ready
            sfu.start()
        await self.store.start()
        if self.cluster_node is not None:
            self.cluster_node.start()
        if self.files is not None:
            try:
                await self.files.remove_interrupted(started_at)
            except Exception:  # housekeeping: never a reason not to serve
                self.log.failure("removing interrupted uploads failed")
        if self.recordings is not None:
            try:
                await self.recordings.recover()
            except Exception:  # likewise
                self.log.failure("recovering the recordings an earlier run left failed")
        while self._pending and not self._stopping:
            name, d = self._pending.pop(0)
            self._listening(name, await d)
        if self._stopping:
            return
        if self.collector is not None:
            self.collector.when_ready()
        self.log.info("WeCompany is ready")
        self.ready.callback(None)

    def _start_failed(self, failure) -> None:
        self.log.failure("WeCompany failed to start", failure)
        if not self.ready.called:
            self.ready.errback(failure)
        if self.reactor.running and not self._stopping:
            # Nothing useful can be served. twistd has no way to set its exit
            # status once the reactor runs, so leave with 1 after the graceful
            # stop has run (logs flushed first).
            self.reactor.addSystemEventTrigger("after", "shutdown", _exit_failure)
            self.reactor.stop()

    def _install_signal_handlers(self) -> None:
        """
        SIGTERM and SIGINT stop the reactor gracefully and the process exits 0.

        The reactor's own handlers make twistd re-raise the signal after the
        graceful stop (exit status 143/130); a requested stop that completed
        cleanly is a success, which is what service managers and scripts expect.
        """
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum, frame):
            self.log.info("signal {signum} received: stopping gracefully", signum=signum)
            self.reactor.callFromThread(self._stop_reactor)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)

    def _stop_reactor(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    # -- stop -------------------------------------------------------------------
    def stopService(self) -> Deferred:
        super().stopService()
        self._stopping = True
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.log.info("WeCompany is stopping")
        if self._starting is not None:
            await self._starting  # errors were handled by _start_failed
        for _, d in self._pending:  # ports still on their way: stop them when they come
            d.addCallback(lambda port: port.stopListening())
            d.addErrback(lambda f: None)
        self._pending.clear()
        # Each step runs even if one before it failed: a step left out (the
        # thread pools' above all) would keep the process from exiting.
        await self._step("closing the listening ports", self._stop_ports)
        if self.sfu is not None:
            self.sfu[1].stop()  # no more offers: the connections are about to close one by one
        await self._step("ending the calls", self.calls.end_all, "shutdown")
        if self.signaling is not None:
            await self._step("closing the signaling connections", self.signaling.shutdown)
        await self._step("closing the TCP connections", self.tcp_factory.shutdown, self.shutdown_grace)
        if self.chat is not None:
            # The sessions just closed tell their contacts (a read of the store each): before it closes.
            await self._step("telling contacts who went offline", self.chat.settle)
        if self.recordings is not None:
            # Before the engine stops: each file is finished by it and stored here (the store is still open).
            await self._step("finishing the meeting recordings", self.recordings.stop_all)
        if self.sfu is not None:
            engine, _ = self.sfu
            # Every media connection closes; recordings are finished and stored (the store is still open).
            await self._step("stopping the SFU's media workers", engine.stop)
        if self.cluster_node is not None:
            # After the clients are gone (their sessions left the cluster): then the node leaves.
            await self._step("leaving the cluster", self.cluster_node.stop)
        if self.media_jobs is not None:
            # Waiting jobs fail, running ones are stopped (their child processes killed).
            await self._step("stopping the media jobs", self.media_jobs.stop)
        if self.recorder is not None:
            await self._step("closing the recordings", self.recorder.stop)
        await self._step("closing the store", self.store.stop)
        for pool in self.process_pools:
            if pool.started:
                await self._step("stopping the AI worker processes", pool.stop)
        for pool in self.threadpools:
            if pool.started:
                await self._step("stopping a thread pool", pool.stop)
        self.log.info("WeCompany stopped")

    async def _step(self, what: str, f, *args) -> None:
        try:
            result = f(*args)
            if isinstance(result, Deferred) or hasattr(result, "__await__"):
                await result
        except Exception:
            self.log.failure("stopping: {what} failed", what=what)

    def _stop_ports(self) -> Deferred:
        ports, self.ports = list(self.ports.values()), {}
        stops = []
        for port in ports:
            result = port.stopListening()
            if isinstance(result, Deferred):
                stops.append(result)
        return DeferredList(stops, consumeErrors=True)


def _exit_failure() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(1)
