"""``/api/v1/meetings`` and ``/api/v1/my/meetings``."""

from __future__ import annotations

from collections import OrderedDict

from wecompany.api.envelope import Encoded, dumps
from wecompany.api.routing import Call, endpoint
from wecompany.api.validation import PAGE, Field
from wecompany.api.views import (
    CHAT_MESSAGE_SCHEMA, JOIN_SCHEMA, MEETING_SCHEMA, MESSAGE_SCHEMA, PARTICIPANT_SCHEMA,
    chat_message_view, meeting_view, page_schema, page_view, participant_view,
)
from wecompany.domain.meetings import MAX_CAPACITY, MAX_DESCRIPTION, MAX_MESSAGE, MAX_PASSWORD, MAX_TITLE, STATUSES
from wecompany.domain.meetings import SETTINGS_DEFAULTS

MEETING = "/v1/meetings/<int:meeting_id>"
SETTINGS_FIELDS = {k: Field("boolean") for k in SETTINGS_DEFAULTS}

_MEETING_FIELDS = {
    "title": Field("string", min_length=1, max_length=MAX_TITLE, strip=True),
    "description": Field("string", max_length=MAX_DESCRIPTION),
    "start_time": Field("datetime"),
    "end_time": Field("datetime", nullable=True),
    "max_participants": Field("integer", minimum=1, maximum=MAX_CAPACITY),
    "meeting_type": Field("string", choices=("video", "audio")),
    "password": Field("string", max_length=MAX_PASSWORD, nullable=True),
    "settings": Field("object", fields=SETTINGS_FIELDS, strict=True),
}
CREATE_FIELDS = {**_MEETING_FIELDS,
                 "title": Field("string", required=True, min_length=1, max_length=MAX_TITLE, strip=True)}
LIST_QUERY = {**PAGE, "status": Field("string", choices=STATUSES), "keyword": Field("string", max_length=100)}
# Optional here: without them the whole list (at most MAX_CAPACITY) comes back.
PARTICIPANTS_QUERY = {
    "page": Field("integer", minimum=1, maximum=1_000_000, description="page number, from 1 (optional)"),
    "page_size": Field("integer", minimum=1, maximum=MAX_CAPACITY,
                       description="participants per page (optional; default: all of them)"),
}
MEETING_PAGE = page_schema(MEETING_SCHEMA)


class RenderedPages:
    """
    The JSON of the last ``size`` pages of the meeting list answered (at
    most ``max_bytes`` of it), by the page object
    :class:`~wecompany.domain.meetingpages.MeetingPages` gave:
    the same object while the page is cached, a new one after any change
    (so a change is never answered from here). Ten meetings' views and
    their JSON were a third of a cached ``GET /meetings``.
    """

    def __init__(self, size: int = 64, max_bytes: int = 1 << 20) -> None:
        self.size = size
        self.max_bytes = max_bytes  # of JSON; the pages held are at most as many records
        self.bytes = 0
        self._rendered: OrderedDict[tuple, tuple[object, Encoded]] = OrderedDict()

    def get(self, page, number: int, page_size: int, render) -> Encoded:
        key = (id(page), number, page_size)
        kept = self._rendered.get(key)
        if kept is not None and kept[0] is page:  # (the page is held, so its id is not reused meanwhile)
            self._rendered.move_to_end(key)
            return kept[1]
        encoded = render()
        if len(encoded) <= self.max_bytes:
            if kept is not None:
                self.bytes -= len(kept[1])
            self._rendered[key] = (page, encoded)
            self.bytes += len(encoded)
            while len(self._rendered) > self.size or self.bytes > self.max_bytes:
                _, (_, dropped) = self._rendered.popitem(last=False)
                self.bytes -= len(dropped)
        return encoded


class MeetingRoutes:
    """Mixin of :class:`~wecompany.api.app.RestAPI`; ``rendered_pages`` is a :class:`RenderedPages`."""

    @endpoint("POST", "/v1/meetings", summary="Schedule a meeting (the caller becomes its host)", tag="meetings",
              body=CREATE_FIELDS, status=201,
              data={"type": "object", "required": ["meeting"], "properties": {"meeting": MEETING_SCHEMA}},
              errors=(400, 401))
    async def create_meeting(self, call: Call):
        b = call.body
        meeting, _ = await self.meetings.create(
            call.user, title=b["title"], description=b.get("description") or "",
            start_time=b.get("start_time"), end_time=b.get("end_time"),
            max_participants=b.get("max_participants", 100), meeting_type=b.get("meeting_type", "video"),
            password=b.get("password"), settings=b.get("settings"))
        return {"meeting": meeting_view(meeting)}

    @endpoint("GET", "/v1/meetings", summary="List meetings", tag="meetings", query=LIST_QUERY,
              data=MEETING_PAGE, errors=(400, 401))
    async def list_meetings(self, call: Call):
        q = call.query
        page = await self.meetings.list(q["page"], q["page_size"], q.get("status"), q.get("keyword"))
        total, meetings = page
        return self.rendered_pages.get(page, q["page"], q["page_size"], lambda: Encoded(dumps(
            page_view([meeting_view(m) for m in meetings], total, q["page"], q["page_size"]))))

    @endpoint("GET", MEETING, summary="A meeting", tag="meetings", data=MEETING_SCHEMA, errors=(401, 404))
    async def get_meeting(self, call: Call):
        return meeting_view(await self.meetings.get(call.params["meeting_id"]))

    @endpoint("PUT", MEETING, summary="Update a meeting (host or moderator)", tag="meetings",
              body=_MEETING_FIELDS, data=MEETING_SCHEMA, errors=(400, 401, 403, 404))
    async def update_meeting(self, call: Call):
        return meeting_view(await self.meetings.update(call.user, call.params["meeting_id"], call.body))

    @endpoint("DELETE", MEETING, summary="Delete a meeting (host)", tag="meetings", data=MESSAGE_SCHEMA,
              errors=(401, 403, 404))
    async def delete_meeting(self, call: Call):
        await self.meetings.delete(call.user, call.params["meeting_id"])
        return {"message": "meeting deleted"}

    @endpoint("POST", MEETING + "/start", summary="Start a meeting (host or moderator)", tag="meetings",
              data=MEETING_SCHEMA, errors=(400, 401, 403, 404))
    async def start_meeting(self, call: Call):
        return meeting_view(await self.meetings.start(call.user, call.params["meeting_id"]))

    @endpoint("POST", MEETING + "/end", summary="End a meeting (host or moderator)", tag="meetings",
              data=MEETING_SCHEMA, errors=(400, 401, 403, 404))
    async def end_meeting(self, call: Call):
        return meeting_view(await self.meetings.end(call.user, call.params["meeting_id"]))

    @endpoint("POST", MEETING + "/join", summary="Join a meeting", tag="meetings",
              body={"password": Field("string", max_length=MAX_PASSWORD, nullable=True)},
              data=JOIN_SCHEMA, errors=(400, 401, 403, 404, 429))
    async def join_meeting(self, call: Call):
        meeting, participant = await self.meetings.join(call.user, call.params["meeting_id"],
                                                        call.body.get("password"), self.client_address(call.request))
        return {"meeting_id": meeting.id, "room_id": meeting.room_id, "participant_id": participant.id,
                "role": participant.role, "meeting": meeting_view(meeting),
                "participant": participant_view(participant),
                "ice_servers": self.ice_servers.for_user(call.user.id)}

    @endpoint("POST", MEETING + "/leave", summary="Leave a meeting", tag="meetings", data=PARTICIPANT_SCHEMA,
              errors=(401, 404))
    async def leave_meeting(self, call: Call):
        return participant_view(await self.meetings.leave(call.user, call.params["meeting_id"]))

    @endpoint("GET", MEETING + "/participants",
              summary="Participants (members only), as a bare array: the clients of this family count "
                      "len(data). X-Total-Count gives the number of them when a page is asked for.",
              tag="participants", query=PARTICIPANTS_QUERY, data={"type": "array", "items": PARTICIPANT_SCHEMA},
              errors=(400, 401, 403, 404))
    async def list_participants(self, call: Call):
        _, participants = await self.meetings.participants(call.user, call.params["meeting_id"])
        q = call.query
        call.request.setHeader(b"x-total-count", str(len(participants)).encode())
        if "page" in q or "page_size" in q:
            size = q.get("page_size", 100)
            start = (q.get("page", 1) - 1) * size
            participants = participants[start:start + size]
        return [participant_view(p) for p in participants]

    @endpoint("POST", MEETING + "/participants", summary="Invite a user (host or moderator)", tag="participants",
              body={"user_id": Field("integer", required=True, minimum=1),
                    "role": Field("string", choices=("participant", "moderator"))},
              status=201, data=PARTICIPANT_SCHEMA, errors=(400, 401, 403, 404, 409))
    async def add_participant(self, call: Call):
        return participant_view(await self.meetings.add_participant(
            call.user, call.params["meeting_id"], call.body["user_id"], call.body.get("role", "participant")))

    @endpoint("DELETE", MEETING + "/participants/<int:user_id>", summary="Remove a participant (host or moderator)",
              tag="participants", data=MESSAGE_SCHEMA, errors=(401, 403, 404))
    async def remove_participant(self, call: Call):
        await self.meetings.remove_participant(call.user, call.params["meeting_id"], call.params["user_id"])
        return {"message": "participant removed"}

    @endpoint("PUT", MEETING + "/participants/<int:user_id>/role", summary="Change a participant's role",
              tag="participants", body={"role": Field("string", required=True, choices=("participant", "moderator"))},
              data=PARTICIPANT_SCHEMA, errors=(400, 401, 403, 404))
    async def set_participant_role(self, call: Call):
        return participant_view(await self.meetings.set_role(
            call.user, call.params["meeting_id"], call.params["user_id"], call.body["role"]))

    @endpoint("GET", MEETING + "/messages", summary="Chat history, oldest first (members only)", tag="chat",
              query=PAGE, data=page_schema(CHAT_MESSAGE_SCHEMA), errors=(400, 401, 403, 404),
              aliases=("/v1/messages/history/<int:meeting_id>",))
    async def list_messages(self, call: Call):
        q = call.query
        total, messages = await self.meetings.messages(call.user, call.params["meeting_id"], q["page"], q["page_size"])
        return page_view([chat_message_view(m) for m in messages], total, q["page"], q["page_size"])

    @endpoint("POST", MEETING + "/messages", summary="Post a chat message (members only)", tag="chat",
              body={"content": Field("string", required=True, min_length=1, max_length=MAX_MESSAGE, strip=True),
                    "message_type": Field("string", choices=("text", "file"))},
              status=201, data=CHAT_MESSAGE_SCHEMA, errors=(400, 401, 403, 404))
    async def post_message(self, call: Call):
        message = await self.meetings.post_message(call.user, call.params["meeting_id"], call.body["content"],
                                                   call.body.get("message_type", "text"))
        return chat_message_view(message)

    @endpoint("GET", "/v1/my/meetings", summary="Meetings I created or take part in", tag="my", query=PAGE,
              data=MEETING_PAGE, errors=(400, 401))
    async def my_meetings(self, call: Call):
        return await self._mine(call, "all")

    @endpoint("GET", "/v1/my/meetings/upcoming", summary="My scheduled and ongoing meetings", tag="my",
              query=PAGE, data=MEETING_PAGE, errors=(400, 401))
    async def my_upcoming(self, call: Call):
        return await self._mine(call, "upcoming")

    @endpoint("GET", "/v1/my/meetings/history", summary="My ended and cancelled meetings", tag="my",
              query=PAGE, data=MEETING_PAGE, errors=(400, 401))
    async def my_history(self, call: Call):
        return await self._mine(call, "history")

    async def _mine(self, call: Call, which: str):
        q = call.query
        total, meetings = await self.meetings.mine(call.user, q["page"], q["page_size"], which)
        return page_view([meeting_view(m) for m in meetings], total, q["page"], q["page_size"])
