"""
The store's queries, written once for every SQL database.

:class:`SQLStore` implements :class:`~wecompany.store.interface.IStore` over a
:class:`twisted.enterprise.adbapi.ConnectionPool`; a subclass supplies the pool
(:meth:`SQLStore._make_pool`) and the :class:`~wecompany.store.dialect.Dialect`.
Each public method is one interaction, that is one transaction, on a pool
thread; the ``_*_txn`` methods run there and never touch the reactor.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, TypeVar

import attrs
from twisted.enterprise.adbapi import ConnectionPool
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from wecompany.errors import (
    EmailTaken, InvalidInput, MeetingFull, MeetingNotFound, ParticipantRemoved, Unavailable,
    UsernameTaken,
)
from wecompany.store.common import (
    FILE_COMPLETE,
    FILE_RECEIVING,
    FLAG_CHANGES,
    LIKE_ESCAPE,
    MEETING_CHANGES,
    MEETING_SCHEDULED,
    PARTICIPANT_CHANGES,
    PARTICIPANT_INVITED,
    PARTICIPANT_JOINED,
    PARTICIPANT_REMOVED,
    PROFILE_CHANGES,
    ROLE_HOST,
    USER_ACTIVE,
    already_participant,
    check_page,
    checked_changes,
    checked_user_changes,
    decode_settings,
    default_nickname,
    email_exists,
    encode_settings,
    fold_case,
    like_pattern,
    normalise_email,
    quota_exceeded,
    room_exists,
    store_not_running,
    token_exists,
    user_not_found,
    username_exists,
)
from wecompany.store.dialect import Dialect
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
from wecompany.store.schema import load_migrations, migrate

log = Logger()

_T = TypeVar("_T")

# Column lists in the order of the record's fields.
_USER = "id, username, email, password_hash, role, status, created_at, last_login, token_version"
_PROFILE = "user_id, nickname, avatar, phone, updated_at"
_MESSAGE = "id, sender_id, recipient_id, text, sent_at"
_FILE = "id, owner_id, name, size, sha256, path, status, created_at, recipient_id, delivered, content_type"

_MEETING = (
    "id, title, description, creator_id, start_time, end_time, max_participants, meeting_type, status,"
    " password_hash, settings, room_id, created_at, updated_at, started_at, ended_at"
)
_REFRESH_TOKEN = "token_hash, user_id, family_id, created_at, expires_at, revoked_at, replaced_by"
# Participants and meeting messages carry their user's names: the tables are
# read joined to users (u) and profiles (f).
_PARTICIPANT = (
    "p.id, p.meeting_id, p.user_id, u.username, f.nickname, p.role, p.status,"
    " p.audio_enabled, p.video_enabled, p.joined_at, p.left_at"
)
_MEETING_MESSAGE = (
    "m.id, m.meeting_id, m.user_id, u.username, f.nickname, m.content, m.message_type, m.created_at"
)


def _named(table: str, alias: str) -> str:
    """``table`` as ``alias``, joined to its user's row (``u``) and profile (``f``)."""
    return (
        f"{table} {alias} JOIN users u ON u.id = {alias}.user_id"
        f" JOIN profiles f ON f.user_id = {alias}.user_id"
    )


_PARTICIPANTS = _named("participants", "p")
_MEETING_MESSAGES = _named("meeting_messages", "m")

_MEDIA = ("id, uploader_id, meeting_id, filename, content_type, size, sha256, file_type, storage_key, created_at,"
          " duration_ms, width, height, source_id")
_SELECT_USER = f"SELECT {_USER} FROM users"
_SELECT_PROFILE = f"SELECT {_PROFILE} FROM profiles"
_SELECT_FILE = f"SELECT {_FILE} FROM files"
_SELECT_MEETING = f"SELECT {_MEETING} FROM meetings"
_SELECT_PARTICIPANT = f"SELECT {_PARTICIPANT} FROM {_PARTICIPANTS}"
_INSERT_MESSAGES = "INSERT INTO meeting_messages (meeting_id, user_id, content, message_type, created_at) VALUES"
_MESSAGE_ROW = "(?, ?, ?, ?, ?)"
_MESSAGE_COLUMNS = 5
# A user's names as meeting messages carry them.
_USER_NAMES = "SELECT u.id, u.username, f.nickname FROM users u JOIN profiles f ON f.user_id = u.id"

# The escape clause of the patterns like_pattern() makes.
_ESCAPE = f"ESCAPE '{LIKE_ESCAPE}'"
# A refresh token that can still be used (and so is worth revoking).
_LIVE_TOKEN = "revoked_at IS NULL AND expires_at > ?"


def _user(row: Sequence[Any]) -> UserRecord:
    return UserRecord(*row)


def _profile(row: Sequence[Any]) -> ProfileRecord:
    return ProfileRecord(*row)


def _file(row: Sequence[Any]) -> FileRecord:
    *fields, delivered, content_type = row
    return FileRecord(*fields, delivered=bool(delivered), content_type=content_type)


_SETTINGS = _MEETING.split(", ").index("settings")


def _meeting(row: Sequence[Any]) -> MeetingRecord:
    fields = list(row)
    fields[_SETTINGS] = decode_settings(fields[_SETTINGS])
    return MeetingRecord(*fields)


def _participant(row: Sequence[Any]) -> ParticipantRecord:
    *fields, audio_enabled, video_enabled, joined_at, left_at = row
    return ParticipantRecord(*fields, bool(audio_enabled), bool(video_enabled), joined_at, left_at)


def _meeting_message(row: Sequence[Any]) -> MeetingMessageRecord:
    return MeetingMessageRecord(*row)


def _refresh_token(row: Sequence[Any]) -> RefreshTokenRecord:
    return RefreshTokenRecord(*row)


@attrs.frozen
class _Listing:
    """What a paged list reads: its columns, from where, made into which record."""

    columns: str
    source: str
    record: Callable[[Sequence[Any]], Any]


_USERS = _Listing(_USER, "users", _user)
_MEDIA_LIST = _Listing(_MEDIA, "media", lambda row: MediaRecord(*row))
_MEETINGS = _Listing(_MEETING, "meetings", _meeting)
_MEETING_MESSAGE_LIST = _Listing(_MEETING_MESSAGE, _MEETING_MESSAGES, _meeting_message)


def _only_message(records: list[MeetingMessageRecord | Exception]) -> MeetingMessageRecord:
    (record,) = records
    if isinstance(record, Exception):
        raise record
    return record


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)


def operation_name(interaction: Callable[..., Any]) -> str:
    """A database call's name for the metrics: its interaction's, without ``_`` and ``_txn`` (bounded: methods)."""
    name = getattr(interaction, "__name__", "")
    if not name.isidentifier():  # a lambda
        return "other"
    name = name.strip("_")
    return name[:-4] if name.endswith("_txn") else name or "other"


@implementer(IStore, IMeetingStore, IMediaStore)
@attrs.define
class SQLStore:
    """IStore and IMeetingStore over an adbapi pool; see the module docstring."""

    _dialect: ClassVar[Dialect]
    #: What the driver raises for a number no column can hold.
    _out_of_range: ClassVar[tuple[type[BaseException], ...]] = (OverflowError,)

    _pool: ConnectionPool | None = attrs.field(default=None, init=False)
    _ready: bool = attrs.field(default=False, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _close_waiters: list[Deferred[None]] = attrs.field(factory=list, init=False)

    _start_waiters: list[Deferred[None]] = attrs.field(factory=list, init=False)
    #: Why the last write failed for want of storage ("disk full"...), until one succeeds; for /health.
    storage_problem: str | None = attrs.field(default=None, init=False)
    _outage: str | None = attrs.field(default=None, init=False)  # why the database was not reached, for the log

    #: Meeting messages waiting for the next group commit, at most this many;
    #: past it add_meeting_message answers Unavailable (503) at once.
    max_pending_messages: int = attrs.field(default=10_000, kw_only=True)
    _messages_pending: list[tuple[tuple[Any, ...], Deferred[Any]]] = attrs.field(factory=list, init=False)
    _message_batches: int = attrs.field(default=0, init=False)  # group commits under way
    #: Seconds between the starts of two group commits while messages keep coming.
    commit_interval: float = attrs.field(default=0.0, kw_only=True)
    _flush_call: IDelayedCall | None = attrs.field(default=None, init=False)
    _last_batch_at: float = attrs.field(default=float("-inf"), init=False)
    #: Told ``invalidate(user_id)`` once a write to a user's row or profile is
    #: done (see :class:`~wecompany.domain.usercache.UserCache`).
    user_caches: Sequence[Any] = attrs.field(default=(), kw_only=True)
    #: Told ``invalidate(meeting_id)`` once a write to a meeting's row is done
    #: (see :class:`~wecompany.domain.meetingpages.MeetingPages`).
    meeting_caches: Sequence[Any] = attrs.field(default=(), kw_only=True)
    #: Told ``observe(operation, seconds)`` of every database call, from the
    #: call to its answer (the wait for the pool's connection included), the
    #: operation named after its interaction (``get_user_by_login``): a
    #: :class:`~wecompany.domain.stats.Timings`, for the metrics; or None.
    query_timings: Any = attrs.field(default=None, kw_only=True)

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
            self._release_start_waiters()
            raise
        self._ready = True
        if self._closing:  # stop() was called while migrations ran
            self._drain_and_close()
        self._release_start_waiters()

    def _release_start_waiters(self) -> None:
        waiters, self._start_waiters = self._start_waiters, []
        for waiter in waiters:
            waiter.callback(None)

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
        if self._messages_pending:
            self._flush_messages()
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
    def _user_written(self, user_id: int | None, d: Deferred[_T]) -> Deferred[_T]:
        """Tell :attr:`user_caches` of a write to user ``user_id`` once it is done (the id may be the result's)."""
        if not self.user_caches:
            return d

        def done(result: Any) -> Any:
            changed = user_id if user_id is not None else (None if isinstance(result, Failure) else result.id)
            if changed is not None:
                for cache in self.user_caches:
                    cache.invalidate(changed)
            return result

        return d.addBoth(done)

    def _meeting_written(self, meeting_id: int | None, d: Deferred[_T]) -> Deferred[_T]:
        """Tell :attr:`meeting_caches` of a write to meeting ``meeting_id`` once it is done (None: the result's)."""
        if not self.meeting_caches:
            return d

        def done(result: Any) -> Any:
            if meeting_id is not None or not isinstance(result, Failure):
                changed = meeting_id if meeting_id is not None else result[0].id
                for cache in self.meeting_caches:
                    cache.invalidate(changed)
            return result

        return d.addBoth(done)

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
        if self._pool is not None and not self._ready and not self._closing:
            # Still starting (clients may connect as soon as the ports listen):
            # wait for the migrations, then run in order.
            waiter: Deferred[None] = Deferred()
            self._start_waiters.append(waiter)
            return waiter.addCallback(lambda _: self._run(write, interaction, *args))
        if not self._running():
            return fail(store_not_running())
        assert self._pool is not None
        if self._messages_pending:
            # Messages asked for before this keep their place in the queue.
            self._flush_messages()
        return self._watch_storage(self._timed(operation_name(interaction),
                                               self._pool.runInteraction(self._transaction, write, interaction,
                                                                         *args)), write)

    def _timed(self, operation: str, d: Deferred[Any]) -> Deferred[Any]:
        timings, clock = self.query_timings, self._clock()
        if timings is None or clock is None:
            return d
        started = clock.seconds()

        def done(result: Any) -> Any:
            timings.observe(operation, clock.seconds() - started)
            return result

        return d.addBoth(done)

    def _watch_storage(self, d: Deferred[Any], write: bool) -> Deferred[Any]:
        """
        A database whose disk is full, or failing, is unavailable (503), not
        an internal error: say so to the caller, and keep it in
        :attr:`storage_problem` (for ``/health``) until a write succeeds. A
        database that cannot be reached (:meth:`_outage_of`) is unavailable
        too, for that call only: the next answer, read or write, clears it.
        """
        def succeeded(result: Any) -> Any:
            if self._outage is not None:
                log.info("The database answers again (after: {problem})", problem=self._outage)
                self._outage = None
            if write and self.storage_problem is not None:
                log.info("The database accepts writes again (after: {problem})", problem=self.storage_problem)
                self.storage_problem = None
            return result

        def failed(failure: Failure) -> Failure:
            outage = self._outage_of(failure.value)
            if outage is not None:
                # Not a storage_problem, which would last until a write: /health's ping tells.
                if self._outage is None:
                    log.error("The database cannot be reached: {problem}", problem=outage)
                self._outage = outage
                raise Unavailable(f"the database cannot be reached right now ({outage}): try again later")
            problem = self._storage_problem_of(failure.value)
            if problem is None:
                return failure
            if self.storage_problem is None:
                log.error("The database cannot write: {problem}", problem=problem)
            self.storage_problem = problem
            raise Unavailable(f"the server cannot store data right now ({problem}): try again later")

        return d.addCallbacks(succeeded, failed)

    def _storage_problem_of(self, error: BaseException) -> str | None:
        """What is wrong with the storage when ``error`` says so (per driver), else None."""
        return None

    def _outage_of(self, error: BaseException) -> str | None:
        """
        Why the database cannot be reached when ``error`` says so (per
        driver: a lost connection, a server shutting down), else None.
        """
        return None

    def _unique_clash_of(self, error: Exception) -> UsernameTaken | EmailTaken | None:
        """Which unique column of users a driver's IntegrityError names (SQLite: ``users.email``)."""
        text = str(error).lower()
        if "unique" not in text:  # NOT NULL, a foreign key...
            return None
        if "username" in text:
            return username_exists()
        if "email" in text:
            return email_exists()
        return None

    def _contains(self, column: str) -> str:
        """
        SQL true when ``column`` contains the next parameter, a pattern from
        :func:`like_pattern` folded with :func:`fold_case`, ignoring ASCII
        case: lower() on the column, as not every database's LIKE ignores case.
        """
        return f"lower({column}{self._dialect.ascii_case}) LIKE ? {_ESCAPE}"

    def _transaction(self, txn: Any, write: bool, interaction: Callable[..., Any], *args: object) -> Any:
        # adbapi commits when the interaction returns and rolls back when it raises.
        self._dialect.begin(txn, write)
        try:
            return interaction(txn, *args)
        except self._out_of_range:
            # A number no column can hold (the dialect or the driver refuses
            # it): what a client sent, checked too late, but still its error.
            raise InvalidInput("a number is out of the range the database stores") from None

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

    def _by_ids_txn(self, txn: Any, select: str, column: str, chunks: list[list[int]],
                    record: Callable[[Sequence[Any]], _T]) -> dict[int, _T]:
        """The rows of ``select`` whose ``column`` (their first) is in ``chunks``, by that id."""
        found = {}
        for chunk in chunks:
            query = f"{select} WHERE {column} IN ({_placeholders(len(chunk))}) ORDER BY {column}"
            for row in self._all(txn, query, chunk):
                found[row[0]] = record(row)
        return found

    def _insert(self, txn: Any, table: str, values: Mapping[str, object], returning: str,
                unique: str | None = None) -> Any:
        """
        Insert one row -> the ``returning`` columns of it; or, with ``unique``
        (a unique column), None if a row already has that value.
        """
        query = f"INSERT INTO {table} ({', '.join(values)}) VALUES ({_placeholders(len(values))})"
        if unique is not None:
            # Looked for first: PostgreSQL draws the row's id from its
            # sequence before ON CONFLICT finds the clash, and a clash must
            # use up no id. ON CONFLICT stays for a writer that races the look.
            if self._one(txn, f"SELECT 1 FROM {table} WHERE {unique} = ?", (values[unique],)) is not None:
                return None
            query += f" ON CONFLICT ({unique}) DO NOTHING"
        return self._one(txn, f"{query} RETURNING {returning}", list(values.values()))

    def _set(self, txn: Any, table: str, changes: Mapping[str, object], where: str,
             params: Sequence[object], returning: str | None = None) -> Any:
        """
        UPDATE the rows ``where`` selects; the cursor tells ``rowcount``, or
        gives the ``returning`` columns. The keys of ``changes`` are column
        names: callers check them (:func:`checked_changes`) first.
        """
        assignments = ", ".join(f"{column} = ?" for column in changes)
        query = f"UPDATE {table} SET {assignments} WHERE {where}"
        if returning is not None:
            query += f" RETURNING {returning}"
        return self._execute(txn, query, [*changes.values(), *params])

    def _page_txn(self, txn: Any, listing: _Listing, conditions: Sequence[str], params: Sequence[object],
                  order: str, offset: int, limit: int) -> tuple[int, list[Any]]:
        """-> (how many rows match every condition, the page of them in ``order``)."""
        check_page(offset, limit)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        (total,) = self._one(txn, f"SELECT COUNT(*) FROM {listing.source}{where}", params)
        rows = self._all(
            txn,
            f"SELECT {listing.columns} FROM {listing.source}{where} ORDER BY {order} LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return total, [listing.record(row) for row in rows]

    def _require_users(self, txn: Any, user_ids: Iterable[int]) -> None:
        """:raises NotFound: (1003) unless every one of ``user_ids`` has a row."""
        wanted = set(user_ids)
        (found,) = self._one(
            txn, f"SELECT COUNT(*) FROM users WHERE id IN ({_placeholders(len(wanted))})", list(wanted)
        )
        if found != len(wanted):
            raise user_not_found()

    @contextmanager
    def _unique_user_names(self) -> Iterator[None]:
        """
        Name the clash when a write to users breaks a unique column: only if
        the check before it missed one (it runs in the same transaction, so it
        should not).
        """
        assert self._pool is not None
        try:
            yield
        except self._pool.dbapi.IntegrityError as error:
            conflict = self._unique_clash_of(error)
            if conflict is None:
                raise
            raise conflict from error

    # -- accounts -------------------------------------------------------------
    def create_user(self, username: str, password_hash: str, email: str | None,
                    nickname: str | None, now: float, role: str = "user") -> Deferred[UserRecord]:
        return self._user_written(None, self._write(
            self._create_user_txn, username, password_hash, normalise_email(email),
            default_nickname(username, nickname), now, role,
        ))

    def _create_user_txn(self, txn: Any, username: str, password_hash: str, email: str | None,
                         nickname: str, now: float, role: str) -> UserRecord:
        clash = self._find_clash(txn, username, email)
        if clash is not None:
            raise clash
        with self._unique_user_names():
            row = self._one(
                txn,
                "INSERT INTO users (username, email, password_hash, role, status, created_at)"
                f" VALUES (?, ?, ?, ?, ?, ?) RETURNING {_USER}",
                (username, email, password_hash, role, USER_ACTIVE, now),
            )
        user = _user(row)
        self._execute(
            txn,
            "INSERT INTO profiles (user_id, nickname, updated_at) VALUES (?, ?, ?)",
            (user.id, nickname, now),
        )
        return user

    def _find_clash(self, txn: Any, username: str | None, email: str | None,
                    user_id: int | None = None) -> UsernameTaken | EmailTaken | None:
        """The Conflict if another user than ``user_id`` has ``username`` or ``email`` (None: unchanged)."""
        wanted = [("username", username, username_exists), ("email", email, email_exists)]
        for column, value, conflict in wanted:
            if value is not None:
                row = self._one(txn, f"SELECT id FROM users WHERE {column} = ?", (value,))
                if row is not None and row[0] != user_id:
                    return conflict()
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
        return self._user_written(user_id, self._write(self._update_user_txn, "password_hash", password_hash,
                                                        user_id))

    def record_login(self, user_id: int, now: float) -> Deferred[None]:
        return self._user_written(user_id, self._write(self._update_user_txn, "last_login", now, user_id))

    def _update_user_txn(self, txn: Any, column: str, value: object, user_id: int) -> None:
        self._execute(txn, f"UPDATE users SET {column} = ? WHERE id = ?", (value, user_id))

    def get_profile(self, user_id: int) -> Deferred[ProfileRecord | None]:
        return self._read(self._profile_txn, user_id)

    def _profile_txn(self, txn: Any, user_id: int) -> ProfileRecord | None:
        row = self._one(txn, f"{_SELECT_PROFILE} WHERE user_id = ?", (user_id,))
        return None if row is None else _profile(row)

    def list_users_by_ids(self, user_ids: Iterable[int]) -> Deferred[dict[int, UserRecord]]:
        return self._by_ids(_SELECT_USER, "id", user_ids, _user)

    def get_profiles(self, user_ids: Iterable[int]) -> Deferred[dict[int, ProfileRecord]]:
        return self._by_ids(_SELECT_PROFILE, "user_id", user_ids, _profile)

    def _by_ids(self, select: str, column: str, ids: Iterable[int],
                record: Callable[[Sequence[Any]], _T]) -> Deferred[dict[int, _T]]:
        chunks = list(self._chunks(ids))
        if not chunks:
            return self._answer({})
        return self._read(self._by_ids_txn, select, column, chunks, record)

    def update_user(self, user_id: int, changes: Mapping[str, object]) -> Deferred[UserRecord | None]:
        return self._user_written(user_id, self._write(self._update_account_txn, user_id, changes))

    def _update_account_txn(self, txn: Any, user_id: int, changes: Mapping[str, object]) -> UserRecord | None:
        checked = checked_user_changes(changes)
        user = self._user_where_txn(txn, "id", user_id)
        if user is None or not checked:
            return user
        clash = self._find_clash(txn, checked.get("username"), checked.get("email"), user_id)
        if clash is not None:
            raise clash
        with self._unique_user_names():
            return _user(self._set(txn, "users", checked, "id = ?", (user_id,), _USER).fetchone())

    def update_profile(self, user_id: int, changes: Mapping[str, object],
                       now: float) -> Deferred[ProfileRecord | None]:
        return self._user_written(user_id, self._write(self._update_profile_txn, user_id, changes, now))

    def _update_profile_txn(self, txn: Any, user_id: int, changes: Mapping[str, object],
                            now: float) -> ProfileRecord | None:
        checked = checked_changes(changes, PROFILE_CHANGES)
        checked["updated_at"] = now
        row = self._set(txn, "profiles", checked, "user_id = ?", (user_id,), _PROFILE).fetchone()
        return None if row is None else _profile(row)

    def list_users(self, offset: int, limit: int, keyword: str | None = None,
                   status: str | None = None) -> Deferred[tuple[int, list[UserRecord]]]:
        conditions: list[str] = []
        params: list[object] = []
        if keyword:
            conditions.append(f"({self._contains('username')} OR {self._contains('email')})")
            params += [fold_case(like_pattern(keyword))] * 2
        if status is not None:
            conditions.append("status = ?")
            params.append(status)
        return self._read(self._page_txn, _USERS, conditions, params, "id", offset, limit)

    # -- contacts -------------------------------------------------------------
    def add_contact(self, user_id: int, contact_id: int, now: float) -> Deferred[None]:
        return self._write(self._add_contact_txn, user_id, contact_id, now)

    def _add_contact_txn(self, txn: Any, user_id: int, contact_id: int, now: float) -> None:
        self._require_users(txn, [user_id, contact_id])
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
            f" ORDER BY username{self._dialect.ascii_case}, id LIMIT ? OFFSET ?",
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

    def delete_incomplete_files(self, created_before: float,
                                path_prefix: str | None = None) -> Deferred[list[FileRecord]]:
        return self._write(self._delete_incomplete_files_txn, created_before, path_prefix)

    def _delete_incomplete_files_txn(self, txn: Any, created_before: float,
                                     path_prefix: str | None) -> list[FileRecord]:
        # One statement: what is reported removed is what was removed, even
        # if another process completes an upload meanwhile (the caller then
        # removes the bytes). RETURNING has no order of its own. The prefix
        # is compared as text, not with LIKE ("_" in a node id is no wildcard).
        prefix = "" if path_prefix is None else path_prefix
        rows = self._all(txn, f"DELETE FROM files WHERE status = ? AND created_at < ? "
                              f"AND substr(path, 1, ?) = ? RETURNING {_FILE}",
                         (FILE_RECEIVING, created_before, len(prefix), prefix))
        return sorted((_file(row) for row in rows), key=lambda record: record.id)

    # -- meetings -------------------------------------------------------------
    def create_meeting(self, title: str, description: str, creator_id: int, start_time: float,
                       end_time: float | None, max_participants: int, meeting_type: str,
                       password_hash: str | None, settings: Mapping[str, Any], room_id: str,
                       now: float) -> Deferred[tuple[MeetingRecord, ParticipantRecord]]:
        values = {
            "title": title, "description": description, "creator_id": creator_id, "start_time": start_time,
            "end_time": end_time, "max_participants": max_participants, "meeting_type": meeting_type,
            "status": MEETING_SCHEDULED, "password_hash": password_hash, "settings": settings,
            "room_id": room_id, "created_at": now, "updated_at": now,
        }
        return self._meeting_written(None, self._write(self._create_meeting_txn, values))

    def _create_meeting_txn(self, txn: Any, values: dict[str, Any]) -> tuple[MeetingRecord, ParticipantRecord]:
        creator_id, now = values["creator_id"], values["created_at"]
        self._require_users(txn, [creator_id])
        stored = {**values, "settings": encode_settings(values["settings"])}
        row = self._insert(txn, "meetings", stored, _MEETING, unique="room_id")
        if row is None:
            raise room_exists()
        meeting = _meeting(row)
        return meeting, self._insert_participant_txn(
            txn, meeting.id, creator_id, ROLE_HOST, PARTICIPANT_INVITED, None, now
        )

    def get_meeting(self, meeting_id: int) -> Deferred[MeetingRecord | None]:
        return self._read(self._meeting_txn, meeting_id)

    def _meeting_txn(self, txn: Any, meeting_id: int) -> MeetingRecord | None:
        row = self._one(txn, f"{_SELECT_MEETING} WHERE id = ?", (meeting_id,))
        return None if row is None else _meeting(row)

    def get_meeting_by_room(self, room_id: str) -> Deferred[MeetingRecord | None]:
        return self._read(self._meeting_by_room_txn, room_id)

    def _meeting_by_room_txn(self, txn: Any, room_id: str) -> MeetingRecord | None:
        row = self._one(txn, f"{_SELECT_MEETING} WHERE room_id = ?", (room_id,))  # UNIQUE: indexed
        return None if row is None else _meeting(row)

    def _require_meeting_txn(self, txn: Any, meeting_id: int, lock: bool = False) -> int:
        """
        The meeting's max_participants; with ``lock``, the row is held until
        the transaction ends (its capacity is about to be relied on).

        :raises MeetingNotFound:
        """
        suffix = self._dialect.lock_rows if lock else ""
        row = self._one(txn, f"SELECT max_participants FROM meetings WHERE id = ?{suffix}", (meeting_id,))
        if row is None:
            raise MeetingNotFound()
        return row[0]

    def update_meeting(self, meeting_id: int, changes: Mapping[str, object],
                       now: float) -> Deferred[MeetingRecord | None]:
        return self._meeting_written(meeting_id, self._write(self._update_meeting_txn, meeting_id, changes, now))

    def _update_meeting_txn(self, txn: Any, meeting_id: int, changes: Mapping[str, Any],
                            now: float) -> MeetingRecord | None:
        checked = checked_changes(changes, MEETING_CHANGES)
        if "settings" in checked:
            checked["settings"] = encode_settings(checked["settings"])
        checked["updated_at"] = now
        row = self._set(txn, "meetings", checked, "id = ?", (meeting_id,), _MEETING).fetchone()
        return None if row is None else _meeting(row)

    def delete_meeting(self, meeting_id: int) -> Deferred[bool]:
        # Participants and messages go with it (ON DELETE CASCADE).
        return self._meeting_written(meeting_id, self._write(self._delete_where_txn, "meetings", "id = ?",
                                                             (meeting_id,)))

    def _delete_where_txn(self, txn: Any, table: str, where: str, params: Sequence[object]) -> bool:
        return self._execute(txn, f"DELETE FROM {table} WHERE {where}", params).rowcount > 0

    def list_meetings(self, offset: int, limit: int, statuses: Collection[str] | None = None,
                      keyword: str | None = None, member_id: int | None = None,
                      start_from: float | None = None, start_until: float | None = None,
                      newest_first: bool = False) -> Deferred[tuple[int, list[MeetingRecord]]]:
        conditions: list[str] = []
        params: list[object] = []
        if statuses is not None:
            wanted = sorted(set(statuses))
            # "IN ()" is not SQL; no status at all keeps nothing.
            conditions.append(f"status IN ({_placeholders(len(wanted))})" if wanted else "1 = 0")
            params += wanted
        if keyword:
            conditions.append(f"({self._contains('title')} OR {self._contains('description')})")
            params += [fold_case(like_pattern(keyword))] * 2
        if member_id is not None:
            conditions.append(
                "(creator_id = ? OR id IN (SELECT meeting_id FROM participants WHERE user_id = ? AND status != ?))"
            )
            params += [member_id, member_id, PARTICIPANT_REMOVED]
        if start_from is not None:
            conditions.append("start_time >= ?")
            params.append(start_from)
        if start_until is not None:
            conditions.append("start_time <= ?")
            params.append(start_until)
        order = "start_time DESC, id DESC" if newest_first else "start_time, id"
        return self._read(self._page_txn, _MEETINGS, conditions, params, order, offset, limit)

    # -- participants ---------------------------------------------------------
    def join_meeting(self, meeting_id: int, user_id: int, role: str,
                     now: float) -> Deferred[tuple[ParticipantRecord, bool]]:
        return self._write(self._join_meeting_txn, meeting_id, user_id, role, now)

    def _join_meeting_txn(self, txn: Any, meeting_id: int, user_id: int, role: str,
                          now: float) -> tuple[ParticipantRecord, bool]:
        capacity = self._require_meeting_txn(txn, meeting_id, lock=True)
        rejoined = self._set(
            txn, "participants", {"status": PARTICIPANT_JOINED, "joined_at": now, "left_at": None},
            "meeting_id = ? AND user_id = ? AND status != ?", (meeting_id, user_id, PARTICIPANT_REMOVED),
        )
        if rejoined.rowcount > 0:
            return self._participant_txn(txn, meeting_id, user_id), False
        if self._removed_txn(txn, meeting_id, user_id):
            raise ParticipantRemoved()
        admitted = self._admit_txn(txn, meeting_id, capacity, user_id, role, PARTICIPANT_JOINED, now, now)
        return admitted, True

    def add_participant(self, meeting_id: int, user_id: int, role: str,
                        now: float) -> Deferred[ParticipantRecord]:
        return self._write(self._add_participant_txn, meeting_id, user_id, role, now)

    def _add_participant_txn(self, txn: Any, meeting_id: int, user_id: int, role: str,
                             now: float) -> ParticipantRecord:
        capacity = self._require_meeting_txn(txn, meeting_id, lock=True)
        if self._participant_txn(txn, meeting_id, user_id) is not None:
            raise already_participant()
        if self._removed_txn(txn, meeting_id, user_id):
            # Added back: the bar is lifted, and the seat counts again.
            self._check_capacity_txn(txn, meeting_id, capacity)
            self._set(txn, "participants",
                      {"role": role, "status": PARTICIPANT_INVITED, "joined_at": None, "left_at": None},
                      "meeting_id = ? AND user_id = ?", (meeting_id, user_id))
            return self._participant_txn(txn, meeting_id, user_id)
        return self._admit_txn(txn, meeting_id, capacity, user_id, role, PARTICIPANT_INVITED, None, now)

    def _removed_txn(self, txn: Any, meeting_id: int, user_id: int) -> bool:
        return self._one(txn, "SELECT 1 FROM participants WHERE meeting_id = ? AND user_id = ? AND status = ?",
                         (meeting_id, user_id, PARTICIPANT_REMOVED)) is not None

    def _check_capacity_txn(self, txn: Any, meeting_id: int, capacity: int) -> None:
        (count,) = self._one(txn, "SELECT COUNT(*) FROM participants WHERE meeting_id = ? AND status != ?",
                             (meeting_id, PARTICIPANT_REMOVED))
        if count >= capacity:
            raise MeetingFull()

    def _admit_txn(self, txn: Any, meeting_id: int, capacity: int, user_id: int, role: str, status: str,
                   joined_at: float | None, now: float) -> ParticipantRecord:
        """Insert a new participant row if the user exists and the meeting has room."""
        self._require_users(txn, [user_id])
        self._check_capacity_txn(txn, meeting_id, capacity)
        return self._insert_participant_txn(txn, meeting_id, user_id, role, status, joined_at, now)

    def _insert_participant_txn(self, txn: Any, meeting_id: int, user_id: int, role: str, status: str,
                                joined_at: float | None, now: float) -> ParticipantRecord:
        values = {
            "meeting_id": meeting_id, "user_id": user_id, "role": role, "status": status,
            "joined_at": joined_at, "created_at": now,
        }
        self._insert(txn, "participants", values, "id")
        return self._participant_txn(txn, meeting_id, user_id)

    def get_participant(self, meeting_id: int, user_id: int) -> Deferred[ParticipantRecord | None]:
        return self._read(self._participant_txn, meeting_id, user_id)

    def _participant_txn(self, txn: Any, meeting_id: int, user_id: int) -> ParticipantRecord | None:
        row = self._one(
            txn, f"{_SELECT_PARTICIPANT} WHERE p.meeting_id = ? AND p.user_id = ? AND p.status != ?",
            (meeting_id, user_id, PARTICIPANT_REMOVED),
        )
        return None if row is None else _participant(row)

    def list_participants(self, meeting_id: int) -> Deferred[list[ParticipantRecord]]:
        return self._read(self._list_participants_txn, meeting_id)

    def _list_participants_txn(self, txn: Any, meeting_id: int) -> list[ParticipantRecord]:
        rows = self._all(txn, f"{_SELECT_PARTICIPANT} WHERE p.meeting_id = ? AND p.status != ? ORDER BY p.id",
                         (meeting_id, PARTICIPANT_REMOVED))
        return [_participant(row) for row in rows]

    def update_participant(self, meeting_id: int, user_id: int,
                           changes: Mapping[str, object]) -> Deferred[ParticipantRecord | None]:
        return self._write(self._update_participant_txn, meeting_id, user_id, changes)

    def _update_participant_txn(self, txn: Any, meeting_id: int, user_id: int,
                                changes: Mapping[str, object]) -> ParticipantRecord | None:
        checked = checked_changes(changes, PARTICIPANT_CHANGES)
        for flag in FLAG_CHANGES & checked.keys():
            checked[flag] = int(bool(checked[flag]))
        if checked:
            self._set(txn, "participants", checked, "meeting_id = ? AND user_id = ? AND status != ?",
                      (meeting_id, user_id, PARTICIPANT_REMOVED))
        return self._participant_txn(txn, meeting_id, user_id)

    def remove_participant(self, meeting_id: int, user_id: int, now: float) -> Deferred[bool]:
        return self._write(self._remove_participant_txn, meeting_id, user_id, now)

    def _remove_participant_txn(self, txn: Any, meeting_id: int, user_id: int, now: float) -> bool:
        removed = self._set(txn, "participants", {"status": PARTICIPANT_REMOVED, "left_at": now},
                            "meeting_id = ? AND user_id = ? AND status != ?",
                            (meeting_id, user_id, PARTICIPANT_REMOVED))
        return removed.rowcount > 0

    # -- meeting chat ---------------------------------------------------------
    def add_meeting_message(self, meeting_id: int, user_id: int, content: str, message_type: str,
                            now: float) -> Deferred[MeetingMessageRecord]:
        """
        Group commit: messages asked for while a batch of them is being
        committed go together in the next transaction, one commit (one fsync)
        and one INSERT for all. Each Deferred still fires only once its
        message is on disk, and order is kept: with every other operation
        (see :meth:`_run`) and among the messages themselves.

        Batches start at least :attr:`commit_interval` apart: when messages
        keep coming, they wait up to that long to share a commit; a message
        after a quiet spell goes at once.
        """
        item = (meeting_id, user_id, content, message_type, float(now))
        if not self._running():  # starting, stopping or stopped: the usual path decides
            return self._write(self._add_meeting_messages_txn, [item]).addCallback(_only_message)
        if len(self._messages_pending) >= self.max_pending_messages:
            # The disk is behind: refuse clearly rather than queue without bound.
            return fail(Unavailable("too many messages waiting to be stored; try again shortly"))
        waiter: Deferred[MeetingMessageRecord] = Deferred()
        self._messages_pending.append((item, waiter))
        if not self._message_batches and self._flush_call is None:
            self._schedule_flush()
        return waiter

    def _clock(self) -> IReactorTime | None:
        """What paces the batches; without one, each batch goes as soon as the last is done."""
        return None

    def _schedule_flush(self) -> None:
        clock = self._clock()
        if clock is None or self.commit_interval <= 0:
            self._flush_messages()
            return
        wait = self._last_batch_at + self.commit_interval - clock.seconds()
        if wait <= 0:
            self._flush_messages()
        else:
            self._flush_call = clock.callLater(wait, self._flush_messages)

    def _flush_messages(self) -> None:
        """Send every pending message to the database as one transaction."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        clock = self._clock()
        if clock is not None:
            self._last_batch_at = clock.seconds()
        batch, self._messages_pending = self._messages_pending, []
        self._message_batches += 1
        assert self._pool is not None
        d = self._timed("add_meeting_messages", self._pool.runInteraction(
            self._transaction, True, self._add_meeting_messages_txn, [item for item, _ in batch]))
        self._watch_storage(d, write=True).addBoth(self._messages_committed, [waiter for _, waiter in batch])

    def _messages_committed(self, outcome: list[Any] | Failure, waiters: list[Deferred[Any]]) -> None:
        self._message_batches -= 1
        if self._messages_pending and not self._message_batches and self._flush_call is None:
            self._schedule_flush()
        for index, waiter in enumerate(waiters):
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            elif isinstance(outcome[index], Exception):
                waiter.errback(Failure(outcome[index]))
            else:
                waiter.callback(outcome[index])

    def _add_meeting_messages_txn(self, txn: Any, batch: list[tuple[int, int, str, str, float]],
                                  ) -> list[MeetingMessageRecord | Exception]:
        """
        Insert each message whose meeting and user exist; the others get their
        error (MeetingNotFound, NotFound 1003) in their place and the rest are
        still committed. Two lookups and one INSERT per 100 messages, however
        large the batch.
        """
        meetings = set(self._by_ids_txn(txn, "SELECT id FROM meetings", "id",
                                        list(self._chunks(item[0] for item in batch)), tuple))
        names = self._by_ids_txn(txn, _USER_NAMES, "u.id", list(self._chunks(item[1] for item in batch)), tuple)
        out: list[Any] = [None] * len(batch)
        valid = []
        for index, (meeting_id, user_id, *_) in enumerate(batch):
            if meeting_id not in meetings:
                out[index] = MeetingNotFound()
            elif user_id not in names:
                out[index] = user_not_found()
            else:
                valid.append(index)
        rows = self._dialect.max_params // _MESSAGE_COLUMNS
        for start in range(0, len(valid), rows):
            chunk = valid[start:start + rows]
            query = f"{_INSERT_MESSAGES} {', '.join([_MESSAGE_ROW] * len(chunk))} RETURNING id"
            # The rows of one INSERT get ascending ids in the order they are listed.
            ids = sorted(message_id for (message_id,) in self._all(txn, query, [v for i in chunk for v in batch[i]]))
            for index, message_id in zip(chunk, ids, strict=True):
                meeting_id, user_id, content, message_type, now = batch[index]
                _, username, nickname = names[user_id]
                out[index] = MeetingMessageRecord(id=message_id, meeting_id=meeting_id, user_id=user_id,
                                                  username=username, nickname=nickname, content=content,
                                                  message_type=message_type, created_at=now)
        return out

    def list_meeting_messages(self, meeting_id: int, offset: int,
                              limit: int) -> Deferred[tuple[int, list[MeetingMessageRecord]]]:
        return self._read(
            self._page_txn, _MEETING_MESSAGE_LIST, ["m.meeting_id = ?"], [meeting_id], "m.id", offset, limit
        )

    # -- refresh tokens -------------------------------------------------------
    def add_refresh_token(self, token_hash: str, user_id: int, family_id: str, now: float,
                          expires_at: float) -> Deferred[RefreshTokenRecord]:
        return self._write(self._add_refresh_token_txn, token_hash, user_id, family_id, now, expires_at)

    def _add_refresh_token_txn(self, txn: Any, token_hash: str, user_id: int, family_id: str, now: float,
                               expires_at: float) -> RefreshTokenRecord:
        self._require_users(txn, [user_id])
        values = {
            "token_hash": token_hash, "user_id": user_id, "family_id": family_id,
            "created_at": now, "expires_at": expires_at,
        }
        row = self._insert(txn, "refresh_tokens", values, _REFRESH_TOKEN, unique="token_hash")
        if row is None:
            raise token_exists()
        return _refresh_token(row)

    def get_refresh_token(self, token_hash: str) -> Deferred[RefreshTokenRecord | None]:
        return self._read(self._refresh_token_txn, token_hash)

    def _refresh_token_txn(self, txn: Any, token_hash: str, lock: bool = False) -> RefreshTokenRecord | None:
        suffix = self._dialect.lock_rows if lock else ""
        row = self._one(txn, f"SELECT {_REFRESH_TOKEN} FROM refresh_tokens WHERE token_hash = ?{suffix}",
                        (token_hash,))
        return None if row is None else _refresh_token(row)

    def rotate_refresh_token(self, old_hash: str, new_hash: str, now: float,
                             expires_at: float) -> Deferred[RefreshTokenRecord | None]:
        return self._write(self._rotate_refresh_token_txn, old_hash, new_hash, now, expires_at)

    def _rotate_refresh_token_txn(self, txn: Any, old_hash: str, new_hash: str, now: float,
                                  expires_at: float) -> RefreshTokenRecord | None:
        # Locked: of two rotations of one token, the second sees it revoked.
        old = self._refresh_token_txn(txn, old_hash, lock=True)
        if old is None or old.expires_at <= now:
            return None
        if old.revoked_at is not None:
            # Returning (not raising) commits the revocation.
            self._revoke_txn(txn, "family_id = ?", (old.family_id,), now)
            return None
        replaced = {"revoked_at": now, "replaced_by": new_hash}
        self._set(txn, "refresh_tokens", replaced, "token_hash = ?", (old_hash,))
        return self._add_refresh_token_txn(txn, new_hash, old.user_id, old.family_id, now, expires_at)

    def revoke_all_tokens(self, user_id: int, now: float) -> Deferred[int]:
        return self._user_written(user_id, self._write(self._revoke_all_txn, user_id, now))

    def _revoke_all_txn(self, txn: Any, user_id: int, now: float) -> int:
        self._execute(txn, "UPDATE users SET token_version = token_version + 1 WHERE id = ?", (user_id,))
        return self._revoke_txn(txn, "user_id = ?", (user_id,), now)

    def revoke_refresh_token(self, token_hash: str, user_id: int, now: float) -> Deferred[bool]:
        return self._write(self._revoke_txn, "token_hash = ? AND user_id = ?", (token_hash, user_id),
                           now).addCallback(bool)

    def _revoke_txn(self, txn: Any, where: str, params: Sequence[object], now: float) -> int:
        """Revoke the live tokens ``where`` selects -> how many."""
        return self._set(txn, "refresh_tokens", {"revoked_at": now}, f"{where} AND {_LIVE_TOKEN}",
                         (*params, now)).rowcount

    # -- password resets ------------------------------------------------------
    def add_password_reset(self, token_hash: str, user_id: int, now: float,
                           expires_at: float) -> Deferred[None]:
        return self._write(self._add_password_reset_txn, token_hash, user_id, now, expires_at)

    def _add_password_reset_txn(self, txn: Any, token_hash: str, user_id: int, now: float,
                                expires_at: float) -> None:
        self._require_users(txn, [user_id])
        values = {"token_hash": token_hash, "user_id": user_id, "created_at": now, "expires_at": expires_at}
        if self._insert(txn, "password_resets", values, "token_hash", unique="token_hash") is None:
            raise token_exists()

    def consume_password_reset(self, token_hash: str, now: float) -> Deferred[int | None]:
        return self._write(self._consume_password_reset_txn, token_hash, now)

    def _consume_password_reset_txn(self, txn: Any, token_hash: str, now: float) -> int | None:
        # One statement: of two concurrent uses, only one finds used_at NULL.
        row = self._set(
            txn, "password_resets", {"used_at": now}, "token_hash = ? AND used_at IS NULL AND expires_at > ?",
            (token_hash, now), "user_id",
        ).fetchone()
        return None if row is None else row[0]

    # -- media ----------------------------------------------------------------
    def add_media(self, uploader_id: int, filename: str, content_type: str, size: int, sha256: str,
                  file_type: str, storage_key: str, now: float, meeting_id: int | None = None,
                  duration_ms: int | None = None, width: int | None = None, height: int | None = None,
                  source_id: int | None = None, shared_with: Iterable[int] = (),
                  quota: int | None = None) -> Deferred[MediaRecord]:
        values = {"uploader_id": uploader_id, "meeting_id": meeting_id, "filename": filename,
                  "content_type": content_type, "size": size, "sha256": sha256, "file_type": file_type,
                  "storage_key": storage_key, "created_at": now, "duration_ms": duration_ms, "width": width,
                  "height": height, "source_id": source_id}
        return self._write(self._add_media_txn, values, sorted(set(shared_with) - {uploader_id}), quota)

    def _add_media_txn(self, txn: Any, values: dict[str, Any], shared_with: list[int],
                       quota: int | None) -> MediaRecord:
        uploader_id = values["uploader_id"]
        # The uploader's row is locked first: of two uploads of one user,
        # the second waits for the first to commit before it counts.
        if self._one(txn, f"SELECT id FROM users WHERE id = ?{self._dialect.lock_rows}", (uploader_id,)) is None:
            raise user_not_found()
        if shared_with:
            self._require_users(txn, shared_with)
        if values["meeting_id"] is not None:
            self._require_meeting_txn(txn, values["meeting_id"])
        if values["source_id"] is not None and self._get_media_txn(txn, values["source_id"]) is None:
            values = {**values, "source_id": None}  # deleted meanwhile: a result of nothing
        if quota is not None:
            used = self._media_usage_txn(txn, uploader_id)
            if used + values["size"] > quota:
                raise quota_exceeded(used, values["size"], quota)
        row = self._insert(txn, "media", values, _MEDIA)
        record = MediaRecord(*row)
        for user_id in shared_with:
            self._execute(txn, "INSERT INTO media_grants (media_id, user_id) VALUES (?, ?)", (record.id, user_id))
        return record

    def get_media(self, media_id: int) -> Deferred[MediaRecord | None]:
        return self._read(self._get_media_txn, media_id)

    def _get_media_txn(self, txn: Any, media_id: int) -> MediaRecord | None:
        row = self._one(txn, f"SELECT {_MEDIA} FROM media WHERE id = ?", (media_id,))
        return None if row is None else MediaRecord(*row)

    def media_shared_with(self, media_id: int, user_id: int) -> Deferred[bool]:
        return self._read(self._media_shared_txn, media_id, user_id)

    def _media_shared_txn(self, txn: Any, media_id: int, user_id: int) -> bool:
        return self._one(txn, "SELECT 1 FROM media_grants WHERE media_id = ? AND user_id = ?",
                         (media_id, user_id)) is not None

    def list_media(self, offset: int, limit: int, user_id: int | None = None,
                   meeting_id: int | None = None) -> Deferred[tuple[int, list[MediaRecord]]]:
        conditions: list[str] = []
        params: list[object] = []
        if user_id is not None:
            conditions.append("(uploader_id = ? OR id IN (SELECT media_id FROM media_grants WHERE user_id = ?))")
            params += [user_id, user_id]
        if meeting_id is not None:
            conditions.append("meeting_id = ?")
            params.append(meeting_id)
        return self._read(self._page_txn, _MEDIA_LIST, conditions, params, "id DESC", offset, limit)

    def delete_media(self, media_id: int) -> Deferred[MediaRecord | None]:
        return self._write(self._delete_media_txn, media_id)

    def _delete_media_txn(self, txn: Any, media_id: int) -> MediaRecord | None:
        # Its grants go with it (ON DELETE CASCADE); results made from it keep
        # their bytes and lose their source (ON DELETE SET NULL).
        row = self._one(txn, f"DELETE FROM media WHERE id = ? RETURNING {_MEDIA}", (media_id,))
        return None if row is None else MediaRecord(*row)

    def media_usage(self, user_id: int) -> Deferred[int]:
        return self._read(self._media_usage_txn, user_id)

    def _media_usage_txn(self, txn: Any, user_id: int) -> int:
        (used,) = self._one(txn, "SELECT COALESCE(SUM(size), 0) FROM media WHERE uploader_id = ?", (user_id,))
        return int(used)
