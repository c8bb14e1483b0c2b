"""
The AI service of the domain: the engines, and the bounded pool they run in.

Every request's work (base64 and audio decoding, the engine, encoding the
answer) is a job of :mod:`wecompany.ai.jobs`, run through the injected
``run_ai`` runner: in the daemon, :class:`~wecompany.ai.processes.EngineProcesses`,
``--ai-workers`` worker processes, never the reactor's process (the
engines hold the GIL: bench/ai_gil.py). At most ``--ai-max-pending``
requests may be running or waiting for a worker; past that a request is
refused at once with 503 (4001, "AI engines busy"), so a burst cannot
queue up unbounded work. A request that has not finished after
``--ai-timeout`` seconds is answered 503 (4001) and its job cancelled:
dropped if it still waits, its worker process killed and replaced if it
runs. Its slot is free once the runner's Deferred has failed.

An engine that is not installed, or failed to load, is 503 (4001); an
engine that ran and failed is 422 (4002). No answer is ever made up.
"""

from __future__ import annotations

import base64
import binascii
import re

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from wecompany.ai import audio as audio_io
from wecompany.ai import jobs
from wecompany.ai.audio import AudioLimits
from wecompany.ai.engines import (EMOTION, SYNTHESIS, EngineFailed, PocketSphinxRecognizer, RNNoiseDenoiser,
                                  SpectralGateDenoiser, VaderSentiment)
from wecompany.ai.kserve import KServeModel, synthetic_score
from wecompany.ai.processes import PoolStopping
from wecompany.errors import AI_FAILED, AI_UNAVAILABLE, InvalidInput, Unavailable, WeCompanyError

log = Logger()

_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)
MAX_TEXT = 10_000


class ProcessingFailed(WeCompanyError):
    """An engine ran and could not produce a result."""

    code = 422
    error_code = AI_FAILED
    default_message = "AI processing failed"


def unavailable(message: str) -> Unavailable:
    return Unavailable(message, error_code=AI_UNAVAILABLE)


@attrs.frozen
class AudioInput:
    """
    What a request carries: the bytes (multipart, or a media item), or the
    base64 text of JSON (decoded in a worker process), and what the client says of
    them.
    """

    data: bytes | None = attrs.field(default=None, repr=False)
    base64_text: str | None = attrs.field(default=None, repr=False)
    format: str | None = None
    sample_rate: int | None = None
    channels: int = 1

    def raw_bytes(self, limits: AudioLimits) -> bytes:
        if self.data is not None:
            return self.data
        text = _DATA_URL.sub("", self.base64_text.strip(), count=1)  # browsers send data: URLs
        if len(text) > (limits.max_bytes + 2) // 3 * 4 + 4:
            from wecompany.errors import TooLarge
            raise TooLarge(f"audio larger than {limits.max_bytes} bytes")
        try:
            return base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("audio_data is not valid base64") from None


@attrs.define
class AIEngines:
    """The local engines a daemon offers (tests swap in missing ones)."""

    recognizer: object = attrs.field(factory=PocketSphinxRecognizer)
    denoisers: dict = attrs.field(factory=lambda: {"rnnoise": RNNoiseDenoiser(),
                                                   "spectral-gate": SpectralGateDenoiser()})
    text_emotion: object = attrs.field(factory=VaderSentiment)

    def local(self) -> list:
        return [self.recognizer, *self.denoisers.values(), self.text_emotion]


class AIService:
    """
    :param run_ai: ``run_ai(job, engine, *args) -> Deferred`` of ``job(engine, *args)``
        (a function of :mod:`wecompany.ai.jobs`), run off the reactor's
        process (:class:`~wecompany.ai.processes.EngineProcesses`; in place
        in unit tests). Cancelling the Deferred must stop the job: the
        request's slot is given back once the Deferred has failed.
    :param emotion: the :class:`KServeModel` for emotion in speech, or None.
    :param synthesis: the :class:`KServeModel` for synthetic-speech detection, or None.
    :param anonymous: whether the token-less ``/api/v1/ai/`` aliases serve.
    :param anonymous_limiter: the per-address budget of those aliases.
    :param resolve_media: ``async (user, media_id) -> bytes`` of a stored
        media item, or None while there is no media store (then a
        ``media_id`` input is 400).
    """

    def __init__(self, clock, run_ai, *, engines: AIEngines, limits: AudioLimits, max_pending: int,
                 timeout: float, default_denoiser: str = "rnnoise", emotion: KServeModel | None = None,
                 synthesis: KServeModel | None = None, anonymous: bool = False, anonymous_limiter=None,
                 resolve_media=None, workers: int | None = None) -> None:
        self.clock = clock
        self.run_ai = run_ai
        self.engines = engines
        self.limits = limits
        self.max_pending = max_pending
        self.timeout = timeout
        self.default_denoiser = default_denoiser
        self.emotion_model = emotion
        self.synthesis_model = synthesis
        self.anonymous = anonymous
        self.anonymous_limiter = anonymous_limiter
        self.resolve_media = resolve_media
        self.workers = workers
        self.in_flight = 0

    # -- the pool --------------------------------------------------------------

    def _submit(self, job, engine, *args) -> Deferred:
        """Run ``job(engine, *args)`` through ``run_ai``, within the bounds; -> a Deferred of its result."""
        if self.in_flight >= self.max_pending:
            raise unavailable(f"AI engines busy ({self.max_pending} requests under way), try again shortly")
        self.in_flight += 1
        outer = Deferred()

        def finished(result):
            self.in_flight -= 1
            if not outer.called:
                if isinstance(result, Failure):
                    outer.errback(result)
                else:
                    outer.callback(result)
            elif isinstance(result, Failure) and not result.check(WeCompanyError, EngineFailed, CancelledError):
                log.failure("AI job failed after its request timed out", result)
            return None

        def too_late():
            if not outer.called:
                outer.errback(unavailable(f"the AI engine did not finish within {self.timeout:g} s"))
            inner.cancel()  # the runner drops the job, or kills the worker process running it

        try:
            inner = self.run_ai(job, engine, *args)
        except BaseException:
            self.in_flight -= 1
            raise
        timer = self.clock.callLater(self.timeout, too_late)

        def stop_timer(result):
            if timer.active():
                timer.cancel()
            return result

        outer.addBoth(stop_timer)
        inner.addBoth(finished)
        return outer

    async def _run(self, engine, job, *args):
        """``job(engine, *args)`` through the runner; engine errors become 503 / 422."""
        self._check(engine)
        try:
            return await self._submit(job, engine, *args)
        except EngineFailed as error:
            raise ProcessingFailed(f"{engine.name} failed: {error}") from None
        except WeCompanyError:
            raise  # the input's fault (400, 413), or the pool's (503)
        except ImportError:
            raise unavailable(f"the {engine.kind} engine ({engine.name}) cannot be loaded: {engine.error}") from None
        except Exception:
            if not engine.loaded:
                raise unavailable(f"the {engine.kind} engine ({engine.name}) cannot be loaded: "
                                  f"{engine.error}") from None
            log.failure("AI engine {name} failed", name=engine.name)
            raise ProcessingFailed(f"{engine.name} failed on this input") from None

    @staticmethod
    def _check(engine) -> None:
        if engine is None:
            raise unavailable("no engine is configured for this")
        if not engine.available():
            raise unavailable(f"the {engine.kind} engine ({engine.name}) is not installed on this server")
        if not engine.loaded and engine.error is not None and not engine.remote:
            raise unavailable(f"the {engine.kind} engine ({engine.name}) cannot be loaded: {engine.error}")

    def warm_up(self) -> Deferred:
        """Load every installed local engine through the runner (the daemon calls it at start)."""
        from twisted.internet.defer import DeferredList

        def load(engine):
            def loaded(error):
                engine.record_load(error)
                if error is None:
                    log.info("AI engine {name} loaded ({model})", name=engine.name, model=engine.model)
                else:
                    log.warn("AI engine {name} not loaded: {error}", name=engine.name, error=error)

            def failed(failure):
                if failure.check(PoolStopping):  # stopped before it was ready: nothing to warn of
                    log.info("AI engine {name} not loaded: the server stopped first", name=engine.name)
                else:
                    log.warn("AI engine {name} not loaded: {error}", name=engine.name,
                             error=failure.getErrorMessage())

            d = self.run_ai(jobs.load, engine)
            d.addCallbacks(loaded, failed)
            return d

        return DeferredList([load(engine) for engine in self.engines.local() if engine.available()])

    # -- the operations ---------------------------------------------------------

    async def recognize(self, source: AudioInput, language: str | None = None) -> dict:
        engine = self.engines.recognizer
        if language is not None and language.strip().lower() not in getattr(engine, "languages", ()):
            raise InvalidInput(f"language {language[:16]!r} is not supported: this server recognises "
                               f"{', '.join(getattr(engine, 'languages', ()))}")
        duration_ms, transcript = await self._run(engine, jobs.recognize, source, self.limits)
        return {"text": transcript.text, "confidence": transcript.confidence, "language": "en-US",
                "duration_ms": duration_ms, "engine": engine.name,
                "words": [{"word": w.word, "start_ms": w.start_ms, "end_ms": w.end_ms,
                           "confidence": w.confidence} for w in transcript.words]}

    async def denoise(self, source: AudioInput, output_format: str | None = None,
                      engine_name: str | None = None) -> dict:
        name = engine_name or self.default_denoiser
        engine = self.engines.denoisers.get(name)
        if engine is None:
            raise InvalidInput(f"engine must be one of: {', '.join(self.engines.denoisers)}")
        wanted = audio_io.canonical_format(output_format)
        return await self._run(engine, jobs.denoise, source, self.limits, wanted)

    async def emotion_of_text(self, text: str) -> dict:
        if not text.strip():
            raise InvalidInput("text must not be empty")
        if len(text) > MAX_TEXT:
            raise InvalidInput(f"text must be at most {MAX_TEXT} characters")
        engine = self.engines.text_emotion
        scores = await self._run(engine, jobs.text_emotion, text)
        return {"emotion": scores.label, "confidence": scores.confidence, "emotions": scores.scores,
                "kind": "sentiment", "engine": engine.name, **scores.extra}

    async def emotion_of_speech(self, source: AudioInput) -> dict:
        if self.emotion_model is None:
            raise unavailable("no emotion model is configured on this server (--kserve-url, --emotion-model)")
        return await self._remote(self.emotion_model, source)

    async def detect_synthesis(self, source: AudioInput) -> dict:
        model = self.synthesis_model
        if model is None:
            raise unavailable("no synthetic-speech model is configured on this server "
                              "(--kserve-url, --synthesis-model)")
        scores = await self._remote_scores(model, source)
        score = synthetic_score(scores)
        return {"is_synthetic": score >= 0.5, "confidence": round(max(score, 1 - score), 4),
                "score": round(score, 4), "engine": f"{model.name}:{model.model}"}

    async def _remote_scores(self, model: KServeModel, source: AudioInput):
        self._check(model)
        body = await self._submit(jobs.kserve_body, None, source, self.limits, model.binary)  # CPU work
        try:
            return model.scores(await model.infer(body))
        except EngineFailed as error:
            raise ProcessingFailed(f"{model.name} model {model.model} failed: {error}") from None

    async def _remote(self, model: KServeModel, source: AudioInput) -> dict:
        scores = await self._remote_scores(model, source)
        return {"emotion": scores.label, "confidence": scores.confidence, "emotions": scores.scores,
                "kind": "emotion", "engine": f"{model.name}:{model.model}"}

    # -- reports -----------------------------------------------------------------

    def engine_statuses(self) -> list[dict]:
        statuses = [engine.status() for engine in self.engines.local() if engine is not None]
        for kind, model in ((EMOTION, self.emotion_model), (SYNTHESIS, self.synthesis_model)):
            statuses.append(model.status() if model is not None else
                            {"name": "kserve", "kind": kind, "model": None, "version": None, "remote": True,
                             "status": "not configured"})
        return statuses

    def health(self) -> dict:
        statuses = self.engine_statuses()
        ready = [s for s in statuses if s["status"] in ("loaded", "configured")]
        return {"status": "ok" if ready else "unavailable", "engines": {s["kind"] + ":" + s["name"]: s["status"]
                                                                        for s in statuses},
                "in_flight": self.in_flight, "max_pending": self.max_pending}

    def info(self) -> dict:
        return {"engines": self.engine_statuses(), "limits": {
            "max_audio_bytes": self.limits.max_bytes, "max_audio_seconds": self.limits.max_seconds,
            "timeout_seconds": self.timeout, "max_pending": self.max_pending, "workers": self.workers},
            "audio_formats": list(audio_io.FORMATS), "anonymous": self.anonymous,
            "denoisers": list(self.engines.denoisers), "default_denoiser": self.default_denoiser}


def build_ai(config, clock, run_ai, *, http=None, engines: AIEngines | None = None, resolve_media=None,
             anonymous_limiter=None) -> AIService:
    """The :class:`AIService` the configuration describes (called by ``build_domain``)."""
    models = {}
    for kind, model, labels in ((EMOTION, config.emotion_model, config.emotion_labels),
                                (SYNTHESIS, config.synthesis_model, config.synthesis_labels)):
        if model is not None:
            models[kind] = KServeModel(http, config.kserve_url, model, kind, clock, config.ai_timeout, labels,
                                       binary=config.kserve_binary)
    return AIService(clock, run_ai, engines=engines if engines is not None else AIEngines(),
                     limits=AudioLimits(config.ai_max_audio_bytes, config.ai_max_audio_seconds),
                     max_pending=config.ai_max_pending, timeout=config.ai_timeout,
                     default_denoiser=config.ai_denoiser, emotion=models.get(EMOTION),
                     synthesis=models.get(SYNTHESIS), anonymous=config.ai_anonymous,
                     anonymous_limiter=anonymous_limiter, resolve_media=resolve_media, workers=config.ai_workers)
