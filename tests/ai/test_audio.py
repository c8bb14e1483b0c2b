"""Decoding and encoding audio with PyAV, within limits."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.ai.support import speech, wav_bytes
from wecompany.ai.audio import AudioLimits, canonical_format, decode, encode
from wecompany.errors import InvalidInput, TooLarge


class DecodeTests(SynchronousTestCase):
    def test_every_format_round_trips(self):
        audio = decode(speech(), 16000)
        self.assertEqual((audio.source_format, audio.source_rate, audio.duration_ms), ("wav", 16000, 2165))
        for fmt in ("wav", "pcm", "flac", "mp3", "ogg", "webm"):
            data, rate = encode(audio.samples, 16000, fmt)
            back = decode(data, 16000, fmt, sample_rate=rate if fmt == "pcm" else None)
            self.assertEqual(back.source_format, fmt)
            # Codecs pad by a frame or two; the duration stays within 100 ms.
            self.assertAlmostEqual(back.duration_ms, audio.duration_ms, delta=100, msg=fmt)

    def test_resampled_to_the_engines_rate(self):
        import numpy as np
        audio = decode(wav_bytes(np.zeros(44100, np.float32), 44100), 16000)
        self.assertEqual((audio.rate, len(audio.samples), audio.source_rate), (16000, 16000, 44100))

    def test_raw_pcm_needs_its_rate_and_mixes_channels_down(self):
        import numpy as np
        self.assertRaisesRegex(InvalidInput, "sample_rate", decode, b"\0" * 3200, 16000, "pcm")
        stereo = np.stack([np.full(8000, 1000, "<i2"), np.full(8000, -1000, "<i2")], axis=1).tobytes()
        audio = decode(stereo, 16000, "pcm", sample_rate=8000, channels=2)
        self.assertEqual(audio.duration_ms, 1000)
        self.assertLess(float(np.abs(audio.samples).max()), 1e-3)

    def test_bad_audio_says_why(self):
        for data, fmt, reason in ((b"", None, "empty"), (b"not audio at all" * 50, None, "cannot be read"),
                                  (b"\x89PNG\r\n\x1a\n" + b"\0" * 200, None, "not audio|cannot be read"),
                                  (b"\x01", "pcm", "no samples"), (speech()[:44], "wav", "no samples|cannot"),
                                  (speech(), "mp4", "not supported")):
            with self.assertRaisesRegex(InvalidInput, reason, msg=(data[:20], fmt)):
                decode(data, 16000, fmt, sample_rate=16000 if data == b"\x01" else None)

    def test_limits(self):
        import numpy as np
        self.assertRaises(TooLarge, decode, speech(), 16000, limits=AudioLimits(max_bytes=1000))
        with self.assertRaisesRegex(InvalidInput, "longer than 1 seconds"):
            decode(speech(), 16000, limits=AudioLimits(max_seconds=1))
        with self.assertRaisesRegex(InvalidInput, "longer than 1 seconds"):
            decode(np.zeros(32000, "<i2").tobytes(), 16000, "pcm", sample_rate=16000,
                   limits=AudioLimits(max_seconds=1))
        # A small file that decodes to much more audio is stopped while it decodes.
        mp3, _ = encode(np.zeros(16000 * 30, np.float32), 16000, "mp3")
        self.assertLess(len(mp3), 200_000)
        with self.assertRaisesRegex(InvalidInput, "longer than 10 seconds"):
            decode(mp3, 16000, limits=AudioLimits(max_seconds=10))

    def test_format_names(self):
        self.assertEqual([canonical_format(n) for n in ("WAV", "audio/webm;codecs=opus", "s16le", None, " ")],
                         ["wav", "webm", "pcm", None, None])
        self.assertRaises(InvalidInput, canonical_format, "exe")
