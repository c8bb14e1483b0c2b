"""
Meeting recordings over REST: ``/api/v1/meetings/:id/recording/{start,stop}``
and ``/api/v1/meetings/:id/recordings`` in the API's envelope, and the
media service's ``/api/v1/recording/...`` with the bare shapes the family's
media-service answers (``/work/shared/spec/sfu.md``, "Recording"), backed by
the same recordings (:mod:`wecompany.domain.meetingrecordings`). Every one
takes a Bearer token: these are not the browser's token-less SFU calls.
"""

from __future__ import annotations

from wecompany.api.envelope import dumps, request_id_for
from wecompany.api.routing import Call, endpoint
from wecompany.api.validation import PAGE, Field
from wecompany.api.views import page_schema, page_view
from wecompany.domain.meetingrecordings import MAX_TITLE, Recording
from wecompany.errors import Forbidden, InvalidInput, NotFound, Unavailable
from wecompany.times import rfc3339
from wecompany.web.download import StoredFile

MEETING = "/v1/meetings/<int:meeting_id>"
TAG = "recordings"
TITLE = Field("string", max_length=MAX_TITLE, nullable=True, strip=True)
_ERRORS = (400, 401, 403, 404, 409, 503)

RECORDING_SCHEMA = {
    "type": "object",
    "required": ["id", "media_id", "status", "title", "started_at", "ended_at", "duration", "size",
                 "participants", "download_url", "started_by"],
    "properties": {
        "id": {"type": "string", "description": "the recording id (<meeting id>-<random>)"},
        "media_id": {"type": "integer", "nullable": True, "description": "its media item, once stopped"},
        "status": {"type": "string", "enum": ["starting", "recording", "stopping", "completed", "failed",
                                              "recovered"]},
        "title": {"type": "string"},
        "started_at": {"type": "string", "format": "date-time"},
        "ended_at": {"type": "string", "format": "date-time", "nullable": True},
        "duration": {"type": "number", "nullable": True, "description": "seconds"},
        "size": {"type": "integer", "nullable": True, "description": "bytes"},
        "participants": {"type": "array", "items": {"type": "integer"},
                         "description": "user ids: whose tracks it holds, and who started it"},
        "download_url": {"type": "string", "nullable": True, "description": "the media API's download (Range)"},
        "started_by": {"type": "integer"},
    },
}

#: The media service's routes answer bare JSON, as it does (not the envelope).
BARE = "application/json"
_SERVICE_RECORDING = {"type": "object", "description": "the media service's recording (sfu.md)",
                      "required": ["recording_id", "meeting_id", "room_id", "user_id", "title", "status",
                                   "start_time", "end_time", "duration", "file_size", "file_path", "quality",
                                   "format", "participants", "created_at", "updated_at"]}
_STARTED = {"type": "object", "required": ["message", "recording"],
            "properties": {"message": {"type": "string"}, "recording": _SERVICE_RECORDING}}
_DONE = {"type": "object", "required": ["message", "recording_id"],
         "properties": {"message": {"type": "string"}, "recording_id": {"type": "string"}}}
_STATUS = {"type": "object", "required": ["recording"], "properties": {"recording": _SERVICE_RECORDING}}
_LIST = {"type": "object", "required": ["recordings", "pagination"],
         "properties": {"recordings": {"type": "array", "items": _SERVICE_RECORDING},
                        "pagination": {"type": "object", "required": ["total", "page", "page_size", "pages"]}}}


def recording_view(recording: Recording) -> dict:
    return {"id": recording.recording_id, "media_id": recording.media_id, "status": recording.status,
            "title": recording.title, "started_at": rfc3339(recording.started_at),
            "ended_at": rfc3339(recording.ended_at) if recording.ended_at is not None else None,
            "duration": recording.duration, "size": recording.size, "participants": _participants(recording),
            "download_url": _download(recording), "started_by": recording.started_by}


def _participants(recording: Recording) -> list[int]:
    """Whose tracks it holds and who started it (while it records: who has published so far)."""
    if recording.participants:
        return list(recording.participants)
    return sorted(set(recording.publishers.values()) | {recording.started_by})


def _download(recording: Recording) -> str | None:
    return f"/api/v1/media/download/{recording.media_id}" if recording.media_id is not None else None


def service_view(recording: Recording) -> dict:
    """The media service's ``recording`` object (ids as strings, as it has them)."""
    started = rfc3339(recording.started_at)
    ended = rfc3339(recording.ended_at) if recording.ended_at is not None else None
    return {"recording_id": recording.recording_id,
            "meeting_id": str(recording.meeting_id) if recording.meeting_id is not None else None,
            "room_id": recording.room_id, "user_id": str(recording.started_by), "title": recording.title,
            "status": recording.status, "start_time": started, "end_time": ended,
            "duration": round(recording.duration) if recording.duration is not None else 0,
            "file_size": recording.size or 0,
            # Never a path on this server's disk: where the file is downloaded from.
            "file_path": (f"/api/v1/recording/download/{recording.recording_id}"
                          if recording.media_id is not None else ""),
            "thumbnail_path": "", "quality": "original", "format": "mkv",
            "participants": [str(u) for u in _participants(recording)],
            "created_at": started, "updated_at": ended or started}


def _json(request, obj, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"x-request-id", request_id_for(request).encode())
    request.setHeader(b"cache-control", b"no-store")
    return dumps(obj)


class RecordingRoutes:
    """Mixin of :class:`~wecompany.api.app.RestAPI`: needs ``self.recordings`` (the domain's MeetingRecordings)."""

    def _recordings(self):
        if self.recordings is None:
            raise Unavailable("recordings are off on this server")
        return self.recordings

    # -- the meetings' routes (the envelope) ---------------------------------------------
    @endpoint("POST", MEETING + "/recording/start",
              summary="Start recording the meeting's media (host or moderator; settings.enable_recording; "
                      "while someone sends media through the SFU; one at a time). Participants are told "
                      "over signaling (recording, 15)",
              tag=TAG, body={"title": TITLE}, data=RECORDING_SCHEMA, errors=_ERRORS)
    async def start_recording(self, call: Call):
        recording = await self._recordings().start(call.user, call.params["meeting_id"], call.body.get("title"))
        return recording_view(recording)

    @endpoint("POST", MEETING + "/recording/stop",
              summary="Stop the meeting's recording (host or moderator): it becomes a media item "
                      "(file_type recording) of who started it, readable by the meeting's participants",
              tag=TAG, data=RECORDING_SCHEMA, errors=_ERRORS)
    async def stop_recording(self, call: Call):
        return recording_view(await self._recordings().stop(call.user, call.params["meeting_id"]))

    @endpoint("GET", MEETING + "/recordings", summary="The meeting's recordings, newest first (participants)",
              tag=TAG, query=PAGE, data=page_schema(RECORDING_SCHEMA), errors=(400, 401, 404))
    async def list_recordings(self, call: Call):
        q = call.query
        page, size = q["page"], q["page_size"]
        total, found = await self._recordings().for_meeting(call.user, call.params["meeting_id"],
                                                            (page - 1) * size, size)
        return page_view([recording_view(r) for r in found], total, page, size)

    # -- the media service's routes (bare JSON) --------------------------------------------
    @endpoint("POST", "/v1/recording/start",
              summary="The media service's start: record meeting_id's room (the caller must be user_id, "
                      "its host or a moderator); quality and format are accepted and ignored: the file "
                      "is the forwarded media remuxed into Matroska",
              tag=TAG, body={"meeting_id": Field("id", required=True), "room_id": Field("string", max_length=128),
                             "user_id": Field("id"), "title": TITLE, "quality": Field("string", max_length=16),
                             "format": Field("string", max_length=16), "participants": Field("array")},
              data=_STARTED, produces=BARE, errors=_ERRORS)
    async def service_start(self, call: Call):
        b = call.body
        if b.get("user_id") is not None and b["user_id"] != call.user.id:
            raise Forbidden("user_id must be the caller's")
        recordings = self._recordings()
        meeting = await self.meetings.get(b["meeting_id"])
        if b.get("room_id") and b["room_id"] != meeting.room_id:
            raise InvalidInput("room_id is not this meeting's room")
        recording = await recordings.start(call.user, meeting.id, b.get("title"))
        return _json(call.request, {"message": "Recording started", "recording": service_view(recording)})

    @endpoint("POST", "/v1/recording/stop", summary="The media service's stop", tag=TAG,
              body={"recording_id": Field("string", required=True, min_length=1, max_length=64)},
              data=_DONE, produces=BARE, errors=_ERRORS)
    async def service_stop(self, call: Call):
        recording_id = call.body["recording_id"]
        await self._recordings().stop(call.user, recording_id=recording_id)
        return _json(call.request, {"message": "Recording stopped", "recording_id": recording_id})

    @endpoint("GET", "/v1/recording/status/<string:recording_id>", summary="The media service's status",
              tag=TAG, data=_STATUS, produces=BARE, errors=(401, 404))
    async def service_status(self, call: Call):
        recording = await self._recordings().find(call.user, call.params["recording_id"])
        return _json(call.request, {"recording": service_view(recording)})

    @endpoint("GET", "/v1/recording/list", summary="The media service's list: recordings the caller started "
              "or is in, newest first", tag=TAG,
              query={**PAGE, "user_id": Field("id", description="the caller's id (others are refused)")},
              data=_LIST, produces=BARE, errors=(400, 401, 403))
    async def service_list(self, call: Call):
        q = call.query
        if q.get("user_id") is not None and q["user_id"] != call.user.id:
            raise Forbidden("user_id must be the caller's")
        page, size = q["page"], q["page_size"]
        total, found = await self._recordings().for_user(call.user, (page - 1) * size, size)
        return _json(call.request, {"recordings": [service_view(r) for r in found],
                                    "pagination": {"total": total, "page": page, "page_size": size,
                                                   "pages": (total + size - 1) // size}})

    @endpoint("GET", "/v1/recording/download/<string:recording_id>",
              summary="The media service's download (Range supported), once the recording is stored",
              tag=TAG, errors=(401, 404, 416), produces="video/x-matroska")
    async def service_download(self, call: Call):
        recording = await self._recordings().find(call.user, call.params["recording_id"])
        if recording.media_id is None:
            raise NotFound("the recording is not stored (yet)")
        record = await self.media.readable(call.user.id, recording.media_id)
        return StoredFile(self.file_storage, record.storage_key, record.size, record.content_type, record.filename,
                          f'"{record.sha256}"', self.clock)

    @endpoint("DELETE", "/v1/recording/<string:recording_id>",
              summary="The media service's delete (who started it, or the meeting's host or a moderator)",
              tag=TAG, data=_DONE, produces=BARE, errors=(401, 403, 404, 409))
    async def service_delete(self, call: Call):
        recording_id = call.params["recording_id"]
        await self._recordings().delete(call.user, recording_id)
        return _json(call.request, {"message": "Recording deleted", "recording_id": recording_id})
