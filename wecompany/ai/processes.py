"""
The AI worker processes: where every AI job runs (docs/ai.rst, "The pool").

PocketSphinx, RNNoise, VADER, PyAV and base64 hold Python's GIL for most
of their work (bench/ai_gil.py measured a main thread's 5 ms sleep waking
up to 4.4 s late while a thread recognised speech): run in a thread of
the daemon, they freeze the reactor and every client with it. So they run
in ``--ai-workers`` processes of their own.

Each worker is a one-process :class:`concurrent.futures.ProcessPoolExecutor`
(start method ``forkserver``: forking the daemon itself, threads and all,
is not safe) whose initializer loads every engine once, so the models are
warm before the first request. One executor per process, not one executor
for all, so that the process running a given job is known and can be
killed on its own: a job whose request timed out is cancelled, its
process killed and replaced, and the CPU it was burning freed (its
request has had its 503 already). A worker that dies on its own (a
crash, the OOM killer) fails its job with 503 (4001), is logged and is
replaced; the requests after it are served by the new process.

:class:`EngineProcesses` is the domain's ``run_ai``: ``run(job, engine,
*args)`` -> a Deferred, fired on the reactor thread (the executor's
management thread hands results over with ``callFromThread``). Nothing on
the reactor thread waits on a process. Jobs queue here, FIFO, while every
worker is busy; :class:`~wecompany.ai.service.AIService` bounds how many
there are (``--ai-max-pending``).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections import deque
from concurrent.futures.process import BrokenProcessPool

from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.logger import Logger

from wecompany.errors import AI_UNAVAILABLE, Unavailable

log = Logger()

#: Modules the fork server imports once, so each worker starts with them (not the models: those load per worker).
PRELOAD = ["wecompany.ai.jobs", "wecompany.ai.service", "numpy", "av"]

# -- in the worker process ------------------------------------------------------------------------

_engines: dict = {}


def _initialize(engines) -> None:
    """A worker's first act: load every engine (failures are kept in ``engine.error``, reported by _hello)."""
    # Ctrl-C on ``twistd -n`` and systemd's SIGTERM reach the whole process group: the daemon stops
    # its workers itself, in order, after its clients (EngineProcesses.stop). SIGKILL still works.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A worker blocked on its call queue never sees the daemon die (it holds both ends of the queue's
    # pipe): it watches the daemon's sentinel instead, so a daemon killed with SIGKILL leaves no workers.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), name="wecompany-ai-watch", daemon=True).start()
    for engine in engines:
        _engines[engine.name] = engine
        if engine.available():
            try:
                engine.load()
            except Exception:
                pass


def _exit_with(sentinel) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def _hello() -> tuple[int, dict]:
    """-> (this worker's pid, each engine's load error or None)."""
    return os.getpid(), {name: (None if engine.loaded else engine.error or "not installed")
                         for name, engine in _engines.items()}


def _call(job, name, args):
    return job(_engines[name] if name is not None else None, *args)


# -- in the daemon -----------------------------------------------------------------------------------

class WorkerDied(Unavailable):
    """The worker process running the job died (503, 4001)."""

    default_message = "the AI worker process died while running this request; try again"
    error_code = AI_UNAVAILABLE


class PoolStopping(Unavailable):
    """The daemon is stopping: the job was refused, or stopped (503, 4001)."""

    default_message = "the server is stopping"
    error_code = AI_UNAVAILABLE


class _Job:
    def __init__(self, job, name, args, deferred: Deferred) -> None:
        self.job, self.name, self.args, self.deferred = job, name, args, deferred
        self.cancelled = False


class _Worker:
    """One worker process behind a one-process executor; ``pid`` is known once it said hello."""

    def __init__(self, number: int, context, engines) -> None:
        self.number = number
        self.executor = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context,
                                                               initializer=_initialize, initargs=(engines,))
        self.pid: int | None = None
        self.job: _Job | None = None
        self.kill_when_known = False

    def kill(self) -> None:
        if self.pid is None:
            self.kill_when_known = True
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class EngineProcesses:
    """
    ``workers`` worker processes with ``engines`` loaded in each.

    :param reactor: ``IReactorThreads`` (``callFromThread``) and
        ``IReactorTime`` (the stop deadline).
    :param engines: the local engines (pickled: each worker gets fresh
        copies, loaded there; the parent's stay unloaded and report what
        the workers said, :meth:`~wecompany.ai.engines.Engine.record_load`).
    :param context: the multiprocessing start method.
    """

    def __init__(self, reactor, engines, workers: int, context: str = "forkserver",
                 stop_timeout: float = 10.0) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.reactor = reactor
        self.engines = list(engines)
        self.size = workers
        self.stop_timeout = stop_timeout
        self._context = multiprocessing.get_context(context)
        if context == "forkserver":
            self._context.set_forkserver_preload(PRELOAD)
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []
        self._waiting: deque[_Job] = deque()
        self._count = 0
        self.started = False
        self.stopping = False
        #: How many workers were replaced (died, or killed for a timeout).
        self.replaced = 0

    # -- life ---------------------------------------------------------------------------

    def start(self) -> Deferred:
        """Spawn every worker and load the models in each; -> fires once each has (or has failed to)."""
        self.started = True
        return DeferredList([self._spawn() for _ in range(self.size)], consumeErrors=True)

    def _spawn(self) -> Deferred:
        self._count += 1
        worker = _Worker(self._count, self._context, self.engines)
        self._workers.append(worker)
        self._idle.append(worker)
        hello = Deferred()
        future = worker.executor.submit(_hello)
        future.add_done_callback(lambda f: self.reactor.callFromThread(_fire, hello, f))

        def said_hello(answer):
            worker.pid, errors = answer
            if worker.kill_when_known:
                worker.kill()
            failed = {name: error for name, error in errors.items() if error}
            log.info("AI worker process {number} (pid {pid}) ready{failed}", number=worker.number, pid=worker.pid,
                     failed=f"; not loaded: {failed}" if failed else "")
            return answer

        hello.addCallback(said_hello)
        hello.addErrback(lambda failure: log.failure("AI worker process {number} did not start", failure,
                                                     number=worker.number))
        return hello

    def stop(self) -> Deferred:
        """
        Refuse new jobs, fail the waiting ones, kill the busy workers (their
        clients are gone: the daemon stops) and let the idle ones exit;
        -> fires once every process has exited, or after ``stop_timeout``
        with the stragglers killed: never hangs.
        """
        self.stopping = True
        while self._waiting:
            job = self._waiting.popleft()
            if not job.deferred.called:
                job.deferred.errback(PoolStopping())
        workers, self._workers, self._idle = self._workers, [], []
        done = []
        for worker in workers:
            if worker.job is not None:
                worker.kill()
            d = Deferred()
            done.append(d)

            def shut(worker=worker, d=d):
                try:
                    worker.executor.shutdown(wait=True, cancel_futures=True)
                finally:
                    self.reactor.callFromThread(lambda: d.called or d.callback(None))

            threading.Thread(target=shut, name=f"wecompany-ai-stop-{worker.number}", daemon=True).start()
        everything = DeferredList(done)
        finished = Deferred()
        everything.addBoth(lambda _: finished.called or finished.callback(None))

        def too_slow():
            if not finished.called:
                log.warn("AI worker processes still running after {timeout} s: killed", timeout=self.stop_timeout)
                for worker in workers:
                    worker.kill()
                finished.callback(None)

        timer = self.reactor.callLater(self.stop_timeout, too_slow)
        finished.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
        return finished

    # -- the runner ---------------------------------------------------------------------

    def __call__(self, job, engine, *args) -> Deferred:
        """Run ``job(engine, *args)`` in a worker (``engine`` is that worker's loaded copy) -> a Deferred."""
        if self.stopping:
            return fail(PoolStopping())
        if not self.started:
            self.start()
        entry = _Job(job, engine.name if engine is not None else None, args, None)
        entry.deferred = Deferred(lambda d: self._cancel(entry))
        self._waiting.append(entry)
        self._dispatch()
        return entry.deferred

    def _dispatch(self) -> None:
        while self._waiting and self._idle:
            entry = self._waiting.popleft()
            worker = self._idle.pop(0)
            try:
                future = worker.executor.submit(_call, entry.job, entry.name, entry.args)
            except (BrokenProcessPool, RuntimeError):
                # The worker died while idle: the job never started, so it goes to its replacement.
                log.error("AI worker process {number} (pid {pid}) died while idle; replacing it",
                          number=worker.number, pid=worker.pid)
                self._waiting.appendleft(entry)
                self._replace(worker)
                continue
            worker.job = entry
            future.add_done_callback(lambda f, worker=worker, entry=entry:
                                     self.reactor.callFromThread(self._finished, worker, entry, f))

    def _finished(self, worker: _Worker, entry: _Job, future) -> None:
        worker.job = None
        error = _error_of(future)
        if isinstance(error, BrokenProcessPool):
            if entry.cancelled:
                log.info("AI worker process {number} killed: its request timed out", number=worker.number)
            elif self.stopping:  # killed by stop(): not a death to report, nor to replace
                log.info("AI worker process {number} stopped while running {job}", number=worker.number,
                         job=getattr(entry.job, "__name__", entry.job))
                if not entry.deferred.called:
                    entry.deferred.errback(PoolStopping())
            else:
                log.error("AI worker process {number} (pid {pid}) died running {job}; replacing it",
                          number=worker.number, pid=worker.pid, job=getattr(entry.job, "__name__", entry.job))
                if not entry.deferred.called:
                    entry.deferred.errback(WorkerDied())
            self._replace(worker)
        elif not entry.deferred.called:
            _fire(entry.deferred, future)
        if worker in self._workers and worker not in self._idle:
            self._idle.append(worker)
        self._dispatch()

    def _replace(self, worker: _Worker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)
        worker.executor.shutdown(wait=False, cancel_futures=True)
        if not self.stopping:
            self.replaced += 1
            self._spawn()

    def _cancel(self, entry: _Job) -> None:
        """A job's request gave up on it (timed out): drop it if it waits, kill its worker if it runs."""
        entry.cancelled = True
        if entry in self._waiting:
            self._waiting.remove(entry)
            return
        for worker in self._workers:
            if worker.job is entry:
                worker.kill()
                return

    # -- reports ------------------------------------------------------------------------

    @property
    def pids(self) -> list[int | None]:
        """The worker processes' pids (None for one still starting)."""
        return [worker.pid for worker in self._workers]

    @property
    def busy(self) -> int:
        return sum(worker.job is not None for worker in self._workers)


def _error_of(future) -> BaseException | None:
    if future.cancelled():  # by the executor's shutdown, when the daemon stops
        return PoolStopping()
    return future.exception()


def _fire(d: Deferred, future) -> None:
    if d.called:
        return
    error = _error_of(future)
    if error is None:
        d.callback(future.result())
    else:
        d.errback(error)


# -- for scripts without a reactor (bench/ai_gil.py) ------------------------------------------------

class BlockingWorker:
    """One worker process for code that blocks on futures: ``submit(job, engine, *args)`` -> a Future."""

    def __init__(self, engines, context: str = "forkserver") -> None:
        ctx = multiprocessing.get_context(context)
        if context == "forkserver":
            ctx.set_forkserver_preload(PRELOAD)
        self.executor = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx,
                                                               initializer=_initialize, initargs=(list(engines),))
        self.pid, self.errors = self.executor.submit(_hello).result()

    def submit(self, job, engine, *args):
        return self.executor.submit(_call, job, engine.name if engine is not None else None, args)

    def close(self) -> None:
        self.executor.shutdown(wait=True)
