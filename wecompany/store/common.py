"""
Rules every store implementation applies the same way.

The SQL stores get case-insensitivity from the database (SQLite's ``NOCASE``
collation); :class:`~wecompany.store.memory.MemoryStore` reproduces it with
:func:`fold_case`, so both give the same answers.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from wecompany.errors import (
    USER_NOT_FOUND,
    Conflict,
    EmailTaken,
    InvalidInput,
    NotFound,
    QuotaExceeded,
    Unavailable,
    UsernameTaken,
)

USER_ACTIVE = "active"
FILE_RECEIVING = "receiving"
FILE_COMPLETE = "complete"
MEETING_SCHEDULED = "scheduled"
ROLE_HOST = "host"
PARTICIPANT_INVITED = "invited"
PARTICIPANT_JOINED = "joined"
# Kept, not deleted, so that the user cannot simply join again; such a row
# is invisible to every read but join_meeting and add_participant.
PARTICIPANT_REMOVED = "removed"

# What each update method may change (IMeetingStore's ``changes`` keys).
USER_CHANGES = frozenset({"email", "role", "status", "username"})
PROFILE_CHANGES = frozenset({"nickname", "avatar", "phone"})
MEETING_CHANGES = frozenset({
    "title", "description", "start_time", "end_time", "max_participants", "meeting_type",
    "password_hash", "settings", "status", "started_at", "ended_at",
})
PARTICIPANT_CHANGES = frozenset({"role", "status", "audio_enabled", "video_enabled", "joined_at", "left_at"})
# The changes that are times (stored as floats) or flags (stored as 0/1).
TIME_CHANGES = frozenset({"start_time", "end_time", "started_at", "ended_at", "joined_at", "left_at"})
FLAG_CHANGES = frozenset({"audio_enabled", "video_enabled"})

# The escape character of every LIKE pattern the store builds.
LIKE_ESCAPE = "\\"
_LIKE_SPECIAL = frozenset({LIKE_ESCAPE, "%", "_"})

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold_case(text: str) -> str:
    """
    Fold ASCII letters only, as SQLite's ``NOCASE`` collation does.

    Usernames are ASCII by policy, so this is full case-insensitivity for them.
    """
    return text.translate(_ASCII_LOWER)


def normalise_email(email: str | None) -> str | None:
    """An empty email means none: it is stored as NULL and never clashes."""
    return email or None


def default_nickname(username: str, nickname: str | None) -> str:
    """A profile's nickname is the username until the user picks one."""
    return nickname or username


def checked_changes(changes: Mapping[str, Any], allowed: Collection[str]) -> dict[str, Any]:
    """
    A copy of ``changes``, whose keys must all be in ``allowed``.

    The SQL stores put the keys into queries as column names, so this check
    is what keeps a caller's key out of the SQL text.

    :raises ValueError: naming the keys that may not be changed.
    """
    unknown = sorted(set(changes) - set(allowed))
    if unknown:
        raise ValueError(f"cannot change {', '.join(map(repr, unknown))}")
    return dict(changes)


def checked_user_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`checked_changes` for ``update_user``, with the email normalised as on creation."""
    checked = checked_changes(changes, USER_CHANGES)
    if "email" in checked:
        checked["email"] = normalise_email(checked["email"])
    return checked


def optional_time(value: float | None) -> float | None:
    """A time as the SQL stores' ``$float`` columns give it back."""
    return None if value is None else float(value)


def encode_settings(settings: Mapping[str, Any]) -> str:
    """A meeting's settings as the JSON text the SQL stores keep."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def decode_settings(text: str) -> dict[str, Any]:
    return json.loads(text)


def like_pattern(keyword: str) -> str:
    """
    A LIKE pattern (escaped with :data:`LIKE_ESCAPE`) matching ``keyword``
    anywhere, its ``%`` and ``_`` taken literally.
    """
    escaped = "".join(LIKE_ESCAPE + char if char in _LIKE_SPECIAL else char for char in keyword)
    return f"%{escaped}%"


def contains_folded(keyword: str, *texts: str | None) -> bool:
    """
    Whether any of ``texts`` contains ``keyword``, ignoring ASCII case: what
    ``lower(text) LIKE lower(like_pattern(keyword))`` answers in SQLite.
    """
    folded = fold_case(keyword)
    return any(text is not None and folded in fold_case(text) for text in texts)


def check_page(offset: int, limit: int) -> None:
    """Reject a negative offset or limit (SQL would read ``LIMIT -1`` as "no limit")."""
    if offset < 0 or limit < 0:
        raise InvalidInput("offset and limit must not be negative")


def username_exists() -> UsernameTaken:
    return UsernameTaken()


def email_exists() -> EmailTaken:
    return EmailTaken()


def room_exists() -> Conflict:
    return Conflict("room id already exists")


def already_participant() -> Conflict:
    return Conflict("user is already a participant of this meeting")


def token_exists() -> Conflict:
    return Conflict("token already exists")


def user_not_found() -> NotFound:
    return NotFound("user not found", error_code=USER_NOT_FOUND)


def store_not_running() -> Unavailable:
    return Unavailable("store is not running")


def quota_exceeded(used: int, size: int, quota: int) -> QuotaExceeded:
    return QuotaExceeded(f"media quota exceeded: {used} of {quota} bytes are used, and this file has {size}")
