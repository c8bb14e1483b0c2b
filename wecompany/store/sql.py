"""
The store's queries, written once for every SQL database.

:class:`SQLStore` implements :class:`~wecompany.store.interface.IStore` over a
:class:`twisted.enterprise.adbapi.ConnectionPool`; a subclass supplies the pool
(:meth:`SQLStore._make_pool`) and the :class:`~wecompany.store.dialect.Dialect`.
Each public method is one interaction, that is one transaction, on a pool
thread; the ``_*_txn`` methods run there and never touch the reactor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar

import attrs
from twisted.enterprise.adbapi import ConnectionPool
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wecompany.errors import Conflict
from wecompany.store.common import (
    FILE_COMPLETE,
    FILE_RECEIVING,
    USER_ACTIVE,
    check_page,
    default_nickname,
    email_exists,
    normalise_email,
    store_not_running,
    user_not_found,
    username_exists,
)
from wecompany.store.dialect import Dialect
from wecompany.store.interface import IStore
from wecompany.store.records import FileRecord, ProfileRecord, StoredMessage, UserRecord
from wecompany.store.schema import load_migrations, migrate

log = Logger()

# Column lists in the order of the record's fields.
_USER = "id, username, email, password_hash, role, status, created_at, last_login"
_PROFILE = "user_id, nickname, avatar, phone, updated_at"
_MESSAGE = "id, sender_id, recipient_id, text, sent_at"
_FILE = "id, owner_id, name, size, sha256, path, status, created_at, recipient_id, delivered, content_type"

_SELECT_USER = f"SELECT {_USER} FROM users"
_SELECT_FILE = f"SELECT {_FILE} FROM files"


def _user(row: Sequence[Any]) -> UserRecord:
    return UserRecord(*row)


def _file(row: Sequence[Any]) -> FileRecord:
    *fields, delivered, content_type = row
    return FileRecord(*fields, delivered=bool(delivered), content_type=content_type)


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


def _conflict_from(error: Exception) -> Conflict | None:
    """Which unique column a driver's IntegrityError names (SQLite: ``users.email``)."""
    text = str(error).lower()
    if "username" in text:
        return username_exists()
    if "email" in text:
        return email_exists()
    return None


@implementer(IStore)
@attrs.define
class SQLStore:
    """IStore over an adbapi pool; see the module docstring."""

    _dialect: ClassVar[Dialect]

    _pool: ConnectionPool | None = attrs.field(default=None, init=False)
    _ready: bool = attrs.field(default=False, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _close_waiters: list[Deferred[None]] = attrs.field(factory=list, init=False)

    def _make_pool(self) -> ConnectionPool:
        raise NotImplementedError

    # -- life cycle -----------------------------------------------------------
    def start(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        if self._pool is not None:
            raise RuntimeError("store already started")
        pool = self._pool = self._make_pool()
        try:
            await migrate(pool, self._dialect, load_migrations(self._dialect))
        except BaseException:
            self._close_pool(None)
            raise
        self._ready = True
        if self._closing:  # stop() was called while migrations ran
            self._drain_and_close()

    def stop(self) -> Deferred[None]:
        if self._pool is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._close_waiters.append(waiter)
        if not self._closing:
            self._closing = True
            if self._ready:
                self._drain_and_close()
        return waiter

    def _drain_and_close(self) -> None:
        assert self._pool is not None
        # The pool has one connection, which runs interactions in the order
        # they were asked for: once this no-op is done, so is every write
        # queued before stop() was called.
        self._pool.runInteraction(lambda txn: None).addBoth(self._close_pool)

    def _close_pool(self, result: object) -> None:
        if isinstance(result, Failure):
            log.failure("Store failed while finishing its last writes", result)
        assert self._pool is not None
        self._pool.close()
        self._pool = None
        self._ready = self._closing = False
        waiters, self._close_waiters = self._close_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def ping(self) -> Deferred[bool]:
        return self._read(self._ping_txn)

    def _ping_txn(self, txn: Any) -> bool:
        return self._one(txn, "SELECT 1") == (1,)

    # -- plumbing -------------------------------------------------------------
    def _running(self) -> bool:
        return self._ready and not self._closing

    def _answer(self, value: object) -> Deferred[Any]:
        """Answer without touching the database, as a running store would."""
        return succeed(value) if self._running() else fail(store_not_running())

    def _read(self, interaction: Callable[..., Any], *args: object) -> Deferred[Any]:
        return self._run(False, interaction, *args)

    def _write(self, interaction: Callable[..., Any], *args: object) -> Deferred[Any]:
        return self._run(True, interaction, *args)

    def _run(self, write: bool, interaction: Callable[..., Any], *args: object) -> Deferred[Any]:
        if not self._running():
            return fail(store_not_running())
        assert self._pool is not None
        return self._pool.runInteraction(self._transaction, write, interaction, *args)

    def _transaction(self, txn: Any, write: bool, interaction: Callable[..., Any], *args: object) -> Any:
        # adbapi commits when the interaction returns and rolls back when it raises.
        self._dialect.begin(txn, write)
        return interaction(txn, *args)

    def _execute(self, txn: Any, query: str, params: Sequence[object] = ()) -> Any:
        return self._dialect.execute(txn, query, params)

    def _one(self, txn: Any, query: str, params: Sequence[object] = ()) -> Any:
        return self._execute(txn, query, params).fetchone()

    def _all(self, txn: Any, query: str, params: Sequence[object] = ()) -> list[Any]:
        return self._execute(txn, query, params).fetchall()

    def _chunks(self, ids: Iterable[int]) -> Iterator[list[int]]:
        """Distinct ids, ascending, in lists short enough for one statement."""
        ordered = sorted(set(ids))
        size = self._dialect.max_params
        for start in range(0, len(ordered), size):
            yield ordered[start:start + size]

    # -- accounts -------------------------------------------------------------
    def create_user(self, username: str, password_hash: str, email: str | None,
                    nickname: str | None, now: float, role: str = "user") -> Deferred[UserRecord]:
        return self._write(
            self._create_user_txn, username, password_hash, normalise_email(email),
            default_nickname(username, nickname), now, role,
        )

    def _create_user_txn(self, txn: Any, username: str, password_hash: str, email: str | None,
                         nickname: str, now: float, role: str) -> UserRecord:
        clash = self._find_clash(txn, username, email)
        if clash is not None:
            raise clash
        try:
            row = self._one(
                txn,
                "INSERT INTO users (username, email, password_hash, role, status, created_at)"
                f" VALUES (?, ?, ?, ?, ?, ?) RETURNING {_USER}",
                (username, email, password_hash, role, USER_ACTIVE, now),
            )
        except self._pool.dbapi.IntegrityError as error:
            # Only if the check above missed a clash (it runs in the same
            # transaction, so it should not): name it all the same.
            conflict = _conflict_from(error)
            if conflict is None:
                raise
            raise conflict from error
        user = _user(row)
        self._execute(
            txn,
            "INSERT INTO profiles (user_id, nickname, updated_at) VALUES (?, ?, ?)",
            (user.id, nickname, now),
        )
        return user

    def _find_clash(self, txn: Any, username: str, email: str | None) -> Conflict | None:
        if self._one(txn, "SELECT 1 FROM users WHERE username = ?", (username,)):
            return username_exists()
        if email is not None and self._one(txn, "SELECT 1 FROM users WHERE email = ?", (email,)):
            return email_exists()
        return None

    def get_user(self, user_id: int) -> Deferred[UserRecord | None]:
        return self._read(self._user_where_txn, "id", user_id)

    def get_user_by_username(self, username: str) -> Deferred[UserRecord | None]:
        return self._read(self._user_where_txn, "username", username)

    def _user_where_txn(self, txn: Any, column: str, value: object) -> UserRecord | None:
        row = self._one(txn, f"{_SELECT_USER} WHERE {column} = ?", (value,))
        return None if row is None else _user(row)

    def get_user_by_login(self, login: str) -> Deferred[UserRecord | None]:
        return self._read(self._user_by_login_txn, login)

    def _user_by_login_txn(self, txn: Any, login: str) -> UserRecord | None:
        # A username match wins over another account's email.
        user = self._user_where_txn(txn, "username", login)
        return user if user is not None else self._user_where_txn(txn, "email", login)

    def set_password_hash(self, user_id: int, password_hash: str) -> Deferred[None]:
        return self._write(self._update_user_txn, "password_hash", password_hash, user_id)

    def record_login(self, user_id: int, now: float) -> Deferred[None]:
        return self._write(self._update_user_txn, "last_login", now, user_id)

    def _update_user_txn(self, txn: Any, column: str, value: object, user_id: int) -> None:
        self._execute(txn, f"UPDATE users SET {column} = ? WHERE id = ?", (value, user_id))

    def get_profile(self, user_id: int) -> Deferred[ProfileRecord | None]:
        return self._read(self._profile_txn, user_id)

    def _profile_txn(self, txn: Any, user_id: int) -> ProfileRecord | None:
        row = self._one(txn, f"SELECT {_PROFILE} FROM profiles WHERE user_id = ?", (user_id,))
        return None if row is None else ProfileRecord(*row)

    def list_users_by_ids(self, user_ids: Iterable[int]) -> Deferred[dict[int, UserRecord]]:
        chunks = list(self._chunks(user_ids))
        if not chunks:
            return self._answer({})
        return self._read(self._users_by_ids_txn, chunks)

    def _users_by_ids_txn(self, txn: Any, chunks: list[list[int]]) -> dict[int, UserRecord]:
        users = {}
        for chunk in chunks:
            query = f"{_SELECT_USER} WHERE id IN ({_placeholders(len(chunk))}) ORDER BY id"
            for row in self._all(txn, query, chunk):
                users[row[0]] = _user(row)
        return users

    # -- contacts -------------------------------------------------------------
    def add_contact(self, user_id: int, contact_id: int, now: float) -> Deferred[None]:
        return self._write(self._add_contact_txn, user_id, contact_id, now)

    def _add_contact_txn(self, txn: Any, user_id: int, contact_id: int, now: float) -> None:
        wanted = {user_id, contact_id}
        (found,) = self._one(
            txn, f"SELECT COUNT(*) FROM users WHERE id IN ({_placeholders(len(wanted))})", list(wanted)
        )
        if found != len(wanted):
            raise user_not_found()
        self._execute(
            txn,
            "INSERT INTO contacts (user_id, contact_id, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id, contact_id) DO NOTHING",
            (user_id, contact_id, now),
        )

    def remove_contact(self, user_id: int, contact_id: int) -> Deferred[bool]:
        return self._write(self._remove_contact_txn, user_id, contact_id)

    def _remove_contact_txn(self, txn: Any, user_id: int, contact_id: int) -> bool:
        cursor = self._execute(
            txn, "DELETE FROM contacts WHERE user_id = ? AND contact_id = ?", (user_id, contact_id)
        )
        return cursor.rowcount > 0

    def list_contacts(self, user_id: int, offset: int, limit: int) -> Deferred[tuple[int, list[UserRecord]]]:
        return self._read(self._list_contacts_txn, user_id, offset, limit)

    def _list_contacts_txn(self, txn: Any, user_id: int, offset: int,
                           limit: int) -> tuple[int, list[UserRecord]]:
        check_page(offset, limit)
        (total,) = self._one(txn, "SELECT COUNT(*) FROM contacts WHERE user_id = ?", (user_id,))
        rows = self._all(
            txn,
            f"{_SELECT_USER} WHERE id IN (SELECT contact_id FROM contacts WHERE user_id = ?)"
            " ORDER BY username, id LIMIT ? OFFSET ?",
            (user_id, limit, offset),
        )
        return total, [_user(row) for row in rows]

    def watchers_of(self, user_id: int) -> Deferred[list[int]]:
        return self._read(self._watchers_txn, user_id)

    def _watchers_txn(self, txn: Any, user_id: int) -> list[int]:
        rows = self._all(txn, "SELECT user_id FROM contacts WHERE contact_id = ? ORDER BY user_id", (user_id,))
        return [watcher for (watcher,) in rows]

    # -- offline messages -----------------------------------------------------
    def store_offline_message(self, message: StoredMessage) -> Deferred[None]:
        return self._write(self._store_message_txn, message)

    def _store_message_txn(self, txn: Any, message: StoredMessage) -> None:
        # The same id again is a retry of a message already stored.
        self._execute(
            txn,
            f"INSERT INTO offline_messages ({_MESSAGE}) VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            attrs.astuple(message),
        )

    def fetch_offline_messages(self, recipient_id: int, limit: int) -> Deferred[list[StoredMessage]]:
        return self._read(self._fetch_messages_txn, recipient_id, limit)

    def _fetch_messages_txn(self, txn: Any, recipient_id: int, limit: int) -> list[StoredMessage]:
        check_page(0, limit)
        rows = self._all(
            txn,
            f"SELECT {_MESSAGE} FROM offline_messages WHERE recipient_id = ? ORDER BY seq LIMIT ?",
            (recipient_id, limit),
        )
        return [StoredMessage(*row) for row in rows]

    def delete_offline_messages(self, message_ids: Iterable[int]) -> Deferred[None]:
        chunks = list(self._chunks(message_ids))
        if not chunks:
            return self._answer(None)
        return self._write(self._delete_messages_txn, chunks)

    def _delete_messages_txn(self, txn: Any, chunks: list[list[int]]) -> None:
        for chunk in chunks:
            self._execute(txn, f"DELETE FROM offline_messages WHERE id IN ({_placeholders(len(chunk))})", chunk)

    # -- files ----------------------------------------------------------------
    def create_file(self, owner_id: int, name: str, size: int, sha256: str, path: str, now: float,
                    recipient_id: int | None = None,
                    content_type: str = "application/octet-stream") -> Deferred[FileRecord]:
        return self._write(
            self._create_file_txn,
            (owner_id, recipient_id, name, size, sha256, path, FILE_RECEIVING, content_type, 0, now),
        )

    def _create_file_txn(self, txn: Any, values: tuple[object, ...]) -> FileRecord:
        row = self._one(
            txn,
            "INSERT INTO files (owner_id, recipient_id, name, size, sha256, path, status,"
            f" content_type, delivered, created_at) VALUES ({_placeholders(len(values))}) RETURNING {_FILE}",
            values,
        )
        return _file(row)

    def complete_file(self, file_id: int) -> Deferred[None]:
        return self._write(self._update_file_txn, "status", FILE_COMPLETE, file_id)

    def mark_file_delivered(self, file_id: int) -> Deferred[None]:
        return self._write(self._update_file_txn, "delivered", 1, file_id)

    def _update_file_txn(self, txn: Any, column: str, value: object, file_id: int) -> None:
        self._execute(txn, f"UPDATE files SET {column} = ? WHERE id = ?", (value, file_id))

    def delete_file(self, file_id: int) -> Deferred[None]:
        return self._write(self._delete_file_txn, file_id)

    def _delete_file_txn(self, txn: Any, file_id: int) -> None:
        self._execute(txn, "DELETE FROM files WHERE id = ?", (file_id,))

    def get_file(self, file_id: int) -> Deferred[FileRecord | None]:
        return self._read(self._get_file_txn, file_id)

    def _get_file_txn(self, txn: Any, file_id: int) -> FileRecord | None:
        row = self._one(txn, f"{_SELECT_FILE} WHERE id = ?", (file_id,))
        return None if row is None else _file(row)

    def undelivered_files_for(self, recipient_id: int) -> Deferred[list[FileRecord]]:
        return self._read(self._undelivered_files_txn, recipient_id)

    def _undelivered_files_txn(self, txn: Any, recipient_id: int) -> list[FileRecord]:
        rows = self._all(
            txn,
            f"{_SELECT_FILE} WHERE recipient_id = ? AND delivered = 0 AND status = ? ORDER BY id",
            (recipient_id, FILE_COMPLETE),
        )
        return [_file(row) for row in rows]
