"""The real local engines, on signals the tests make or committed speech."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.ai.support import snr_db, speech, tone_in_noise
from wecompany.ai.audio import decode
from wecompany.ai.engines import (PocketSphinxRecognizer, RNNoiseDenoiser, SpectralGateDenoiser, VaderSentiment,
                                  EngineFailed)


class RecognitionTests(SynchronousTestCase):
    def test_counting_is_heard_word_for_word_with_timings(self):
        engine = PocketSphinxRecognizer()
        engine.load()
        audio = decode(speech(), engine.rate)
        transcript = engine.run(audio.samples)
        self.assertEqual(transcript.text, "one two three four five")
        self.assertEqual([w.word for w in transcript.words], ["one", "two", "three", "four", "five"])
        starts = [w.start_ms for w in transcript.words]
        self.assertEqual(starts, sorted(starts))
        self.assertTrue(all(w.end_ms > w.start_ms for w in transcript.words))
        self.assertLessEqual(transcript.words[-1].end_ms, audio.duration_ms)
        self.assertTrue(0 < transcript.confidence <= 1)

    def test_hello_is_heard(self):
        engine = PocketSphinxRecognizer()
        engine.load()
        self.assertIn("hello", engine.run(decode(speech("hello_world"), engine.rate).samples).text.split())

    def test_silence_is_no_words(self):
        import numpy as np
        engine = PocketSphinxRecognizer()
        engine.load()
        transcript = engine.run(np.zeros(16000, np.float32))
        self.assertEqual((transcript.text, transcript.words), ("", ()))

    def test_a_missing_package_is_not_available(self):
        engine = PocketSphinxRecognizer(modules=("no_such_module_here",))
        self.assertFalse(engine.available())
        self.assertEqual(engine.status()["status"], "not installed")
        self.assertRaises(ImportError, engine.load)


class DenoisingTests(SynchronousTestCase):
    def test_spectral_gate_raises_the_snr_of_a_tone_in_white_noise(self):
        clean, noisy = tone_in_noise()
        engine = SpectralGateDenoiser()
        engine.load()
        before, after = snr_db(clean, noisy), snr_db(clean, engine.run(noisy))
        # Measured: 5.3 dB -> 22.6 dB.
        self.assertGreater(after - before, 10, (before, after))

    def test_rnnoise_raises_the_snr_of_speech_in_white_noise(self):
        import numpy as np
        engine = RNNoiseDenoiser()
        engine.load()
        clean = decode(speech(), engine.rate).samples
        clean = clean * (0.5 / np.abs(clean).max())
        noisy = clean + np.random.default_rng(2).normal(0, 0.05, len(clean)).astype(np.float32)
        out = engine.run(noisy)
        self.assertEqual(len(out), len(noisy))  # its lag is taken out
        before, after = snr_db(clean, noisy), snr_db(clean, out)
        # Measured: 2.3 dB -> 13.1 dB.
        self.assertGreater(after - before, 6, (before, after))

    def test_spectral_gate_needs_enough_audio(self):
        import numpy as np
        engine = SpectralGateDenoiser()
        engine.load()
        self.assertRaises(EngineFailed, engine.run, np.zeros(1000, np.float32))


class SentimentTests(SynchronousTestCase):
    def test_vader_labels_are_sentiments(self):
        engine = VaderSentiment()
        engine.load()
        self.assertEqual(engine.run("I love this, it is wonderful!").label, "positive")
        self.assertEqual(engine.run("This is awful and I hate it.").label, "negative")
        neutral = engine.run("The table is in the room.")
        self.assertEqual(neutral.label, "neutral")
        self.assertEqual(set(neutral.scores), {"positive", "neutral", "negative"})
