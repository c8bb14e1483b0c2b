"""
Events the domain pushes to clients through :meth:`IClient.send_event`.

Each transport encodes them for its own wire format. They are frozen values
so one instance can be handed to many clients.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class TextMessage:
    """A text message for the receiving user."""

    message_id: int
    sender_id: str
    sender_name: str
    text: str
    sent_at: float
    broadcast: bool = False
    stored: bool = False  # True when it waited in the offline store


@attrs.frozen
class PresenceChanged:
    """A contact came online or went offline."""

    user_id: str
    username: str
    online: bool


@attrs.frozen
class CallRinging:
    """To the caller: the call exists and the callee is being rung."""

    call_id: str
    callee_id: str
    is_video: bool


@attrs.frozen
class CallIncoming:
    """To the callee: somebody is calling."""

    call_id: str
    caller_id: str
    caller_name: str
    is_video: bool


@attrs.frozen
class CallAccepted:
    """To both parties: the call is active, media may flow."""

    call_id: str


@attrs.frozen
class CallRejected:
    """
    To both parties (or only the caller, for a call that could not be placed).

    ``reason`` is one of ``rejected`` (or the callee's own text), ``busy``,
    ``offline``, ``not_found``, ``timeout``, ``self``.
    """

    call_id: str
    reason: str


@attrs.frozen
class CallEnded:
    """
    To both parties: the call is over.

    ``reason``: ``hangup``, ``cancelled``, ``disconnected``, ``max_duration``,
    ``shutdown``, ``replaced``.
    """

    call_id: str
    reason: str


@attrs.frozen
class FileOffered:
    """To the recipient: a complete, verified file is about to be streamed."""

    file_id: int
    sender_id: str
    sender_name: str
    name: str
    size: int
    sha256: bytes


@attrs.frozen
class FileChunk:
    """To the recipient: ``data`` at ``offset`` of file ``file_id``."""

    file_id: int
    offset: int
    data: bytes


@attrs.frozen
class FileDone:
    """To the recipient: every byte of ``file_id`` has been sent."""

    file_id: int


@attrs.frozen
class FileUnavailable:
    """
    To the recipient: file ``file_id`` cannot be sent now (the file storage
    is unavailable, or lost it). ``code`` is the error's wire code; what was
    sent of the file so far stands, and the file may be fetched again.
    """

    file_id: int
    code: int
    message: str
