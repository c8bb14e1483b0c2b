"""
The processing engine on small media the tests make with PyAV: each
result is decoded again and its real properties checked.
"""

from __future__ import annotations

import os
import sys

import av
import numpy as np
from twisted.trial.unittest import SynchronousTestCase

from tests.media import generate
from wecompany.errors import AI_FAILED, AI_UNAVAILABLE, InvalidInput, TooLarge, Unavailable
from wecompany.media import process
from wecompany.media.process import Limits, ProcessingCancelled, ProcessingFailed, Result

FRAME = 1 / generate.FPS
AUDIO_PACKET = 0.025  # the longest audio frame the tests' codecs make (1152 samples at 48 kHz)


class MediaTestCase(SynchronousTestCase):
    """Makes the inputs in a fresh directory, and checks the outputs land in another."""

    def setUp(self):
        self.src = os.path.abspath(self.mktemp())
        self.dst = os.path.abspath(self.mktemp())
        os.makedirs(self.src)

    def path(self, name: str) -> str:
        return os.path.join(self.src, name)

    def mp4(self, **kw) -> str:
        return generate.write_video(self.path(kw.pop("name", "clip.mp4")), **kw)

    def webm(self, **kw) -> str:
        return generate.write_video(self.path("clip.webm"), muxer="webm", video_codec="libvpx",
                                    audio_codec="libopus", **kw)

    def wav(self) -> str:
        return generate.write_audio(self.path("tone.wav"))

    def png(self, image=None, name="picture.png") -> str:
        return generate.write_image(self.path(name), generate.pattern(3) if image is None else image)

    def run_process(self, process_type, src, params, **kw) -> Result:
        result = process.run(process_type, src, self.dst, process.validate(process_type, params), **kw)
        self.assertEqual(os.path.dirname(result.path), self.dst)
        self.assertEqual(result.size, os.path.getsize(result.path))
        self.assertTrue(result.path.endswith(result.filename_suffix))
        self.assertEqual(os.listdir(self.dst), [os.path.basename(result.path)])
        return result

    def assertDuration(self, path, expected, tolerance):
        duration = generate.streams(path)["duration"]
        self.assertTrue(abs(duration - expected) <= tolerance, f"lasts {duration} s, not {expected} s")

    def assertNear(self, value, expected, tolerance):
        self.assertTrue(abs(value - expected) <= tolerance, f"{value} is not {expected} +- {tolerance}")

    def assertNothingLeft(self):
        self.assertEqual(os.listdir(self.dst) if os.path.exists(self.dst) else [], [])


class ValidateTests(SynchronousTestCase):
    def assertRefused(self, process_type, params, words):
        error = self.assertRaises(InvalidInput, process.validate, process_type, params)
        self.assertIn(words, error.message)
        self.assertEqual(error.code, 400)

    def test_defaults_and_normal_forms(self):
        self.assertEqual(process.validate("transcode", {"format": "WEBM"}), {"format": "webm"})
        self.assertEqual(process.validate("thumbnail", None), {"time": 0.0, "width": None, "format": "png"})
        self.assertEqual(process.validate("thumbnail", {"time": 2, "width": 64.0, "format": "jpeg"}),
                         {"time": 2.0, "width": 64, "format": "jpeg"})
        self.assertEqual(process.validate("extract_audio", {}), {"format": "opus"})
        self.assertEqual(process.validate("compress", {"bitrate": 64000}), {"bitrate": 64000})
        self.assertEqual(process.validate("trim", {"end": 3}), {"start": 0.0, "end": 3.0})
        self.assertEqual(process.validate("enhance", {"operations": ["upscale", "sharpen", "denoise"]}),
                         {"operations": ["denoise", "sharpen", "upscale"], "scale": 2})
        self.assertEqual(process.validate("enhance", {"operations": "low_light"}), {"operations": ["low_light"]})

    def test_the_process_types(self):
        self.assertEqual(process.PROCESS_TYPES,
                         ("transcode", "thumbnail", "extract_audio", "compress", "trim", "enhance"))
        self.assertRefused("resize", {}, "unknown process_type 'resize'")

    def test_bad_params(self):
        self.assertRefused("transcode", [], "params must be an object")
        self.assertRefused("transcode", {}, "format is required")
        self.assertRefused("transcode", {"format": "avi"}, "format must be one of webm, mp4")
        self.assertRefused("transcode", {"format": 3}, "format must be one of")
        self.assertRefused("transcode", {"format": "mp4", "width": 10}, "width must be at least 16")
        self.assertRefused("transcode", {"format": "mp4", "width": 10_000}, "at most 3840")
        self.assertRefused("transcode", {"format": "mp4", "height": "720"}, "height must be an integer")
        self.assertRefused("transcode", {"format": "mp4", "width": True}, "width must be an integer")
        self.assertRefused("transcode", {"format": "mp4", "width": 100.5}, "width must be an integer")
        self.assertRefused("transcode", {"format": "opus", "width": 100}, "video formats only")
        self.assertRefused("transcode", {"format": "mp4", "codec": "h265"}, "unknown parameter codec")
        self.assertRefused("thumbnail", {"time": -1}, "time must be at least 0")
        self.assertRefused("thumbnail", {"time": float("nan")}, "time must be a finite number")
        self.assertRefused("thumbnail", {"format": "gif"}, "format must be one of png, jpeg")
        self.assertRefused("extract_audio", {"format": "webm"}, "format must be one of")
        self.assertRefused("compress", {}, "exactly one of bitrate")
        self.assertRefused("compress", {"bitrate": 64000, "target_size": 100000}, "exactly one of bitrate")
        self.assertRefused("compress", {"bitrate": 10}, "bitrate must be at least")
        self.assertRefused("compress", {"target_size": 3 * 1024 ** 3}, "target_size must be")
        self.assertRefused("trim", {"start": 1}, "end is required")
        self.assertRefused("trim", {"start": 2, "end": 1}, "end must be greater than start")
        self.assertRefused("trim", {"end": 0}, "end must be greater than 0")
        self.assertRefused("enhance", {}, "operations must be a non-empty list")
        self.assertRefused("enhance", {"operations": []}, "operations must be a non-empty list")
        self.assertRefused("enhance", {"operations": ["colorize"]}, "unknown operation 'colorize'")
        self.assertRefused("enhance", {"operations": ["sharpen"], "scale": 2}, "scale applies to the upscale")
        self.assertRefused("enhance", {"operations": ["upscale"], "scale": 8}, "scale must be at least 2")

    def test_run_validates_too(self):
        self.assertRaises(InvalidInput, process.run, "trim", "/nonexistent", "/nonexistent", {"end": -1})

    def test_engine_errors(self):
        self.assertEqual((ProcessingFailed.code, ProcessingFailed.error_code), (422, AI_FAILED))
        self.assertTrue(issubclass(ProcessingCancelled, ProcessingFailed))


class ProbeTests(MediaTestCase):
    def test_video(self):
        self.assertEqual(process.probe(self.mp4()), {"content_type": "video/mp4", "duration_ms": 2000,
                                                     "width": 160, "height": 120, "kind": "video"})
        info = process.probe(self.webm())
        self.assertEqual((info["content_type"], info["kind"], info["width"]), ("video/webm", "video", 160))
        self.assertNear(info["duration_ms"], 2000, 50)

    def test_audio(self):
        self.assertEqual(process.probe(self.wav()), {"content_type": "audio/wav", "duration_ms": 2000,
                                                     "width": None, "height": None, "kind": "audio"})

    def test_images(self):
        self.assertEqual(process.probe(self.png()), {"content_type": "image/png", "duration_ms": None,
                                                     "width": 160, "height": 120, "kind": "image"})
        jpeg = generate.write_image(self.path("photo.jpeg"), generate.pattern(1), "mjpeg")
        self.assertEqual(process.probe(jpeg)["content_type"], "image/jpeg")
        os.rename(jpeg, self.path("photo-without-extension"))
        self.assertEqual(process.probe(self.path("photo-without-extension"))["kind"], "image")

    def test_not_media_is_other(self):
        other = {"content_type": "application/octet-stream", "duration_ms": None, "width": None,
                 "height": None, "kind": "other"}
        with open(self.path("random.bin"), "wb") as out:
            out.write(np.random.default_rng(1).bytes(5000))
        with open(self.path("notes.txt"), "w") as out:
            out.write("hello world\n" * 50)
        open(self.path("empty"), "wb").close()
        os.mkdir(self.path("directory"))
        for name in ("random.bin", "notes.txt", "empty", "missing", "directory"):
            self.assertEqual(process.probe(self.path(name)), other, name)


class TranscodeTests(MediaTestCase):
    def test_mp4_to_webm(self):
        result = self.run_process("transcode", self.mp4(), {"format": "webm"})
        self.assertEqual((result.filename_suffix, result.content_type), (".webm", "video/webm"))
        info = generate.streams(result.path)
        self.assertEqual((info["video"], info["audio"]), ("vp8", "opus"))
        self.assertDuration(result.path, 2.0, FRAME + AUDIO_PACKET)
        frames = generate.read_frames(result.path)
        self.assertEqual(len(frames), 30)
        self.assertEqual(frames[0].shape, (120, 160, 3))
        # The picture survives: the moving square is where the source put it.
        self.assertLess(np.abs(frames[15].astype(int) - generate.pattern(15)).mean(), 12)

    def test_webm_to_mp4_scaled(self):
        result = self.run_process("transcode", self.webm(), {"format": "mp4", "width": 80})
        self.assertEqual(result.content_type, "video/mp4")
        info = generate.streams(result.path)
        self.assertEqual((info["video"], info["audio"]), ("h264", "aac"))
        self.assertEqual(generate.read_frames(result.path)[0].shape, (60, 80, 3))
        self.assertDuration(result.path, 2.0, FRAME + AUDIO_PACKET)

    def test_to_audio_formats(self):
        source = self.mp4()
        expected = {"opus": ("ogg", "opus", ".opus", "audio/ogg"), "ogg": ("ogg", "opus", ".ogg", "audio/ogg"),
                    "aac": ("aac", "aac", ".aac", "audio/aac"),
                    "m4a": ("mov,mp4,m4a,3gp,3g2,mj2", "aac", ".m4a", "audio/mp4"),
                    "mp3": ("mp3", "mp3float", ".mp3", "audio/mpeg"),
                    "wav": ("wav", "pcm_s16le", ".wav", "audio/wav")}
        for name, (container, codec, suffix, content_type) in expected.items():
            result = process.run("transcode", source, self.dst, {"format": name})
            info = generate.streams(result.path)
            self.assertEqual((info["format"], info["audio"], info["video"]), (container, codec, None), name)
            self.assertEqual((result.filename_suffix, result.content_type), (suffix, content_type), name)
            self.assertTrue(abs(info["duration"] - 2.0) < 0.05, (name, info["duration"]))
            self.assertNear(dominant_frequency(result.path), generate.TONE, 5)
            os.remove(result.path)

    def test_audio_to_a_video_format_is_audio_only(self):
        result = self.run_process("transcode", self.wav(), {"format": "webm"})
        self.assertEqual(result.content_type, "audio/webm")
        self.assertEqual(generate.streams(result.path)["video"], None)

    def test_a_large_video_is_scaled_to_the_limits(self):
        result = process.run("transcode", self.mp4(), self.dst, {"format": "mp4"},
                             limits=Limits(max_width=80, max_height=80))
        self.assertEqual(generate.read_frames(result.path)[0].shape, (60, 80, 3))

    def test_an_image_is_refused(self):
        error = self.assertRaises(InvalidInput, process.run, "transcode", self.png(), self.dst, {"format": "mp4"})
        self.assertEqual(error.message, "the file is an image, not audio or video")

    def test_video_without_audio_to_audio_is_refused(self):
        silent = self.mp4(audio_codec=None)
        error = self.assertRaises(InvalidInput, process.run, "transcode", silent, self.dst, {"format": "opus"})
        self.assertEqual(error.message, "the file has no audio stream")
        self.assertNothingLeft()

    def test_progress_goes_up_to_one(self):
        seen = []
        self.run_process("transcode", self.mp4(), {"format": "webm"}, progress=seen.append)
        self.assertGreater(len(seen), 10)
        self.assertEqual(seen, sorted(seen))
        self.assertEqual(seen[-1], 1.0)
        self.assertTrue(all(0 <= fraction <= 1 for fraction in seen))

    def test_cancelled_stops_and_leaves_nothing(self):
        polls = []

        def cancelled():
            polls.append(1)
            return len(polls) > 5

        self.assertRaises(ProcessingCancelled, process.run, "transcode", self.mp4(), self.dst,
                          {"format": "webm"}, cancelled=cancelled)
        self.assertNothingLeft()

    def test_output_past_the_limit_is_too_large(self):
        error = self.assertRaises(TooLarge, process.run, "transcode", self.mp4(), self.dst, {"format": "wav"},
                                  limits=Limits(max_output_bytes=50_000))
        self.assertEqual(error.code, 413)
        self.assertNothingLeft()

    def test_a_file_longer_than_the_limit_is_refused(self):
        self.assertRaises(InvalidInput, process.run, "transcode", self.wav(), self.dst, {"format": "opus"},
                          limits=Limits(max_duration=1.0))


class ThumbnailTests(MediaTestCase):
    def test_png_at_a_time(self):
        result = self.run_process("thumbnail", self.mp4(), {"time": 1.0})
        self.assertEqual((result.filename_suffix, result.content_type), (".png", "image/png"))
        self.assertEqual(process.probe(result.path)["kind"], "image")
        image, = generate.read_frames(result.path)
        self.assertEqual(image.shape, (120, 160, 3))
        self.assertGreater(image.std(), 20)  # not blank
        # The frame at 1 s (index 15), not another: the square moves 7 pixels a frame.
        errors = [np.abs(image.astype(int) - generate.pattern(i)).mean() for i in (14, 15, 16)]
        self.assertEqual(errors.index(min(errors)), 1)

    def test_jpeg_scaled(self):
        result = self.run_process("thumbnail", self.mp4(), {"format": "jpeg", "width": 64})
        self.assertEqual((result.filename_suffix, result.content_type), (".jpg", "image/jpeg"))
        info = process.probe(result.path)
        self.assertEqual((info["content_type"], info["width"], info["height"]), ("image/jpeg", 64, 48))

    def test_past_the_end_is_the_last_frame(self):
        result = self.run_process("thumbnail", self.mp4(), {"time": 30})
        image, = generate.read_frames(result.path)
        errors = [np.abs(image.astype(int) - generate.pattern(i)).mean() for i in (27, 28, 29)]
        self.assertEqual(errors.index(min(errors)), 2)

    def test_of_an_image(self):
        result = self.run_process("thumbnail", self.png(), {"width": 80})
        self.assertEqual(generate.read_frames(result.path)[0].shape, (60, 80, 3))

    def test_audio_has_no_thumbnail(self):
        error = self.assertRaises(InvalidInput, process.run, "thumbnail", self.wav(), self.dst, {})
        self.assertEqual(error.message, "the file has no video stream to take a thumbnail from")
        self.assertNothingLeft()


class ExtractAudioTests(MediaTestCase):
    def test_opus_by_default(self):
        result = self.run_process("extract_audio", self.mp4(), {})
        self.assertEqual((result.filename_suffix, result.content_type), (".opus", "audio/ogg"))
        info = generate.streams(result.path)
        self.assertEqual((info["audio"], info["video"]), ("opus", None))
        self.assertDuration(result.path, 2.0, AUDIO_PACKET)
        self.assertNear(dominant_frequency(result.path), generate.TONE, 5)

    def test_wav_from_webm(self):
        result = self.run_process("extract_audio", self.webm(), {"format": "wav"})
        info = generate.streams(result.path)
        self.assertEqual((info["audio"], info["video"]), ("pcm_s16le", None))
        self.assertEqual(process.probe(result.path)["kind"], "audio")

    def test_silent_video_is_refused(self):
        self.assertRaises(InvalidInput, process.run, "extract_audio", self.mp4(audio_codec=None), self.dst, {})


class CompressTests(MediaTestCase):
    def heavy(self) -> str:
        """A noisy video at 3 Mbit/s: much more than 160x120 needs."""
        return self.mp4(bit_rate=3_000_000, noise=30)

    def test_to_a_bitrate(self):
        source = self.heavy()
        result = self.run_process("compress", source, {"bitrate": 100_000})
        self.assertEqual((result.filename_suffix, result.content_type), (".mp4", "video/mp4"))
        self.assertLess(result.size, os.path.getsize(source) / 5)
        info = generate.streams(result.path)
        self.assertEqual((info["video"], info["audio"]), ("h264", "aac"))
        self.assertDuration(result.path, 2.0, FRAME + AUDIO_PACKET)

    def test_to_a_size(self):
        source = self.heavy()
        result = self.run_process("compress", source, {"target_size": 40_000})
        self.assertLess(result.size, os.path.getsize(source))
        self.assertLessEqual(result.size, 40_000 * 1.1)

    def test_webm_stays_webm(self):
        source = self.webm(bit_rate=1_000_000, noise=30)
        result = self.run_process("compress", source, {"bitrate": 60_000})
        self.assertEqual(result.content_type, "video/webm")
        self.assertEqual(generate.streams(result.path)["video"], "vp8")
        self.assertLess(result.size, os.path.getsize(source))

    def test_a_file_already_below_the_bitrate_is_refused(self):
        error = self.assertRaises(InvalidInput, process.run, "compress", self.mp4(), self.dst,
                                  {"bitrate": 10_000_000})
        self.assertIn("already at or below", error.message)
        self.assertNothingLeft()

    def test_wav_is_refused(self):
        self.assertRaises(InvalidInput, process.run, "compress", self.wav(), self.dst, {"bitrate": 64_000})


class TrimTests(MediaTestCase):
    def test_from_a_key_frame_copies(self):
        source = self.mp4()
        result = self.run_process("trim", source, {"start": 0, "end": 1})
        self.assertEqual(result.content_type, "video/mp4")
        self.assertDuration(result.path, 1.0, FRAME + AUDIO_PACKET)
        # Copied, not re-encoded: the packets are the source's own bytes.
        self.assertEqual(first_packets(result.path), first_packets(source))

    def test_between_key_frames_re_encodes(self):
        result = self.run_process("trim", self.mp4(), {"start": 0.5, "end": 1.5})
        self.assertDuration(result.path, 1.0, FRAME + AUDIO_PACKET)
        frames = generate.read_frames(result.path)
        self.assertEqual(len(frames), 15)
        # The first frame is the one at 0.5 s or just after it (index 8 at 15 fps).
        errors = [np.abs(frames[0].astype(int) - generate.pattern(i)).mean() for i in (7, 8, 9)]
        self.assertEqual(errors.index(min(errors)), 1)

    def test_webm(self):
        source = self.webm()
        result = self.run_process("trim", source, {"end": 1.2})
        self.assertEqual((result.filename_suffix, result.content_type), (".webm", "video/webm"))
        self.assertDuration(result.path, 1.2, FRAME + AUDIO_PACKET)
        result = process.run("trim", source, self.dst, {"start": 0.4, "end": 1.2})
        self.assertDuration(result.path, 0.8, FRAME + AUDIO_PACKET)

    def test_audio(self):
        result = self.run_process("trim", self.wav(), {"start": 0.5, "end": 1.0})
        self.assertEqual(result.content_type, "audio/wav")
        self.assertDuration(result.path, 0.5, 4096 / 48000)

    def test_an_end_past_the_file_stops_at_its_end(self):
        result = self.run_process("trim", self.mp4(), {"start": 1.0, "end": 60})
        self.assertDuration(result.path, 1.0, FRAME + AUDIO_PACKET)

    def test_a_start_past_the_end_is_refused(self):
        error = self.assertRaises(InvalidInput, process.run, "trim", self.mp4(), self.dst, {"start": 5, "end": 6})
        self.assertIn("past the end", error.message)

    def test_an_image_is_refused(self):
        self.assertRaises(InvalidInput, process.run, "trim", self.png(), self.dst, {"end": 1})


class EnhanceTests(MediaTestCase):
    def enhance_image(self, image, operations, **params) -> np.ndarray:
        result = self.run_process("enhance", self.png(image), {"operations": operations, **params})
        self.assertEqual((result.filename_suffix, result.content_type), (".png", "image/png"))
        enhanced, = generate.read_frames(result.path)
        return enhanced

    def test_low_light_raises_brightness_and_contrast(self):
        dark = (generate.pattern(3).astype(float) * 0.2).astype(np.uint8)
        enhanced = self.enhance_image(dark, ["low_light"])
        self.assertGreater(luma(enhanced).mean(), luma(dark).mean() * 1.3)
        self.assertGreater(luma(enhanced).std(), luma(dark).std() * 1.3)

    def test_sharpen_raises_the_laplacian_variance(self):
        import cv2
        soft = cv2.GaussianBlur(generate.pattern(3), (0, 0), 1.0)
        enhanced = self.enhance_image(soft, ["sharpen"])
        self.assertGreater(laplacian_variance(enhanced), laplacian_variance(soft) * 1.5)

    def test_denoise_lowers_the_noise(self):
        clean = generate.pattern(3)
        noisy = generate.pattern(3, noise=25)
        enhanced = self.enhance_image(noisy, ["denoise"])
        before = (noisy.astype(float) - clean).std()
        after = (enhanced.astype(float) - clean).std()
        self.assertLess(after, before * 0.7)

    def test_upscale_doubles_the_size(self):
        self.assertEqual(self.enhance_image(generate.pattern(3), ["upscale"]).shape, (240, 320, 3))
        os.remove(os.path.join(self.dst, os.listdir(self.dst)[0]))
        self.assertEqual(self.enhance_image(generate.pattern(3), ["upscale"], scale=3).shape, (360, 480, 3))

    def test_jpeg_stays_jpeg(self):
        jpeg = generate.write_image(self.path("photo.jpg"), generate.pattern(2), "mjpeg")
        result = self.run_process("enhance", jpeg, {"operations": ["sharpen"]})
        self.assertEqual((result.filename_suffix, result.content_type), (".jpg", "image/jpeg"))
        self.assertEqual(process.probe(result.path)["content_type"], "image/jpeg")

    def test_a_video_frame_by_frame(self):
        seen = []
        result = self.run_process("enhance", self.mp4(seconds=1.0), {"operations": ["low_light", "upscale"]},
                                  progress=seen.append)
        self.assertEqual(result.content_type, "video/mp4")
        info = generate.streams(result.path)
        self.assertEqual((info["video"], info["audio"]), ("h264", "aac"))
        frames = generate.read_frames(result.path)
        self.assertEqual((len(frames), frames[0].shape), (15, (240, 320, 3)))
        self.assertDuration(result.path, 1.0, FRAME + AUDIO_PACKET)
        self.assertEqual(seen[-1], 1.0)

    def test_webm_stays_webm(self):
        result = self.run_process("enhance", self.webm(seconds=0.5), {"operations": ["sharpen"]})
        self.assertEqual((result.content_type, generate.streams(result.path)["video"]), ("video/webm", "vp8"))

    def test_an_upscale_past_the_limits_is_refused(self):
        error = self.assertRaises(InvalidInput, process.run, "enhance", self.png(), self.dst,
                                  {"operations": ["upscale"], "scale": 2}, limits=Limits(max_width=300))
        self.assertIn("320x240", error.message)

    def test_audio_is_refused(self):
        self.assertRaises(InvalidInput, process.run, "enhance", self.wav(), self.dst, {"operations": ["sharpen"]})

    def test_without_opencv_the_engine_is_unavailable(self):
        saved = sys.modules.get("cv2")
        sys.modules["cv2"] = None  # what an install without the video extra sees: ImportError
        self.addCleanup(sys.modules.__setitem__, "cv2", saved)
        error = self.assertRaises(Unavailable, process.run, "enhance", self.png(), self.dst,
                                  {"operations": ["sharpen"]})
        self.assertEqual((error.code, error.error_code), (503, AI_UNAVAILABLE))


class BadInputTests(MediaTestCase):
    def test_random_bytes_cannot_be_decoded(self):
        with open(self.path("random.mp4"), "wb") as out:
            out.write(np.random.default_rng(7).bytes(20_000))
        for process_type, params in (("transcode", {"format": "webm"}), ("thumbnail", {}),
                                     ("extract_audio", {}), ("compress", {"bitrate": 50_000}),
                                     ("trim", {"end": 1}), ("enhance", {"operations": ["sharpen"]})):
            error = self.assertRaises(InvalidInput, process.run, process_type, self.path("random.mp4"),
                                      self.dst, params)
            self.assertIn("could not be decoded", error.message, process_type)
        self.assertNothingLeft()

    def test_an_empty_file(self):
        open(self.path("empty.mp4"), "wb").close()
        for process_type in process.PROCESS_TYPES:
            params = {"transcode": {"format": "mp4"}, "compress": {"bitrate": 50_000}, "trim": {"end": 1},
                      "enhance": {"operations": ["sharpen"]}}.get(process_type, {})
            error = self.assertRaises(InvalidInput, process.run, process_type, self.path("empty.mp4"),
                                      self.dst, params)
            self.assertEqual(error.message, "the file is empty")

    def test_text_is_not_media(self):
        with open(self.path("notes.txt"), "w") as out:
            out.write("hello world\n" * 50)
        self.assertRaises(InvalidInput, process.run, "transcode", self.path("notes.txt"), self.dst,
                          {"format": "mp4"})

    def test_a_damaged_video_is_processed_around_the_damage(self):
        source = self.mp4()
        with open(source, "rb") as f:
            data = bytearray(f.read())
        middle = len(data) // 2
        data[middle:middle + 3000] = np.random.default_rng(3).bytes(3000)
        with open(self.path("damaged.mp4"), "wb") as out:
            out.write(data)
        result = self.run_process("transcode", self.path("damaged.mp4"), {"format": "webm"})
        frames = generate.read_frames(result.path)
        self.assertTrue(10 < len(frames) < 30, len(frames))
        self.assertLess(np.abs(frames[0].astype(int) - generate.pattern(0)).mean(), 12)

    def test_a_truncated_video(self):
        source = self.mp4()
        with open(source, "rb") as f:
            head = f.read(os.path.getsize(source) // 3)
        with open(self.path("truncated.mp4"), "wb") as out:
            out.write(head)
        # The index (moov) of this mp4 is at the end: without it nothing can be read.
        self.assertRaises(InvalidInput, process.run, "transcode", self.path("truncated.mp4"), self.dst,
                          {"format": "webm"})
        self.assertNothingLeft()


def luma(image: np.ndarray) -> np.ndarray:
    return image.astype(float) @ np.array([0.299, 0.587, 0.114])


def laplacian_variance(image: np.ndarray) -> float:
    import cv2
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def dominant_frequency(path: str) -> float:
    """The strongest frequency in the first audio stream, in Hz."""
    with av.open(path) as container:
        rate = container.streams.audio[0].codec_context.sample_rate
    samples = generate.read_audio(path)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def first_packets(path: str, count: int = 5) -> list[bytes]:
    with av.open(path) as container:
        packets = [bytes(p) for p in container.demux(container.streams.video[0]) if p.size]
    return packets[:count]


class OddInputTests(MediaTestCase):
    def test_mpeg_ts_without_an_index(self):
        # MPEG-TS has no index: a seek lands anywhere, so these decode from the start.
        source = generate.write_video(self.path("clip.ts"), muxer="mpegts")
        self.assertEqual(process.probe(source)["content_type"], "video/mp2t")
        result = process.run("trim", source, self.dst, {"start": 0.5, "end": 1.5})
        self.assertEqual(generate.streams(result.path)["video"], "h264")
        frames = generate.read_frames(result.path)
        self.assertEqual(len(frames), 15)
        errors = [np.abs(frames[0].astype(int) - generate.pattern(i)).mean() for i in (7, 8, 9)]
        self.assertEqual(errors.index(min(errors)), 1)
        # The muxer delays the video by 0.021 s: on screen at 1 s is frame 14 (0.955 s to 1.021 s).
        result = process.run("thumbnail", source, self.dst, {"time": 1.0})
        image, = generate.read_frames(result.path)
        errors = [np.abs(image.astype(int) - generate.pattern(i)).mean() for i in (13, 14, 15)]
        self.assertEqual(errors.index(min(errors)), 1)

    def test_odd_dimensions_become_even(self):
        # VP8 takes 161x121; H.264 in 4:2:0 needs even sizes.
        source = self.webm(width=161, height=121)
        result = self.run_process("transcode", source, {"format": "mp4"})
        height, width = generate.read_frames(result.path)[0].shape[:2]
        self.assertEqual((width % 2, height % 2), (0, 0))
        self.assertTrue(abs(width - 161) <= 1 and abs(height - 121) <= 1)

    def test_low_rate_mono_audio_to_opus(self):
        source = self.path("low.wav")
        with av.open(source, "w", format="wav") as out:
            stream = out.add_stream("pcm_s16le", rate=8000)
            stream.layout = "mono"
            t = np.arange(8000) / 8000
            frame = av.AudioFrame.from_ndarray(
                (np.sin(2 * np.pi * 440 * t) * 16000).astype(np.int16).reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = 8000
            for packet in stream.encode(frame) + stream.encode(None):
                out.mux(packet)
        result = self.run_process("transcode", source, {"format": "opus"})
        self.assertDuration(result.path, 1.0, AUDIO_PACKET)
        self.assertNear(dominant_frequency(result.path), 440, 5)

    def test_a_picture_past_the_pixel_limit_is_refused(self):
        limits = Limits(max_input_pixels=100 * 100)
        for process_type, params in (("transcode", {"format": "mp4"}), ("thumbnail", {}), ("trim", {"end": 1}),
                                     ("enhance", {"operations": ["sharpen"]})):
            error = self.assertRaises(InvalidInput, process.run, process_type, self.mp4(), self.dst, params,
                                      limits=limits)
            self.assertIn("larger than 10000 pixels", error.message)

    def test_a_video_without_audio(self):
        result = self.run_process("transcode", self.mp4(audio_codec=None), {"format": "webm"})
        info = generate.streams(result.path)
        self.assertEqual((info["video"], info["audio"]), ("vp8", None))

    def test_an_audio_only_trim_of_webm(self):
        source = generate.write_audio(self.path("voice.webm"), muxer="webm", codec="libopus")
        result = self.run_process("trim", source, {"start": 0.5, "end": 1.5})
        self.assertEqual((result.filename_suffix, result.content_type), (".webm", "audio/webm"))
        self.assertDuration(result.path, 1.0, 2 * AUDIO_PACKET)

    def test_the_source_is_left_alone(self):
        source = self.mp4()
        with open(source, "rb") as f:
            before = f.read()
        for process_type, params in (("transcode", {"format": "webm"}), ("trim", {"end": 1}),
                                     ("thumbnail", {})):
            process.run(process_type, source, self.dst, params)
        with open(source, "rb") as f:
            self.assertEqual(f.read(), before)

    def test_a_song_with_cover_art(self):
        # FFmpeg shows cover art as a video stream: it is still a song.
        cover = generate.pattern(9, 64, 64)
        song = generate.write_audio(self.path("song.mp3"), muxer="mp3", codec="libmp3lame", cover=cover)
        info = process.probe(song)
        self.assertEqual((info["kind"], info["content_type"], info["width"]), ("audio", "audio/mpeg", None))
        thumbnail = process.run("thumbnail", song, self.dst, {})
        image, = generate.read_frames(thumbnail.path)
        self.assertEqual(image.shape, (64, 64, 3))
        self.assertLess(np.abs(image.astype(int) - cover).mean(), 1)
        webm = process.run("transcode", song, self.dst, {"format": "webm"})
        self.assertEqual((webm.content_type, generate.streams(webm.path)["video"]), ("audio/webm", None))
        trimmed = process.run("trim", song, self.dst, {"start": 0.5, "end": 1.5})
        self.assertEqual(trimmed.content_type, "audio/mpeg")
        self.assertDuration(trimmed.path, 1.0, 2 * AUDIO_PACKET)
        self.assertRaises(InvalidInput, process.run, "enhance", song, self.dst, {"operations": ["sharpen"]})

    def test_mp3_compresses_as_mp3(self):
        song = generate.write_audio(self.path("song.mp3"), muxer="mp3", codec="libmp3lame")
        result = self.run_process("compress", song, {"bitrate": 32_000})
        self.assertEqual((result.content_type, generate.streams(result.path)["audio"]), ("audio/mpeg", "mp3float"))
        self.assertLess(result.size, os.path.getsize(song))
        self.assertNear(dominant_frequency(result.path), 440, 5)

    def test_an_unexpected_error_is_logged_and_reported_as_failed(self):
        def progress(fraction):
            raise RuntimeError("a bug")

        error = self.assertRaises(ProcessingFailed, process.run, "transcode", self.mp4(), self.dst,
                                  {"format": "webm"}, progress=progress)
        self.assertEqual((error.code, error.error_code, error.message), (422, AI_FAILED, "processing failed: RuntimeError"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertNothingLeft()


class RotationTests(MediaTestCase):
    """
    A phone stores a portrait video landscape, with a display matrix that
    says to turn it: sizes are reported as shown, and what is decoded and
    made again is turned upright, as players and the ffmpeg tool do.
    """

    def rotated(self, degrees=90) -> str:
        return self.mp4(name=f"portrait{degrees}.mp4", rotation=degrees)

    def assertUpright(self, image, index, turns):
        expected = np.rot90(generate.pattern(index), turns)
        self.assertEqual(image.shape, expected.shape)
        turned_wrong = np.rot90(generate.pattern(index), turns + 2)
        error = np.abs(image.astype(int) - expected).mean()
        self.assertLess(error, 6)
        self.assertLess(error, np.abs(image.astype(int) - turned_wrong).mean() / 4)

    def test_the_size_is_the_size_shown(self):
        for degrees in (90, -90):
            info = process.probe(self.rotated(degrees))
            self.assertEqual((info["width"], info["height"]), (generate.HEIGHT, generate.WIDTH))
        info = process.probe(self.rotated(180))
        self.assertEqual((info["width"], info["height"]), (generate.WIDTH, generate.HEIGHT))

    def test_a_thumbnail_is_upright(self):
        for degrees, turns in ((90, 1), (-90, 3), (180, 2)):
            result = self.run_process("thumbnail", self.rotated(degrees), {})
            image, = generate.read_frames(result.path)
            self.assertUpright(image, 0, turns)
            os.remove(result.path)

    def test_a_scaled_thumbnail_keeps_the_shown_aspect(self):
        result = self.run_process("thumbnail", self.rotated(), {"width": 60})
        image, = generate.read_frames(result.path)
        self.assertEqual(image.shape, (80, 60, 3))

    def test_re_encoded_video_is_upright_without_a_matrix(self):
        for process_type, params in (("transcode", {"format": "webm"}), ("compress", {"bitrate": 100_000}),
                                     ("trim", {"start": 0.2, "end": 1.5})):
            result = self.run_process(process_type, self.rotated(), params)
            frames = generate.read_frames(result.path)
            self.assertUpright(frames[0], 3 if process_type == "trim" else 0, 1)
            # Turned once: the result carries no display matrix to turn it again.
            info = process.probe(result.path)
            self.assertEqual((info["width"], info["height"]), (generate.HEIGHT, generate.WIDTH))
            os.remove(result.path)

    def test_a_copied_trim_keeps_the_matrix(self):
        result = self.run_process("trim", self.rotated(), {"start": 0, "end": 1})
        self.assertEqual(first_packets(result.path), first_packets(self.rotated()))
        info = process.probe(result.path)
        self.assertEqual((info["width"], info["height"]), (generate.HEIGHT, generate.WIDTH))


class LimitTests(MediaTestCase):
    def test_every_way_of_writing_is_held_to_the_output_limit(self):
        limits = Limits(max_output_bytes=1000)
        for process_type, params in (("trim", {"end": 1.5}), ("thumbnail", {}), ("transcode", {"format": "mp4"}),
                                     ("enhance", {"operations": ["upscale"]})):
            error = self.assertRaises(TooLarge, process.run, process_type, self.mp4(), self.dst, params,
                                      limits=limits)
            self.assertEqual(error.message, "the result would be larger than 1000 bytes", process_type)
            self.assertNothingLeft()

    def test_cancelling_a_copy_and_a_thumbnail(self):
        for process_type, params in (("trim", {"end": 1.5}), ("thumbnail", {"time": 1})):
            self.assertRaises(ProcessingCancelled, process.run, process_type, self.mp4(), self.dst, params,
                              cancelled=lambda: True)
            self.assertNothingLeft()

    def test_an_opus_file_to_a_size(self):
        source = generate.write_audio(self.path("voice.ogg"), muxer="ogg", codec="libopus", seconds=4.0)
        result = self.run_process("compress", source, {"target_size": os.path.getsize(source) // 3})
        self.assertEqual((result.content_type, generate.streams(result.path)["audio"]), ("audio/ogg", "opus"))
        self.assertLess(result.size, os.path.getsize(source) // 3 * 1.1)
        self.assertDuration(result.path, 4.0, AUDIO_PACKET)
