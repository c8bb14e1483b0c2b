"""
A remote engine: a model on an inference server that speaks the KServe v2
(Open Inference Protocol, what Triton serves over HTTP) JSON protocol.

``POST {url}/v2/models/{model}/infer`` with
``{"inputs": [{"name", "shape", "datatype", "data"}]}`` (or, with
``--kserve-binary``, the audio as raw float32 after the JSON: the binary
tensor data extension, ``Inference-Header-Content-Length``); the answer's
``outputs`` are tensors of the same shape. What is sent, and how the
answer is read, is this module's convention (docs/ai.rst):

- audio: one input ``audio``, ``FP32`` ``[1, N]``, mono at 16 kHz in [-1, 1];
  text: one input ``text``, ``BYTES`` ``[1]``;
- the answer's first numeric output is the scores; labels come from a
  ``BYTES`` output, else from the configured ``--emotion-labels``;
  scores that are not already probabilities (outside [0, 1], or not
  summing to 1 over several labels) are put through a softmax;
- synthesis detection: one score is the probability that the speech is
  synthetic; several need labels, one of which is ``synthetic``, ``spoof``
  or ``fake``.

The client is treq (non-blocking), injected, with its own timeout on the
injected clock; the request body (a large JSON array) is built in the AI
worker processes by the caller (wecompany.ai.jobs.kserve_body), not here.
"""

from __future__ import annotations

import json
import math
from urllib.parse import quote

import attrs

from twisted.internet.defer import Deferred, TimeoutError
from twisted.logger import Logger

from wecompany.ai.engines import EMOTION, SYNTHESIS, EngineFailed, Scores
from wecompany.errors import AI_UNAVAILABLE, Unavailable

log = Logger()

MAX_RESPONSE = 1 << 20
SYNTHETIC_LABELS = ("synthetic", "spoof", "fake", "generated", "deepfake")
AUDIO_RATE = 16000


@attrs.frozen
class InferRequest:
    """An infer request's body; ``header_length`` is the JSON part's when binary tensor data follows it."""

    body: bytes
    header_length: int | None = None


def audio_request(samples, binary: bool = False) -> InferRequest:
    """
    The infer request for mono 16 kHz float32 ``samples`` (CPU work: a
    worker process runs it). ``binary``: the samples follow the JSON as raw
    little-endian float32 (the binary tensor data extension), not in it.
    """
    if binary:
        import numpy as np
        data = np.asarray(samples, dtype="<f4").tobytes()
        header = json.dumps({"inputs": [{"name": "audio", "shape": [1, len(data) // 4], "datatype": "FP32",
                                         "parameters": {"binary_data_size": len(data)}}]},
                            separators=(",", ":")).encode()
        return InferRequest(header + data, len(header))
    values = [round(float(x), 5) for x in samples]
    return InferRequest(json.dumps({"inputs": [{"name": "audio", "shape": [1, len(values)], "datatype": "FP32",
                                                "data": values}]}, separators=(",", ":")).encode())


def text_request(text: str) -> InferRequest:
    return InferRequest(json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                                "data": [text]}]}, separators=(",", ":")).encode())


class KServeModel:
    """
    One model on a KServe v2 server, with the same face as the local
    engines (``name``, ``kind``, ``model``, ``version``, ``status()``) and
    an async :meth:`infer` in place of ``run``.

    :param http: a treq ``HTTPClient`` (``StubTreq`` in tests).
    :param labels: the model's labels in output order, when its answer
        carries none.
    :param binary: send audio with the binary tensor data extension.
    """

    name = "kserve"
    remote = True
    version = "v2"

    def __init__(self, http, url: str, model: str, kind: str, clock, timeout: float,
                 labels: tuple[str, ...] | None = None, binary: bool = False) -> None:
        self.http = http
        self.binary = binary  # audio as binary tensor data (InferRequest.header_length), not JSON
        self.url = url.rstrip("/")
        self.model = model
        self.kind = kind
        self.clock = clock
        self.timeout = timeout
        self.labels = labels
        self.error: str | None = None
        self.loaded = True

    def available(self) -> bool:
        return self.http is not None

    def status(self) -> dict:
        state = "configured" if self.error is None else "failing"
        return {"name": self.name, "kind": self.kind, "model": self.model, "version": self.version,
                "remote": True, "url": self.url, "status": state, **({"error": self.error} if self.error else {})}

    @property
    def infer_url(self) -> str:
        return f"{self.url}/v2/models/{quote(self.model, safe='')}/infer"

    async def infer(self, body: InferRequest) -> dict:
        """POST ``body`` -> the answer's outputs by name; Unavailable (4001) when the server cannot be used."""
        if body.header_length is None:
            headers = {b"content-type": [b"application/json"]}
        else:
            headers = {b"content-type": [b"application/octet-stream"],
                       b"inference-header-content-length": [b"%d" % body.header_length]}
        request = self.http.post(self.infer_url, data=body.body, headers=headers)
        try:
            response = await _within(request, self.clock, self.timeout)
            if response.code != 200:
                text = (await _within(response.text(), self.clock, self.timeout))[:200]
                # 4xx: the model refused what we sent; 5xx: the server is in trouble.
                if 400 <= response.code < 500:
                    raise EngineFailed(f"the inference server refused the request ({response.code}): {text}")
                raise Unavailable(f"the inference server answered {response.code}", error_code=AI_UNAVAILABLE)
            raw = await _within(Deferred.fromCoroutine(_limited_content(response, MAX_RESPONSE)), self.clock,
                                self.timeout)
        except (EngineFailed, Unavailable) as error:
            self.error = str(error)
            raise
        except TimeoutError:
            self.error = f"no answer within {self.timeout:g} s"
            raise Unavailable(f"the inference server did not answer within {self.timeout:g} s",
                              error_code=AI_UNAVAILABLE) from None
        except Exception as error:
            self.error = f"{type(error).__name__}: {error}"[:200]
            log.info("KServe model {model} at {url} unreachable: {error}", model=self.model, url=self.url,
                     error=self.error)
            raise Unavailable("the inference server cannot be reached", error_code=AI_UNAVAILABLE) from None
        self.error = None
        try:
            document = json.loads(raw)
            outputs = document["outputs"]
            return {output["name"]: output for output in outputs}
        except (ValueError, KeyError, TypeError) as error:
            raise EngineFailed(f"the inference server's answer is not a KServe v2 response ({error})") from None

    def scores(self, outputs: dict) -> Scores:
        """Read a classification from ``outputs`` (:meth:`infer`)."""
        values, labels = None, None
        for output in outputs.values():
            datatype = output.get("datatype", "")
            data = output.get("data")
            if not isinstance(data, list):
                continue
            if datatype == "BYTES" and labels is None:
                labels = [str(x) for x in data]
            elif datatype.startswith(("FP", "INT", "UINT")) and values is None:
                values = _numbers(data)
        if not values:
            raise EngineFailed("the model's answer holds no scores")
        labels = labels or (list(self.labels) if self.labels else None)
        if self.kind == SYNTHESIS and len(values) == 1 and labels is None:
            score = values[0]
            if not 0.0 <= score <= 1.0:
                score = 1.0 / (1.0 + math.exp(-score))  # a logit
            return Scores("synthetic" if score >= 0.5 else "bona fide", round(max(score, 1 - score), 4),
                          {"synthetic": round(score, 4)})
        if labels is None or len(labels) != len(values):
            raise EngineFailed(f"the model gave {len(values)} scores and {len(labels or ())} labels: configure "
                               f"--{'emotion' if self.kind == EMOTION else 'synthesis'}-labels")
        probabilities = _probabilities(values)
        scores = {label: round(p, 4) for label, p in zip(labels, probabilities)}
        best = max(range(len(values)), key=probabilities.__getitem__)
        return Scores(labels[best], round(probabilities[best], 4), scores)


def synthetic_score(scores: Scores) -> float:
    """The probability that the speech is synthetic, from a :class:`Scores` of a synthesis model."""
    for label, value in scores.scores.items():
        if label.lower() in SYNTHETIC_LABELS:
            return value
    raise EngineFailed(f"none of the model's labels ({', '.join(scores.scores)[:100]}) says synthetic "
                       f"({', '.join(SYNTHETIC_LABELS)})")


def _numbers(data) -> list[float]:
    flat = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item):
            flat.append(float(item))
        else:
            raise EngineFailed("the model's scores are not finite numbers")
    return flat


def _probabilities(values: list[float]) -> list[float]:
    if all(0.0 <= v <= 1.0 for v in values) and (len(values) == 1 or abs(sum(values) - 1.0) < 1e-3):
        return values
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _within(d: Deferred, clock, timeout: float) -> Deferred:
    """``d``, cancelled after ``timeout`` seconds on ``clock`` (it then fails with TimeoutError)."""
    return d.addTimeout(timeout, clock)


async def _limited_content(response, limit: int) -> bytes:
    import treq

    chunks, size = [], 0

    def collect(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)
        if size > limit:
            raise EngineFailed(f"the inference server's answer is larger than {limit} bytes")
        chunks.append(chunk)

    await treq.collect(response, collect)
    return b"".join(chunks)
