"""
``/api/v1/media``: upload, download, list, look at and delete media items.

An upload's file part is never whole in memory: the site hands it, chunk by
chunk as the push parser finds it, to a :class:`~wecompany.web.spool.SpoolUpload`
made here (:meth:`MediaRoutes.upload_sinks`), which writes and hashes it in
the disk thread pool and pauses the connection while the disk is behind.
While the body arrives, the caller's token and quota are checked against
the declared length, so an upload that cannot succeed is refused before it
is read. Downloads stream from the storage a block at a time
(:class:`~wecompany.web.download.StoredFile`).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from wecompany.api.routing import Call, endpoint
from wecompany.api.validation import PAGE, Field
from wecompany.api.views import MESSAGE_SCHEMA, page_schema, page_view
from wecompany.domain.ids import MAX_ID
from wecompany.domain.media import FORM_SLACK, check_file_type
from wecompany.errors import InvalidInput, WeCompanyError
from wecompany.media.process import ENHANCE_OPERATIONS, PROCESS_TYPES
from wecompany.times import rfc3339
from wecompany.web.download import StoredFile
from wecompany.web.spool import SpoolUpload

UPLOAD_PATH = b"/api/v1/media/upload"

log = Logger()

MEDIA_SCHEMA = {
    "type": "object",
    "required": ["id", "filename", "content_type", "size", "sha256", "file_type", "meeting_id", "uploader_id",
                 "created_at", "download_url"],
    "properties": {
        "id": {"type": "integer"},
        "filename": {"type": "string"},
        "content_type": {"type": "string", "description": "sniffed from the bytes, not taken from the client"},
        "size": {"type": "integer"},
        "sha256": {"type": "string", "description": "lower-case hex"},
        "file_type": {"type": "string", "description": "the client's file_type, else image|audio|video|document|other"},
        "meeting_id": {"type": "integer", "nullable": True},
        "uploader_id": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"},
        "download_url": {"type": "string"},
        "duration_ms": {"type": "integer", "description": "audio and video"},
        "width": {"type": "integer", "description": "video and images"},
        "height": {"type": "integer", "description": "video and images"},
    },
}

PROCESS_FIELDS = {
    "media_id": Field("integer", required=True, minimum=1),
    "process_type": Field("string", required=True, choices=PROCESS_TYPES),
    "params": Field("object", nullable=True, description="the process type's parameters (docs/media-processing.rst)"),
}

ENHANCE_FIELDS = {
    "media_id": Field("integer", required=True, minimum=1),
    "operations": Field("array", required=True, max_length=len(ENHANCE_OPERATIONS),
                        description="any of " + ", ".join(ENHANCE_OPERATIONS)),
    "scale": Field("integer", minimum=2, description="upscale factor (with operations upscale)"),
}

JOB_STARTED_SCHEMA = {"type": "object", "required": ["job_id", "status"],
                      "properties": {"job_id": {"type": "string"}, "status": {"type": "string"}}}

JOB_SCHEMA = {
    "type": "object", "required": ["job_id", "status", "progress", "result_media_id", "error"],
    "properties": {
        "job_id": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
        "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "result_media_id": {"type": "integer", "nullable": True, "description": "the result item, once done"},
        "error": {"type": "string", "nullable": True, "description": "why it failed"},
    },
}

MEDIA_LIST_QUERY = {
    "meeting_id": Field("integer", minimum=1, maximum=MAX_ID, description="only this meeting's media"),
    **PAGE,
}


def media_view(record) -> dict:
    view = {
        "id": record.id, "filename": record.filename, "content_type": record.content_type, "size": record.size,
        "sha256": record.sha256, "file_type": record.file_type, "meeting_id": record.meeting_id,
        "uploader_id": record.uploader_id, "created_at": rfc3339(record.created_at),
        "download_url": f"/api/v1/media/download/{record.id}",
    }
    for name in ("duration_ms", "width", "height"):
        value = getattr(record, name)
        if value is not None:
            view[name] = value
    return view


def _field(form: dict, name: str) -> str | None:
    parts = form.get(name)
    if not parts:
        return None
    if parts[0].spool is not None:
        raise InvalidInput(f"{name} must be a plain field, not a file")
    try:
        return parts[0].data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidInput(f"{name} is not valid UTF-8") from None


def _meeting_id(form: dict) -> int | None:
    text = _field(form, "meeting_id")
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or not 0 < int(text) <= MAX_ID:
        raise InvalidInput("meeting_id must be a meeting id (a positive integer)")
    return int(text)


class MediaRoutes:
    """Mixin of :class:`~wecompany.api.app.RestAPI` (``self.media`` is the domain's MediaService)."""

    # -- what the site streams ----------------------------------------------------
    def body_limits(self) -> tuple:
        """(path, bytes) of the bodies this API takes larger than the site's default."""
        return ((UPLOAD_PATH, self.media.max_upload + FORM_SLACK),)

    def upload_sinks(self) -> tuple:
        """(path, make_sink(request, declared length)) of the uploads streamed to disk."""
        return ((UPLOAD_PATH, self._media_sink),)

    def _media_sink(self, request, length: int | None) -> SpoolUpload:
        upload = SpoolUpload(self.media.spool_dir, self.domain.run_disk, request.channel.transport,
                             self.media.max_upload)
        d = Deferred.fromCoroutine(self._admit_upload(request, length))
        d.addErrback(self._refuse_upload, upload)
        return upload

    async def _admit_upload(self, request, length: int | None) -> None:
        user = await self.authenticate(request)
        await self.media.admit(user.id, length)

    @staticmethod
    def _refuse_upload(failure, upload: SpoolUpload) -> None:
        if failure.check(WeCompanyError):
            upload.refuse(failure.value)
        else:
            log.failure("checking an upload failed", failure)

    # -- routes -------------------------------------------------------------------
    @endpoint("POST", "/v1/media/upload",
              summary="Upload a file (multipart field 'file', optional fields 'meeting_id' and 'file_type'); "
                      "it is streamed to storage as it arrives. The content type is sniffed from the bytes; "
                      "audio, video and images are probed for duration and dimensions.",
              tag="media", status=201, data=MEDIA_SCHEMA, errors=(400, 401, 404, 413, 503),
              raw_body="multipart/form-data")
    async def upload_media(self, call: Call):
        request = call.request
        upload = getattr(request, "upload", None)
        if upload is None or request.form is None:
            raise InvalidInput("send multipart/form-data with a boundary, the file in field 'file'")
        upload.claim()
        try:
            parts = request.form.get("file")
            if not parts or parts[0].spool is not upload:
                raise InvalidInput("send the file as multipart/form-data field 'file', with a filename")
            meeting_id = _meeting_id(request.form)
            file_type = check_file_type(_field(request.form, "file_type"))
            spooled = await upload.result()
            record = await self.media.add_upload(call.user.id, spooled, parts[0].filename, meeting_id, file_type)
        finally:
            await upload.discard()  # after a success the file is in the storage: nothing is left to remove
        return media_view(record)

    @endpoint("GET", "/v1/media/download/<int:media_id>",
              summary="Download an item's bytes (Range, If-None-Match and If-Range supported)", tag="media",
              errors=(401, 404, 416, 503))
    async def download_media(self, call: Call):
        record = await self.media.readable(call.user.id, call.params["media_id"])
        return StoredFile(self.file_storage, record.storage_key, record.size, record.content_type, record.filename,
                          f'"{record.sha256}"', self.clock)

    @endpoint("GET", "/v1/media", summary="The caller's media (its own and those shared with it), or a "
              "meeting's media for its participants; newest first", tag="media", query=MEDIA_LIST_QUERY,
              data=page_schema(MEDIA_SCHEMA), errors=(400, 401, 404))
    async def list_media(self, call: Call):
        q = call.query
        page, size = q["page"], q["page_size"]
        total, records = await self.media.list_for(call.user.id, (page - 1) * size, size, q.get("meeting_id"))
        return page_view([media_view(record) for record in records], total, page, size)

    @endpoint("GET", "/v1/media/info/<int:media_id>", summary="An item's description", tag="media",
              data=MEDIA_SCHEMA, errors=(401, 404))
    async def media_info(self, call: Call):
        return media_view(await self.media.readable(call.user.id, call.params["media_id"]))

    @endpoint("DELETE", "/v1/media/<int:media_id>",
              summary="Delete an item and its bytes (its uploader, or a host or moderator of its meeting)",
              tag="media", data=MESSAGE_SCHEMA, errors=(401, 403, 404, 503))
    async def delete_media(self, call: Call):
        await self.media.delete(call.user.id, call.params["media_id"])
        return {"message": "media deleted"}

    # -- processing -----------------------------------------------------------------
    @endpoint("POST", "/v1/media/process",
              summary="Process an item the caller may read (" + ", ".join(PROCESS_TYPES) + "), off the "
                      "reactor in a child process; the result becomes a new item of the caller's. Answers "
                      "202 with the job to poll; 503 when the queue is full",
              tag="media", status=202, body=PROCESS_FIELDS, data=JOB_STARTED_SCHEMA, errors=(400, 401, 404, 503))
    async def process_media(self, call: Call):
        b = call.body
        return await self.processing.submit(call.user.id, b["media_id"], b["process_type"], b.get("params"))

    @endpoint("GET", "/v1/media/process/<string:job_id>", summary="A processing job of the caller's",
              tag="media", data=JOB_SCHEMA, errors=(401, 404))
    async def media_job(self, call: Call):
        return await self.processing.status(call.user.id, call.params["job_id"])

    @endpoint("POST", "/v1/video/enhancement",
              summary="Enhance a video or image item (denoise, sharpen, low-light contrast with CLAHE, "
                      "upscale) with OpenCV, as a processing job: 202 with the job to poll at "
                      "/media/process/{job_id}; 503 with 4001 when OpenCV is not installed",
              tag="ai", status=202, body=ENHANCE_FIELDS, data=JOB_STARTED_SCHEMA, errors=(400, 401, 404, 503))
    async def enhance_video(self, call: Call):
        b = call.body
        params = {"operations": b["operations"], **({"scale": b["scale"]} if "scale" in b else {})}
        return await self.processing.submit(call.user.id, b["media_id"], "enhance", params)
