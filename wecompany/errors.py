"""
The one error hierarchy of WeCompany.

Domain code raises these; each transport maps them once:

* REST (Klein ``handle_errors``) -> JSON envelope with ``code`` (HTTP status),
  ``message`` and ``error_code`` (business code, when one applies);
* TCP -> ERROR frame whose ``u16 code`` is :attr:`WeCompanyError.wire_code`;
* WebSocket signaling -> ``error`` message with the same fields.

``code`` is always an HTTP status, so every transport has a sensible number even
for errors that have no business code.
"""

from __future__ import annotations


class WeCompanyError(Exception):
    """
    Base class of every error a client can be told about.

    :ivar code: HTTP-style status (400, 401, 403, 404, 409, 413, 429, 500, 503).
    :ivar error_code: business code from the API spec (1001 username exists,
        2001 meeting not found, ...), or ``None`` when none applies.
    :ivar message: human readable text, safe to show to the user (never
        contains secrets).
    :ivar detail: optional longer explanation (REST ``error`` field).
    """

    code = 400
    error_code: int | None = None
    default_message = "bad request"

    detail: str | None = None

    def __init__(self, message: str | None = None, *, error_code: int | None = None,
                 code: int | None = None, detail: str | None = None) -> None:
        self.message = message if message is not None else self.default_message
        if detail is not None:
            self.detail = detail
        if error_code is not None:
            self.error_code = error_code
        if code is not None:
            self.code = code
        super().__init__(self.message)

    @property
    def wire_code(self) -> int:
        """The number a binary (TCP) client sees: the business code if any, else the status."""
        return self.error_code if self.error_code is not None else self.code

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code}, error_code={self.error_code}, message={self.message!r})"


class InvalidInput(WeCompanyError):
    """The request is malformed or fails validation."""

    code = 400
    default_message = "invalid input"


class MalformedMessage(InvalidInput):
    """A binary frame or JSON document could not be decoded."""

    default_message = "malformed message"


class Unauthenticated(WeCompanyError):
    """No, an invalid, or an expired credential."""

    code = 401
    default_message = "authentication required"


class InvalidCredentials(Unauthenticated):
    """Wrong username or password. ``error_code`` tells which (1003 / 1004)."""

    default_message = "invalid username or password"


class Forbidden(WeCompanyError):
    """Authenticated, but not allowed to do this."""

    code = 403
    default_message = "forbidden"


class RegistrationClosed(Forbidden):
    """``--registration closed``: clients cannot make accounts; an administrator does."""

    default_message = "registration is closed: ask an administrator for an account"


class NotFound(WeCompanyError):
    """An id that names nothing (user, call, meeting, file...)."""

    code = 404
    default_message = "not found"


class Conflict(WeCompanyError):
    """The request conflicts with current state (username taken, already in a call...)."""

    code = 409
    default_message = "conflict"


class TooLarge(WeCompanyError):
    """A body, frame or upload exceeds a configured limit."""

    code = 413
    default_message = "too large"


class RateLimited(WeCompanyError):
    """Too many requests; ``retry_after`` is in seconds."""

    code = 429
    default_message = "too many requests"

    def __init__(self, message: str | None = None, *, retry_after: float = 1.0, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class Unavailable(WeCompanyError):
    """A dependency (engine, database) is not available, or the server is stopping."""

    code = 503
    default_message = "service unavailable"


class InternalError(WeCompanyError):
    """Something went wrong on our side; details are in the server log only."""

    code = 500
    default_message = "internal error"


# Business error codes from the API spec.
USERNAME_EXISTS = 1001
EMAIL_EXISTS = 1002
USER_NOT_FOUND = 1003
WRONG_PASSWORD = 1004
MEETING_NOT_FOUND = 2001
MEETING_ENDED = 2002
MEETING_FULL = 2003
MEETING_WRONG_PASSWORD = 2004
UPLOAD_FAILED = 3001
FILE_NOT_FOUND = 3002
AI_UNAVAILABLE = 4001
AI_FAILED = 4002


class MeetingNotFound(NotFound):
    error_code = MEETING_NOT_FOUND
    default_message = "meeting not found"


class MeetingEnded(WeCompanyError):
    code = 400
    error_code = MEETING_ENDED
    default_message = "meeting has ended"


class MeetingFull(WeCompanyError):
    code = 403
    error_code = MEETING_FULL
    default_message = "meeting is full"


class WrongMeetingPassword(WeCompanyError):
    code = 403
    error_code = MEETING_WRONG_PASSWORD
    default_message = "wrong meeting password"


class UsernameTaken(InvalidInput):
    """
    The username belongs to another account. A 400, not a 409: the API spec
    gives 409 only where it says so, and its clients read the business code.
    """

    error_code = USERNAME_EXISTS
    default_message = "username already exists"


class EmailTaken(InvalidInput):
    """The email belongs to another account (400, for the reason above)."""

    error_code = EMAIL_EXISTS
    default_message = "email already exists"


class ParticipantRemoved(Forbidden):
    """A host or moderator removed the user from the meeting; only they can add the user back."""

    default_message = "you were removed from this meeting: a host or moderator can add you back"


class MediaNotFound(NotFound):
    """No such media item, or one the caller may not see (never told apart)."""

    error_code = FILE_NOT_FOUND
    default_message = "media not found"


class QuotaExceeded(TooLarge):
    """An upload would take its user past the media quota (``--media-quota``)."""

    error_code = UPLOAD_FAILED
    default_message = "media quota exceeded"


class PeerNotFound(NotFound):
    """
    An SFU peer id that is not (or no longer) open. The browser client tears
    down and reconnects when a poll's 404 says ``peer not found``, so the
    message keeps those words.
    """

    def __init__(self, peer_id: str) -> None:
        super().__init__(f"peer not found: {peer_id}")
        self.peer_id = peer_id
