"""
The work of each AI request, as plain functions of picklable arguments.

Each job is ``job(engine, *args)``: ``engine`` is the local engine it runs
(loaded, or loaded now: :meth:`~wecompany.ai.engines.Engine.load` is
idempotent), or None for a job that needs none. They run in the worker
processes (:mod:`wecompany.ai.processes`), so they are module-level
functions taking values (bytes, attrs values, numbers) and returning
values, never closures; in unit tests they run in place.

base64, PyAV decoding and encoding, and the engines all hold the GIL for
long stretches (bench/ai_gil.py): none of it may run in the reactor's
process.
"""

from __future__ import annotations

import base64

from wecompany.ai import audio as audio_io
from wecompany.ai.audio import AudioLimits


def load(engine) -> str | None:
    """Load ``engine`` -> None, or why it cannot be loaded (the parent records it: Engine.record_load)."""
    try:
        engine.load()
    except Exception:
        return engine.error or "failed to load"
    return None


def recognize(engine, source, limits: AudioLimits):
    """-> (the audio's duration in ms, the engine's Transcript)."""
    engine.load()
    decoded = audio_io.decode(source.raw_bytes(limits), engine.rate, source.format, source.sample_rate,
                              source.channels, limits)
    return decoded.duration_ms, engine.run(decoded.samples)


def denoise(engine, source, limits: AudioLimits, wanted: str | None) -> dict:
    """-> the answer of /audio/denoising: the denoised audio in ``wanted`` (or the input's) format, base64."""
    engine.load()
    decoded = audio_io.decode(source.raw_bytes(limits), engine.rate, source.format, source.sample_rate,
                              source.channels, limits)
    clean = engine.run(decoded.samples)
    fmt = wanted or decoded.source_format
    back = resample(clean, engine.rate, decoded.source_rate)
    data, rate = audio_io.encode(back, decoded.source_rate, fmt)
    return {"audio_data": base64.b64encode(data).decode("ascii"), "audio_format": fmt,
            "sample_rate": rate, "duration_ms": decoded.duration_ms, "engine": engine.name}


def text_emotion(engine, text: str):
    """-> the engine's Scores for ``text``."""
    engine.load()
    return engine.run(text)


def kserve_body(engine, source, limits: AudioLimits, binary: bool = False):
    """-> the KServe InferRequest for ``source`` (decoding, and a large JSON array: CPU work). ``engine`` is None."""
    from wecompany.ai.kserve import AUDIO_RATE, audio_request

    decoded = audio_io.decode(source.raw_bytes(limits), AUDIO_RATE, source.format, source.sample_rate,
                              source.channels, limits)
    return audio_request(decoded.samples, binary)


def decode_only(engine, source, rate: int, limits: AudioLimits) -> int:
    """Decode ``source`` at ``rate`` -> its duration in ms (bench/ai_gil.py: PyAV alone)."""
    return audio_io.decode(source.raw_bytes(limits), rate, source.format, source.sample_rate, source.channels,
                           limits).duration_ms


def decode_only_base64(engine, source, limits: AudioLimits) -> int:
    """The base64 of ``source`` -> its length in bytes (bench/ai_gil.py: base64 alone)."""
    return len(source.raw_bytes(limits))


def encode_only(engine, samples, rate: int, fmt: str) -> int:
    """Encode ``samples`` -> the length of the encoded bytes (bench/ai_gil.py: PyAV encoding alone)."""
    return len(audio_io.encode(samples, rate, fmt)[0])


def resample(samples, rate: int, to_rate: int):
    """Mono float32 ``samples`` at ``rate`` -> at ``to_rate`` (PyAV's resampler)."""
    if rate == to_rate:
        return samples
    import av
    import numpy as np

    resampler = av.AudioResampler(format="flt", layout="mono", rate=to_rate)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1),
                                       format="flt", layout="mono")
    frame.sample_rate = rate
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)
