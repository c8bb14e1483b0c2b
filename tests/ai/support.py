"""What the AI tests share: test speech, synthesised signals, a fake KServe server."""

from __future__ import annotations

import io
import json
import os
import wave

from twisted.web.resource import Resource

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def speech(name: str = "one_two_three_four_five") -> bytes:
    """A committed WAV file of espeak-ng speech (tests/ai/data/README.rst)."""
    with open(os.path.join(DATA, f"{name}.wav"), "rb") as f:
        return f.read()


def wav_bytes(samples, rate: int) -> bytes:
    """Mono float samples in [-1, 1] -> a 16-bit WAV file."""
    import numpy as np
    pcm = (np.clip(samples, -1, 1) * 32767).round().astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return out.getvalue()


def tone_in_noise(rate: int = 48000, seconds: float = 2.0, noise: float = 0.1, seed: int = 1):
    """
    -> (clean, noisy): a 440 Hz tone at 0.3 that starts after half a second
    of silence, and the same plus white noise of standard deviation ``noise``.
    """
    import numpy as np
    t = np.arange(int(rate * seconds)) / rate
    clean = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    clean[: rate // 2] = 0
    noisy = clean + np.random.default_rng(seed).normal(0, noise, len(t)).astype(np.float32)
    return clean, noisy.astype(np.float32)


def snr_db(clean, signal) -> float:
    """Signal-to-noise ratio of ``signal`` against the ``clean`` reference, in dB."""
    import numpy as np
    n = min(len(clean), len(signal))
    clean, signal = np.asarray(clean[:n], np.float64), np.asarray(signal[:n], np.float64)
    return float(10 * np.log10(np.sum(clean ** 2) / np.sum((signal - clean) ** 2)))


class FakeInferenceServer(Resource):
    """
    A KServe v2 server in memory: ``POST /v2/models/<model>/infer`` answers
    ``outputs[model]`` (a dict, or a (status, bytes) pair) and records what
    it was sent.
    """

    isLeaf = True

    def __init__(self, outputs: dict) -> None:
        super().__init__()
        self.outputs = outputs
        self.requests: list = []

    def render_POST(self, request):
        parts = request.path.decode().strip("/").split("/")
        if len(parts) != 4 or parts[:2] != ["v2", "models"] or parts[3] != "infer" or parts[2] not in self.outputs:
            request.setResponseCode(404)
            return b'{"error":"no such model"}'
        body = request.content.read()
        header_length = request.getHeader(b"inference-header-content-length")
        if header_length is None:
            self.requests.append((parts[2], json.loads(body)))
        else:  # the binary tensor data extension: JSON, then each input's raw bytes in order
            header = json.loads(body[:int(header_length)])
            data = body[int(header_length):]
            import numpy as np
            for tensor in header["inputs"]:
                size = tensor["parameters"]["binary_data_size"]
                assert tensor["datatype"] == "FP32", tensor
                tensor["data"] = np.frombuffer(data[:size], dtype="<f4").tolist()
                data = data[size:]
            assert not data, f"{len(data)} bytes after the tensors"
            self.requests.append((parts[2], header))
        answer = self.outputs[parts[2]]
        if isinstance(answer, tuple):
            request.setResponseCode(answer[0])
            return answer[1]
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"model_name": parts[2], "outputs": answer}).encode()
