"""Small media made with PyAV for the processing tests: nothing is committed, nothing downloaded."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

WIDTH, HEIGHT, FPS, SECONDS = 160, 120, 15, 2.0
SAMPLE_RATE, TONE = 48000, 440.0


def pattern(index: int, width: int = WIDTH, height: int = HEIGHT, noise: int = 0,
            seed: int = 0) -> np.ndarray:
    """An RGB frame: a gradient with a bright square that moves with ``index``, plus optional noise."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)),
                      np.full_like(x, 96)], axis=-1).astype(np.int16)
    left = (index * 7) % max(1, width - 32)
    frame[20:52, left:left + 32] = (250, 250, 40)
    if noise:
        frame += np.random.default_rng(seed + index).integers(-noise, noise + 1, frame.shape, dtype=np.int16)
    return np.clip(frame, 0, 255).astype(np.uint8)


def sine(samples: int, start: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    t = (np.arange(samples) + start) / rate
    return (0.5 * np.sin(2 * np.pi * TONE * t)).astype(np.float32)


def write_video(path: str, *, muxer: str = "mp4", video_codec: str = "libx264",
                audio_codec: str | None = "aac", seconds: float = SECONDS, fps: int = FPS,
                width: int = WIDTH, height: int = HEIGHT, bit_rate: int | None = None,
                noise: int = 0, gop: int | None = None, rotation: int = 0) -> str:
    """
    A video with a moving pattern and, unless ``audio_codec`` is None, a
    440 Hz tone. ``rotation``: degrees counterclockwise in the stream's
    display matrix, as a phone stores a portrait video.
    """
    with av.open(path, "w", format=muxer) as out:
        video = out.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if rotation:
            video.set_display_rotation(rotation)
        if bit_rate:
            video.codec_context.bit_rate = bit_rate
            if video_codec == "libx264":
                video.options = {"preset": "ultrafast", "minrate": str(bit_rate),
                                 "maxrate": str(bit_rate), "bufsize": str(bit_rate)}
        elif video_codec == "libx264":
            video.options = {"preset": "ultrafast"}
        if gop:
            video.codec_context.gop_size = gop
        audio = None
        if audio_codec:
            audio = out.add_stream(audio_codec, rate=SAMPLE_RATE)
            audio.layout = "mono"
        frames = int(seconds * fps)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern(index, width, height, noise), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        if audio is not None:
            _write_tone(out, audio, seconds)
    return path


def _write_tone(out, audio, seconds: float) -> None:
    total = int(seconds * SAMPLE_RATE)
    chunk = 1024
    for start in range(0, total, chunk):
        samples = sine(min(chunk, total - start), start)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, start, Fraction(1, SAMPLE_RATE)
        for packet in audio.encode(frame):
            out.mux(packet)
    for packet in audio.encode(None):
        out.mux(packet)


def write_audio(path: str, *, muxer: str = "wav", codec: str = "pcm_s16le", seconds: float = SECONDS,
                cover: np.ndarray | None = None) -> str:
    """A 440 Hz tone, mono, 48 kHz; with ``cover``, that picture attached as cover art (PNG)."""
    with av.open(path, "w", format=muxer) as out:
        audio = out.add_stream(codec, rate=SAMPLE_RATE)
        audio.layout = "mono"
        if cover is not None:
            art = out.add_stream("png")
            art.height, art.width = cover.shape[:2]
            art.pix_fmt = "rgb24"
            art.disposition = av.stream.Disposition.attached_pic
            picture = av.VideoFrame.from_ndarray(cover, format="rgb24")
            picture.pts = 0
            for packet in art.encode(picture) + art.encode(None):
                out.mux(packet)
        _write_tone(out, audio, seconds)
    return path


def write_image(path: str, image: np.ndarray, codec: str = "png") -> str:
    """``image`` (RGB, uint8) as a PNG or (``codec="mjpeg"``) a JPEG."""
    height, width = image.shape[:2]
    context = av.CodecContext.create(codec, "w")
    context.width, context.height = width, height
    context.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
    context.time_base = Fraction(1, 1)
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=context.pix_fmt)
    frame.pts = 0
    with open(path, "wb") as out:
        for packet in context.encode(frame) + context.encode(None):
            out.write(bytes(packet))
    return path


def read_frames(path: str, format: str = "rgb24") -> list[np.ndarray]:
    with av.open(path) as container:
        return [frame.to_ndarray(format=format) for frame in container.decode(video=0)]


def read_audio(path: str) -> np.ndarray:
    """All the first audio stream's samples, mixed to mono float."""
    with av.open(path) as container:
        chunks = [frame.to_ndarray().astype(np.float64) for frame in container.decode(audio=0)]
    planar = [c if c.ndim == 2 else c.reshape(1, -1) for c in chunks]
    return np.concatenate([c.mean(axis=0) for c in planar]) if planar else np.zeros(0)


def streams(path: str) -> dict:
    """``{"format", "video": codec name or None, "audio": ..., "duration"}`` of a file."""
    with av.open(path) as container:
        video = container.streams.video[0].codec_context.name if container.streams.video else None
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        duration = container.duration / 1e6 if container.duration else None
        return {"format": container.format.name, "video": video, "audio": audio, "duration": duration}
