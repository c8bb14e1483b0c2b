"""
The local engines: each a small object with the same face.

``name``, ``kind`` (what it does), ``model`` (which model it runs),
``version`` (of the package that carries it), ``available()`` (its
package is installed: checked without importing it), ``load()`` (import
and build the model; slow, so it runs once, behind a lock, in each AI
worker process) and ``run(...)`` (the work, also in a worker process:
wecompany.ai.processes). Nothing here touches the network: every model
ships inside its package.

An engine pickles as a fresh, unloaded copy of itself (that is how each
worker process gets its own); the daemon's copy never loads, and shows
what the workers reported (:meth:`Engine.record_load`).

An engine whose package is missing, or whose model failed to load, says so
in :meth:`Engine.status`; the service answers 503 (4001) for it. An engine
never makes a result up: when it cannot decide, it raises.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import threading

import attrs

RECOGNITION, DENOISING, TEXT_EMOTION, EMOTION, SYNTHESIS = (
    "recognition", "denoising", "text-emotion", "emotion", "synthesis-detection")


class EngineFailed(Exception):
    """The engine ran and could not produce a result (422, error code 4002)."""


class Engine:
    """
    Base of the local engines. Subclasses set ``name``, ``kind``,
    ``package`` (distribution name, for the version), ``modules`` (what
    must be importable) and ``model``, and implement ``_load`` and ``run``.
    """

    name = ""
    kind = ""
    package = ""
    modules: tuple[str, ...] = ()
    model = ""
    remote = False

    def __init__(self, modules: tuple[str, ...] | None = None) -> None:
        if modules is not None:  # tests name a module that is not installed
            self.modules = modules
        self._lock = threading.Lock()
        self._loaded = False
        self.error: str | None = None

    def __reduce__(self):
        return type(self), (self.__dict__.get("modules"),)

    def available(self) -> bool:
        """Every module it needs is installed (found, not imported)."""
        try:
            return all(importlib.util.find_spec(module) is not None for module in self.modules)
        except (ImportError, ValueError):
            return False

    @property
    def version(self) -> str | None:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        """Import and build the model, once (in a worker thread). Raises what loading raised."""
        with self._lock:
            if self._loaded:
                return
            if not self.available():
                self.error = f"not installed: pip install 'wecompany[ai]' (needs {', '.join(self.modules)})"
                raise ImportError(self.error)
            try:
                self._load()
            except Exception as error:
                self.error = f"failed to load: {type(error).__name__}: {error}"
                raise
            self.error = None
            self._loaded = True

    def _load(self) -> None:
        raise NotImplementedError

    def record_load(self, error: str | None) -> None:
        """What loading it elsewhere (the worker processes) gave: None for loaded, else why not."""
        if error is None:
            self.error, self._loaded = None, True
        else:
            self.error = error

    def status(self) -> dict:
        if self._loaded:
            state = "loaded"
        elif not self.available():
            state = "not installed"
        elif self.error is not None:
            state = "failed"
        else:
            state = "not loaded yet"
        return {"name": self.name, "kind": self.kind, "model": self.model, "version": self.version,
                "remote": self.remote, "status": state, **({"error": self.error} if self.error else {})}


@attrs.frozen
class Word:
    word: str
    start_ms: int
    end_ms: int
    confidence: float


@attrs.frozen
class Transcript:
    text: str
    confidence: float
    words: tuple[Word, ...]


class PocketSphinxRecognizer(Engine):
    """
    CMU PocketSphinx 5 with the US English acoustic model, dictionary and
    language model that ship in its wheel. One decoder per concurrent run
    (a decoder is not thread safe): they are kept in a free list and made
    when none is free, so there are never more than the pool has threads.

    ``confidence`` is the mean posterior probability of the recognised
    words (PocketSphinx's own per-word figures); the whole utterance's
    posterior (``hyp().prob``) is near zero for any sentence and says
    little.
    """

    name = "pocketsphinx"
    kind = RECOGNITION
    package = "pocketsphinx"
    modules = ("pocketsphinx",)
    model = "en-us (cmusphinx-en-us-ptm, en-us.lm.bin, cmudict-en-us.dict)"
    rate = 16000
    languages = ("en", "en-us")
    frame_ms = 10  # PocketSphinx's default frame rate is 100 frames a second

    def _load(self) -> None:
        self._free = [self._decoder()]
        self._free_lock = threading.Lock()

    def _decoder(self):
        from pocketsphinx import Decoder
        return Decoder(samprate=self.rate, loglevel="FATAL")

    #: Below this RMS (-80 dBFS) the input is digital silence, in which the
    #: decoder's features degenerate and it "hears" a word (measured: "dog").
    silence_rms = 1e-4

    def run(self, samples) -> Transcript:
        import numpy as np

        if len(samples) == 0 or float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) < self.silence_rms:
            return Transcript("", 0.0, ())
        with self._free_lock:
            decoder = self._free.pop() if self._free else None
        if decoder is None:
            decoder = self._decoder()
        try:
            pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
            hypothesis = decoder.hyp()
            words = []
            for segment in decoder.seg() if hypothesis is not None else ():
                word = segment.word
                if word.startswith(("<", "[")):  # <s>, </s>, <sil>, [NOISE]
                    continue
                words.append(Word(word.split("(")[0], segment.start_frame * self.frame_ms,
                                  (segment.end_frame + 1) * self.frame_ms, round(float(segment.prob), 4)))
        finally:
            with self._free_lock:
                self._free.append(decoder)
        text = " ".join(word.word for word in words)
        confidence = round(sum(w.confidence for w in words) / len(words), 4) if words else 0.0
        return Transcript(text, confidence, tuple(words))


class RNNoiseDenoiser(Engine):
    """
    Xiph's RNNoise (a recurrent network trained on speech, weights built
    into the library of the ``pyrnnoise`` wheel), at 48 kHz in 10 ms
    frames. Its output lags its input by two frames (960 samples); that
    lag is taken out, so the denoised audio lines up with what was sent.
    It suppresses whatever is not speech, so it suits voice, not music.
    """

    name = "rnnoise"
    kind = DENOISING
    package = "pyrnnoise"
    modules = ("pyrnnoise",)
    model = "rnnoise (built-in weights)"
    rate = 48000
    delay = 960

    def _load(self) -> None:
        from pyrnnoise import rnnoise
        self._rnnoise = rnnoise
        state = rnnoise.create()  # proves the library loads
        rnnoise.destroy(state)

    def run(self, samples):
        import numpy as np

        lib = self._rnnoise
        size = lib.FRAME_SIZE
        padded = np.concatenate([samples, np.zeros(self.delay + (-len(samples) - self.delay) % size, np.float32)])
        # RNNoise works on 16-bit scale floats, in place.
        scaled = np.ascontiguousarray(padded * 32768.0, dtype=np.float32)
        state = lib.create()
        try:
            pointer_type = lib.ctypes.POINTER(lib.ctypes.c_float)
            for start in range(0, len(scaled), size):
                view = scaled[start:start + size]
                pointer = view.ctypes.data_as(pointer_type)
                lib.lib.rnnoise_process_frame(state, pointer, pointer)
        finally:
            lib.destroy(state)
        out = scaled[self.delay:self.delay + len(samples)] / 32768.0
        return np.clip(out, -1.0, 1.0).astype(np.float32)


class SpectralGateDenoiser(Engine):
    """
    Spectral gating (``noisereduce``, stationary mode): the noise's
    spectrum is estimated from the quietest fifth of the input (its 20 ms
    frames of least energy, where a speaker pauses) and every time-frequency
    bin that does not rise above it is attenuated. The mask is smoothed
    over 100 Hz and 20 ms (noisereduce's defaults of 500 Hz and 50 ms blur
    narrow-band sounds such as a held note into the gate). Works on any
    signal with quieter stretches, speech or not.
    """

    name = "spectral-gate"
    kind = DENOISING
    package = "noisereduce"
    modules = ("noisereduce", "scipy")
    model = "noisereduce stationary spectral gating (noise profile: quietest 20 % of frames)"
    rate = 48000
    quiet_fraction = 0.2
    frame_seconds = 0.02

    def _load(self) -> None:
        import noisereduce
        self._noisereduce = noisereduce

    def noise_profile(self, samples):
        import numpy as np

        n = int(self.rate * self.frame_seconds)
        count = len(samples) // n
        if count < 5:
            raise EngineFailed("the audio is too short to estimate its noise (at least 0.1 s is needed)")
        frames = samples[:count * n].reshape(count, n)
        energy = (frames.astype(np.float64) ** 2).mean(axis=1)
        quietest = np.sort(np.argsort(energy)[:max(5, int(count * self.quiet_fraction))])
        return frames[quietest].reshape(-1)

    def run(self, samples):
        import numpy as np

        out = self._noisereduce.reduce_noise(y=samples, sr=self.rate, stationary=True,
                                             y_noise=self.noise_profile(samples), freq_mask_smooth_hz=100,
                                             time_mask_smooth_ms=20, n_jobs=1)
        return np.clip(np.asarray(out, dtype=np.float32)[:len(samples)], -1.0, 1.0)


@attrs.frozen
class Scores:
    """A classifier's answer: the best label, its score, every label's score."""

    label: str
    confidence: float
    scores: dict
    extra: dict = attrs.field(factory=dict)


class VaderSentiment(Engine):
    """
    VADER (Hutto and Gilbert, 2014), a lexicon and rules for the sentiment
    of English text; its lexicon ships in the ``vaderSentiment`` package.
    It measures sentiment, not emotion: the labels are ``positive``,
    ``neutral`` and ``negative`` (its ``pos``/``neu``/``neg`` proportions),
    and the answer says ``kind: sentiment``. A real emotion model for text
    or audio is served through KServe (``--kserve-url``).
    """

    name = "vader"
    kind = TEXT_EMOTION
    package = "vaderSentiment"
    modules = ("vaderSentiment",)
    model = "vader_lexicon.txt (sentiment: positive, neutral, negative)"

    def _load(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        self._analyzer = SentimentIntensityAnalyzer()

    def run(self, text: str) -> Scores:
        polarity = self._analyzer.polarity_scores(text)
        scores = {"positive": polarity["pos"], "neutral": polarity["neu"], "negative": polarity["neg"]}
        if polarity["compound"] >= 0.05:
            label = "positive"
        elif polarity["compound"] <= -0.05:
            label = "negative"
        else:
            label = "neutral"  # VADER's own thresholds on its compound score
        return Scores(label, round(abs(polarity["compound"]) if label != "neutral" else polarity["neu"], 4),
                      scores, {"compound": polarity["compound"]})
