"""
A store in dictionaries, for unit tests that want no threads.

It gives the answers :class:`~wecompany.store.sqlite.SQLiteStore` gives
(ordering, case-insensitivity, errors), checked by the same ``tests/store``
suite, and every Deferred it returns has already fired. Nothing is durable
beyond the object's life.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, Concatenate, ParamSpec, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from zope.interface import implementer

from wecompany.store.common import (
    FILE_COMPLETE,
    FILE_RECEIVING,
    USER_ACTIVE,
    check_page,
    default_nickname,
    email_exists,
    fold_case,
    normalise_email,
    store_not_running,
    user_not_found,
    username_exists,
)
from wecompany.store.interface import IStore
from wecompany.store.records import FileRecord, ProfileRecord, StoredMessage, UserRecord

_P = ParamSpec("_P")
_T = TypeVar("_T")


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


@implementer(IStore)
@attrs.define
class MemoryStore:
    """:class:`~wecompany.store.interface.IStore` in memory; see the module docstring."""

    _running: bool = attrs.field(default=False, init=False)
    _users: dict[int, UserRecord] = attrs.field(factory=dict, init=False)
    _profiles: dict[int, ProfileRecord] = attrs.field(factory=dict, init=False)
    # (user_id, contact_id) -> created_at
    _contacts: dict[tuple[int, int], float] = attrs.field(factory=dict, init=False)
    # By message id; dicts keep insertion order, which is the SQL store's seq.
    _messages: dict[int, StoredMessage] = attrs.field(factory=dict, init=False)
    _files: dict[int, FileRecord] = attrs.field(factory=dict, init=False)
    # Like AUTOINCREMENT, ids are never reused.
    _last_user_id: int = attrs.field(default=0, init=False)
    _last_file_id: int = attrs.field(default=0, init=False)

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
        if self._find_user("username", username) is not None:
            raise username_exists()
        if email is not None and self._find_user("email", email) is not None:
            raise email_exists()
        self._last_user_id += 1
        user = UserRecord(self._last_user_id, username, email, password_hash, role, USER_ACTIVE, float(now))
        self._users[user.id] = user
        self._profiles[user.id] = ProfileRecord(
            user.id, default_nickname(username, nickname), updated_at=float(now)
        )
        return user

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

    @_fired
    def get_profile(self, user_id: int) -> ProfileRecord | None:
        return self._profiles.get(user_id)

    @_fired
    def list_users_by_ids(self, user_ids: Iterable[int]) -> dict[int, UserRecord]:
        return {user_id: self._users[user_id] for user_id in sorted(set(user_ids)) if user_id in self._users}

    # -- contacts -------------------------------------------------------------
    @_fired
    def add_contact(self, user_id: int, contact_id: int, now: float) -> None:
        if user_id not in self._users or contact_id not in self._users:
            raise user_not_found()
        self._contacts.setdefault((user_id, contact_id), float(now))

    @_fired
    def remove_contact(self, user_id: int, contact_id: int) -> bool:
        return self._contacts.pop((user_id, contact_id), None) is not None

    @_fired
    def list_contacts(self, user_id: int, offset: int, limit: int) -> tuple[int, list[UserRecord]]:
        check_page(offset, limit)
        contacts = [self._users[contact] for (owner, contact) in self._contacts if owner == user_id]
        contacts.sort(key=lambda user: (fold_case(user.username), user.id))
        return len(contacts), contacts[offset:offset + limit]

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
    def get_file(self, file_id: int) -> FileRecord | None:
        return self._files.get(file_id)

    @_fired
    def undelivered_files_for(self, recipient_id: int) -> list[FileRecord]:
        return [
            record for record in self._files.values()
            if record.recipient_id == recipient_id and not record.delivered and record.status == FILE_COMPLETE
        ]
