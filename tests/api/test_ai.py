"""The AI routes through the daemon's site, with the real engines running in place."""

from __future__ import annotations

import base64
import json
import struct

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from tests.ai.support import FakeInferenceServer, snr_db, speech, tone_in_noise, wav_bytes
from tests.api.harness import Api
from wecompany.ai.engines import PocketSphinxRecognizer
from wecompany.ai.service import AIEngines

BOUNDARY = "aiboundary1234"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def multipart(fields: dict, filename: str = "speech.wav", content_type: str = "audio/wav",
              field: str = "file", data: bytes = b"") -> tuple[bytes, dict]:
    out = []
    for name, value in fields.items():
        out.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    out.append(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
               f'Content-Type: {content_type}\r\n\r\n'.encode() + data + b"\r\n")
    out.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(out), {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


class HeldRunner:
    """A run_ai whose jobs wait until the test lets them run."""

    def __init__(self):
        self.jobs = []
        self.cancelled = []

    def __call__(self, f, *args):
        d = Deferred(self.cancelled.append)
        self.jobs.append((d, f, args))
        return d

    def release_all(self):
        jobs, self.jobs = self.jobs, []
        for d, f, args in jobs:
            if d in self.cancelled:
                continue  # as EngineProcesses does: a cancelled job's result is never delivered
            try:
                d.callback(f(*args))
            except Exception as error:
                d.errback(error)


class RecognitionTests(SynchronousTestCase):
    def test_base64_json_is_recognised(self):
        api = Api(self)
        token = api.user("alice")
        code, body, _ = api.request("POST", "/api/v1/speech/recognition",
                                    {"audio_data": b64(speech()), "audio_format": "wav", "language": "en-US"},
                                    token=token)
        self.assertEqual(code, 200, body)
        data = body["data"]
        self.assertEqual(data["text"], "one two three four five")
        self.assertEqual((data["language"], data["duration_ms"]), ("en-US", 2165))
        self.assertEqual([w["word"] for w in data["words"]], data["text"].split())

    def test_multipart_and_a_data_url_are_recognised(self):
        api = Api(self)
        token = api.user("alice")
        raw, headers = multipart({"language": "en"}, data=speech("hello_world"), field="audio")
        code, body, _ = api.request("POST", "/api/v1/speech/recognition", raw=raw, token=token, headers=headers)
        self.assertEqual(code, 200, body)
        self.assertIn("hello", body["data"]["text"].split())
        code, body, _ = api.request("POST", "/api/v1/speech/recognition",
                                    {"audio_data": "data:audio/wav;base64," + b64(speech())}, token=token)
        self.assertEqual(body["data"]["text"], "one two three four five")

    def test_raw_pcm(self):
        api = Api(self)
        token = api.user("alice")
        pcm = speech()[44:]
        code, body, _ = api.request("POST", "/api/v1/speech/recognition",
                                    {"audio_data": b64(pcm), "format": "pcm", "sample_rate": 16000}, token=token)
        self.assertEqual((code, body["data"]["text"]), (200, "one two three four five"))

    def test_bad_input_is_400_saying_why(self):
        api = Api(self)
        token = api.user("alice")
        for body, reason in (({"audio_data": "%%%not base64"}, "not valid base64"),
                             ({"audio_data": b64(b"hello there, not audio" * 20)}, "cannot be read"),
                             ({"audio_data": b64(speech()), "format": "exe"}, "not supported"),
                             ({"audio_data": b64(b"\0" * 100), "format": "pcm"}, "sample_rate"),
                             ({"audio_data": b64(speech()), "language": "fr"}, "language"),
                             ({}, "send the audio")):
            code, answer, _ = api.request("POST", "/api/v1/speech/recognition", body, token=token)
            self.assertEqual(code, 400, (body.keys(), answer))
            self.assertRegex(answer["message"], reason)

    def test_too_long_and_too_large(self):
        import numpy as np
        api = Api(self, ai_max_audio_seconds=1, ai_max_audio_bytes=200_000)
        token = api.user("alice")
        code, body, _ = api.request("POST", "/api/v1/speech/recognition", {"audio_data": b64(speech())},
                                    token=token)
        self.assertEqual(code, 400)
        self.assertIn("longer than 1 seconds", body["message"])
        big = wav_bytes(np.zeros(150_000, np.float32), 16000)  # 300 kB: over the bytes, under the body limit
        code, body, _ = api.request("POST", "/api/v1/speech/recognition", {"audio_data": b64(big)}, token=token)
        self.assertEqual(code, 413, body)

    def test_a_token_is_required(self):
        api = Api(self)
        for path in ("/api/v1/speech/recognition", "/api/v1/speech/emotion", "/api/v1/speech/synthesis-detection",
                     "/api/v1/audio/denoising"):
            code, body, _ = api.request("POST", path, {"audio_data": b64(speech())})
            self.assertEqual(code, 401, path)

    def test_a_missing_engine_is_503_4001(self):
        engines = AIEngines(recognizer=PocketSphinxRecognizer(modules=("no_such_module_here",)))
        api = Api(self, ai_engines=engines)
        token = api.user("alice")
        code, body, _ = api.request("POST", "/api/v1/speech/recognition", {"audio_data": b64(speech())},
                                    token=token)
        self.assertEqual((code, body["error_code"]), (503, 4001))
        self.assertIn("not installed", body["message"])

    def test_an_engine_that_fails_is_422_4002(self):
        class Broken(PocketSphinxRecognizer):
            def run(self, samples):
                raise RuntimeError("decoder exploded")

        api = Api(self, ai_engines=AIEngines(recognizer=Broken()))
        token = api.user("alice")
        code, body, _ = api.request("POST", "/api/v1/speech/recognition", {"audio_data": b64(speech())},
                                    token=token)
        self.assertEqual((code, body["error_code"]), (422, 4002))
        self.flushLoggedErrors(RuntimeError)


class PoolTests(SynchronousTestCase):
    def _start(self, api, token, n):
        ds = []
        for _ in range(n):
            ds.append(api.treq.request("POST", "http://localhost/api/v1/speech/recognition",
                                       data=json.dumps({"audio_data": b64(speech())}).encode(),
                                       headers={"Authorization": [f"Bearer {token}"],
                                                "Content-Type": ["application/json"]}))
        api.agent.flush()
        return ds

    def test_past_max_pending_is_503_busy_and_the_slots_come_back(self):
        runner = HeldRunner()
        api = Api(self, run_ai=runner, ai_max_pending=2)
        token = api.user("alice")
        held = self._start(api, token, 2)
        code, body, _ = api.request("POST", "/api/v1/speech/recognition", {"audio_data": b64(speech())},
                                    token=token)
        self.assertEqual((code, body["error_code"]), (503, 4001))
        self.assertIn("busy", body["message"])
        self.assertEqual(api.domain.ai.in_flight, 2)
        runner.release_all()
        api.agent.flush()
        for d in held:
            self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(api.domain.ai.in_flight, 0)

    def test_a_request_past_the_timeout_is_503_and_its_job_is_cancelled(self):
        runner = HeldRunner()
        api = Api(self, run_ai=runner, ai_max_pending=1, ai_timeout=5)
        token = api.user("alice")
        [d] = self._start(api, token, 1)
        [(job, _, _)] = runner.jobs
        api.clock.advance(5)
        api.agent.flush()
        response = self.successResultOf(d)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual((response.code, body["error_code"]), (503, 4001))
        self.assertIn("did not finish within 5 s", body["message"])
        # The runner was told to stop the work (EngineProcesses kills its worker): the slot is free.
        self.assertEqual(runner.cancelled, [job])
        self.assertEqual(api.domain.ai.in_flight, 0)
        [held] = self._start(api, token, 1)
        runner.release_all()
        api.agent.flush()
        self.assertEqual(self.successResultOf(held).code, 200)


class DenoisingTests(SynchronousTestCase):
    def test_denoised_audio_is_cleaner_and_in_the_inputs_format(self):
        api = Api(self)
        token = api.user("alice")
        clean, noisy = tone_in_noise()
        code, body, _ = api.request("POST", "/api/v1/audio/denoising",
                                    {"audio_data": b64(wav_bytes(noisy, 48000)), "engine": "spectral-gate"},
                                    token=token)
        self.assertEqual(code, 200, body)
        data = body["data"]
        self.assertEqual((data["audio_format"], data["sample_rate"], data["duration_ms"]), ("wav", 48000, 2000))
        from wecompany.ai.audio import decode
        out = decode(base64.b64decode(data["audio_data"]), 48000)
        self.assertGreater(snr_db(clean, out.samples) - snr_db(clean, noisy), 6)

    def test_output_format_and_rnnoise_by_default(self):
        api = Api(self)
        token = api.user("alice")
        raw, headers = multipart({"output_format": "ogg"}, data=speech())
        code, body, _ = api.request("POST", "/api/v1/audio/denoising", raw=raw, token=token, headers=headers)
        self.assertEqual(code, 200, body)
        self.assertEqual((body["data"]["audio_format"], body["data"]["engine"]), ("ogg", "rnnoise"))
        self.assertEqual(base64.b64decode(body["data"]["audio_data"])[:4], b"OggS")
        code, body, _ = api.request("POST", "/api/v1/audio/denoising",
                                    {"audio_data": b64(speech()), "engine": "magic"}, token=token)
        self.assertEqual(code, 400)


class EmotionAndSynthesisTests(SynchronousTestCase):
    def test_text_sentiment_says_it_is_sentiment(self):
        api = Api(self)
        token = api.user("alice")
        code, body, _ = api.request("POST", "/api/v1/speech/emotion", {"text": "I love this meeting, great work!"},
                                    token=token)
        self.assertEqual(code, 200, body)
        self.assertEqual((body["data"]["emotion"], body["data"]["kind"]), ("positive", "sentiment"))
        self.assertEqual(set(body["data"]["emotions"]), {"positive", "neutral", "negative"})

    def test_without_a_model_speech_is_503_4001(self):
        api = Api(self)
        token = api.user("alice")
        for path in ("/api/v1/speech/emotion", "/api/v1/speech/synthesis-detection"):
            code, body, _ = api.request("POST", path, {"audio_data": b64(speech())}, token=token)
            self.assertEqual((code, body["error_code"]), (503, 4001), path)

    def _kserve_api(self, outputs, **options):
        server = FakeInferenceServer(outputs)
        stub = StubTreq(server)
        api = Api(self, ai_http=stub, kserve_url="http://inference.test:8000", emotion_model="emo",
                  synthesis_model="synth", **options)
        return api, server, stub

    def _post(self, api, stub, path, body, token):
        d = api.treq.request("POST", "http://localhost" + path, data=json.dumps(body).encode(),
                             headers={"Authorization": [f"Bearer {token}"], "Content-Type": ["application/json"]})
        api.agent.flush()
        stub.flush()
        api.agent.flush()
        response = self.successResultOf(d)
        return response.code, json.loads(self.successResultOf(response.content()))

    def test_emotion_and_synthesis_through_kserve(self):
        api, server, stub = self._kserve_api({
            "emo": [{"name": "labels", "shape": [3], "datatype": "BYTES", "data": ["angry", "happy", "neutral"]},
                    {"name": "logits", "shape": [1, 3], "datatype": "FP32", "data": [0.0, 2.0, 1.0]}],
            "synth": [{"name": "score", "shape": [1], "datatype": "FP32", "data": [0.9]}]})
        token = api.user("alice")
        code, body = self._post(api, stub, "/api/v1/speech/emotion", {"audio_data": b64(speech())}, token)
        self.assertEqual(code, 200, body)
        self.assertEqual(body["data"]["emotion"], "happy")
        self.assertAlmostEqual(sum(body["data"]["emotions"].values()), 1.0, places=3)
        model, sent = server.requests[0]
        [tensor] = sent["inputs"]
        self.assertEqual((model, tensor["name"], tensor["datatype"]), ("emo", "audio", "FP32"))
        self.assertEqual(tensor["shape"], [1, len(tensor["data"])])
        self.assertAlmostEqual(len(tensor["data"]) / 16000, 2.165, places=2)
        code, body = self._post(api, stub, "/api/v1/speech/synthesis-detection", {"audio_data": b64(speech())},
                                token)
        self.assertEqual((code, body["data"]), (200, {"is_synthetic": True, "confidence": 0.9, "score": 0.9,
                                                      "engine": "kserve:synth"}))

    def test_binary_tensor_data_carries_the_same_samples(self):
        """--kserve-binary: the same audio as raw float32 after the JSON, 2.6 times smaller than the JSON array."""
        outputs = {"emo": [{"name": "labels", "shape": [2], "datatype": "BYTES", "data": ["calm", "happy"]},
                           {"name": "p", "shape": [1, 2], "datatype": "FP32", "data": [0.2, 0.8]}], "synth": []}
        sent = {}
        for binary in (False, True):
            api, server, stub = self._kserve_api(outputs, kserve_binary=binary)
            token = api.user("alice")
            code, body = self._post(api, stub, "/api/v1/speech/emotion", {"audio_data": b64(speech())}, token)
            self.assertEqual((code, body["data"]["emotion"]), (200, "happy"), body)
            [(model, request)] = server.requests
            [tensor] = request["inputs"]
            sent[binary] = tensor
        self.assertEqual(sent[True]["shape"], sent[False]["shape"])
        self.assertEqual(sent[True]["parameters"], {"binary_data_size": 4 * sent[False]["shape"][1]})
        for json_value, raw in zip(sent[False]["data"], sent[True]["data"]):
            self.assertLess(abs(json_value - raw), 1e-5)  # JSON keeps 5 decimals

    def test_the_binary_request_layout(self):
        from wecompany.ai.kserve import audio_request
        request = audio_request([0.5, -0.25, 1.0], binary=True)
        header = json.loads(request.body[:request.header_length])
        self.assertEqual(header, {"inputs": [{"name": "audio", "shape": [1, 3], "datatype": "FP32",
                                              "parameters": {"binary_data_size": 12}}]})
        self.assertEqual(request.body[request.header_length:], struct.pack("<3f", 0.5, -0.25, 1.0))
        self.assertIsNone(audio_request([0.5]).header_length)

    def test_kserve_failures(self):
        api, server, stub = self._kserve_api({"emo": (500, b"oops"), "synth": (400, b"bad tensor")})
        token = api.user("alice")
        code, body = self._post(api, stub, "/api/v1/speech/emotion", {"audio_data": b64(speech())}, token)
        self.assertEqual((code, body["error_code"]), (503, 4001))
        code, body = self._post(api, stub, "/api/v1/speech/synthesis-detection", {"audio_data": b64(speech())},
                                token)
        self.assertEqual((code, body["error_code"]), (422, 4002))
        server.outputs["emo"] = [{"name": "logits", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]
        code, body = self._post(api, stub, "/api/v1/speech/emotion", {"audio_data": b64(speech())}, token)
        self.assertEqual((code, body["error_code"]), (422, 4002))
        self.assertIn("labels", body["message"])
        code, info, _ = api.request("GET", "/api/v1/ai/info", token=token)
        kinds = {e["kind"]: e for e in info["data"]["engines"]}
        self.assertEqual(kinds["emotion"]["url"], "http://inference.test:8000")

    def test_configured_labels(self):
        api, server, stub = self._kserve_api(
            {"emo": [{"name": "p", "shape": [1, 2], "datatype": "FP32", "data": [0.25, 0.75]}], "synth": []},
            emotion_labels="calm,excited")
        token = api.user("alice")
        code, body = self._post(api, stub, "/api/v1/speech/emotion", {"audio_data": b64(speech())}, token)
        self.assertEqual((code, body["data"]["emotion"], body["data"]["confidence"]), (200, "excited", 0.75))

    def test_kserve_that_never_answers_times_out(self):
        class Silent(FakeInferenceServer):
            def render_POST(self, request):
                from twisted.web.server import NOT_DONE_YET
                return NOT_DONE_YET

        stub = StubTreq(Silent({}))
        api = Api(self, ai_http=stub, kserve_url="http://inference.test:8000", emotion_model="emo", ai_timeout=3)
        token = api.user("alice")
        d = api.treq.request("POST", "http://localhost/api/v1/speech/emotion",
                             data=json.dumps({"audio_data": b64(speech())}).encode(),
                             headers={"Authorization": [f"Bearer {token}"], "Content-Type": ["application/json"]})
        api.agent.flush()
        stub.flush()
        api.clock.advance(3)
        stub.flush()
        api.agent.flush()
        response = self.successResultOf(d)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual((response.code, body["error_code"]), (503, 4001))


class AnonymousAliasTests(SynchronousTestCase):
    def test_off_by_default_with_a_clear_403_but_a_token_is_served(self):
        api = Api(self)
        for method, path, body in (("GET", "/api/v1/ai/health", None), ("GET", "/api/v1/ai/info", None),
                                   ("POST", "/api/v1/ai/asr", {"audio_data": b64(speech())}),
                                   ("POST", "/api/v1/ai/emotion", {"text": "fine"}),
                                   ("POST", "/api/v1/ai/synthesis", {"audio_data": b64(speech())})):
            code, answer, _ = api.request(method, path, body)
            self.assertEqual(code, 403, path)
            self.assertIn("--ai-anonymous", answer["message"])
        token = api.user("alice")
        code, answer, _ = api.request("POST", "/api/v1/ai/asr", {"audio_data": b64(speech())}, token=token)
        self.assertEqual((code, answer["data"]["text"]), (200, "one two three four five"))
        code, answer, _ = api.request("GET", "/api/v1/ai/health", token="not-a-token")
        self.assertEqual(code, 401)

    def test_on_with_the_flag_and_rate_limited_per_address(self):
        api = Api(self, ai_anonymous=True, ai_anonymous_rate=0.5, ai_anonymous_burst=2)
        code, body, _ = api.request("GET", "/api/v1/ai/info")
        self.assertEqual(code, 200, body)
        statuses = {e["name"]: e for e in body["data"]["engines"]}
        self.assertEqual(statuses["pocketsphinx"]["version"], "5.1.1")
        self.assertTrue(body["data"]["anonymous"])
        code, body, _ = api.request("POST", "/api/v1/ai/asr", {"audio_data": b64(speech())})
        self.assertEqual((code, body["data"]["text"]), (200, "one two three four five"))
        code, body, response = api.request("POST", "/api/v1/ai/asr", {"audio_data": b64(speech())})
        self.assertEqual(code, 429)
        self.assertTrue(response.headers.getRawHeaders("retry-after"))
        api.clock.advance(2)
        code, body, _ = api.request("GET", "/api/v1/ai/health")
        self.assertEqual(code, 200)
        self.assertEqual(body["data"]["engines"]["recognition:pocketsphinx"], "loaded")


class MediaIdTests(SynchronousTestCase):
    """Audio named by a stored media item (``media_id``) instead of sent."""

    def test_a_stored_item_is_recognised_for_those_who_may_read_it(self):
        from tests.api.test_media import form
        api = Api(self)
        alice, bob = api.user("alice"), api.user("bob")
        raw, headers = form(("file", speech(), "numbers.wav", "audio/wav"))
        code, reply, _ = api.request("POST", "/api/v1/media/upload", token=alice, raw=raw, headers=headers)
        self.assertEqual(code, 201, reply)
        media_id = reply["data"]["id"]
        code, body, _ = api.request("POST", "/api/v1/speech/recognition", {"media_id": media_id}, token=alice)
        self.assertEqual((code, body["data"]["text"]), (200, "one two three four five"), body)
        code, body, _ = api.request("POST", "/api/v1/speech/recognition", {"media_id": media_id}, token=bob)
        self.assertEqual((code, body["error_code"]), (404, 3002))  # not his to read
        code, body, _ = api.request("POST", "/api/v1/speech/recognition", {"media_id": 999999}, token=alice)
        self.assertEqual(code, 404)

    def test_an_item_over_the_audio_limit_is_413(self):
        from tests.api.test_media import form
        api = Api(self, ai_max_audio_bytes=20_000)
        alice = api.user("alice")
        raw, headers = form(("file", speech(), "numbers.wav", "audio/wav"))
        code, reply, _ = api.request("POST", "/api/v1/media/upload", token=alice, raw=raw, headers=headers)
        self.assertEqual(code, 201, reply)
        code, body, _ = api.request("POST", "/api/v1/speech/recognition", {"media_id": reply["data"]["id"]},
                                    token=alice)
        self.assertEqual(code, 413, body)
