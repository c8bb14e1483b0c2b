"""Small media files the tests make themselves (PyAV encodes; the standard library writes WAV)."""

from __future__ import annotations

import io
import math
import struct
import wave
import zlib


def wav(seconds: float = 1.0, rate: int = 8000, frequency: float = 440.0) -> bytes:
    """A mono 16-bit sine tone."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = int(seconds * rate)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * frequency * i / rate)))
                               for i in range(frames)))
    return out.getvalue()


def png(width: int = 4, height: int = 3) -> bytes:
    """A grey RGB image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80\x80\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def webm(seconds: float = 1.0, width: int = 64, height: int = 48, rate: int = 10, audio: bool = True,
         video: bool = True) -> bytes:
    """A WebM of VP8 frames (flat, changing grey) and/or an Opus tone."""
    import av

    out = io.BytesIO()
    with av.open(out, "w", format="webm") as container:
        vstream = astream = None
        if video:
            vstream = container.add_stream("libvpx", rate=rate)
            vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        if audio:
            astream = container.add_stream("libopus", rate=48000)
            astream.layout = "mono"
        if vstream is not None:
            for i in range(int(seconds * rate)):
                frame = av.VideoFrame(width, height, "yuv420p")
                for plane, value in zip(frame.planes, ((i * 10) % 256, 128, 128)):
                    plane.update(bytes([value]) * plane.buffer_size)
                frame.pts = i
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode(None))
        if astream is not None:
            samples = 960
            for i in range(int(seconds * 48000 / samples)):
                frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
                frame.planes[0].update(b"".join(
                    struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * (i * samples + n) / 48000)))
                    for n in range(samples)))
                frame.sample_rate = 48000
                frame.pts = i * samples
                container.mux(astream.encode(frame))
            container.mux(astream.encode(None))
    return out.getvalue()
