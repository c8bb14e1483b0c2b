"""Signaling REST: live sessions and rooms (``/api/v1/sessions``, ``/api/v1/stats/rooms``)."""

from __future__ import annotations

from wecompany.api.routing import Call, endpoint
from wecompany.errors import Forbidden, NotFound

SESSION_SCHEMA = {
    "type": "object",
    "required": ["session_id", "user_id", "username", "peer_id", "meeting_id", "joined_at", "audio_enabled",
                 "video_enabled", "screen_sharing"],
    "properties": {
        "session_id": {"type": "string"}, "user_id": {"type": "integer"}, "username": {"type": "string"},
        "peer_id": {"type": "string"}, "meeting_id": {"type": "integer"},
        "joined_at": {"type": "string", "format": "date-time"}, "audio_enabled": {"type": "boolean"},
        "video_enabled": {"type": "boolean"}, "screen_sharing": {"type": "boolean"},
    },
}
ROOM_SCHEMA = {
    "type": "object",
    "required": ["meeting_id", "room_id", "participant_count", "created_at", "messages"],
    "properties": {
        "meeting_id": {"type": "integer"}, "room_id": {"type": "string"},
        "participant_count": {"type": "integer"}, "created_at": {"type": "string", "format": "date-time"},
        "messages": {"type": "integer"},
        "sessions": {"type": "array", "items": SESSION_SCHEMA},
    },
}


class SignalingRoutes:
    """Mixin of :class:`~wecompany.api.app.RestAPI`."""

    @endpoint("GET", "/v1/sessions/<string:session_id>", summary="A live signaling session (meeting members)",
              tag="signaling", data=SESSION_SCHEMA, errors=(401, 403, 404))
    async def get_session(self, call: Call):
        member = self.rooms.sessions.get(call.params["session_id"])
        if member is None:
            raise NotFound("no such session")
        await self._require_member_of(call.user, member.meeting_id)
        return self.rooms.session_view(member)

    @endpoint("GET", "/v1/sessions/room/<int:meeting_id>", summary="The live sessions of a meeting's room",
              tag="signaling", data={"type": "object", "required": ["meeting_id", "sessions"],
                                     "properties": {"meeting_id": {"type": "integer"},
                                                    "sessions": {"type": "array", "items": SESSION_SCHEMA}}},
              errors=(401, 403, 404))
    async def room_sessions(self, call: Call):
        meeting_id = call.params["meeting_id"]
        await self._require_member_of(call.user, meeting_id)
        room = self.rooms.room_view(meeting_id)
        return {"meeting_id": meeting_id, "sessions": room["sessions"] if room else []}

    @endpoint("GET", "/v1/stats/rooms", summary="Live rooms: participants and messages", tag="stats",
              data={"type": "object", "required": ["rooms", "total"],
                    "properties": {"rooms": {"type": "array", "items": ROOM_SCHEMA}, "total": {"type": "integer"}}},
              errors=(401,))
    async def stats_rooms(self, call: Call):
        rooms = []
        for meeting_id in sorted(self.rooms.rooms):
            view = self.rooms.room_view(meeting_id)
            view.pop("sessions")
            rooms.append(view)
        return {"rooms": rooms, "total": len(rooms)}

    async def _require_member_of(self, user, meeting_id: int) -> None:
        meeting = await self.meetings.get(meeting_id)
        if user.role != "admin" and await self.meetings.role_of(user, meeting) is None:
            raise Forbidden("only participants of this meeting may see its sessions")
