"""
Audio in and out of the AI engines, with PyAV (FFmpeg's decoders).

:func:`decode` turns what a client sent (WAV, raw PCM, WebM, Ogg, MP3,
FLAC) into mono float32 samples at the rate an engine wants, within
:class:`AudioLimits`: the bytes are bounded before anything is parsed and
the decoded samples are counted as they come, so a small file that would
decode to hours of audio is refused after the first ``max_seconds``.
:func:`encode` writes samples back in one of those formats. Both are CPU
work: they run in the AI worker processes (wecompany.ai.jobs), never in the
reactor's process.

Anything FFmpeg cannot make sense of is :class:`InvalidInput`, with a
message that says why.
"""

from __future__ import annotations

import io

import attrs

from wecompany.errors import InvalidInput, TooLarge

MiB = 1 << 20

#: What a client may call a format -> (the canonical name, FFmpeg's demuxer hint or None to probe).
FORMAT_ALIASES = {
    "wav": "wav", "wave": "wav", "audio/wav": "wav", "audio/x-wav": "wav", "audio/wave": "wav",
    "pcm": "pcm", "raw": "pcm", "s16le": "pcm", "pcm_s16le": "pcm", "audio/l16": "pcm",
    "webm": "webm", "audio/webm": "webm",
    "ogg": "ogg", "opus": "ogg", "oga": "ogg", "audio/ogg": "ogg", "audio/opus": "ogg",
    "mp3": "mp3", "mpeg": "mp3", "audio/mpeg": "mp3", "audio/mp3": "mp3",
    "flac": "flac", "audio/flac": "flac", "audio/x-flac": "flac",
}
FORMATS = ("wav", "pcm", "webm", "ogg", "mp3", "flac")
# The demuxers a probe may pick: whatever else FFmpeg can read (images, playlists, ...) is refused.
_DEMUXERS = {"wav": "wav", "matroska,webm": "webm", "ogg": "ogg", "mp3": "mp3", "flac": "flac"}
# How each format is written: (container, codec, the codec's sample rates or None for any).
_ENCODERS = {
    "wav": ("wav", "pcm_s16le", None),
    "flac": ("flac", "flac", None),
    "mp3": ("mp3", "libmp3lame", (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)),
    "ogg": ("ogg", "libopus", (8000, 12000, 16000, 24000, 48000)),
    "webm": ("webm", "libopus", (8000, 12000, 16000, 24000, 48000)),
}
MIN_RATE, MAX_RATE = 8000, 192000
MAX_CHANNELS = 8


@attrs.frozen
class AudioLimits:
    """:ivar max_bytes: of the encoded input. :ivar max_seconds: of the decoded audio."""

    max_bytes: int = 10 * MiB
    max_seconds: float = 120.0


@attrs.frozen(eq=False)
class Audio:
    """
    Decoded audio: ``samples`` is a 1-D float32 numpy array in [-1, 1] at
    ``rate`` Hz; ``source_format``/``source_rate`` are what the client sent.
    """

    samples: object = attrs.field(repr=False)
    rate: int
    source_format: str
    source_rate: int
    source_channels: int

    @property
    def duration_ms(self) -> int:
        return round(1000 * len(self.samples) / self.rate)


def canonical_format(name: str | None) -> str | None:
    """A client's name for a format -> one of :data:`FORMATS`, None for "find out"; else InvalidInput."""
    if name is None or not str(name).strip():
        return None
    found = FORMAT_ALIASES.get(str(name).strip().lower().split(";")[0].strip())
    if found is None:
        raise InvalidInput(f"audio format {str(name)[:32]!r} is not supported: use one of {', '.join(FORMATS)}")
    return found


def decode(data: bytes, rate: int, fmt: str | None = None, sample_rate: int | None = None, channels: int = 1,
           limits: AudioLimits = AudioLimits()) -> Audio:
    """
    ``data`` -> :class:`Audio`, mono at ``rate`` Hz.

    :param fmt: a name :func:`canonical_format` knows, or None to let
        FFmpeg find out (raw PCM cannot be found out: it must be named).
    :param sample_rate: of raw PCM (required for it); ignored otherwise.
    :param channels: of raw PCM, interleaved.
    :raises InvalidInput: saying why the audio cannot be used.
    :raises TooLarge: for more than ``limits.max_bytes``.
    """
    import av
    import numpy as np

    fmt = canonical_format(fmt)
    if len(data) > limits.max_bytes:
        raise TooLarge(f"audio larger than {limits.max_bytes} bytes")
    if not data:
        raise InvalidInput("the audio is empty")
    collector = _Collector(av.AudioResampler(format="flt", layout="mono", rate=rate),
                           int(limits.max_seconds * rate), limits.max_seconds)
    try:
        if fmt == "pcm":
            source = ("pcm", *_raw_pcm(data, sample_rate, channels, limits, collector))
        else:
            source = _container(data, fmt, collector)
        collector.add(None)
    except av.error.FFmpegError as error:
        what = f"as {fmt}" if fmt else "(its format found from its bytes)"
        raise InvalidInput(f"the audio cannot be decoded {what}: {error.strerror or error}") from None
    samples = np.concatenate(collector.chunks) if collector.chunks else np.zeros(0, np.float32)
    if len(samples) == 0:
        raise InvalidInput("the audio holds no samples")
    if not np.all(np.isfinite(samples)):
        raise InvalidInput("the audio holds samples that are not numbers")
    return Audio(np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False), rate, *source)


class _Collector:
    """Resamples decoded frames and keeps them, refusing more than ``max_samples``."""

    def __init__(self, resampler, max_samples: int, max_seconds: float) -> None:
        self.resampler = resampler
        self.max_samples = max_samples
        self.max_seconds = max_seconds
        self.chunks: list = []
        self.total = 0

    def add(self, frame) -> None:
        for out in self.resampler.resample(frame):
            samples = out.to_ndarray().reshape(-1)
            self.total += len(samples)
            if self.total > self.max_samples:
                raise InvalidInput(f"the audio is longer than {self.max_seconds:g} seconds")
            self.chunks.append(samples)


def _raw_pcm(data: bytes, sample_rate, channels, limits: AudioLimits, collector: _Collector):
    import av
    import numpy as np

    if sample_rate is None:
        raise InvalidInput("raw PCM needs its sample_rate (it is read as s16le: little-endian 16-bit)")
    if not MIN_RATE <= sample_rate <= MAX_RATE:
        raise InvalidInput(f"sample_rate must be between {MIN_RATE} and {MAX_RATE}")
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidInput(f"channels must be between 1 and {MAX_CHANNELS}")
    frame_bytes = 2 * channels
    if len(data) < frame_bytes:
        raise InvalidInput("the audio holds no samples")
    if len(data) / frame_bytes / sample_rate > limits.max_seconds:
        raise InvalidInput(f"the audio is longer than {limits.max_seconds:g} seconds")
    pcm = np.frombuffer(data, dtype="<i2", count=len(data) // frame_bytes * channels)
    # Mixed down here, so the resampler is given one layout whatever the channel count.
    mono = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16) if channels > 1 else pcm
    step = 1 << 16  # frames of 64 Ki samples, as a decoder would hand them over
    for start in range(0, len(mono), step):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono[start:start + step], dtype=np.int16)
                                           .reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = sample_rate
        collector.add(frame)
    return sample_rate, channels


def _container(data: bytes, fmt: str | None, collector: _Collector) -> tuple[str, int, int]:
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r", format=fmt if fmt in ("wav", "mp3", "ogg", "flac") else None,
                            metadata_errors="ignore")
    except av.error.FFmpegError as error:
        what = f"as {fmt}" if fmt else "as any of " + ", ".join(f for f in FORMATS if f != "pcm")
        raise InvalidInput(f"the audio cannot be read {what}: {error.strerror or error}") from None
    with container:
        found = _DEMUXERS.get(container.format.name)
        if found is None:
            raise InvalidInput(f"the upload is {container.format.long_name or container.format.name}, not audio "
                               f"in one of {', '.join(FORMATS)}")
        streams = container.streams.audio
        if not streams:
            raise InvalidInput(f"the {found} file has no audio stream")
        stream = streams[0]
        rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
        if not rate:
            raise InvalidInput(f"the {found} audio stream has no sample rate")
        for packet in container.demux(stream):
            for frame in packet.decode():
                collector.add(frame)
    return found, rate, channels


def encode(samples, rate: int, fmt: str) -> tuple[bytes, int]:
    """
    Mono float32 ``samples`` at ``rate`` Hz -> (``fmt`` bytes, their sample
    rate): the rate is kept unless the codec has no such rate (Opus, MP3),
    when the nearest higher one it has is used.
    """
    import av
    import numpy as np

    fmt = canonical_format(fmt)
    pcm16 = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    if fmt == "pcm":
        return pcm16.tobytes(), rate
    container_name, codec, rates = _ENCODERS[fmt]
    out_rate = rate if rates is None or rate in rates else min((r for r in rates if r >= rate), default=max(rates))
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_name) as container:
        stream = container.add_stream(codec, rate=out_rate, layout="mono")
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=out_rate)
        step = 4096
        for start in range(0, len(pcm16), step):
            frame = av.AudioFrame.from_ndarray(pcm16[start:start + step].reshape(1, -1), format="s16",
                                               layout="mono")
            frame.sample_rate = rate
            frame.pts = None
            for out in resampler.resample(frame):
                out.pts = None
                container.mux(stream.encode(out))
        for out in resampler.resample(None):
            out.pts = None
            container.mux(stream.encode(out))
        container.mux(stream.encode(None))
    return buffer.getvalue(), out_rate
