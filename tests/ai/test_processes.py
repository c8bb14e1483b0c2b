"""
The AI worker processes, for real: real processes, the real reactor, real time.

These cannot run on a fake clock: what they prove is what a fake hides
(a worker is another process, results come back through the executor's
thread, a killed process is noticed and replaced, and the reactor keeps
running while PocketSphinx holds a GIL, its own). Each test is bounded by
trial's timeout and spends a few seconds at most.
"""

from __future__ import annotations

import os
import signal
import time

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.ai.support import speech
from wecompany.ai.audio import AudioLimits
from wecompany.ai.engines import EngineFailed, PocketSphinxRecognizer
from wecompany.ai.processes import EngineProcesses, WorkerDied
from wecompany.ai.service import AIEngines, AIService, AudioInput
from wecompany.errors import InvalidInput, Unavailable

# -- jobs (module-level: a worker process imports this module to run them) --


def where(engine):
    return os.getpid(), engine.loaded if engine is not None else None


def sleep_then_answer(engine, seconds: float):
    time.sleep(seconds)
    return "slept"


def refuse(engine, kind: str):
    raise {"input": InvalidInput("bad audio, and why"), "engine": EngineFailed("could not decide")}[kind]


async def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.01)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def deferred(coroutine) -> Deferred:
    return Deferred.fromCoroutine(coroutine)


class EngineProcessesTests(TestCase):
    timeout = 60

    def processes(self, engines=(), workers: int = 1) -> EngineProcesses:
        pool = EngineProcesses(reactor, list(engines), workers)
        self.addCleanup(pool.stop)
        return pool

    def test_jobs_run_in_a_worker_with_the_models_loaded_at_start(self):
        async def go():
            pool = self.processes([PocketSphinxRecognizer()])
            await pool.start()
            [pid] = pool.pids
            self.assertNotEqual(pid, os.getpid())
            engine = PocketSphinxRecognizer()
            # Loaded by the worker's initializer, before any job asked for it.
            self.assertEqual(await pool(where, engine), (pid, True))
            self.assertFalse(engine.loaded)  # the daemon's copy never loads
        return deferred(go())

    def test_errors_come_back_as_themselves(self):
        async def go():
            pool = self.processes()
            with self.assertRaisesRegex(InvalidInput, "bad audio, and why"):
                await pool(refuse, None, "input")
            with self.assertRaises(EngineFailed):
                await pool(refuse, None, "engine")
            self.assertEqual(pool.replaced, 0)
        return deferred(go())

    def test_a_killed_worker_fails_its_job_503_and_is_replaced(self):
        async def go():
            pool = self.processes()
            await pool.start()
            [pid] = pool.pids
            job = pool(sleep_then_answer, None, 30)
            await wait_for(lambda: pool.busy == 1)
            os.kill(pid, signal.SIGKILL)
            with self.assertRaises(WorkerDied) as caught:
                await job
            self.assertEqual((caught.exception.code, caught.exception.error_code), (503, 4001))
            self.assertEqual(await pool(sleep_then_answer, None, 0), "slept")
            [new_pid] = pool.pids
            self.assertNotIn(new_pid, (pid, None))
            self.assertEqual(pool.replaced, 1)
            self.flushLoggedErrors()
        return deferred(go())

    def test_a_worker_killed_while_idle_is_replaced_before_the_next_job(self):
        async def go():
            pool = self.processes()
            await pool.start()
            [pid] = pool.pids
            os.kill(pid, signal.SIGKILL)
            await deferLater(reactor, 0.3)  # the executor notices the death
            self.assertEqual(await pool(sleep_then_answer, None, 0), "slept")  # not a 503: it never ran
            self.flushLoggedErrors()
        return deferred(go())

    def test_cancelling_a_running_job_kills_its_worker(self):
        async def go():
            pool = self.processes(workers=1)
            await pool.start()
            [pid] = pool.pids
            job = pool(sleep_then_answer, None, 30)
            waiting = pool(sleep_then_answer, None, 0)
            await wait_for(lambda: pool.busy == 1)
            job.cancel()
            with self.assertRaises(CancelledError):
                await job
            # The process is gone (not left to burn 30 s of CPU), and the next job runs on its replacement.
            self.assertEqual(await waiting, "slept")
            self.assertNotIn(pid, pool.pids)
            await wait_for(lambda: gone(pid))
        return deferred(go())

    def test_stop_does_not_wait_for_a_busy_worker(self):
        async def go():
            pool = EngineProcesses(reactor, [], 2)
            await pool.start()
            job = pool(sleep_then_answer, None, 30)
            queued = [pool(sleep_then_answer, None, 30) for _ in range(2)]
            await wait_for(lambda: pool.busy == 2)
            started = time.monotonic()
            await pool.stop()
            self.assertLess(time.monotonic() - started, 5)
            for d in [job, *queued]:  # killed by the stop, not a worker that died: 503 "stopping"
                with self.assertRaisesRegex(Unavailable, "stopping"):
                    await d
            self.assertEqual(pool.replaced, 0)
            with self.assertRaisesRegex(Unavailable, "stopping"):
                await pool(sleep_then_answer, None, 0)
            self.flushLoggedErrors()
        return deferred(go())


    def test_a_daemon_killed_outright_leaves_no_worker_behind(self):
        import subprocess
        import sys
        # The "daemon" starts a worker, says its pid, and dies without stopping it (as SIGKILL would).
        script = ("import os; from wecompany.ai.processes import BlockingWorker; w = BlockingWorker([]); "
                  "print(w.pid, flush=True); os._exit(0)")
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                             cwd=root, env={**os.environ, "PYTHONPATH": root})
        pid = int(out.stdout.split()[0])

        async def go():
            await wait_for(lambda: gone(pid) or _zombie(pid))
        return deferred(go())


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class WarmUpTests(TestCase):
    def test_a_stop_during_the_warm_up_is_no_warning(self):
        """The daemon stopped while its engines loaded (a quick restart): info, not warn; other failures warn."""
        from twisted.internet.defer import fail
        from twisted.logger import LogLevel, globalLogPublisher

        from wecompany.ai.processes import PoolStopping
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        engines = AIEngines()
        for error, level in ((PoolStopping(), LogLevel.info), (Unavailable("the worker could not start"),
                                                              LogLevel.warn)):
            del events[:]
            ai = AIService(reactor, lambda job, engine, *args: fail(error), engines=engines, limits=AudioLimits(),
                           max_pending=2, timeout=60)
            ai.warm_up()
            lines = [e for e in events if "not loaded" in e.get("log_format", "")]
            self.assertTrue(lines)
            self.assertEqual({e["log_level"] for e in lines}, {level}, error)


class ServiceOverProcessesTests(TestCase):
    """AIService on real worker processes: what a dying worker looks like to a request."""

    timeout = 120

    def test_a_recognition_whose_worker_is_killed_is_503_and_the_next_is_served(self):
        async def go():
            import numpy as np

            from tests.ai.support import wav_bytes
            from wecompany.ai.audio import decode
            engines = AIEngines()
            pool = EngineProcesses(reactor, [engines.recognizer], 1)
            self.addCleanup(pool.stop)
            await pool.start()
            ai = AIService(reactor, pool, engines=engines, limits=AudioLimits(), max_pending=2, timeout=60)
            await ai.warm_up()
            long = wav_bytes(np.tile(decode(speech(), 16000).samples, 10), 16000)  # 22 s: seconds to decode
            [pid] = pool.pids
            request = deferred(ai.recognize(AudioInput(data=long, format="wav")))
            await wait_for(lambda: pool.busy == 1)
            os.kill(pid, signal.SIGKILL)
            with self.assertRaises(Unavailable) as caught:
                await request
            self.assertEqual((caught.exception.code, caught.exception.error_code), (503, 4001))
            self.assertEqual(ai.in_flight, 0)
            answer = await ai.recognize(AudioInput(data=speech(), format="wav"))
            self.assertEqual(answer["text"], "one two three four five")
            self.assertNotIn(pid, pool.pids)
            self.flushLoggedErrors()
        return deferred(go())


class ReactorStaysLiveTests(TestCase):
    """
    The point of the worker processes: while PocketSphinx decodes (holding
    its process's GIL), the reactor keeps its 10 ms ticks. Real time by
    necessity: the lag of the real reactor is what is measured. In a
    thread of this process the same work froze the reactor for seconds
    (bench/ai_gil.py).
    """

    timeout = 120
    MAX_LAG = 0.1

    def test_the_reactor_ticks_while_speech_is_recognised(self):
        async def go():
            engines = AIEngines()
            pool = EngineProcesses(reactor, [engines.recognizer], 2)
            self.addCleanup(pool.stop)
            await pool.start()
            ai = AIService(reactor, pool, engines=engines, limits=AudioLimits(), max_pending=8, timeout=60)
            await ai.warm_up()
            self.assertTrue(engines.recognizer.loaded)
            lags, ticking = [], [True]

            def tick(expected):
                now = time.monotonic()
                lags.append(now - expected)
                if ticking[0]:
                    reactor.callLater(0.01, tick, time.monotonic() + 0.01)

            reactor.callLater(0.01, tick, time.monotonic() + 0.01)
            source = AudioInput(data=speech(), format="wav")
            answers = [deferred(ai.recognize(source)) for _ in range(4)]
            try:
                for d in answers:
                    self.assertEqual((await d)["text"], "one two three four five")
            finally:
                ticking[0] = False
            self.assertGreater(len(lags), 20)  # 4 recognitions on 2 workers: about a second of ticks
            self.assertLess(max(lags), self.MAX_LAG, f"the reactor lagged {max(lags) * 1000:.0f} ms")
        return deferred(go())
