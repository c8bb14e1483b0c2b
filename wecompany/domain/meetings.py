"""
Meetings: scheduling, membership, roles and meeting chat.

The rules of the API spec live here, not in the routes: title 1-100
characters, description at most 500, capacity 1-1000 and enforced on join
(every participant counts, the host included), no start in the past (a little
clock skew allowed), end after start, only host and moderators start, end,
update, remove participants or change roles, the creator is the host from
creation, an ended meeting cannot be joined (2002), a wrong password is 2004,
joining moves a scheduled meeting to ongoing, and every member gets the same
``room_id``.
"""

from __future__ import annotations

import secrets

from twisted.logger import Logger

from wecompany.errors import (
    Forbidden, InvalidInput, MeetingEnded, MeetingNotFound, NotFound, WrongMeetingPassword,
)

HOST, MODERATOR, PARTICIPANT = "host", "moderator", "participant"
SCHEDULED, ONGOING, ENDED, CANCELLED = "scheduled", "ongoing", "ended", "cancelled"
STATUSES = (SCHEDULED, ONGOING, ENDED, CANCELLED)
MEETING_TYPES = ("video", "audio")
SETTINGS_DEFAULTS = {
    "enable_video": True, "enable_audio": True, "enable_screen_share": True, "enable_chat": True,
    "enable_recording": False, "enable_ai": False, "mute_on_join": False, "require_approval": False,
}
MAX_TITLE = 100
MAX_DESCRIPTION = 500
MAX_CAPACITY = 1000
MAX_MESSAGE = 2000
MAX_PASSWORD = 64
CLOCK_SKEW = 300.0  # a start time this far in the past is still "now"


def check_settings(settings: dict) -> dict:
    unknown = set(settings) - set(SETTINGS_DEFAULTS)
    if unknown:
        raise InvalidInput(f"unknown setting {sorted(unknown)[0]!r}")
    for key, value in settings.items():
        if not isinstance(value, bool):
            raise InvalidInput(f"settings.{key} must be true or false")
    return settings


class MeetingService:
    """
    :param store: an :class:`~wecompany.store.interface.IMeetingStore`.
    :param hasher: a PasswordHasher (meeting passwords are hashed like account ones).
    :param clock: ``IReactorTime``.
    :param listeners: :class:`~wecompany.domain.interfaces.IMeetingListener` s
        told of every change once it is stored (the signaling rooms).
    :param guard: the :class:`~wecompany.domain.ratelimit.LoginGuard`: a
        meeting password is guessed like an account's, so wrong ones count
        per client address and per meeting.
    :param pages: the :class:`~wecompany.domain.meetingpages.MeetingPages`
        the meeting list is read through (the store invalidates it); None:
        every list is read from the store.
    """

    log = Logger()

    def __init__(self, store, hasher, clock, guard, listeners=(), pages=None) -> None:
        self.store = store
        self.hasher = hasher
        self.clock = clock
        self.guard = guard
        self.listeners = list(listeners)
        self.pages = pages

    # -- meetings -------------------------------------------------------------
    async def create(self, user, *, title: str, description: str = "", start_time: float | None = None,
                     end_time: float | None = None, max_participants: int = 100, meeting_type: str = "video",
                     password: str | None = None, settings: dict | None = None):
        """-> (MeetingRecord, host ParticipantRecord)"""
        now = self.clock.seconds()
        start_time = now if start_time is None else _check_start(start_time, now)
        title = _check_title(title)
        description = _check_description(description)
        _check_capacity(max_participants)
        _check_type(meeting_type)
        _check_end(start_time, end_time)
        merged = {**SETTINGS_DEFAULTS, **check_settings(settings or {})}
        password_hash = await self._hash_password(password)
        meeting, host = await self.store.create_meeting(
            title, description, user.id, start_time, end_time, max_participants, meeting_type, password_hash,
            merged, "room_" + secrets.token_urlsafe(12), now)
        self.log.info("meeting {meeting_id} created by {user_id}", meeting_id=meeting.id, user_id=user.id)
        return meeting, host

    async def get(self, meeting_id: int):
        meeting = await self.store.get_meeting(meeting_id)
        if meeting is None:
            raise MeetingNotFound()
        return meeting

    async def list(self, page: int, page_size: int, status: str | None = None, keyword: str | None = None):
        """
        -> (total, MeetingRecords of the page), from :attr:`pages` (a
        :class:`~wecompany.domain.meetingpages.MeetingPages`) when it has it:
        the records may be shared, so they are not to be changed.
        """
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status must be one of: {', '.join(STATUSES)}")
        offset, statuses, keyword = (page - 1) * page_size, (status,) if status else None, keyword or None

        def read():
            return self.store.list_meetings(offset, page_size, statuses=statuses, keyword=keyword)

        if self.pages is None:
            return await read()
        return await self.pages.page(offset, page_size, statuses, keyword, read)

    async def mine(self, user, page: int, page_size: int, which: str = "all"):
        """The user's meetings (created or participating): all, upcoming or history."""
        offset = (page - 1) * page_size
        if which == "upcoming":
            return await self.store.list_meetings(offset, page_size, statuses=(SCHEDULED, ONGOING),
                                                  member_id=user.id)
        if which == "history":
            return await self.store.list_meetings(offset, page_size, statuses=(ENDED, CANCELLED),
                                                  member_id=user.id, newest_first=True)
        return await self.store.list_meetings(offset, page_size, member_id=user.id, newest_first=True)

    async def update(self, user, meeting_id: int, changes: dict):
        meeting = await self.get(meeting_id)
        await self._require_manager(user, meeting)
        self._require_open(meeting)
        now = self.clock.seconds()
        update = {}
        if "title" in changes:
            update["title"] = _check_title(changes["title"])
        if "description" in changes:
            update["description"] = _check_description(changes["description"])
        if "max_participants" in changes:
            update["max_participants"] = _check_capacity(changes["max_participants"])
        if "meeting_type" in changes:
            update["meeting_type"] = _check_type(changes["meeting_type"])
        if "start_time" in changes:
            update["start_time"] = _check_start(changes["start_time"], now)
        if "end_time" in changes:
            update["end_time"] = changes["end_time"]
        _check_end(update.get("start_time", meeting.start_time), update.get("end_time", meeting.end_time))
        if "max_participants" in update:
            count = len(await self.store.list_participants(meeting.id))
            if update["max_participants"] < count:
                raise InvalidInput(f"max_participants cannot be below the {count} current participants")
        if "settings" in changes:
            update["settings"] = {**meeting.settings, **check_settings(changes["settings"])}
        if "password" in changes:
            update["password_hash"] = await self._hash_password(changes["password"])
        if not update:
            return meeting
        return self._changed(await self.store.update_meeting(meeting.id, update, now))

    async def delete(self, user, meeting_id: int) -> None:
        meeting = await self.get(meeting_id)
        if meeting.creator_id != user.id:
            raise Forbidden("only the host may delete a meeting")
        await self.store.delete_meeting(meeting.id)
        self._tell("meeting_deleted", meeting.id)

    async def start(self, user, meeting_id: int):
        meeting = await self.get(meeting_id)
        await self._require_manager(user, meeting)
        self._require_open(meeting)
        if meeting.status == ONGOING:
            return meeting
        return await self._begin(meeting)

    async def _begin(self, meeting):
        now = self.clock.seconds()
        return self._changed(await self.store.update_meeting(meeting.id, {"status": ONGOING, "started_at": now}, now))

    async def end(self, user, meeting_id: int, *, force: bool = False):
        """End the meeting; everyone still joined is marked as having left."""
        meeting = await self.get(meeting_id)
        if not force:
            await self._require_manager(user, meeting)
        self._require_open(meeting)
        return await self._close(meeting, ENDED)

    async def _close(self, meeting, status: str):
        now = self.clock.seconds()
        for p in await self.store.list_participants(meeting.id):
            if p.status == "joined":
                await self.store.update_participant(meeting.id, p.user_id, {"status": "left", "left_at": now})
        return self._changed(await self.store.update_meeting(meeting.id, {"status": status, "ended_at": now}, now))

    # -- membership -----------------------------------------------------------
    async def join(self, user, meeting_id: int, password: str | None = None, address: str = ""):
        """
        -> (MeetingRecord, ParticipantRecord); a second join reuses the row.
        ``address`` is the client's, for the password guard.
        """
        meeting = await self.get(meeting_id)
        self._require_open(meeting)
        existing = await self.store.get_participant(meeting.id, user.id)
        # The host and those already in the meeting (invited or re-joining) need no password.
        if meeting.password_hash is not None and existing is None and meeting.creator_id != user.id:
            await self._check_password(meeting, password, address)
        role = existing.role if existing is not None else PARTICIPANT
        participant, _ = await self.store.join_meeting(meeting.id, user.id, role, self.clock.seconds())
        if meeting.status == SCHEDULED:
            meeting = await self._begin(meeting)
        return meeting, participant

    async def leave(self, user, meeting_id: int):
        meeting = await self.get(meeting_id)
        participant = await self.store.get_participant(meeting.id, user.id)
        if participant is None:
            raise NotFound("you are not a participant of this meeting")
        left = await self.store.update_participant(meeting.id, user.id,
                                                   {"status": "left", "left_at": self.clock.seconds()})
        self._tell("participant_left", meeting.id, user.id, "left")
        return left

    async def participants(self, user, meeting_id: int):
        meeting = await self.get(meeting_id)
        await self._require_member(user, meeting)
        return meeting, await self.store.list_participants(meeting.id)

    async def add_participant(self, user, meeting_id: int, target_id: int, role: str = PARTICIPANT):
        meeting = await self.get(meeting_id)
        await self._require_manager(user, meeting)
        self._require_open(meeting)
        if role not in (PARTICIPANT, MODERATOR):
            raise InvalidInput("role must be participant or moderator")
        target = await self.store.get_user(target_id)
        if target is None or target.status == "deleted":
            raise NotFound("no such user", error_code=1003)
        return await self.store.add_participant(meeting.id, target_id, role, self.clock.seconds())

    async def remove_participant(self, user, meeting_id: int, target_id: int) -> None:
        meeting = await self.get(meeting_id)
        manager = await self._require_manager(user, meeting)
        target = await self.store.get_participant(meeting.id, target_id)
        if target is None:
            raise NotFound("not a participant of this meeting")
        if target.role == HOST:
            raise Forbidden("the host cannot be removed")
        if target.role == MODERATOR and manager != HOST and target_id != user.id:
            # Otherwise a moderator could demote another by removing and re-inviting.
            raise Forbidden("only the host may remove a moderator")
        # Kept as removed, so that the user cannot simply join again.
        await self.store.remove_participant(meeting.id, target_id, self.clock.seconds())
        self._tell("participant_left", meeting.id, target_id, "removed")

    async def set_role(self, user, meeting_id: int, target_id: int, role: str):
        meeting = await self.get(meeting_id)
        manager = await self._require_manager(user, meeting)
        if role not in (PARTICIPANT, MODERATOR):
            raise InvalidInput("role must be participant or moderator (the host is fixed)")
        target = await self.store.get_participant(meeting.id, target_id)
        if target is None:
            raise NotFound("not a participant of this meeting")
        if target.role == HOST:
            raise Forbidden("the host's role cannot be changed")
        if manager != HOST and target.role == MODERATOR and role != MODERATOR:
            raise Forbidden("only the host may demote a moderator")
        return await self.store.update_participant(meeting.id, target_id, {"role": role})

    async def _check_password(self, meeting, password: str | None, address: str) -> None:
        if not password:
            raise WrongMeetingPassword()
        attempt = await self.guard.attempt(address, f"meeting:{meeting.id}")
        try:
            ok = await self.hasher.verify(meeting.password_hash, password)
        except BaseException:
            attempt.abandoned()
            raise
        if not ok:
            attempt.failed()
            raise WrongMeetingPassword()
        attempt.succeeded()

    # -- chat -----------------------------------------------------------------
    async def post_message(self, user, meeting_id: int, content: str, message_type: str = "text"):
        meeting = await self.get(meeting_id)
        await self._require_member(user, meeting)
        self._require_open(meeting)
        if not meeting.settings.get("enable_chat", True):
            raise Forbidden("chat is disabled in this meeting")
        content = content.strip() if isinstance(content, str) else ""
        if not 1 <= len(content) <= MAX_MESSAGE:
            raise InvalidInput(f"content must be 1-{MAX_MESSAGE} characters")
        return await self.store.add_meeting_message(meeting.id, user.id, content, message_type,
                                                    self.clock.seconds())

    async def messages(self, user, meeting_id: int, page: int, page_size: int):
        meeting = await self.get(meeting_id)
        await self._require_member(user, meeting)
        return await self.store.list_meeting_messages(meeting.id, (page - 1) * page_size, page_size)

    # -- account deletion -----------------------------------------------------
    async def user_deleted(self, user_id: int) -> None:
        """Hosted meetings are cancelled (scheduled) or ended (ongoing); other seats are left."""
        # Collect first: closing a meeting takes it out of the query being paged.
        open_meetings = []
        while True:
            total, page = await self.store.list_meetings(len(open_meetings), 100, statuses=(SCHEDULED, ONGOING),
                                                         member_id=user_id)
            open_meetings.extend(page)
            if not page or len(open_meetings) >= total:
                break
        now = self.clock.seconds()
        for meeting in open_meetings:
            if meeting.creator_id == user_id:
                await self._close(meeting, CANCELLED if meeting.status == SCHEDULED else ENDED)
            else:
                p = await self.store.get_participant(meeting.id, user_id)
                if p is not None and p.status in ("joined", "invited"):
                    await self.store.update_participant(meeting.id, user_id, {"status": "left", "left_at": now})
                    self._tell("participant_left", meeting.id, user_id, "left")

    # -- listeners ------------------------------------------------------------
    def _changed(self, meeting):
        if meeting is not None:
            self._tell("meeting_changed", meeting)
        return meeting

    def _tell(self, event: str, *args) -> None:
        # The change is stored: a listener failing must not turn it into an error.
        for listener in self.listeners:
            try:
                getattr(listener, event)(*args)
            except Exception:
                self.log.failure("meeting listener {listener} failed on {event}", listener=listener, event=event)

    # -- rules ----------------------------------------------------------------
    async def role_of(self, user, meeting) -> str | None:
        if meeting.creator_id == user.id:
            return HOST
        participant = await self.store.get_participant(meeting.id, user.id)
        return participant.role if participant is not None else None

    async def _require_member(self, user, meeting) -> str:
        role = await self.role_of(user, meeting)
        if role is None and user.role != "admin":
            raise Forbidden("only participants of this meeting may do that")
        return role or MODERATOR

    async def _require_manager(self, user, meeting) -> str:
        role = await self.role_of(user, meeting)
        if role not in (HOST, MODERATOR) and user.role != "admin":
            raise Forbidden("only the host or a moderator may do that")
        return role or HOST

    @staticmethod
    def _require_open(meeting) -> None:
        if meeting.status in (ENDED, CANCELLED):
            raise MeetingEnded(f"meeting has {meeting.status}" if meeting.status == ENDED else "meeting was cancelled")

    async def _hash_password(self, password: str | None) -> str | None:
        if password is None or password == "":
            return None
        if len(password) > MAX_PASSWORD:
            raise InvalidInput(f"meeting password must be at most {MAX_PASSWORD} characters")
        return await self.hasher.hash(password)


def _check_title(title: str) -> str:
    title = (title or "").strip()
    if not 1 <= len(title) <= MAX_TITLE:
        raise InvalidInput(f"title must be 1-{MAX_TITLE} characters")
    return title


def _check_description(description: str | None) -> str:
    description = description or ""
    if len(description) > MAX_DESCRIPTION:
        raise InvalidInput(f"description must be at most {MAX_DESCRIPTION} characters")
    return description


def _check_capacity(max_participants: int) -> int:
    if not 1 <= max_participants <= MAX_CAPACITY:
        raise InvalidInput(f"max_participants must be 1-{MAX_CAPACITY}")
    return max_participants


def _check_type(meeting_type: str) -> str:
    if meeting_type not in MEETING_TYPES:
        raise InvalidInput("meeting_type must be video or audio")
    return meeting_type


def _check_start(start_time: float, now: float) -> float:
    if start_time < now - CLOCK_SKEW:
        raise InvalidInput("start_time must not be in the past")
    return start_time


def _check_end(start_time: float, end_time: float | None) -> None:
    if end_time is not None and end_time <= start_time:
        raise InvalidInput("end_time must be after start_time")
