"""
Rules every store implementation applies the same way.

The SQL stores get case-insensitivity from the database (SQLite's ``NOCASE``
collation); :class:`~wecompany.store.memory.MemoryStore` reproduces it with
:func:`fold_case`, so both give the same answers.
"""

from __future__ import annotations

from wecompany.errors import (
    EMAIL_EXISTS,
    USER_NOT_FOUND,
    USERNAME_EXISTS,
    Conflict,
    InvalidInput,
    NotFound,
    Unavailable,
)

USER_ACTIVE = "active"
FILE_RECEIVING = "receiving"
FILE_COMPLETE = "complete"

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


def check_page(offset: int, limit: int) -> None:
    """Reject a negative offset or limit (SQL would read ``LIMIT -1`` as "no limit")."""
    if offset < 0 or limit < 0:
        raise InvalidInput("offset and limit must not be negative")


def username_exists() -> Conflict:
    return Conflict("username already exists", error_code=USERNAME_EXISTS)


def email_exists() -> Conflict:
    return Conflict("email already exists", error_code=EMAIL_EXISTS)


def user_not_found() -> NotFound:
    return NotFound("user not found", error_code=USER_NOT_FOUND)


def store_not_running() -> Unavailable:
    return Unavailable("store is not running")
