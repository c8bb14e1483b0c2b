"""JobQueue on a fake clock, with a runner that runs the work only when the test says so."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from wecompany.errors import AI_FAILED, InvalidInput, NotFound, Unavailable
from wecompany.media.jobs import JobQueue
from wecompany.media.process import ProcessingCancelled


class ManualRunner:
    """A run_in_thread whose calls wait until :meth:`run_next` runs them, in place."""

    def __init__(self) -> None:
        self.pending: list[tuple] = []

    def __call__(self, f, *args):
        d = defer.Deferred()
        self.pending.append((f, args, d))
        return d

    def run_next(self):
        f, args, d = self.pending.pop(0)
        try:
            value = f(*args)
        except BaseException:
            d.errback()
        else:
            d.callback(value)


def work(value, progress, cancelled):
    progress(0.5)
    return value


class Worker:
    """Work that records the callbacks it was given, so a test can use them while it 'runs'."""

    def __init__(self, result="result"):
        self.result = result
        self.seen = []

    def __call__(self, *args, progress, cancelled):
        self.seen.append((args, progress, cancelled))
        if cancelled():
            raise ProcessingCancelled()
        return self.result


class JobQueueTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.runner = ManualRunner()
        self.queue = JobQueue(self.clock, self.runner, workers=2, max_queued=2, keep_finished=600.0,
                              timeout=60.0)

    def test_a_job_runs_and_is_done(self):
        job = self.queue.submit(7, work, "value")
        self.assertEqual(job.status, "running")
        self.assertEqual(job.owner_id, 7)
        self.assertEqual(job.created_at, 1000)
        self.assertEqual(self.queue.to_json(job), {"job_id": job.job_id, "status": "running", "progress": 0.0,
                                                   "result_media_id": None, "error": None})
        self.clock.advance(5)
        self.runner.run_next()
        self.assertEqual(job.status, "done")
        self.assertEqual(job.result, "value")
        self.assertEqual(job.progress, 1.0)
        self.assertEqual(job.finished_at, 1005)
        self.assertIs(self.queue.get(job.job_id, 7), job)

    def test_the_work_gets_progress_and_cancelled_callbacks(self):
        worker = Worker()
        self.queue.submit(7, worker, "a", "b")
        self.runner.run_next()
        (args, progress, cancelled), = worker.seen
        self.assertEqual(args, ("a", "b"))
        self.assertFalse(cancelled())

    def test_progress_reported_while_running_is_seen(self):
        job = self.queue.submit(7, work, "value")
        f, args, d = self.runner.pending[0]
        # What the worker thread does: write the float; the reactor reads it.
        args[2](0.25)
        self.assertEqual(self.queue.to_json(job)["progress"], 0.25)
        args[2](7)
        self.assertEqual(job.progress, 1.0)

    def test_ids_are_long_and_distinct(self):
        ids = {self.queue.submit(1, work, i).job_id for i in range(4)}
        self.assertEqual(len(ids), 4)
        self.assertTrue(all(len(job_id) >= 20 for job_id in ids))

    def test_a_full_queue_refuses_with_503(self):
        jobs = [self.queue.submit(1, work, i) for i in range(4)]
        self.assertEqual([job.status for job in jobs], ["running", "running", "queued", "queued"])
        self.assertEqual(self.queue.counts(), {"queued": 2, "running": 2})
        error = self.assertRaises(Unavailable, self.queue.submit, 2, work, 5)
        self.assertEqual(error.code, 503)
        self.assertEqual(error.message, "processing queue full")

    def test_queued_jobs_start_when_a_worker_is_free(self):
        jobs = [self.queue.submit(1, work, i) for i in range(3)]
        self.assertEqual(len(self.runner.pending), 2)
        self.runner.run_next()
        self.assertEqual([job.status for job in jobs], ["done", "running", "running"])
        self.assertEqual(len(self.runner.pending), 2)
        self.queue.submit(1, work, 3)
        self.queue.submit(1, work, 4)
        self.assertRaises(Unavailable, self.queue.submit, 1, work, 5)

    def test_another_owners_job_is_not_found(self):
        job = self.queue.submit(7, work, "value")
        self.assertRaises(NotFound, self.queue.get, job.job_id, 8)
        self.assertRaises(NotFound, self.queue.get, "no-such-job", 7)
        self.assertRaises(NotFound, self.queue.get, None, 7)

    def test_finished_jobs_are_forgotten(self):
        job = self.queue.submit(7, work, "value")
        self.runner.run_next()
        self.clock.advance(599)
        self.assertIs(self.queue.get(job.job_id, 7), job)
        self.clock.advance(1)
        self.assertRaises(NotFound, self.queue.get, job.job_id, 7)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_failed_run_says_why(self):
        def bad(progress, cancelled):
            raise InvalidInput("the file could not be decoded: Invalid data")

        job = self.queue.submit(7, bad)
        self.runner.run_next()
        self.assertEqual(job.status, "failed")
        self.assertEqual(self.queue.to_json(job)["error"], "the file could not be decoded: Invalid data")
        self.assertIsNone(job.result)

    def test_an_unexpected_error_is_logged_not_shown(self):
        def broken(progress, cancelled):
            raise RuntimeError("secret internals")

        job = self.queue.submit(7, broken)
        self.runner.run_next()
        self.assertEqual(job.status, "failed")
        self.assertEqual(job.error, "processing failed")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_job_past_its_timeout_is_cancelled(self):
        worker = Worker()
        job = self.queue.submit(7, worker)
        self.clock.advance(59)
        self.assertFalse(job.cancelled())
        self.clock.advance(1)
        self.assertTrue(job.cancelled())
        self.runner.run_next()  # the work sees the flag and gives up
        self.assertEqual(job.status, "failed")
        self.assertEqual(job.error, "processing took longer than 60 seconds")
        self.assertEqual(job.error_code, AI_FAILED)

    def test_a_finished_job_cancels_its_timeout(self):
        self.queue.submit(7, work, 1)
        self.runner.run_next()
        self.assertEqual([call.getTime() for call in self.clock.getDelayedCalls()], [1600])

    def test_on_done_runs_before_the_job_is_done(self):
        stored = defer.Deferred()
        seen = []

        def on_done(job, value):
            seen.append(value)
            return stored

        job = self.queue.submit(7, work, "result-file", on_done=on_done)
        self.runner.run_next()
        self.assertEqual(seen, ["result-file"])
        self.assertEqual(job.status, "running")
        job.result_media_id = "m-42"
        stored.callback(None)
        self.assertEqual(self.queue.to_json(job), {"job_id": job.job_id, "status": "done", "progress": 1.0,
                                                   "result_media_id": "m-42", "error": None})

    def test_on_done_may_be_a_coroutine(self):
        async def on_done(job, value):
            job.result_media_id = f"media-of-{value}"

        job = self.queue.submit(7, work, "x", on_done=on_done)
        self.runner.run_next()
        self.assertEqual((job.status, job.result_media_id), ("done", "media-of-x"))

    def test_a_failing_on_done_fails_the_job(self):
        def on_done(job, value):
            raise Unavailable("storage is down")

        job = self.queue.submit(7, work, "x", on_done=on_done)
        self.runner.run_next()
        self.assertEqual((job.status, job.error), ("failed", "storage is down"))

    def test_on_done_is_not_called_for_a_failed_run(self):
        called = []

        def bad(progress, cancelled):
            raise InvalidInput("bad")

        self.queue.submit(7, bad, on_done=lambda job, value: called.append(value))
        self.runner.run_next()
        self.assertEqual(called, [])

    def test_stop_fails_queued_jobs_and_waits_for_running_ones(self):
        worker = Worker()
        running = [self.queue.submit(1, worker) for _ in range(2)]
        queued = self.queue.submit(1, worker)
        stopped = self.queue.stop()
        self.assertEqual(queued.status, "failed")
        self.assertEqual(queued.error, "the server is stopping")
        self.assertTrue(all(job.cancelled() for job in running))
        self.assertNoResult(stopped)
        self.runner.run_next()
        self.assertNoResult(stopped)
        self.runner.run_next()
        self.successResultOf(stopped)
        self.assertEqual([job.status for job in running], ["failed", "failed"])
        self.assertEqual(len(self.runner.pending), 0)  # the queued job never started
        self.assertRaises(Unavailable, self.queue.submit, 1, worker)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_with_nothing_running(self):
        self.successResultOf(self.queue.stop())

    def test_bad_sizes_are_refused(self):
        self.assertRaises(ValueError, JobQueue, self.clock, self.runner, workers=0)

    def test_work_that_finished_after_its_timeout_is_still_delivered(self):
        delivered = []
        job = self.queue.submit(7, work, "file", on_done=lambda job, value: delivered.append(value))
        self.clock.advance(60)
        self.runner.run_next()  # work that did not poll the flag, and finished
        self.assertEqual((job.status, delivered), ("done", ["file"]))


class ThreadedJobTests(TestCase):
    """
    Once with real threads: the engine in a thread pool, progress written
    from there, on_done back on the reactor thread. (The only test here that
    uses the reactor; it takes a fraction of a second.)
    """

    async def test_a_real_run_in_a_thread_pool(self):
        import os
        import threading
        from functools import partial

        from twisted.internet import reactor
        from twisted.internet.threads import deferToThreadPool
        from twisted.python.threadpool import ThreadPool

        from tests.media import generate
        from wecompany.media import process

        pool = ThreadPool(minthreads=1, maxthreads=2, name="media-test")
        pool.start()
        self.addCleanup(pool.stop)
        queue = JobQueue(reactor, partial(deferToThreadPool, reactor, pool), workers=2, max_queued=0,
                         keep_finished=0.0, timeout=60.0)
        self.addCleanup(queue.stop)  # waits for the threads before the pool stops
        src = os.path.abspath(self.mktemp())
        os.makedirs(src)
        video = generate.write_video(os.path.join(src, "clip.mp4"))
        seen = []
        done = defer.Deferred()

        def on_done(job, result):
            seen.append((threading.current_thread() is threading.main_thread(), job.progress))
            job.result_media_id = "m-1"
            done.callback(None)

        dst = os.path.abspath(self.mktemp())
        job = queue.submit(1, process.run, "thumbnail", video, dst, {"time": 1.0}, on_done=on_done)
        second = queue.submit(1, process.run, "transcode", video, dst, {"format": "webm"})
        self.assertRaises(Unavailable, queue.submit, 1, process.run, "trim", video, dst, {"end": 1})
        await done
        await task.deferLater(reactor, 0, lambda: None)  # on_done has returned
        self.assertEqual(seen, [(True, 1.0)])
        self.assertEqual(job.status, "done")
        self.assertEqual(job.result.content_type, "image/png")
        await queue.stop()
        self.assertIn(second.status, ("done", "failed"))
