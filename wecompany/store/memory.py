"""
A store in dictionaries, for unit tests that want no threads.

It gives the answers :class:`~wecompany.store.sqlite.SQLiteStore` gives
(ordering, case-insensitivity, errors), checked by the same ``tests/store``
suite, and every Deferred it returns has already fired. Nothing is durable
beyond the object's life.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from zope.interface import implementer

from wecompany.errors import Conflict, MeetingFull, MeetingNotFound, ParticipantRemoved
from wecompany.store.common import (
    FILE_COMPLETE,
    FILE_RECEIVING,
    FLAG_CHANGES,
    MEETING_CHANGES,
    MEETING_SCHEDULED,
    PARTICIPANT_CHANGES,
    PARTICIPANT_INVITED,
    PARTICIPANT_JOINED,
    PARTICIPANT_REMOVED,
    PROFILE_CHANGES,
    ROLE_HOST,
    TIME_CHANGES,
    USER_ACTIVE,
    already_participant,
    check_page,
    checked_changes,
    checked_user_changes,
    contains_folded,
    decode_settings,
    default_nickname,
    email_exists,
    encode_settings,
    fold_case,
    normalise_email,
    optional_time,
    quota_exceeded,
    room_exists,
    store_not_running,
    token_exists,
    user_not_found,
    username_exists,
)
from wecompany.store.interface import IMediaStore, IMeetingStore, IStore
from wecompany.store.records import (
    FileRecord,
    MediaRecord,
    MeetingMessageRecord,
    MeetingRecord,
    ParticipantRecord,
    ProfileRecord,
    RefreshTokenRecord,
    StoredMessage,
    UserRecord,
)

_P = ParamSpec("_P")
_T = TypeVar("_T")
_Named = TypeVar("_Named", ParticipantRecord, MeetingMessageRecord)


def _fired(
    method: Callable[Concatenate[MemoryStore, _P], _T],
) -> Callable[Concatenate[MemoryStore, _P], Deferred[_T]]:
    """Run ``method`` now and return its outcome as a fired Deferred, once started."""

    @functools.wraps(method)
    def answer(self: MemoryStore, *args: _P.args, **kwargs: _P.kwargs) -> Deferred[_T]:
        if not self._running:
            return fail(store_not_running())
        return maybeDeferred(method, self, *args, **kwargs)

    return answer


def _page(items: Sequence[_T], offset: int, limit: int) -> tuple[int, list[_T]]:
    """-> (how many items, the page of them), as a LIMIT/OFFSET query answers."""
    check_page(offset, limit)
    return len(items), list(items[offset:offset + limit])


def _copy_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """What the SQL stores give back after storing ``settings`` as JSON: a new dict."""
    return decode_settings(encode_settings(settings))


def _as_stored(changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` with times as floats and flags as bools, as the SQL columns give them back."""
    for key in TIME_CHANGES & changes.keys():
        changes[key] = optional_time(changes[key])
    for key in FLAG_CHANGES & changes.keys():
        changes[key] = bool(changes[key])
    return changes


@attrs.define
class _PasswordReset:
    user_id: int
    expires_at: float
    used: bool = False


@implementer(IStore, IMeetingStore, IMediaStore)
@attrs.define
class MemoryStore:
    """
    :class:`~wecompany.store.interface.IStore` and
    :class:`~wecompany.store.interface.IMeetingStore` in memory; see the
    module docstring.

    The attributes holding rows are named after the SQL tables (``_users``,
    ``_participants``...), so that tests can count rows alike in both.
    """

    _running: bool = attrs.field(default=False, init=False)
    _users: dict[int, UserRecord] = attrs.field(factory=dict, init=False)
    _profiles: dict[int, ProfileRecord] = attrs.field(factory=dict, init=False)
    # (user_id, contact_id) -> created_at
    _contacts: dict[tuple[int, int], float] = attrs.field(factory=dict, init=False)
    # By message id; dicts keep insertion order, which is the SQL store's seq.
    _messages: dict[int, StoredMessage] = attrs.field(factory=dict, init=False)
    _files: dict[int, FileRecord] = attrs.field(factory=dict, init=False)
    _meetings: dict[int, MeetingRecord] = attrs.field(factory=dict, init=False)
    # By id. The names in these records are left empty: they are filled in
    # from _users and _profiles when read, as the SQL store's join does.
    storage_problem: str | None = attrs.field(default=None, init=False)  # memory is never full
    _participants: dict[int, ParticipantRecord] = attrs.field(factory=dict, init=False)
    _meeting_messages: dict[int, MeetingMessageRecord] = attrs.field(factory=dict, init=False)
    _refresh_tokens: dict[str, RefreshTokenRecord] = attrs.field(factory=dict, init=False)
    _password_resets: dict[str, _PasswordReset] = attrs.field(factory=dict, init=False)
    # Like AUTOINCREMENT, ids are never reused.
    _last_user_id: int = attrs.field(default=0, init=False)
    _last_file_id: int = attrs.field(default=0, init=False)
    _last_meeting_id: int = attrs.field(default=0, init=False)
    _last_participant_id: int = attrs.field(default=0, init=False)
    _last_meeting_message_id: int = attrs.field(default=0, init=False)
    _media: dict[int, MediaRecord] = attrs.field(factory=dict, init=False)
    _media_grants: set[tuple[int, int]] = attrs.field(factory=set, init=False)  # (media_id, user_id)
    _last_media_id: int = attrs.field(default=0, init=False)
    #: Told ``invalidate(user_id)`` after each write to a user's row or profile,
    #: as the SQL store tells them (see :class:`~wecompany.domain.usercache.UserCache`).
    user_caches: Sequence[Any] = attrs.field(default=(), kw_only=True)

    #: Told ``invalidate(meeting_id)`` after each write to a meeting's row.
    meeting_caches: Sequence[Any] = attrs.field(default=(), kw_only=True)

    def _user_written(self, user_id: int) -> None:
        for cache in self.user_caches:
            cache.invalidate(user_id)

    def _meeting_written(self, meeting_id: int) -> None:
        for cache in self.meeting_caches:
            cache.invalidate(meeting_id)

    def start(self) -> Deferred[None]:
        self._running = True
        return succeed(None)

    def stop(self) -> Deferred[None]:
        self._running = False
        return succeed(None)

    @_fired
    def ping(self) -> bool:
        return True

    # -- accounts -------------------------------------------------------------
    @_fired
    def create_user(self, username: str, password_hash: str, email: str | None,
                    nickname: str | None, now: float, role: str = "user") -> UserRecord:
        email = normalise_email(email)
        clash = self._find_clash(username, email)
        if clash is not None:
            raise clash
        self._last_user_id += 1
        user = UserRecord(self._last_user_id, username, email, password_hash, role, USER_ACTIVE, float(now))
        self._users[user.id] = user
        self._profiles[user.id] = ProfileRecord(
            user.id, default_nickname(username, nickname), updated_at=float(now)
        )
        self._user_written(user.id)
        return user

    def _find_clash(self, username: str | None, email: str | None,
                    user_id: int | None = None) -> Conflict | None:
        """The Conflict if another user than ``user_id`` has ``username`` or ``email`` (None: unchanged)."""
        for field, value, conflict in [("username", username, username_exists), ("email", email, email_exists)]:
            if value is not None:
                other = self._find_user(field, value)
                if other is not None and other.id != user_id:
                    return conflict()
        return None

    def _find_user(self, field: str, value: str) -> UserRecord | None:
        folded = fold_case(value)
        for user in self._users.values():
            other = getattr(user, field)
            if other is not None and fold_case(other) == folded:
                return user
        return None

    @_fired
    def get_user(self, user_id: int) -> UserRecord | None:
        return self._users.get(user_id)

    @_fired
    def get_user_by_username(self, username: str) -> UserRecord | None:
        return self._find_user("username", username)

    @_fired
    def get_user_by_login(self, login: str) -> UserRecord | None:
        user = self._find_user("username", login)
        return user if user is not None else self._find_user("email", login)

    @_fired
    def set_password_hash(self, user_id: int, password_hash: str) -> None:
        self._update_user(user_id, password_hash=password_hash)

    @_fired
    def record_login(self, user_id: int, now: float) -> None:
        self._update_user(user_id, last_login=float(now))

    def _update_user(self, user_id: int, **changes: Any) -> None:
        if user_id in self._users:
            self._users[user_id] = attrs.evolve(self._users[user_id], **changes)
        self._user_written(user_id)

    @_fired
    def get_profile(self, user_id: int) -> ProfileRecord | None:
        return self._profiles.get(user_id)

    @_fired
    def list_users_by_ids(self, user_ids: Iterable[int]) -> dict[int, UserRecord]:
        return {user_id: self._users[user_id] for user_id in sorted(set(user_ids)) if user_id in self._users}

    @_fired
    def get_profiles(self, user_ids: Iterable[int]) -> dict[int, ProfileRecord]:
        return {
            user_id: self._profiles[user_id] for user_id in sorted(set(user_ids)) if user_id in self._profiles
        }

    @_fired
    def update_user(self, user_id: int, changes: Mapping[str, object]) -> UserRecord | None:
        checked = checked_user_changes(changes)
        user = self._users.get(user_id)
        if user is None or not checked:
            return user
        clash = self._find_clash(checked.get("username"), checked.get("email"), user_id)
        if clash is not None:
            raise clash
        user = self._users[user_id] = attrs.evolve(user, **checked)
        self._user_written(user_id)
        return user

    @_fired
    def update_profile(self, user_id: int, changes: Mapping[str, object], now: float) -> ProfileRecord | None:
        checked = checked_changes(changes, PROFILE_CHANGES)
        if user_id not in self._profiles:
            return None
        profile = attrs.evolve(self._profiles[user_id], **checked, updated_at=float(now))
        self._profiles[user_id] = profile
        self._user_written(user_id)
        return profile

    @_fired
    def list_users(self, offset: int, limit: int, keyword: str | None = None,
                   status: str | None = None) -> tuple[int, list[UserRecord]]:
        users = [
            user for user in self._users.values()
            if (not keyword or contains_folded(keyword, user.username, user.email))
            and (status is None or user.status == status)
        ]
        return _page(users, offset, limit)

    def _require_users(self, *user_ids: int) -> None:
        if any(user_id not in self._users for user_id in user_ids):
            raise user_not_found()

    # -- contacts -------------------------------------------------------------
    @_fired
    def add_contact(self, user_id: int, contact_id: int, now: float) -> None:
        self._require_users(user_id, contact_id)
        self._contacts.setdefault((user_id, contact_id), float(now))

    @_fired
    def remove_contact(self, user_id: int, contact_id: int) -> bool:
        return self._contacts.pop((user_id, contact_id), None) is not None

    @_fired
    def list_contacts(self, user_id: int, offset: int, limit: int) -> tuple[int, list[UserRecord]]:
        contacts = [self._users[contact] for (owner, contact) in self._contacts if owner == user_id]
        contacts.sort(key=lambda user: (fold_case(user.username), user.id))
        return _page(contacts, offset, limit)

    @_fired
    def watchers_of(self, user_id: int) -> list[int]:
        return sorted(owner for (owner, contact) in self._contacts if contact == user_id)

    # -- offline messages -----------------------------------------------------
    @_fired
    def store_offline_message(self, message: StoredMessage) -> None:
        # The same id again is a retry of a message already stored.
        if message.id not in self._messages:
            self._messages[message.id] = attrs.evolve(message, sent_at=float(message.sent_at))

    @_fired
    def fetch_offline_messages(self, recipient_id: int, limit: int) -> list[StoredMessage]:
        check_page(0, limit)
        waiting = [message for message in self._messages.values() if message.recipient_id == recipient_id]
        return waiting[:limit]

    @_fired
    def delete_offline_messages(self, message_ids: Iterable[int]) -> None:
        for message_id in message_ids:
            self._messages.pop(message_id, None)

    # -- files ----------------------------------------------------------------
    @_fired
    def create_file(self, owner_id: int, name: str, size: int, sha256: str, path: str, now: float,
                    recipient_id: int | None = None,
                    content_type: str = "application/octet-stream") -> FileRecord:
        self._last_file_id += 1
        record = FileRecord(
            self._last_file_id, owner_id, name, size, sha256, path, FILE_RECEIVING, float(now),
            recipient_id=recipient_id, delivered=False, content_type=content_type,
        )
        self._files[record.id] = record
        return record

    @_fired
    def complete_file(self, file_id: int) -> None:
        self._update_file(file_id, status=FILE_COMPLETE)

    @_fired
    def mark_file_delivered(self, file_id: int) -> None:
        self._update_file(file_id, delivered=True)

    def _update_file(self, file_id: int, **changes: Any) -> None:
        if file_id in self._files:
            self._files[file_id] = attrs.evolve(self._files[file_id], **changes)

    @_fired
    def delete_file(self, file_id: int) -> None:
        self._files.pop(file_id, None)

    @_fired
    def delete_incomplete_files(self, created_before: float, path_prefix: str | None = None) -> list[FileRecord]:
        stale = [f for f in self._files.values() if f.status == FILE_RECEIVING and f.created_at < created_before
                 and (path_prefix is None or f.path.startswith(path_prefix))]
        for record in stale:
            del self._files[record.id]
        return sorted(stale, key=lambda f: f.id)

    @_fired
    def get_file(self, file_id: int) -> FileRecord | None:
        return self._files.get(file_id)

    @_fired
    def undelivered_files_for(self, recipient_id: int) -> list[FileRecord]:
        return [
            record for record in self._files.values()
            if record.recipient_id == recipient_id and not record.delivered and record.status == FILE_COMPLETE
        ]

    # -- meetings -------------------------------------------------------------
    @_fired
    def create_meeting(self, title: str, description: str, creator_id: int, start_time: float,
                       end_time: float | None, max_participants: int, meeting_type: str,
                       password_hash: str | None, settings: Mapping[str, Any], room_id: str,
                       now: float) -> tuple[MeetingRecord, ParticipantRecord]:
        self._require_users(creator_id)
        settings = _copy_settings(settings)
        if any(meeting.room_id == room_id for meeting in self._meetings.values()):
            raise room_exists()
        self._last_meeting_id += 1
        meeting = self._meetings[self._last_meeting_id] = MeetingRecord(
            id=self._last_meeting_id, title=title, description=description, creator_id=creator_id,
            start_time=float(start_time), end_time=optional_time(end_time), max_participants=max_participants,
            meeting_type=meeting_type, status=MEETING_SCHEDULED, password_hash=password_hash, settings=settings,
            room_id=room_id, created_at=float(now), updated_at=float(now),
        )
        host = self._insert_participant(meeting.id, creator_id, ROLE_HOST, PARTICIPANT_INVITED)
        self._meeting_written(meeting.id)
        return self._meeting_out(meeting), host

    def _meeting_out(self, meeting: MeetingRecord | None) -> MeetingRecord | None:
        """A record the caller may keep: its settings are a dict of its own, as the SQL store's are."""
        return None if meeting is None else attrs.evolve(meeting, settings=_copy_settings(meeting.settings))

    def _require_meeting(self, meeting_id: int) -> MeetingRecord:
        meeting = self._meetings.get(meeting_id)
        if meeting is None:
            raise MeetingNotFound()
        return meeting

    @_fired
    def get_meeting(self, meeting_id: int) -> MeetingRecord | None:
        return self._meeting_out(self._meetings.get(meeting_id))

    @_fired
    def get_meeting_by_room(self, room_id: str) -> MeetingRecord | None:
        return self._meeting_out(next((m for m in self._meetings.values() if m.room_id == room_id), None))

    @_fired
    def update_meeting(self, meeting_id: int, changes: Mapping[str, object],
                       now: float) -> MeetingRecord | None:
        checked = _as_stored(checked_changes(changes, MEETING_CHANGES))
        if "settings" in checked:
            checked["settings"] = _copy_settings(checked["settings"])
        if meeting_id not in self._meetings:
            return None
        meeting = attrs.evolve(self._meetings[meeting_id], **checked, updated_at=float(now))
        self._meetings[meeting_id] = meeting
        self._meeting_written(meeting_id)
        return self._meeting_out(meeting)

    @_fired
    def delete_meeting(self, meeting_id: int) -> bool:
        if self._meetings.pop(meeting_id, None) is None:
            return False
        # What ON DELETE CASCADE does in SQL.
        for rows in (self._participants, self._meeting_messages):
            for row_id in [row_id for row_id, row in rows.items() if row.meeting_id == meeting_id]:
                del rows[row_id]
        for media in [media for media in self._media.values() if media.meeting_id == meeting_id]:
            self._media[media.id] = attrs.evolve(media, meeting_id=None)  # ON DELETE SET NULL
        self._meeting_written(meeting_id)
        return True

    @_fired
    def list_meetings(self, offset: int, limit: int, statuses: Collection[str] | None = None,
                      keyword: str | None = None, member_id: int | None = None,
                      start_from: float | None = None, start_until: float | None = None,
                      newest_first: bool = False) -> tuple[int, list[MeetingRecord]]:
        wanted = None if statuses is None else set(statuses)
        members = {row.meeting_id for row in self._participants.values()
                   if row.user_id == member_id and row.status != PARTICIPANT_REMOVED}
        meetings = [
            meeting for meeting in self._meetings.values()
            if (wanted is None or meeting.status in wanted)
            and (not keyword or contains_folded(keyword, meeting.title, meeting.description))
            and (member_id is None or meeting.creator_id == member_id or meeting.id in members)
            and (start_from is None or meeting.start_time >= start_from)
            and (start_until is None or meeting.start_time <= start_until)
        ]
        meetings.sort(key=lambda meeting: (meeting.start_time, meeting.id), reverse=newest_first)
        total, page = _page(meetings, offset, limit)
        return total, [self._meeting_out(meeting) for meeting in page]

    # -- participants ---------------------------------------------------------
    @_fired
    def join_meeting(self, meeting_id: int, user_id: int, role: str,
                     now: float) -> tuple[ParticipantRecord, bool]:
        meeting = self._require_meeting(meeting_id)
        participant = self._find_participant(meeting_id, user_id, removed=True)
        if participant is not None:
            if participant.status == PARTICIPANT_REMOVED:
                raise ParticipantRemoved()
            changes = {"status": PARTICIPANT_JOINED, "joined_at": float(now), "left_at": None}
            return self._change_participant(participant, changes), False
        return self._admit(meeting, user_id, role, PARTICIPANT_JOINED, float(now)), True

    @_fired
    def add_participant(self, meeting_id: int, user_id: int, role: str, now: float) -> ParticipantRecord:
        meeting = self._require_meeting(meeting_id)
        participant = self._find_participant(meeting_id, user_id, removed=True)
        if participant is None:
            return self._admit(meeting, user_id, role, PARTICIPANT_INVITED, None)
        if participant.status != PARTICIPANT_REMOVED:
            raise already_participant()
        # Added back: the bar is lifted, and the seat counts again.
        self._check_capacity(meeting)
        changes = {"role": role, "status": PARTICIPANT_INVITED, "joined_at": None, "left_at": None}
        return self._change_participant(participant, changes)

    def _check_capacity(self, meeting: MeetingRecord) -> None:
        seats = sum(1 for participant in self._participants.values()
                    if participant.meeting_id == meeting.id and participant.status != PARTICIPANT_REMOVED)
        if seats >= meeting.max_participants:
            raise MeetingFull()

    def _admit(self, meeting: MeetingRecord, user_id: int, role: str, status: str,
               joined_at: float | None) -> ParticipantRecord:
        """Add a new participant if the user exists and the meeting has room."""
        self._require_users(user_id)
        self._check_capacity(meeting)
        return self._insert_participant(meeting.id, user_id, role, status, joined_at)

    def _insert_participant(self, meeting_id: int, user_id: int, role: str, status: str,
                            joined_at: float | None = None) -> ParticipantRecord:
        self._last_participant_id += 1
        participant = self._participants[self._last_participant_id] = ParticipantRecord(
            id=self._last_participant_id, meeting_id=meeting_id, user_id=user_id, username="", nickname="",
            role=role, status=status, audio_enabled=True, video_enabled=True, joined_at=joined_at, left_at=None,
        )
        return self._named(participant)

    def _named(self, record: _Named) -> _Named:
        """``record`` with its user's current username and nickname."""
        username = self._users[record.user_id].username
        return attrs.evolve(record, username=username, nickname=self._profiles[record.user_id].nickname)

    def _find_participant(self, meeting_id: int, user_id: int, removed: bool = False) -> ParticipantRecord | None:
        """The user's row in the meeting; a removed one only when ``removed`` is asked for."""
        for participant in self._participants.values():
            if participant.meeting_id == meeting_id and participant.user_id == user_id:
                return participant if removed or participant.status != PARTICIPANT_REMOVED else None
        return None

    def _change_participant(self, participant: ParticipantRecord, changes: dict[str, Any]) -> ParticipantRecord:
        participant = self._participants[participant.id] = attrs.evolve(participant, **changes)
        return self._named(participant)

    @_fired
    def get_participant(self, meeting_id: int, user_id: int) -> ParticipantRecord | None:
        participant = self._find_participant(meeting_id, user_id)
        return None if participant is None else self._named(participant)

    @_fired
    def list_participants(self, meeting_id: int) -> list[ParticipantRecord]:
        return [
            self._named(participant) for participant in self._participants.values()
            if participant.meeting_id == meeting_id and participant.status != PARTICIPANT_REMOVED
        ]

    @_fired
    def update_participant(self, meeting_id: int, user_id: int,
                           changes: Mapping[str, object]) -> ParticipantRecord | None:
        checked = _as_stored(checked_changes(changes, PARTICIPANT_CHANGES))
        participant = self._find_participant(meeting_id, user_id)
        return None if participant is None else self._change_participant(participant, checked)

    @_fired
    def remove_participant(self, meeting_id: int, user_id: int, now: float) -> bool:
        participant = self._find_participant(meeting_id, user_id)
        if participant is None:
            return False
        self._change_participant(participant, {"status": PARTICIPANT_REMOVED, "left_at": float(now)})
        return True

    # -- meeting chat ---------------------------------------------------------
    @_fired
    def add_meeting_message(self, meeting_id: int, user_id: int, content: str, message_type: str,
                            now: float) -> MeetingMessageRecord:
        self._require_meeting(meeting_id)
        self._require_users(user_id)
        self._last_meeting_message_id += 1
        message = self._meeting_messages[self._last_meeting_message_id] = MeetingMessageRecord(
            id=self._last_meeting_message_id, meeting_id=meeting_id, user_id=user_id, username="", nickname="",
            content=content, message_type=message_type, created_at=float(now),
        )
        return self._named(message)

    @_fired
    def list_meeting_messages(self, meeting_id: int, offset: int,
                              limit: int) -> tuple[int, list[MeetingMessageRecord]]:
        messages = [message for message in self._meeting_messages.values() if message.meeting_id == meeting_id]
        total, page = _page(messages, offset, limit)
        return total, [self._named(message) for message in page]

    # -- refresh tokens -------------------------------------------------------
    @_fired
    def add_refresh_token(self, token_hash: str, user_id: int, family_id: str, now: float,
                          expires_at: float) -> RefreshTokenRecord:
        return self._add_refresh_token(token_hash, user_id, family_id, now, expires_at)

    def _add_refresh_token(self, token_hash: str, user_id: int, family_id: str, now: float,
                           expires_at: float) -> RefreshTokenRecord:
        self._require_users(user_id)
        if token_hash in self._refresh_tokens:
            raise token_exists()
        token = self._refresh_tokens[token_hash] = RefreshTokenRecord(
            token_hash, user_id, family_id, float(now), float(expires_at)
        )
        return token

    @_fired
    def get_refresh_token(self, token_hash: str) -> RefreshTokenRecord | None:
        return self._refresh_tokens.get(token_hash)

    @_fired
    def rotate_refresh_token(self, old_hash: str, new_hash: str, now: float,
                             expires_at: float) -> RefreshTokenRecord | None:
        old = self._refresh_tokens.get(old_hash)
        if old is None or old.expires_at <= now:
            return None
        if old.revoked_at is not None:
            self._revoke(lambda token: token.family_id == old.family_id, now)
            return None
        # Checked before anything changes, as the SQL store's rollback would undo the revocation.
        if new_hash in self._refresh_tokens:
            raise token_exists()
        self._refresh_tokens[old_hash] = attrs.evolve(old, revoked_at=float(now), replaced_by=new_hash)
        return self._add_refresh_token(new_hash, old.user_id, old.family_id, now, expires_at)

    @_fired
    def revoke_all_tokens(self, user_id: int, now: float) -> int:
        user = self._users.get(user_id)
        if user is not None:
            self._users[user_id] = attrs.evolve(user, token_version=user.token_version + 1)
        self._user_written(user_id)
        return self._revoke(lambda token: token.user_id == user_id, now)

    @_fired
    def revoke_refresh_token(self, token_hash: str, user_id: int, now: float) -> bool:
        return self._revoke(lambda token: token.token_hash == token_hash and token.user_id == user_id, now) > 0

    def _revoke(self, chosen: Callable[[RefreshTokenRecord], bool], now: float) -> int:
        """Revoke the live tokens ``chosen`` picks -> how many."""
        live = [
            token for token in self._refresh_tokens.values()
            if chosen(token) and token.revoked_at is None and token.expires_at > now
        ]
        for token in live:
            self._refresh_tokens[token.token_hash] = attrs.evolve(token, revoked_at=float(now))
        return len(live)

    # -- password resets ------------------------------------------------------
    @_fired
    def add_password_reset(self, token_hash: str, user_id: int, now: float, expires_at: float) -> None:
        self._require_users(user_id)
        if token_hash in self._password_resets:
            raise token_exists()
        self._password_resets[token_hash] = _PasswordReset(user_id, float(expires_at))

    @_fired
    def consume_password_reset(self, token_hash: str, now: float) -> int | None:
        reset = self._password_resets.get(token_hash)
        if reset is None or reset.used or reset.expires_at <= now:
            return None
        reset.used = True
        return reset.user_id

    # -- media ----------------------------------------------------------------
    @_fired
    def add_media(self, uploader_id: int, filename: str, content_type: str, size: int, sha256: str,
                  file_type: str, storage_key: str, now: float, meeting_id: int | None = None,
                  duration_ms: int | None = None, width: int | None = None, height: int | None = None,
                  source_id: int | None = None, shared_with: Iterable[int] = (),
                  quota: int | None = None) -> MediaRecord:
        shared = sorted(set(shared_with) - {uploader_id})
        self._require_users(uploader_id, *shared)
        if meeting_id is not None and meeting_id not in self._meetings:
            raise MeetingNotFound()
        if quota is not None:
            used = self._usage(uploader_id)
            if used + size > quota:
                raise quota_exceeded(used, size, quota)
        self._last_media_id += 1
        record = MediaRecord(self._last_media_id, uploader_id, meeting_id, filename, content_type, size, sha256,
                             file_type, storage_key, float(now), duration_ms, width, height,
                             source_id if source_id in self._media else None)
        self._media[record.id] = record
        self._media_grants.update((record.id, user_id) for user_id in shared)
        return record

    @_fired
    def get_media(self, media_id: int) -> MediaRecord | None:
        return self._media.get(media_id)

    @_fired
    def media_shared_with(self, media_id: int, user_id: int) -> bool:
        return (media_id, user_id) in self._media_grants

    @_fired
    def list_media(self, offset: int, limit: int, user_id: int | None = None,
                   meeting_id: int | None = None) -> tuple[int, list[MediaRecord]]:
        found = [
            media for media in sorted(self._media.values(), key=lambda media: media.id, reverse=True)
            if (user_id is None or media.uploader_id == user_id or (media.id, user_id) in self._media_grants)
            and (meeting_id is None or media.meeting_id == meeting_id)
        ]
        return _page(found, offset, limit)

    @_fired
    def delete_media(self, media_id: int) -> MediaRecord | None:
        record = self._media.pop(media_id, None)
        if record is not None:
            self._media_grants = {grant for grant in self._media_grants if grant[0] != media_id}
            for other in [m for m in self._media.values() if m.source_id == media_id]:
                self._media[other.id] = attrs.evolve(other, source_id=None)
        return record

    @_fired
    def media_usage(self, user_id: int) -> int:
        return self._usage(user_id)

    def _usage(self, user_id: int) -> int:
        return sum(media.size for media in self._media.values() if media.uploader_id == user_id)
