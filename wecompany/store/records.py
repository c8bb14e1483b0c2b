"""
Value types that cross the store boundary.

Times are POSIX seconds (float, UTC) everywhere inside the server; transports
format them (RFC 3339 for REST/JSON, u64 milliseconds on the binary protocol).
"""

from __future__ import annotations

import attrs


@attrs.frozen
class UserRecord:
    """An account. ``username`` keeps the case it was registered with; lookups ignore case."""

    id: int
    username: str
    email: str | None
    password_hash: str
    role: str  # "user" | "admin"
    status: str  # "active" | "banned" | "deleted"
    created_at: float
    last_login: float | None = None
    #: Access tokens name it (claim ``ver``); raising it revokes every one issued before.
    token_version: int = 0


@attrs.frozen
class ProfileRecord:
    """The editable part of an account, one row per user."""

    user_id: int
    nickname: str
    avatar: str = ""
    phone: str = ""
    updated_at: float = 0.0


@attrs.frozen
class StoredMessage:
    """
    A one-to-one text message waiting for an offline recipient.

    ``id`` is the message id the sender was told in its TEXT_ACK (a 63-bit id
    made by :class:`wecompany.domain.ids.IdGenerator`), not a row number; the
    store keeps its own insertion order and returns messages oldest first.
    """

    id: int
    sender_id: int
    recipient_id: int
    text: str
    sent_at: float


@attrs.frozen
class FileRecord:
    """
    A file in the media store.

    ``path`` is relative to the data directory's ``media/`` folder and is always
    chosen by the server. ``status`` is ``"receiving"`` while chunks arrive,
    ``"complete"`` once the SHA-256 matched. ``recipient_id`` is set for a
    one-to-one transfer; ``delivered`` says whether the recipient has received it.
    """

    id: int
    owner_id: int
    name: str
    size: int
    sha256: str  # lower-case hex
    path: str
    status: str
    created_at: float
    recipient_id: int | None = None
    delivered: bool = False
    content_type: str = "application/octet-stream"


@attrs.frozen
class MeetingRecord:
    """
    A meeting. ``settings`` is a plain dict of booleans (see the API spec);
    ``room_id`` is the stable signaling room name every member is given.
    """

    id: int
    title: str
    description: str
    creator_id: int
    start_time: float
    end_time: float | None
    max_participants: int
    meeting_type: str  # "video" | "audio"
    status: str  # "scheduled" | "ongoing" | "ended" | "cancelled"
    password_hash: str | None = attrs.field(repr=False)
    settings: dict
    room_id: str
    created_at: float
    updated_at: float
    started_at: float | None = None
    ended_at: float | None = None


@attrs.frozen
class ParticipantRecord:
    """A user's membership of a meeting, with the user's name for display."""

    id: int
    meeting_id: int
    user_id: int
    username: str
    nickname: str
    role: str  # "host" | "moderator" | "participant"
    status: str  # "invited" | "joined" | "left"
    audio_enabled: bool
    video_enabled: bool
    joined_at: float | None
    left_at: float | None


@attrs.frozen
class MeetingMessageRecord:
    """A chat message of a meeting (REST or WebSocket), with the sender's names."""

    id: int
    meeting_id: int
    user_id: int
    username: str
    nickname: str
    content: str
    message_type: str  # "text" | "system" | "file"
    created_at: float


@attrs.frozen
class RefreshTokenRecord:
    """
    A refresh token, stored by the SHA-256 of its value (the value itself is
    never stored). Tokens of one login form a ``family``; reuse of a rotated
    token revokes the whole family.
    """

    token_hash: str
    user_id: int
    family_id: str
    created_at: float
    expires_at: float
    revoked_at: float | None = None
    replaced_by: str | None = None


@attrs.frozen
class MediaRecord:
    """
    An item of the REST media API: an upload, a processing result, or a file
    sent with the TCP protocol. ``storage_key`` names its bytes in the file
    storage and is always chosen by the server; ``duration_ms``, ``width`` and
    ``height`` are known for audio, video and images. ``source_id`` is the
    item a processing result was made from.
    """

    id: int
    uploader_id: int
    meeting_id: int | None
    filename: str
    content_type: str
    size: int
    sha256: str  # lower-case hex
    file_type: str
    storage_key: str
    created_at: float
    duration_ms: int | None = None
    width: int | None = None
    height: int | None = None
    source_id: int | None = None
