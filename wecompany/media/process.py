"""
Media processing on local files, with PyAV (FFmpeg's libraries, no ffmpeg
binary) and, for enhancement, OpenCV.

Everything here is synchronous and CPU-heavy: :func:`run` and :func:`probe`
belong in a worker thread (:class:`wecompany.media.jobs.JobQueue`), never on
the reactor thread. :func:`validate` is pure and fast, for request time.

The API the media service uses::

    PROCESS_TYPES                      the names :func:`validate` accepts
    validate(process_type, params)     -> normalised params, or InvalidInput (400)
    run(process_type, src_path, dst_dir, params, progress=None, cancelled=None,
        limits=Limits())               -> Result(path, filename_suffix, content_type, size)
    probe(path)                        -> {"content_type", "duration_ms", "width",
                                           "height", "kind"}

``run`` takes params as :func:`validate` returned them (it validates again,
cheaply, so a caller cannot skip it). It writes one new file in ``dst_dir``
and returns it; the caller owns that file from then on. On any failure the
partial output is removed.

Process types and their params (all optional unless said):

``transcode``
    ``format`` (required): ``webm`` (VP8 + Opus), ``mp4`` (H.264 + AAC),
    ``opus`` / ``ogg`` (Opus in Ogg, audio only), ``aac`` (ADTS), ``m4a``
    (AAC in MP4), ``mp3`` (when the PyAV build has an MP3 encoder), ``wav``
    (16-bit PCM). ``width`` / ``height``: the video's size, each bounded by
    :attr:`Limits.max_width` / :attr:`Limits.max_height`; given one, the
    other keeps the aspect ratio. A video larger than the limits is scaled
    down to fit.
``thumbnail``
    ``time``: seconds into the video, whose frame on screen then is taken
    (default 0; past the end gives the last frame), ``width``: scaled to it with the aspect ratio kept,
    ``format``: ``png`` (default) or ``jpeg``. Works on an image too.
``extract_audio``
    ``format``: ``opus`` (default), ``ogg``, ``aac``, ``m4a``, ``wav`` or
    ``mp3``. The result has no video stream.
``compress``
    exactly one of ``bitrate`` (bits per second, whole file) or
    ``target_size`` (bytes). Re-encodes in the same kind of container
    (mp4 stays mp4 with H.264 + AAC, webm / mkv become webm with VP8 + Opus,
    ogg stays Opus, mp3 stays MP3). A file already at or below the asked
    bitrate is refused (400): compressing it could only make it worse.
``trim``
    ``start`` (default 0) and ``end`` (required, greater than ``start``),
    in seconds. Copies the packets without re-encoding when ``start`` falls
    on a key frame (always, for audio); re-encodes otherwise. The result
    lasts ``end - start`` to within a frame or an audio packet (less when
    the file ends first).
``enhance``
    ``operations`` (required): a list of ``denoise``, ``sharpen``,
    ``low_light`` (CLAHE on the luminance) and ``upscale``, applied frame by
    frame with OpenCV in that order whatever order they are given in;
    ``scale`` (2 to 4, default 2) for ``upscale``, whose result must fit in
    :attr:`Limits.max_width` x :attr:`Limits.max_height`. A video comes back
    re-encoded in its own kind of container (mp4 -> H.264, webm / mkv ->
    VP8, anything else -> mp4 with H.264); a PNG or JPEG image comes back as
    the same kind of image. Without OpenCV installed (the ``video`` extra)
    this raises :class:`~wecompany.errors.Unavailable` with error_code 4001.

Rotation: a video whose display matrix says to turn it (a phone's portrait
video, stored landscape) is probed at the size shown, and comes out upright,
with no matrix, of every process type that decodes it; a copied trim keeps
the matrix with the packets. Angles other than quarter turns are ignored.

Errors: bad params, and input files that are empty, not media, undecodable
or of the wrong kind (an audio file given to ``thumbnail``) are
:class:`~wecompany.errors.InvalidInput` (400). A result past
:attr:`Limits.max_output_bytes` is :class:`~wecompany.errors.TooLarge`.
Anything the engine itself fails at is :class:`ProcessingFailed` (422, 4002);
a run stopped through ``cancelled`` is :class:`ProcessingCancelled`, one of
those.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
from fractions import Fraction

import attrs
from twisted.logger import Logger

from wecompany.errors import (
    AI_FAILED, AI_UNAVAILABLE, InvalidInput, TooLarge, Unavailable, WeCompanyError)

PROCESS_TYPES = ("transcode", "thumbnail", "extract_audio", "compress", "trim", "enhance")

ENHANCE_OPERATIONS = ("denoise", "low_light", "sharpen", "upscale")  # the order they apply in


class ProcessingFailed(WeCompanyError):
    """The engine could not do what was asked of a valid input (422, error_code 4002)."""

    code = 422
    error_code = AI_FAILED
    default_message = "processing failed"


class ProcessingCancelled(ProcessingFailed):
    """The run was stopped through its ``cancelled`` flag (a timeout, or the server stopping)."""

    default_message = "processing was cancelled"


@attrs.frozen
class Limits:
    """
    What one run may produce, so that no job can fill the disk or the memory.

    :ivar max_output_bytes: the result's size; past it the run stops with
        :class:`~wecompany.errors.TooLarge`.
    :ivar max_width: / :ivar max_height: the largest video or image made.
    :ivar max_duration: seconds of input a run accepts.
    :ivar max_input_pixels: the largest picture a run decodes (8K): each
        decoded frame is held in memory, several times over when enhanced.
    """

    max_output_bytes: int = 2 * 1024 ** 3
    max_width: int = 3840
    max_height: int = 2160
    max_duration: float = 6 * 3600.0
    max_input_pixels: int = 7680 * 4320


DEFAULT_LIMITS = Limits()


@attrs.frozen
class Result:
    """
    The file a run made: ``path`` in the ``dst_dir`` given to :func:`run`,
    ``filename_suffix`` to end its download name with (``".webm"``), its
    ``content_type`` and its ``size`` in bytes.
    """

    path: str
    filename_suffix: str
    content_type: str
    size: int


@attrs.frozen
class _OutputFormat:
    """A container and the codecs to fill it with (None: no stream of that kind)."""

    muxer: str
    suffix: str
    content_type: str
    video_codec: str | None
    audio_codec: str | None
    audio_content_type: str | None = None  # when only audio goes in


_FORMATS = {
    "webm": _OutputFormat("webm", ".webm", "video/webm", "libvpx", "libopus", "audio/webm"),
    "mp4": _OutputFormat("mp4", ".mp4", "video/mp4", "libx264", "aac", "audio/mp4"),
    "opus": _OutputFormat("ogg", ".opus", "audio/ogg", None, "libopus"),
    "ogg": _OutputFormat("ogg", ".ogg", "audio/ogg", None, "libopus"),
    "aac": _OutputFormat("adts", ".aac", "audio/aac", None, "aac"),
    "m4a": _OutputFormat("ipod", ".m4a", "audio/mp4", None, "aac"),
    "mp3": _OutputFormat("mp3", ".mp3", "audio/mpeg", None, "libmp3lame"),
    "wav": _OutputFormat("wav", ".wav", "audio/wav", None, "pcm_s16le"),
}
_AUDIO_FORMATS = ("opus", "ogg", "aac", "m4a", "wav", "mp3")
_IMAGE_FORMATS = {"png": (".png", "image/png", "png", "rgb24"),
                  "jpeg": (".jpg", "image/jpeg", "mjpeg", "yuvj420p")}

# FFmpeg demuxer names -> what the file is. Image demuxers read one picture.
_IMAGE_DEMUXERS = {"png_pipe": "image/png", "jpeg_pipe": "image/jpeg", "gif": "image/gif",
                   "webp_pipe": "image/webp", "bmp_pipe": "image/bmp", "tiff_pipe": "image/tiff",
                   "image2": None}
# Demuxers that read text (ANSI art and the like) as "video": not media to us.
_TEXT_DEMUXERS = {"tty", "bin", "xbin", "adf", "idf"}
_CONTAINER_TYPES = {"mov": "mp4", "mp4": "mp4", "matroska": "webm", "webm": "webm", "ogg": "ogg",
                    "wav": "wav", "mp3": "mp3", "aac": "aac", "flac": "flac", "avi": "avi",
                    "mpegts": "mpegts", "mpeg": "mpeg"}
_CONTENT_TYPES = {
    # kind of container -> (with video, audio only)
    "mp4": ("video/mp4", "audio/mp4"), "webm": ("video/webm", "audio/webm"),
    "ogg": ("video/ogg", "audio/ogg"), "wav": (None, "audio/wav"), "mp3": (None, "audio/mpeg"),
    "aac": (None, "audio/aac"), "flac": (None, "audio/flac"), "avi": ("video/x-msvideo", "video/x-msvideo"),
    "mpegts": ("video/mp2t", "video/mp2t"), "mpeg": ("video/mpeg", "audio/mpeg"),
}

_MIN_SIZE = 16
_MAX_EARLY_PACKETS = 1000
_MAX_BAD_PACKETS = 50
_MIN_BITRATE = 8_000
_MAX_BITRATE = 50_000_000
_MIN_TARGET_SIZE = 4096
_AUDIO_BITRATE = 96_000
_PROGRESS_STEP = 0.01

log = Logger()


@functools.lru_cache(maxsize=None)
def _has_encoder(name: str) -> bool:
    import av
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


# ---------------------------------------------------------------- validation

def _number(params: dict, key: str, *, minimum: float, maximum: float, integer: bool = False,
            default=None, required: bool = False, exclusive_minimum: bool = False):
    if key not in params or params[key] is None:
        if required:
            raise InvalidInput(f"{key} is required")
        return default
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (integer and not (isinstance(value, int) or float(value).is_integer())):
        raise InvalidInput(f"{key} must be {'an integer' if integer else 'a number'}")
    if not math.isfinite(value):
        raise InvalidInput(f"{key} must be a finite number")
    if value < minimum or value > maximum or (exclusive_minimum and value == minimum):
        raise InvalidInput(f"{key} must be {'greater than' if exclusive_minimum else 'at least'} "
                           f"{minimum:g} and at most {maximum:g}")
    return int(value) if integer else float(value)


def _choice(params: dict, key: str, choices, *, default=None) -> str:
    value = params.get(key, default)
    if value is None:
        raise InvalidInput(f"{key} is required (one of {', '.join(choices)})")
    if not isinstance(value, str) or value.lower() not in choices:
        raise InvalidInput(f"{key} must be one of {', '.join(choices)}")
    value = value.lower()
    if value == "mp3" and not _has_encoder("libmp3lame"):
        raise InvalidInput("mp3 is not available on this server")
    return value


def _only(params: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(str(key) for key in params if key not in allowed)
    if unknown:
        raise InvalidInput(f"unknown parameter {', '.join(unknown)} "
                           f"(expected {', '.join(allowed) if allowed else 'none'})")


def validate(process_type: str, params: dict | None, limits: Limits = DEFAULT_LIMITS) -> dict:
    """
    ``params`` checked and normalised for ``process_type`` (defaults filled
    in, names lower-cased, numbers as int or float), or
    :class:`~wecompany.errors.InvalidInput` saying what is wrong. Pure and
    fast: call it at request time, before queuing the work.
    """
    if process_type not in PROCESS_TYPES:
        raise InvalidInput(f"unknown process_type {process_type!r} (expected one of {', '.join(PROCESS_TYPES)})")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidInput("params must be an object")
    max_side = max(limits.max_width, limits.max_height)
    if process_type == "transcode":
        _only(params, ("format", "width", "height"))
        normal = {"format": _choice(params, "format", tuple(_FORMATS))}
        for key, maximum in (("width", limits.max_width), ("height", limits.max_height)):
            value = _number(params, key, minimum=_MIN_SIZE, maximum=maximum, integer=True)
            if value is not None:
                if normal["format"] not in ("webm", "mp4"):
                    raise InvalidInput(f"{key} applies to video formats only (webm, mp4)")
                normal[key] = value
        return normal
    if process_type == "thumbnail":
        _only(params, ("time", "width", "format"))
        return {"time": _number(params, "time", minimum=0, maximum=limits.max_duration, default=0.0),
                "width": _number(params, "width", minimum=_MIN_SIZE, maximum=max_side, integer=True),
                "format": _choice(params, "format", tuple(_IMAGE_FORMATS), default="png")}
    if process_type == "extract_audio":
        _only(params, ("format",))
        return {"format": _choice(params, "format", _AUDIO_FORMATS, default="opus")}
    if process_type == "compress":
        _only(params, ("bitrate", "target_size"))
        bitrate = _number(params, "bitrate", minimum=_MIN_BITRATE, maximum=_MAX_BITRATE, integer=True)
        target_size = _number(params, "target_size", minimum=_MIN_TARGET_SIZE,
                              maximum=limits.max_output_bytes, integer=True)
        if (bitrate is None) == (target_size is None):
            raise InvalidInput("compress takes exactly one of bitrate (bits per second) or target_size (bytes)")
        return {"bitrate": bitrate} if bitrate is not None else {"target_size": target_size}
    if process_type == "trim":
        _only(params, ("start", "end"))
        start = _number(params, "start", minimum=0, maximum=limits.max_duration, default=0.0)
        end = _number(params, "end", minimum=0, maximum=limits.max_duration, required=True,
                      exclusive_minimum=True)
        if end <= start:
            raise InvalidInput("end must be greater than start")
        return {"start": start, "end": end}
    # enhance
    _only(params, ("operations", "scale"))
    operations = params.get("operations")
    if isinstance(operations, str):
        operations = [operations]
    if not isinstance(operations, (list, tuple)) or not operations:
        raise InvalidInput(f"operations must be a non-empty list of {', '.join(ENHANCE_OPERATIONS)}")
    for operation in operations:
        if operation not in ENHANCE_OPERATIONS:
            raise InvalidInput(f"unknown operation {operation!r} (expected {', '.join(ENHANCE_OPERATIONS)})")
    normal = {"operations": [op for op in ENHANCE_OPERATIONS if op in operations]}
    scale = _number(params, "scale", minimum=2, maximum=4, integer=True)
    if scale is not None and "upscale" not in operations:
        raise InvalidInput("scale applies to the upscale operation only")
    if "upscale" in operations:
        normal["scale"] = scale or 2
    return normal


# ------------------------------------------------------------------- probing

def _open_input(path: str):
    """The input container, or InvalidInput for a file that is empty or not media."""
    import av
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise InvalidInput(f"the file could not be read: {e.strerror}") from None
    if size == 0:
        raise InvalidInput("the file is empty")
    try:
        return av.open(path, "r", metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise InvalidInput(f"the file could not be decoded: {_reason(e)}") from None


def _reason(error: Exception) -> str:
    import av
    if isinstance(error, av.FFmpegError):
        return error.strerror or type(error).__name__
    return str(error) or type(error).__name__


def _container_kind(container) -> str | None:
    for name in container.format.name.split(","):
        if name in _CONTAINER_TYPES:
            return _CONTAINER_TYPES[name]
    return None


def _is_image(container) -> bool:
    return any(name in _IMAGE_DEMUXERS for name in container.format.name.split(","))


def _video_stream(container, *, pictures: bool = False):
    """
    The first video stream, or None. Cover art (an MP3's or M4A's attached
    picture) is a "video" stream to FFmpeg but not video: it counts only
    with ``pictures``, and then only when there is nothing else.
    """
    import av
    moving = [s for s in container.streams.video
              if not s.disposition & av.stream.Disposition.attached_pic]
    if moving:
        return moving[0]
    if pictures and container.streams.video:
        return container.streams.video[0]
    return None


def _quarter_turns(frame) -> int:
    """
    How many quarter turns counterclockwise (0-3) the frame's display
    matrix asks for before it is shown: a phone's portrait video is stored
    landscape with a rotation to apply. Angles that are not a multiple of
    90 degrees, and frames without a matrix, count as 0.
    """
    angle = getattr(frame, "rotation", 0) or 0
    turns = round(angle / 90)
    return turns % 4 if abs(angle - turns * 90) < 1 else 0


def _upright(frame):
    """``frame`` as it is meant to be seen: turned by its display matrix, same time."""
    turns = _quarter_turns(frame)
    if not turns:
        return frame
    import av
    import numpy as np
    turned = av.VideoFrame.from_ndarray(
        np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), turns)), format="rgb24")
    turned.pts, turned.time_base = frame.pts, frame.time_base
    return turned


def _first_turns(container, video) -> int:
    """The quarter turns of ``video``'s first frame (this decodes it; 0 when none decodes)."""
    try:
        for frame in _decoded(container, [video]):
            return _quarter_turns(frame)
    except Exception:  # InvalidInput or an FFmpeg error: the headers alone describe it
        pass
    return 0


def _turns_in(path: str) -> int:
    """The quarter turns of the first video stream of ``path`` (0 without one)."""
    container = _open_input(path)
    try:
        video = _video_stream(container) or _video_stream(container, pictures=True)
        return 0 if video is None else _first_turns(container, video)
    finally:
        container.close()


def _shown_size(stream, turns: int) -> tuple:
    """A video stream's width and height as shown, after ``turns`` quarter turns."""
    width, height = stream.codec_context.width, stream.codec_context.height
    return (height, width) if turns % 2 else (width, height)


def _describe(container) -> dict:
    if _TEXT_DEMUXERS.intersection(container.format.name.split(",")):
        return _other()
    video = _video_stream(container)
    audio = container.streams.audio[0] if container.streams.audio else None
    if video is None and audio is None and _is_image(container):
        video = _video_stream(container, pictures=True)
    if video is not None and _is_image(container):
        name = container.format.name.split(",")[0]
        content_type = _IMAGE_DEMUXERS.get(name) or {
            "png": "image/png", "mjpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp",
            "bmp": "image/bmp", "tiff": "image/tiff"}.get(video.codec_context.name, "application/octet-stream")
        width, height = _shown_size(video, _first_turns(container, video))
        return {"content_type": content_type, "duration_ms": None, "width": width,
                "height": height, "kind": "image"}
    if video is None and audio is None:
        return _other()
    kind = _container_kind(container)
    with_video, audio_only = _CONTENT_TYPES.get(kind, (None, None))
    content_type = (with_video if video is not None else audio_only) or "application/octet-stream"
    duration = _duration(container)
    width, height = _shown_size(video, _first_turns(container, video)) if video is not None else (None, None)
    return {"content_type": content_type,
            "duration_ms": None if duration is None else int(round(duration * 1000)),
            "width": width, "height": height,
            "kind": "video" if video is not None else "audio"}


def _other() -> dict:
    return {"content_type": "application/octet-stream", "duration_ms": None, "width": None,
            "height": None, "kind": "other"}


def _duration(container) -> float | None:
    """Seconds, from the container, else its longest stream; None when unknown."""
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000
    durations = [float(s.duration * s.time_base) for s in container.streams
                 if s.duration is not None and s.time_base is not None]
    return max(durations) if durations else None


def probe(path: str) -> dict:
    """
    What the file at ``path`` is: ``{"content_type", "duration_ms",
    "width", "height", "kind"}``, ``kind`` one of ``audio``, ``video``,
    ``image``, ``other``; None where a value does not apply or is unknown.
    Never raises for a file that is not media (that is kind ``other``).
    Blocking: call it in a worker thread.
    """
    try:
        container = _open_input(path)
    except Exception:  # InvalidInput, or whatever an odd path makes FFmpeg raise
        return _other()
    try:
        return _describe(container)
    except Exception:
        return _other()
    finally:
        container.close()


# ------------------------------------------------------------------- running

class _Run:
    """One run's callbacks and limits, and what it wrote so far."""

    def __init__(self, progress, cancelled, limits: Limits, duration: float | None) -> None:
        self._progress = progress
        self._cancelled = cancelled
        self.limits = limits
        self.duration = duration
        self.written = 0
        self._reported = -1.0

    def check(self) -> None:
        if self._cancelled is not None and self._cancelled():
            raise ProcessingCancelled()

    def at(self, seconds: float | None) -> None:
        """The run has decoded up to ``seconds`` of input (relative to where it started)."""
        self.check()
        if self._progress is None or seconds is None or not self.duration:
            return
        fraction = min(max(seconds / self.duration, 0.0), 1.0)
        if fraction - self._reported >= _PROGRESS_STEP:
            self._reported = fraction
            self._progress(fraction)

    def done(self) -> None:
        if self._progress is not None:
            self._progress(1.0)

    def mux(self, container, packets) -> None:
        for packet in packets:
            self.written += packet.size
            if self.written > self.limits.max_output_bytes:
                raise TooLarge(f"the result would be larger than {self.limits.max_output_bytes} bytes")
            container.mux(packet)


def _decoded(container, streams):
    """
    The input's frames, in the order they are demuxed. A few packets that
    do not decode are skipped, as players do with a damaged file; past
    :data:`_MAX_BAD_PACKETS`, or when demuxing fails, the file is
    InvalidInput.
    """
    import av
    bad = 0
    try:
        for packet in container.demux(streams):
            try:
                frames = packet.decode()
            except av.FFmpegError as e:
                bad += 1
                if bad > _MAX_BAD_PACKETS:
                    raise InvalidInput(f"the file could not be decoded: {_reason(e)}") from None
                continue
            yield from frames
    except av.FFmpegError as e:
        raise InvalidInput(f"the file could not be decoded: {_reason(e)}") from None


def _even(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


def _fit(width: int, height: int, want_width: int | None, want_height: int | None,
         limits: Limits) -> tuple[int, int]:
    """The output size: as asked (aspect kept for a missing side), within the limits, even."""
    if want_width and want_height:
        width, height = want_width, want_height
    elif want_width:
        width, height = want_width, height * want_width / width
    elif want_height:
        width, height = width * want_height / height, want_height
    shrink = min(1.0, limits.max_width / width, limits.max_height / height)
    return _even(width * shrink), _even(height * shrink)


def _frame_rate(stream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0 or rate > 240:
        return Fraction(30)
    return Fraction(rate).limit_denominator(1001)


def _audio_layout(stream) -> str:
    return "mono" if stream.codec_context.channels == 1 else "stereo"


def _add_video_stream(output, codec: str, rate: Fraction, width: int, height: int,
                      bit_rate: int | None):
    stream = output.add_stream(codec, rate=rate)
    # Set now: the encoder reports its own only once it is opened.
    stream.codec_context.time_base = 1 / rate
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    context = stream.codec_context
    if codec == "libx264":
        options = {"preset": "veryfast"}
        if bit_rate:
            context.bit_rate = bit_rate
            options.update(maxrate=str(bit_rate), bufsize=str(2 * bit_rate))
        else:
            options["crf"] = "23"
        stream.options = options
    elif codec == "libvpx":
        options = {"deadline": "good", "cpu-used": "4"}
        # libvpx encodes on one thread unless told; x264 uses every core by itself.
        context.thread_count = min(4, os.cpu_count() or 1)
        if bit_rate:
            context.bit_rate = bit_rate
            options.update(minrate=str(bit_rate // 2), maxrate=str(bit_rate), bufsize=str(2 * bit_rate))
        else:
            context.bit_rate = min(2_000_000, max(200_000, width * height * 3))
        stream.options = options
    # Key frames every two seconds, so a later trim can copy.
    context.gop_size = max(1, int(rate * 2))
    return stream


def _add_audio_stream(output, codec: str, source, bit_rate: int | None):
    rate = source.codec_context.sample_rate or 48000
    if codec == "libopus":
        rate = 48000
    elif codec == "libmp3lame" and rate not in (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000):
        rate = 44100
    elif codec == "aac" and rate > 48000:
        rate = 48000
    stream = output.add_stream(codec, rate=rate)
    stream.layout = _audio_layout(source)
    if codec != "pcm_s16le":
        stream.codec_context.bit_rate = bit_rate or _AUDIO_BITRATE
    if codec == "libopus" and bit_rate:
        stream.options = {"vbr": "constrained"}  # asked for a bitrate: keep to it
    return stream


def _encode(process: _Run, src_path: str, dst_path: str, output_format: _OutputFormat, *,
            want_video: bool = True, want_audio: bool = True, size: tuple | None = None,
            video_bit_rate: int | None = None, audio_bit_rate: int | None = None,
            start: float = 0.0, end: float | None = None, frame_filter=None) -> str:
    """
    Decode ``src_path`` and encode what is asked into ``dst_path``: the
    engine of every re-encoding process type. Returns the content type.
    """
    container = _open_input(src_path)
    try:
        video_in = _video_stream(container) if want_video and output_format.video_codec else None
        audio_in = container.streams.audio[0] if want_audio and output_format.audio_codec \
            and container.streams.audio else None
        if video_in is None and audio_in is None:
            if want_video and output_format.video_codec:
                raise InvalidInput("the file has no audio or video stream")
            raise InvalidInput("the file has no audio stream")
        if video_in is not None:
            video_in.thread_type = "AUTO"
        inputs = [s for s in (video_in, audio_in) if s is not None]
        zero = _start_time(container)
        start, end = start + zero, None if end is None else end + zero
        if start > zero and (video_in is None or _seeks_to_key_frames(src_path, start)):
            _seek(container, start)
        output = _open_output(dst_path, output_format.muxer)
        try:
            video_out = audio_out = None
            if video_in is not None:
                width, height = size or _fit(*_shown_size(video_in, _turns_in(src_path)),
                                             None, None, process.limits)
                video_out = _add_video_stream(output, output_format.video_codec, _frame_rate(video_in),
                                              width, height, video_bit_rate)
            if audio_in is not None:
                audio_out = _add_audio_stream(output, output_format.audio_codec, audio_in, audio_bit_rate)
            _pump(process, container, output, inputs, video_in, video_out, audio_in, audio_out,
                  start, end, frame_filter)
        finally:
            output.close()
    finally:
        container.close()
    if video_in is None:
        return output_format.audio_content_type or output_format.content_type
    return output_format.content_type


def _open_output(path: str, muxer: str):
    import av
    try:
        return av.open(path, "w", format=muxer)
    except av.FFmpegError as e:
        raise ProcessingFailed(f"the output could not be created: {_reason(e)}") from None


def _seeks_to_key_frames(path: str, seconds: float) -> bool:
    """
    True when seeking ``path`` to ``seconds`` lands on a video key frame.
    Files with an index (mp4, WebM) do; MPEG-TS and others without one may
    land anywhere, and decoding from there gives no picture until the next
    key frame: those are decoded from the start instead.
    """
    import av
    container = _open_input(path)
    try:
        video = _video_stream(container)
        if video is None:
            return False
        container.seek(int(seconds * 1_000_000), backward=True, any_frame=False)
        for packet in container.demux(video):
            if packet.size:
                return bool(packet.is_keyframe)
    except av.FFmpegError:
        pass
    finally:
        container.close()
    return False


def _seek(container, seconds: float) -> None:
    import av
    try:
        container.seek(int(seconds * 1_000_000), backward=True, any_frame=False)
    except av.FFmpegError:
        pass  # not seekable: decode from the start and drop what comes before


def _pump(process, container, output, inputs, video_in, video_out, audio_in, audio_out,
          start, end, frame_filter) -> None:
    import av
    video_pts = -1
    video_base = None  # (first kept frame's time, its pts): later frames count from it
    audio_samples = 0
    ended = set()
    try:
        for frame in _decoded(container, inputs):
            time = frame.time
            if time is None:
                continue
            if end is not None and time >= end:
                ended.add(frame.__class__)
                if len(ended) == len(inputs):
                    break
                continue
            process.at(time - start)
            if isinstance(frame, av.VideoFrame):
                # Frames before ``start`` only led up to it (decoding from a key frame).
                if time < start - 1e-6:
                    continue
                frame = _upright(frame)
                if frame_filter is not None:
                    frame = frame_filter(frame)
                frame = frame.reformat(video_out.width, video_out.height, "yuv420p")
                rate = video_out.codec_context.framerate
                if video_base is None:
                    video_base = (time, max(0, int(math.floor((time - start) * rate + 0.5))))
                pts = max(video_pts + 1, video_base[1] + int(round((time - video_base[0]) * rate)))
                frame.pts, frame.time_base, video_pts = pts, 1 / rate, pts
                process.mux(output, video_out.encode(frame))
            else:
                if time + frame.samples / frame.sample_rate <= start:
                    continue
                frame.pts, frame.time_base = audio_samples, Fraction(1, frame.sample_rate)
                audio_samples += frame.samples
                process.mux(output, audio_out.encode(frame))
        for stream in (video_out, audio_out):
            if stream is not None:
                process.mux(output, stream.encode(None))
    except av.FFmpegError as e:
        raise ProcessingFailed(f"encoding failed: {_reason(e)}") from None
    if video_pts < 0 and audio_samples == 0:
        raise InvalidInput("the file could not be decoded: no frames in the range asked for"
                           if start or end else "the file could not be decoded: no frames")


def _need_media(src_path: str, *, allow_image: bool = False) -> dict:
    """The input's description, or InvalidInput when it is not media of a kind this accepts."""
    container = _open_input(src_path)
    try:
        info = _describe(container)
        duration = _duration(container)
    finally:
        container.close()
    if info["kind"] == "other":
        raise InvalidInput("the file could not be decoded: no audio or video stream")
    if info["kind"] == "image" and not allow_image:
        raise InvalidInput("the file is an image, not audio or video")
    info["duration"] = duration
    return info


def _check_pixels(width, height, limits: Limits) -> None:
    if width and height and width * height > limits.max_input_pixels:
        raise InvalidInput(f"the picture ({width}x{height}) is larger than {limits.max_input_pixels} pixels")


def _check_duration(info: dict, limits: Limits) -> None:
    _check_pixels(info["width"], info["height"], limits)
    if info["duration"] is not None and info["duration"] > limits.max_duration:
        raise InvalidInput(f"the file lasts longer than {limits.max_duration:g} seconds")


def run(process_type: str, src_path: str, dst_dir: str, params: dict | None, progress=None,
        cancelled=None, limits: Limits = DEFAULT_LIMITS) -> Result:
    """
    Process the local file ``src_path`` into a new file in ``dst_dir``.

    :param params: as :func:`validate` returned them (checked again here).
    :param progress: ``progress(fraction)``, 0 to 1, called from this
        (worker) thread as the input is decoded; must be thread-safe.
    :param cancelled: ``cancelled() -> bool``, polled once a frame; True
        stops the run with :class:`ProcessingCancelled`.
    :param limits: bounds on what the run may make.
    :return: the :class:`Result`; the caller owns its file.
    """
    params = validate(process_type, params, limits)
    if process_type == "enhance":
        _opencv()  # before any work: 503 when the engine is missing
    os.makedirs(dst_dir, exist_ok=True)
    token = secrets.token_hex(8)
    process = _Run(progress, cancelled, limits, None)
    made: list[str] = []

    def destination(suffix: str) -> str:
        path = os.path.join(dst_dir, f"{process_type}-{token}{suffix}")
        made.append(path)
        return path

    try:
        try:
            path, suffix, content_type = _RUNNERS[process_type](process, src_path, destination, params)
        except WeCompanyError:
            raise
        except Exception as e:
            # PyAV on an odd file can fail in ways it does not declare: the
            # cause goes to the log, the client is told the run failed.
            log.failure("media processing ({process_type}) of {path} failed",
                        process_type=process_type, path=src_path)
            raise ProcessingFailed(f"processing failed: {type(e).__name__}") from e
        size = os.path.getsize(path)
        if size > limits.max_output_bytes:
            raise TooLarge(f"the result would be larger than {limits.max_output_bytes} bytes")
        if size == 0:
            raise ProcessingFailed("the result is empty")
    except BaseException:
        for leftover in made:
            try:
                os.remove(leftover)
            except FileNotFoundError:
                pass
        raise
    process.done()
    return Result(path=path, filename_suffix=suffix, content_type=content_type, size=size)


def _run_transcode(process, src_path, destination, params):
    info = _need_media(src_path)
    _check_duration(info, process.limits)
    process.duration = info["duration"]
    output_format = _FORMATS[params["format"]]
    size = None
    if info["kind"] == "video" and output_format.video_codec:
        size = _fit(info["width"], info["height"], params.get("width"), params.get("height"), process.limits)
    path = destination(output_format.suffix)
    content_type = _encode(process, src_path, path, output_format, size=size)
    return path, output_format.suffix, content_type


def _run_extract_audio(process, src_path, destination, params):
    info = _need_media(src_path)
    _check_duration(info, process.limits)
    process.duration = info["duration"]
    output_format = _FORMATS[params["format"]]
    path = destination(output_format.suffix)
    content_type = _encode(process, src_path, path, output_format, want_video=False)
    return path, output_format.suffix, content_type


# Compress keeps the kind of container: which format to re-encode each kind in.
_COMPRESS_ATTEMPTS = 3
_COMPRESS_FORMATS = {"mp4": "mp4", "webm": "webm", "ogg": "ogg", "mp3": "mp3", "aac": "aac"}


def _run_compress(process, src_path, destination, params):
    info = _need_media(src_path)
    _check_duration(info, process.limits)
    duration = info["duration"]
    if not duration:
        raise InvalidInput("the file's duration is unknown, so no bitrate can be aimed at")
    process.duration = duration
    kind = _container_kind_of(src_path)
    if kind == "wav" or kind == "flac":
        raise InvalidInput(f"{kind} is not compressed by bitrate: transcode it to opus, aac or mp3")
    name = _COMPRESS_FORMATS.get(kind, "mp4" if info["kind"] == "video" else "opus")
    output_format = _FORMATS[name]
    if name == "ogg" and info["content_type"] == "audio/ogg" and src_path.endswith(".opus"):
        output_format = _FORMATS["opus"]
    input_bitrate = os.path.getsize(src_path) * 8 / duration
    bitrate = params.get("bitrate") or int(params["target_size"] * 8 / duration)
    # Aim a little under the target: container overhead and rate control slack.
    if "target_size" in params:
        bitrate = int(bitrate * 0.9)
    if bitrate >= input_bitrate:
        raise InvalidInput(f"the file's bitrate ({int(input_bitrate)} bit/s) is already at or below "
                           f"the one asked for ({bitrate} bit/s)")
    has_video = info["kind"] == "video" and output_format.video_codec is not None
    if has_video:
        audio_bit_rate = max(16_000, min(_AUDIO_BITRATE, bitrate // 8))
        video_bit_rate = max(_MIN_BITRATE, bitrate - audio_bit_rate)
    else:
        audio_bit_rate, video_bit_rate = max(_MIN_BITRATE, bitrate), None
        if output_format.audio_codec == "libmp3lame":
            audio_bit_rate = max(32_000, audio_bit_rate)
    limit = min(os.path.getsize(src_path), params.get("target_size") or math.inf)
    for attempt in range(_COMPRESS_ATTEMPTS):
        path = destination(output_format.suffix)
        content_type = _encode(process, src_path, path, output_format, video_bit_rate=video_bit_rate,
                               audio_bit_rate=audio_bit_rate)
        size = os.path.getsize(path)
        if size < limit or attempt == _COMPRESS_ATTEMPTS - 1:
            break
        # Rate control overshoots on short files: aim lower by the overshoot, once more.
        os.remove(path)
        if video_bit_rate is not None:
            video_bit_rate = max(_MIN_BITRATE, int(video_bit_rate * 0.9 * limit / size))
        else:
            audio_bit_rate = max(_MIN_BITRATE, int(audio_bit_rate * 0.9 * limit / size))
    if size >= os.path.getsize(src_path):
        raise ProcessingFailed("compressing did not make the file smaller")
    return path, output_format.suffix, content_type


def _container_kind_of(path: str) -> str | None:
    container = _open_input(path)
    try:
        return _container_kind(container)
    finally:
        container.close()


def _run_thumbnail(process, src_path, destination, params):
    container = _open_input(src_path)
    try:
        # A song's cover art is a thumbnail too, when there is no video.
        stream = _video_stream(container) or _video_stream(container, pictures=True)
        if stream is None:
            raise InvalidInput("the file has no video stream to take a thumbnail from")
        _check_pixels(stream.codec_context.width, stream.codec_context.height, process.limits)
        stream.thread_type = "AUTO"
        zero = _start_time(container)
        wanted = params["time"] + zero
        duration = _duration(container)
        if wanted > zero and _seeks_to_key_frames(src_path, wanted):
            _seek(container, wanted)
        process.duration = None
        chosen = None
        for frame in _decoded(container, [stream]):
            process.check()
            if chosen is not None and frame.time is not None and frame.time > wanted + 1e-6:
                break
            chosen = frame
            if frame.time is not None and frame.time >= wanted - 1e-6:
                break
        if chosen is None and wanted > zero and duration is not None:
            # Asked past the end: the last frame is the thumbnail.
            if _seeks_to_key_frames(src_path, zero + max(0.0, duration - 2.0)):
                _seek(container, zero + max(0.0, duration - 2.0))
            else:
                _seek(container, zero)
            for frame in _decoded(container, [stream]):
                process.check()
                chosen = frame
    finally:
        container.close()
    if chosen is None:
        raise InvalidInput("the file could not be decoded: no video frame")
    chosen = _upright(chosen)
    suffix, content_type, codec, pix_fmt = _IMAGE_FORMATS[params["format"]]
    width, height = chosen.width, chosen.height
    if params.get("width"):
        width, height = params["width"], height * params["width"] / width
    shrink = min(1.0, process.limits.max_width / width, process.limits.max_height / height)
    width, height = max(1, int(round(width * shrink))), max(1, int(round(height * shrink)))
    path = destination(suffix)
    _write_image(process, chosen, path, codec, pix_fmt, width, height)
    return path, suffix, content_type


def _write_image(process, frame, path, codec, pix_fmt, width, height) -> None:
    import av
    try:
        context = av.CodecContext.create(codec, "w")
        context.width, context.height, context.pix_fmt = width, height, pix_fmt
        context.time_base = Fraction(1, 1)
        if codec == "mjpeg":
            context.options = {"huffman": "optimal"}
            context.qmin, context.qmax = 2, 4  # quality, not size: it is one small picture
        image = frame.reformat(width, height, pix_fmt)
        image.pts = 0
        data = b"".join(bytes(packet) for packet in context.encode(image) + context.encode(None))
    except av.FFmpegError as e:
        raise ProcessingFailed(f"encoding the image failed: {_reason(e)}") from None
    if len(data) > process.limits.max_output_bytes:
        raise TooLarge(f"the result would be larger than {process.limits.max_output_bytes} bytes")
    with open(path, "wb") as out:
        out.write(data)


def _run_trim(process, src_path, destination, params):
    info = _need_media(src_path)
    _check_pixels(info["width"], info["height"], process.limits)
    start, end = params["start"], params["end"]
    duration = info["duration"]
    if duration is not None and start >= duration:
        raise InvalidInput(f"start ({start:g} s) is at or past the end of the file ({duration:g} s)")
    process.duration = (min(end, duration) if duration else end) - start
    kind = _container_kind_of(src_path)
    muxer = _REMUX.get(kind)
    if muxer is not None:
        suffix, content_type = _REMUX_NAMES[kind]
        if info["kind"] == "audio":
            content_type = _CONTENT_TYPES[kind][1]
        if muxer == "matroska" and _webm_codecs(src_path):
            muxer, suffix, content_type = "webm", ".webm", _CONTENT_TYPES["webm"][info["kind"] == "audio"]
        path = destination(suffix)
        if _copy_range(process, src_path, path, muxer, start, end):
            return path, suffix, content_type
        try:
            os.remove(path)
        except FileNotFoundError:
            pass  # nothing was written
    output_format = _FORMATS["mp4" if info["kind"] == "video" else "opus"]
    if kind == "webm":
        output_format = _FORMATS["webm"]
    path = destination(output_format.suffix)
    content_type = _encode(process, src_path, path, output_format, start=start, end=end)
    return path, output_format.suffix, content_type


# Kinds of container a trim can copy packets into, as the same kind.
_REMUX = {"mp4": "mp4", "webm": "matroska", "ogg": "ogg", "mp3": "mp3", "wav": "wav",
          "aac": "adts", "flac": "flac"}
_REMUX_NAMES = {"mp4": (".mp4", "video/mp4"), "webm": (".mkv", "video/x-matroska"),
                "ogg": (".ogg", "audio/ogg"), "mp3": (".mp3", "audio/mpeg"), "wav": (".wav", "audio/wav"),
                "aac": (".aac", "audio/aac"), "flac": (".flac", "audio/flac")}


def _webm_codecs(path: str) -> bool:
    """True when every audio and video stream of ``path`` may go in a WebM file."""
    container = _open_input(path)
    try:
        return all(s.codec_context.name in ("vp8", "vp9", "av1", "opus", "vorbis")
                   for s in container.streams if s.type in ("audio", "video"))
    finally:
        container.close()


def _copy_range(process, src_path, dst_path, muxer, start, end) -> bool:
    """
    Copy the packets of ``[start, end)`` without decoding them. False (and
    nothing written) when ``start`` is not on a key frame of the video, so
    the caller re-encodes instead.
    """
    import av
    container = _open_input(src_path)
    try:
        streams = [s for s in (_video_stream(container),) if s is not None] + list(container.streams.audio[:1])
        video = streams[0] if streams and streams[0].type == "video" else None
        zero = _start_time(container)
        start, end = start + zero, end + zero
        if start > zero:
            _seek(container, start)
        output = _open_output(dst_path, muxer)
        try:
            outputs = {stream.index: output.add_stream_from_template(stream) for stream in streams}
            origin = None  # seconds: the first copied packet's time, which becomes 0
            frame_time = 1 / float(_frame_rate(video)) if video is not None else 0.0
            early = []  # audio demuxed before the video's first key frame
            copied = 0
            done = set()
            try:
                for packet in container.demux(streams):
                    if packet.dts is None or packet.size == 0:
                        continue
                    stream = packet.stream
                    time = float((packet.pts if packet.pts is not None else packet.dts) * stream.time_base)
                    length = float(packet.duration * stream.time_base) if packet.duration else 0.0
                    if origin is None:
                        if stream is not video:
                            if video is not None:
                                early.append(packet)
                                if len(early) > _MAX_EARLY_PACKETS:
                                    return False
                                continue
                            if time + length <= start + 1e-6:
                                continue  # audio wholly before the start
                        elif not (packet.is_keyframe and start - frame_time < time <= start + frame_time / 2):
                            return False  # the start is between key frames
                        origin = time
                        pending, early = early + [packet], []
                    else:
                        pending = [packet]
                    for packet in pending:
                        stream = packet.stream
                        time = float((packet.pts if packet.pts is not None else packet.dts) * stream.time_base)
                        if time >= end - 1e-6:
                            done.add(stream.index)
                            continue
                        if time < origin - 1e-6:
                            continue  # audio from before the video's key frame
                        process.at(time - origin)
                        offset = int(round(origin / stream.time_base))
                        packet.pts = None if packet.pts is None else packet.pts - offset
                        packet.dts = packet.dts - offset
                        packet.stream = outputs[stream.index]
                        process.mux(output, [packet])
                        copied += 1
                    if len(done) == len(streams):
                        break
            except av.FFmpegError as e:
                raise InvalidInput(f"the file could not be decoded: {_reason(e)}") from None
            if copied == 0:
                return False
        finally:
            output.close()
    finally:
        container.close()
    return True


def _start_time(container) -> float:
    """When the file's timeline starts, in seconds (not 0 in MPEG-TS, say): params count from there."""
    start = container.start_time
    return start / 1_000_000 if start is not None and start > 0 else 0.0


def _opencv():
    try:
        import cv2
    except ImportError:
        raise Unavailable("video enhancement is not available: OpenCV is not installed",
                          error_code=AI_UNAVAILABLE) from None
    return cv2


def _enhancer(params: dict, limits: Limits):
    """``enhance(bgr_array) -> bgr_array`` applying ``params["operations"]``."""
    cv2 = _opencv()
    import numpy as np
    operations = params["operations"]
    scale = params.get("scale", 1)
    clahe = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8))

    def enhance(image):
        if "denoise" in operations:
            image = cv2.fastNlMeansDenoisingColored(image, None, 7, 7, 5, 15)
        if "low_light" in operations:
            lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)
            lightness = clahe.apply(lab[:, :, 0])
            # CLAHE evens out the contrast locally; a dark picture stays dark
            # overall, so a gamma then lifts its mean luminance toward 0.45.
            mean = float(lightness.mean()) / 255
            if 0 < mean < 0.45:
                gamma = max(0.4, math.log(0.45) / math.log(mean))
                lightness = cv2.LUT(lightness, (((np.arange(256) / 255) ** gamma) * 255).astype(np.uint8))
            lab[:, :, 0] = lightness
            image = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
        if "sharpen" in operations:
            blurred = cv2.GaussianBlur(image, (0, 0), 1.0)
            image = cv2.addWeighted(image, 2.0, blurred, -1.0, 0)  # unsharp mask, amount 1
        if "upscale" in operations:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        return image

    return enhance


def _run_enhance(process, src_path, destination, params):
    import av
    info = _need_media(src_path, allow_image=True)
    if info["width"] is None:
        raise InvalidInput("the file has no video stream or image to enhance")
    _check_pixels(info["width"], info["height"], process.limits)
    scale = params.get("scale", 1)
    width, height = info["width"] * scale, info["height"] * scale
    if width > process.limits.max_width or height > process.limits.max_height:
        raise InvalidInput(f"the enhanced size {width}x{height} would be larger than "
                           f"{process.limits.max_width}x{process.limits.max_height}")
    enhance = _enhancer(params, process.limits)

    def frame_filter(frame):
        return av.VideoFrame.from_ndarray(enhance(frame.to_ndarray(format="bgr24")), format="bgr24")

    if info["kind"] == "image":
        container = _open_input(src_path)
        try:
            frame = next(_decoded(container, [_video_stream(container, pictures=True)]), None)
        finally:
            container.close()
        if frame is None:
            raise InvalidInput("the file could not be decoded: no picture")
        process.check()
        name = "jpeg" if info["content_type"] == "image/jpeg" else "png"
        suffix, content_type, codec, pix_fmt = _IMAGE_FORMATS[name]
        result = frame_filter(_upright(frame))
        path = destination(suffix)
        _write_image(process, result, path, codec, pix_fmt, result.width, result.height)
        return path, suffix, content_type
    if info["kind"] != "video":
        raise InvalidInput("the file has no video stream to enhance")
    _check_duration(info, process.limits)
    process.duration = info["duration"]
    kind = _container_kind_of(src_path)
    output_format = _FORMATS["webm" if kind == "webm" else "mp4"]
    path = destination(output_format.suffix)
    content_type = _encode(process, src_path, path, output_format, size=(_even(width), _even(height)),
                           frame_filter=frame_filter)
    return path, output_format.suffix, content_type


_RUNNERS = {
    "transcode": _run_transcode,
    "thumbnail": _run_thumbnail,
    "extract_audio": _run_extract_audio,
    "compress": _run_compress,
    "trim": _run_trim,
    "enhance": _run_enhance,
}
