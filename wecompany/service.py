"""
The daemon's top-level service: ordered start-up and graceful shutdown.

Start: open the store (migrations) and the thread pools, *then* listen, so no
client ever meets a store that is not ready. Stop (SIGTERM, Ctrl-C): stop
accepting, end calls, tell every client (ERROR 503) and close them, stop the
recorder, flush and close the store. twistd waits for the Deferred
:meth:`stopService` returns, then exits 0.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger


class WeCompanyService(MultiService):
    """
    :param store: the IStore (started first, stopped last).
    :param listeners: services that listen (``StreamServerEndpointService``),
        started once the store is ready and stopped first.
    :param tcp_factory: the binary protocol's factory (for its graceful shutdown).
    :param calls: the CallService (ends every call on shutdown).
    :param threadpools: ``ThreadPool`` s for hashing and disk work.
    :param recorder: optional CallRecorder.
    """

    log = Logger()

    def __init__(self, *, store, listeners, tcp_factory, calls, threadpools=(), recorder=None,
                 reactor, shutdown_grace: float = 3.0, handle_signals: bool = False,
                 startup_warnings=()) -> None:
        super().__init__()
        self.store = store
        self.listeners = list(listeners)
        self.tcp_factory = tcp_factory
        self.calls = calls
        self.threadpools = list(threadpools)
        self.recorder = recorder
        self.reactor = reactor
        self.shutdown_grace = shutdown_grace
        self.handle_signals = handle_signals
        self.startup_warnings = list(startup_warnings)
        self.ready: Deferred = Deferred()
        self._started_listeners: list = []

    def privilegedStartService(self) -> None:
        # Children (listeners) are started in startService, after the store.
        pass

    def startService(self) -> None:
        super().startService()
        if self.handle_signals:
            # After the reactor's own handlers, which are installed during start-up.
            self.reactor.callLater(0, self._install_signal_handlers)
        d = Deferred.fromCoroutine(self._start())
        d.addErrback(self._start_failed)

    async def _start(self) -> None:
        for warning in self.startup_warnings:
            self.log.warn("{warning}", warning=warning)
        for pool in self.threadpools:
            pool.start()
        await self.store.start()
        for listener in self.listeners:
            listener.privilegedStartService()
            listener.startService()
            self._started_listeners.append(listener)
            # StreamServerEndpointService logs and swallows listen failures
            # unless asked to raise; wait for each port so errors stop start-up.
            await listener._waitingForPort
        self.log.info("WeCompany is ready")
        self.ready.callback(None)

    def _install_signal_handlers(self) -> None:
        """
        SIGTERM and SIGINT stop the reactor gracefully and the process exits 0.

        The reactor's own handlers make twistd re-raise the signal after the
        graceful stop (exit status 143/130); a requested stop that completed
        cleanly is a success, which is what service managers and scripts expect.
        """
        import signal
        import threading

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

    def _start_failed(self, failure) -> None:
        self.log.failure("WeCompany failed to start", failure)
        self.ready.errback(failure)
        # Nothing is served; stop the process with an error status.
        if self.reactor.running:
            self.reactor.callLater(0, self._exit_with_error)

    def _exit_with_error(self) -> None:
        from twisted.application import app
        app._exitCode = 1  # twistd exits with this status
        self.reactor.stop()

    def stopService(self) -> Deferred:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.log.info("WeCompany is stopping")
        stops = [Deferred.fromCoroutine(_maybe(listener.stopService())) for listener in self._started_listeners]
        await DeferredList(stops, consumeErrors=True)
        self.calls.end_all("shutdown")
        await self.tcp_factory.shutdown(self.shutdown_grace)
        if self.recorder is not None:
            await self.recorder.stop()
        await self.store.stop()
        for pool in self.threadpools:
            if pool.started:
                pool.stop()
        self.log.info("WeCompany stopped")


async def _maybe(result) -> None:
    if isinstance(result, Deferred):
        await result
