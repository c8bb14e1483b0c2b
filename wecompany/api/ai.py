"""
``/api/v1/speech``, ``/api/v1/audio`` and ``/api/v1/ai``: the AI engines (docs/ai.rst).

Audio comes as base64 JSON (``audio_data`` with ``audio_format`` or
``format``, ``sample_rate``, ``channels``, ``language``), as
``multipart/form-data`` (the file in field ``file`` or ``audio``, the
other fields beside it), or as a ``media_id`` once a media store resolves
ids (:attr:`~wecompany.ai.service.AIService.resolve_media`; until then a
``media_id`` is 400). All the work is the domain's
:class:`~wecompany.ai.service.AIService`, in the AI worker processes.

The ``/api/v1/ai/`` routes are what browser clients of this family call
without a token. With a Bearer token they serve its user; without one they
answer 403 unless the operator turned them on with ``--ai-anonymous``, and
then they are rate-limited per client address (``--ai-anonymous-rate``).
403 rather than 404: the route exists, and the client is told why it
cannot use it and what to do instead.
"""

from __future__ import annotations

from wecompany.ai.audio import canonical_format
from wecompany.ai.service import AudioInput
from wecompany.api.routing import PUBLIC, Call, endpoint
from wecompany.api.validation import Field, parse_fields
from wecompany.errors import Forbidden, InvalidInput

MULTIPART = "multipart/form-data"
_AUDIO_FIELDS = {
    "audio_data": Field("string", description="the audio, base64 (a data: URL prefix is allowed)"),
    "audio_format": Field("string", max_length=32,
                          description="wav, pcm (s16le), webm, ogg, mp3 or flac; found from the bytes when "
                                      "omitted (except pcm)"),
    "format": Field("string", max_length=32, description="the same as audio_format"),
    "sample_rate": Field("integer", minimum=8000, maximum=192000, description="of pcm input (required for it)"),
    "channels": Field("integer", minimum=1, maximum=8, description="of pcm input (interleaved); default 1"),
    "language": Field("string", max_length=16, description="en or en-US (the only language offered)"),
    "media_id": Field("integer", minimum=1, description="a stored media item instead of audio_data "
                                                        "(not supported yet: 400)"),
}
RECOGNITION_BODY = _AUDIO_FIELDS
EMOTION_BODY = {**_AUDIO_FIELDS, "text": Field("string", max_length=10_000,
                                               description="text instead of audio (its sentiment: VADER)")}
DENOISE_BODY = {**_AUDIO_FIELDS,
                "output_format": Field("string", max_length=32,
                                       description="format of the answer (default: the input's)"),
                "engine": Field("string", choices=("rnnoise", "spectral-gate"),
                                description="rnnoise (speech) or spectral-gate; default --ai-denoiser")}

_NUMBER = {"type": "number"}
_STRING = {"type": "string"}
RECOGNITION_SCHEMA = {"type": "object", "required": ["text", "confidence", "language", "duration_ms"], "properties": {
    "text": _STRING, "confidence": _NUMBER, "language": _STRING, "duration_ms": {"type": "integer"},
    "engine": _STRING,
    "words": {"type": "array", "items": {"type": "object", "properties": {
        "word": _STRING, "start_ms": {"type": "integer"}, "end_ms": {"type": "integer"}, "confidence": _NUMBER}}}}}
EMOTION_SCHEMA = {"type": "object", "required": ["emotion", "confidence", "emotions"], "properties": {
    "emotion": _STRING, "confidence": _NUMBER, "emotions": {"type": "object", "additionalProperties": _NUMBER},
    "kind": {"type": "string", "enum": ["emotion", "sentiment"]}, "engine": _STRING}}
SYNTHESIS_SCHEMA = {"type": "object", "required": ["is_synthetic", "confidence", "score"], "properties": {
    "is_synthetic": {"type": "boolean"}, "confidence": _NUMBER, "score": _NUMBER, "engine": _STRING}}
DENOISE_SCHEMA = {"type": "object", "required": ["audio_data", "audio_format", "sample_rate", "duration_ms"],
                  "properties": {"audio_data": _STRING, "audio_format": _STRING, "sample_rate": {"type": "integer"},
                                 "duration_ms": {"type": "integer"}, "engine": _STRING}}
HEALTH_SCHEMA = {"type": "object", "required": ["status", "engines"], "properties": {
    "status": _STRING, "engines": {"type": "object", "additionalProperties": _STRING},
    "in_flight": {"type": "integer"}, "max_pending": {"type": "integer"}}}
INFO_SCHEMA = {"type": "object", "required": ["engines"], "properties": {
    "engines": {"type": "array", "items": {"type": "object", "additionalProperties": True}},
    "limits": {"type": "object", "additionalProperties": True}, "audio_formats": {"type": "array", "items": _STRING},
    "anonymous": {"type": "boolean"}, "denoisers": {"type": "array", "items": _STRING},
    "default_denoiser": _STRING}}

_AI_ERRORS = (400, 401, 413, 422, 503)
_ALIAS_ERRORS = (400, 401, 403, 413, 422, 429, 503)
_ALIAS_NOTE = (" Without a token: 403 unless the server runs with --ai-anonymous, then rate-limited per "
               "client address.")


def ai_body_limits(max_audio_bytes: int) -> tuple[tuple[bytes, int], ...]:
    """The site's body limits of the AI routes: the audio as base64, and room for the rest."""
    limit = (max_audio_bytes + 2) // 3 * 4 + (64 << 10)
    return tuple((prefix, limit) for prefix in (b"/api/v1/speech/", b"/api/v1/audio/denoising", b"/api/v1/ai/"))


class AIRoutes:
    """Mixin of :class:`~wecompany.api.app.RestAPI`; needs ``self.ai`` (the domain's AIService)."""

    # -- with a token ---------------------------------------------------------------

    @endpoint("POST", "/v1/speech/recognition", summary="Speech to text (PocketSphinx, US English)", tag="ai",
              body=RECOGNITION_BODY, raw_body=MULTIPART, data=RECOGNITION_SCHEMA, errors=_AI_ERRORS)
    async def speech_recognition(self, call: Call):
        return await self._recognize(call)

    @endpoint("POST", "/v1/speech/emotion",
              summary="The emotion in speech (a KServe model, --emotion-model), or the sentiment of {text}",
              tag="ai", body=EMOTION_BODY, raw_body=MULTIPART, data=EMOTION_SCHEMA, errors=_AI_ERRORS)
    async def speech_emotion(self, call: Call):
        return await self._emotion(call)

    @endpoint("POST", "/v1/speech/synthesis-detection",
              summary="Whether speech is synthetic (a KServe model, --synthesis-model)", tag="ai",
              body=RECOGNITION_BODY, raw_body=MULTIPART, data=SYNTHESIS_SCHEMA, errors=_AI_ERRORS)
    async def speech_synthesis_detection(self, call: Call):
        return await self._synthesis(call)

    @endpoint("POST", "/v1/audio/denoising", summary="Denoised audio (RNNoise or spectral gating), base64",
              tag="ai", body=DENOISE_BODY, raw_body=MULTIPART, data=DENOISE_SCHEMA, errors=_AI_ERRORS)
    async def audio_denoising(self, call: Call):
        fields, source = await self._audio_request(call, DENOISE_BODY)
        return await self.ai.denoise(source, fields.get("output_format"), fields.get("engine"))

    # -- also without one (browser clients), when --ai-anonymous allows ----------------------

    @endpoint("GET", "/v1/ai/health", summary="Which AI engines are ready." + _ALIAS_NOTE, tag="ai", auth=PUBLIC,
              data=HEALTH_SCHEMA, errors=(401, 403, 429))
    async def ai_health(self, call: Call):
        await self._ai_caller(call)
        return self.ai.health()

    @endpoint("GET", "/v1/ai/info", summary="The AI engines: versions, models, limits." + _ALIAS_NOTE, tag="ai",
              auth=PUBLIC, data=INFO_SCHEMA, errors=(401, 403, 429))
    async def ai_info(self, call: Call):
        await self._ai_caller(call)
        return self.ai.info()

    @endpoint("POST", "/v1/ai/asr", summary="/speech/recognition for browser clients." + _ALIAS_NOTE, tag="ai",
              auth=PUBLIC, body=RECOGNITION_BODY, raw_body=MULTIPART, data=RECOGNITION_SCHEMA,
              errors=_ALIAS_ERRORS)
    async def ai_asr(self, call: Call):
        call.user = await self._ai_caller(call)
        return await self._recognize(call)

    @endpoint("POST", "/v1/ai/emotion", summary="/speech/emotion for browser clients." + _ALIAS_NOTE, tag="ai",
              auth=PUBLIC, body=EMOTION_BODY, raw_body=MULTIPART, data=EMOTION_SCHEMA, errors=_ALIAS_ERRORS)
    async def ai_emotion(self, call: Call):
        call.user = await self._ai_caller(call)
        return await self._emotion(call)

    @endpoint("POST", "/v1/ai/synthesis", summary="/speech/synthesis-detection for browser clients." + _ALIAS_NOTE,
              tag="ai", auth=PUBLIC, body=RECOGNITION_BODY, raw_body=MULTIPART, data=SYNTHESIS_SCHEMA,
              errors=_ALIAS_ERRORS)
    async def ai_synthesis(self, call: Call):
        call.user = await self._ai_caller(call)
        return await self._synthesis(call)

    # -- shared --------------------------------------------------------------------------

    async def _ai_caller(self, call: Call):
        """The token's user; or None for an anonymous caller the server admits (rate-limited); else 403."""
        if call.request.getHeader(b"authorization"):
            return await self.authenticate(call.request)
        if not self.ai.anonymous:
            raise Forbidden("the AI endpoints without a token are off on this server (its operator can turn "
                            "them on with --ai-anonymous): send a Bearer token, or use /api/v1/speech/...")
        await self.ai.anonymous_limiter.hit(self.client_address(call.request))
        return None

    async def _recognize(self, call: Call):
        fields, source = await self._audio_request(call, RECOGNITION_BODY)
        return await self.ai.recognize(source, fields.get("language"))

    async def _emotion(self, call: Call):
        fields = self._fields(call, EMOTION_BODY)
        if "text" in fields and not _has_audio(call, fields):
            return await self.ai.emotion_of_text(fields["text"])
        fields, source = await self._audio_request(call, EMOTION_BODY, fields)
        return await self.ai.emotion_of_speech(source)

    async def _synthesis(self, call: Call):
        _, source = await self._audio_request(call, RECOGNITION_BODY)
        return await self.ai.detect_synthesis(source)

    def _fields(self, call: Call, spec: dict) -> dict:
        form = getattr(call.request, "form", None)
        if form is None:
            return call.body
        document = {}
        for name, parts in form.items():
            field = spec.get(name)
            if field is None or name in ("file", "audio") or parts[0].filename is not None:
                continue
            try:
                text = parts[0].data.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"{name} is not valid UTF-8") from None
            if field.kind == "integer":
                if not text.strip().isdigit():
                    raise InvalidInput(f"{name} must be an integer")
                document[name] = int(text)
            else:
                document[name] = text
        return parse_fields(spec, document)

    async def _audio_request(self, call: Call, spec: dict, fields: dict | None = None):
        """-> (the request's fields, the :class:`AudioInput` they and the body describe)."""
        if fields is None:
            fields = self._fields(call, spec)
        declared = fields.get("audio_format") or fields.get("format")
        options = {"format": declared, "sample_rate": fields.get("sample_rate"),
                   "channels": fields.get("channels", 1)}
        canonical_format(declared)  # an unknown format is 400 before anything is decoded
        form = getattr(call.request, "form", None)
        if form is not None:
            parts = form.get("file") or form.get("audio")
            if not parts:
                raise InvalidInput("send the audio as multipart/form-data field 'file' (or 'audio')")
            part = parts[0]
            if declared is None:
                options["format"] = _format_of_part(part)
            return fields, AudioInput(data=part.data, **options)
        if fields.get("audio_data") is not None:
            return fields, AudioInput(base64_text=fields["audio_data"], **options)
        if fields.get("media_id") is not None:
            resolve = self.ai.resolve_media
            if resolve is None:
                # The hook for the media store: once it exists, build_domain is given its resolver.
                raise InvalidInput("media_id is not supported yet: send audio_data (base64) or a multipart file")
            return fields, AudioInput(data=await resolve(call.user, fields["media_id"]), **options)
        raise InvalidInput("send the audio: audio_data (base64) in JSON, a multipart field 'file' or 'audio', "
                           "or a media_id")


def _has_audio(call: Call, fields: dict) -> bool:
    form = getattr(call.request, "form", None)
    if form is not None:
        return bool(form.get("file") or form.get("audio"))
    return fields.get("audio_data") is not None or fields.get("media_id") is not None


def _format_of_part(part) -> str | None:
    """What a multipart file's name or type says of its format; None (let FFmpeg find out) when nothing."""
    for hint in (part.content_type, (part.filename or "").rpartition(".")[2]):
        try:
            found = canonical_format(hint)
        except InvalidInput:
            continue
        if found is not None:
            return found
    return None
