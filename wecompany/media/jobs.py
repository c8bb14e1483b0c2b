"""
A bounded runner for media-processing jobs: a few run at once in worker
threads, a few more wait, and past that a submission is refused with 503.

The API the media service uses::

    queue = JobQueue(clock, run_in_thread, workers=2, max_queued=8,
                     keep_finished=600.0, timeout=3600.0)
    job = queue.submit(owner_id, func, *args, on_done=None)  # Unavailable (503) when full
    job = queue.get(job_id, owner_id)                         # NotFound (404), also for another's job
    queue.to_json(job)      # {"job_id", "status", "progress", "result_media_id", "error"}
    queue.counts()          # {"queued": n, "running": n}, for metrics
    await queue.stop()      # refuses queued jobs, cancels and waits for running ones

``func`` runs in a worker thread as ``func(*args, progress=report,
cancelled=is_cancelled)``, which is the shape of
:func:`wecompany.media.process.run`: it calls ``report(fraction)`` as it
goes and polls ``is_cancelled()``, stopping with an exception when that is
True (the job's timeout, or :meth:`JobQueue.stop`). Threads cannot be
killed, so cancelling is cooperative.

When ``func`` returns, ``on_done(job, value)`` runs on the reactor thread
and may return a Deferred or a coroutine: the media service stores the
result file as a new media item there and sets ``job.result_media_id``.
The job is ``done`` only once ``on_done`` has finished; if it fails, the
job is ``failed``. When ``func`` fails, ``on_done`` is not called (a
failed :func:`~wecompany.media.process.run` leaves no file behind); when it
returns, ``on_done`` is called even if the job was cancelled meanwhile, so
the hook always gets the chance to store or remove the result file.

A job is ``queued``, then ``running``, then ``done`` or ``failed``. A
:class:`~wecompany.errors.WeCompanyError` from the work becomes the job's
``error`` (its message) and ``error_code``; anything else is logged and
reported as "processing failed", so no internal detail reaches a client.
Finished jobs are forgotten ``keep_finished`` seconds after they finish, so
the table never grows past ``workers + max_queued`` live jobs plus what
finished in that window.

Progress is written by the worker thread straight into
:attr:`Job.progress`: one float attribute assignment, which is atomic in
CPython, and the reactor thread only reads it. Everything else about a job
changes on the reactor thread only.
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from wecompany.errors import NotFound, Unavailable, WeCompanyError
from wecompany.media.process import ProcessingFailed

STATUSES = ("queued", "running", "done", "failed")


@attrs.define(eq=False)
class Job:
    """
    One submission. Read its public fields; the queue changes them.

    :ivar progress: 0 to 1, as last reported by the work (1 when done).
    :ivar result: what ``func`` returned (a :class:`~wecompany.media.process.Result`).
    :ivar result_media_id: set by the ``on_done`` hook, for the client.
    :ivar error: why the job failed, safe to show; None unless ``failed``.
    :ivar error_code: the failure's business code (4002...), when it has one.
    :ivar created_at: / :ivar finished_at: seconds on the queue's clock.
    """

    job_id: str
    owner_id: Any
    created_at: float
    status: str = "queued"
    progress: float = 0.0
    result: Any = None
    result_media_id: Any = None
    error: str | None = None
    error_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    _work: tuple = attrs.field(default=(), repr=False)
    _on_done: Any = attrs.field(default=None, repr=False)
    _cancel: threading.Event = attrs.field(factory=threading.Event, repr=False)
    _timed_out: bool = attrs.field(default=False, repr=False)
    _timeout_call: Any = attrs.field(default=None, repr=False)
    _expiry_call: Any = attrs.field(default=None, repr=False)
    _finished: defer.Deferred | None = attrs.field(default=None, repr=False)

    def report(self, fraction: float) -> None:
        """The work's progress callback; safe to call from the worker thread."""
        self.progress = min(max(float(fraction), 0.0), 1.0)

    def cancelled(self) -> bool:
        """The work's cancellation flag; safe to poll from the worker thread."""
        return self._cancel.is_set()


class JobQueue:
    """
    Runs jobs ``workers`` at a time through ``run_in_thread``, keeps up to
    ``max_queued`` more waiting, and refuses the rest.

    :param clock: an ``IReactorTime`` (the reactor; ``task.Clock`` in tests).
    :param run_in_thread: ``f(callable, *args) -> Deferred``, normally
        ``functools.partial(threads.deferToThreadPool, reactor, pool)``
        with a pool of at least ``workers`` threads.
    :param keep_finished: seconds a finished job can still be read.
    :param timeout: seconds a job may run before it is cancelled.
    """

    log = Logger()

    def __init__(self, clock, run_in_thread, *, workers: int = 2, max_queued: int = 8,
                 keep_finished: float = 600.0, timeout: float = 3600.0, on_change=None) -> None:
        if workers < 1 or max_queued < 0:
            raise ValueError("workers must be at least 1 and max_queued at least 0")
        self._clock = clock
        self._run_in_thread = run_in_thread
        self.workers = workers
        self.max_queued = max_queued
        self.keep_finished = keep_finished
        self.timeout = timeout
        #: ``on_change(job)``, on the reactor thread, whenever a job's status changes (a cluster mirrors it).
        self.on_change = on_change
        self._jobs: dict[str, Job] = {}
        self._queued: deque[Job] = deque()
        self._running: set[Job] = set()
        self._stopping = False

    def submit(self, owner_id, func, *args, on_done=None) -> Job:
        """
        Queue ``func(*args, progress=..., cancelled=...)`` for ``owner_id``
        and return its :class:`Job`, queued or already running; raise
        :class:`~wecompany.errors.Unavailable` when every worker and every
        queue place is taken, or the queue is stopping.
        """
        if self._stopping:
            raise Unavailable("the server is stopping")
        if len(self._running) + len(self._queued) >= self.workers + self.max_queued:
            raise Unavailable("processing queue full")
        job = Job(job_id=secrets.token_urlsafe(16), owner_id=owner_id, created_at=self._clock.seconds(),
                  work=(func, args), on_done=on_done)
        self._jobs[job.job_id] = job
        self._queued.append(job)
        self.log.debug("media job {job_id} queued for {owner}", job_id=job.job_id, owner=owner_id)
        self._changed(job)
        self._start_next()
        return job

    def running(self) -> list[Job]:
        """The jobs running now."""
        return list(self._running)

    def _changed(self, job: Job) -> None:
        if self.on_change is not None:
            try:
                self.on_change(job)
            except Exception:
                self.log.failure("telling of media job {job_id} failed", job_id=job.job_id)

    def get(self, job_id: str, owner_id) -> Job:
        """``owner_id``'s job ``job_id``; :class:`~wecompany.errors.NotFound` for any other id."""
        job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None or job.owner_id != owner_id:
            raise NotFound("no such job")
        return job

    @staticmethod
    def to_json(job: Job) -> dict:
        """What a client is told about ``job``."""
        return {"job_id": job.job_id, "status": job.status, "progress": round(job.progress, 4),
                "result_media_id": job.result_media_id, "error": job.error}

    def has_room(self) -> bool:
        """Whether :meth:`submit` would take one more job now."""
        return not self._stopping and len(self._running) + len(self._queued) < self.workers + self.max_queued

    def counts(self) -> dict:
        """How many jobs are queued and running now."""
        return {"queued": len(self._queued), "running": len(self._running)}

    def stop(self) -> defer.Deferred:
        """
        Refuse new jobs, fail the queued ones, cancel the running ones and
        fire when their threads have returned.
        """
        self._stopping = True
        while self._queued:
            job = self._queued.popleft()
            self._finish(job, "failed", error=Unavailable("the server is stopping"))
        waiting = []
        for job in list(self._running):
            job._cancel.set()
            waiting.append(job._finished)
        done = defer.gatherResults(waiting, consumeErrors=True) if waiting else defer.succeed(None)

        def forget(_):
            for job in self._jobs.values():
                if job._expiry_call is not None and job._expiry_call.active():
                    job._expiry_call.cancel()
            self._jobs.clear()

        return done.addBoth(forget)

    # ---------------------------------------------------------------- inside

    def _start_next(self) -> None:
        while self._queued and len(self._running) < self.workers:
            job = self._queued.popleft()
            self._running.add(job)
            job.status = "running"
            job.started_at = self._clock.seconds()
            job._finished = defer.Deferred()
            job._timeout_call = self._clock.callLater(self.timeout, self._time_out, job)
            self._changed(job)
            d = defer.Deferred.fromCoroutine(self._run(job))
            d.addErrback(lambda failure, job=job: self.log.failure(
                "media job {job_id} went wrong", failure, job_id=job.job_id))

    def _time_out(self, job: Job) -> None:
        job._timeout_call = None
        job._timed_out = True
        job._cancel.set()
        self.log.info("media job {job_id} timed out after {timeout} s", job_id=job.job_id,
                      timeout=self.timeout)

    async def _run(self, job: Job) -> None:
        func, args = job._work
        try:
            try:
                value = await self._run_in_thread(_call, func, args, job.report, job.cancelled)
            finally:
                if job._timeout_call is not None and job._timeout_call.active():
                    job._timeout_call.cancel()
                job._timeout_call = None
            job.result = value
            # Work that finished is delivered even if it was cancelled meanwhile:
            # its result file exists, and on_done is what stores or removes it.
            if job._on_done is not None:
                await defer.maybeDeferred(job._on_done, job, value)
        except Exception as failure:
            error = failure
            if job._timed_out:
                error = JobTimedOut(f"processing took longer than {self.timeout:g} seconds")
            elif job._cancel.is_set():
                error = Unavailable("the server is stopping")
            elif not isinstance(error, WeCompanyError):
                self.log.failure("media job {job_id} failed", job_id=job.job_id)
            self._finish(job, "failed", error=error)
        else:
            self._finish(job, "done")

    def _finish(self, job: Job, status: str, *, error: Exception | None = None) -> None:
        job.status = status
        job.finished_at = self._clock.seconds()
        job._work = ()
        job._on_done = None
        if status == "done":
            job.progress = 1.0
        if error is not None:
            job.error = error.message if isinstance(error, WeCompanyError) else "processing failed"
            job.error_code = error.error_code if isinstance(error, WeCompanyError) else None
            self.log.info("media job {job_id} failed: {error}", job_id=job.job_id, error=job.error)
        was_running = job in self._running
        self._running.discard(job)
        if not self._stopping:
            job._expiry_call = self._clock.callLater(self.keep_finished, self._forget, job.job_id)
        self._changed(job)
        if job._finished is not None:
            finished, job._finished = job._finished, None
            finished.callback(None)
        if was_running and not self._stopping:
            self._start_next()

    def _forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)


class JobTimedOut(ProcessingFailed):
    """A job ran past the queue's timeout (a failed run: 422, 4002)."""

    default_message = "processing took too long"


def _call(func, args, report, cancelled):
    """In the worker thread: the work, with its progress callback and cancellation flag."""
    return func(*args, progress=report, cancelled=cancelled)
