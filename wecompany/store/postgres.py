"""
The store for a cluster: several daemons on one PostgreSQL database.

The driver is psycopg 3 (its C build, ``psycopg[binary]``), synchronous,
through adbapi's thread, chosen by measurement: ``python bench/store.py``
(PostgreSQL 15 on the same 2-core machine, 1,000 operations per phase, best
of 3 rounds, operations/s). The machine was shared, so writes, bound by
fsync, varied two- to fivefold between runs: the figures are one run's, the
comparisons below held in all three.

=====================  =========  =========  ========  ==================
phase                  in flight  psycopg 3  psycopg2  psycopg2, snapshot
=====================  =========  =========  ========  ==================
list_meeting_messages  1          1,759      863       985
list_meeting_messages  32         2,248      1,020     1,035
get_user               1          7,019      5,932     6,507
get_user               32         6,363      7,433     6,704
create_user            1          729        362       669
create_user            32         1,926      1,053     1,049
=====================  =========  =========  ========  ==================

("psycopg2" reads at READ COMMITTED, the same three round trips as psycopg
3; "snapshot" is what the store promises, a fourth round trip.)

In all three runs psycopg 3 served the store's heaviest read (a join, a
count and a page) 1.4 to 2.9 times as fast as psycopg2: it prepares the
statements it runs often (with ``prepare_threshold=None`` it served that
read at psycopg2's pace: 462-558/s against 1,035-1,239). psycopg2 served the simplest read 17-47 % faster
with 32 in flight, at less CPU per query (one message, no preparing); with
the snapshot the store needs, that lead was 5 %. Writes were the server's
fsync, with no driver ahead in every run. psycopg 3 also runs each of the
store's transactions in three round trips (autocommit and an explicit BEGIN
... READ ONLY, which psycopg2 cannot commit), gives the SQLSTATE and the
violated constraint as attributes, and parses connection URLs without
exposing the password.

A pool of four psycopg 3 connections read 23-72 % faster with 32 in flight,
and in two runs of three created users 3.6 and 6.6 times as fast (commits on
several connections share an fsync). It is not used, because it would give
up the ordering below; the store's busiest writes, meeting messages, are
group-committed instead (12,750/s with 32 in flight), and account creation
waits for argon2 long before the database.

One connection (``cp_max=1``) on one pool thread, as in
:mod:`wecompany.store.sqlite`, and for the same reason: the store promises
that operations run in the order they were asked for, that a read asked after
a write sees it, that group-committed meeting messages keep their order, and
that ``stop()`` finishes every write queued before it. One connection keeps
all four by construction. Concurrency comes from the daemons: each has its
own connection, and the database orders their writes (``FOR UPDATE`` where
a decision depends on rows, unique constraints, an advisory lock for
migrations).

A lost connection (a server restart, ``pg_terminate_backend``) fails the
operation that finds it with :class:`~wecompany.errors.Unavailable` (503);
adbapi opens a new connection for the next one (``cp_reconnect``). Nothing
is retried: a write whose commit was under way may or may not have happened.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import ClassVar

import attrs
import psycopg
from psycopg.conninfo import conninfo_to_dict
from twisted.enterprise.adbapi import ConnectionLost, ConnectionPool
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from zope.interface import implementer

from wecompany.errors import EmailTaken, UsernameTaken
from wecompany.store.common import email_exists, username_exists
from wecompany.store.dialect import POSTGRESQL, Dialect
from wecompany.store.interface import IMeetingStore, IStore
from wecompany.store.schema import CannotPrepare, SchemaTooNew, load_migrations, migrate_now
from wecompany.store.sql import SQLStore

log = Logger()

#: What the daemon asks of libpq unless the URL says otherwise.
DEFAULT_OPTIONS: Mapping[str, str] = {
    # Names the daemon's connections in pg_stat_activity.
    "application_name": "wecompany",
    # An unreachable host stops the start-up within seconds, not minutes.
    "connect_timeout": "10",
}

# SQLSTATEs that say the server cannot store data; they last until a write
# succeeds (storage_problem, /health).
_STORAGE_PROBLEMS = {
    "53100": "disk full",
    "58030": "disk I/O error",
    # A standby after a failover, or default_transaction_read_only.
    "25006": "the database is read-only",
}
# SQLSTATEs that say the server is not there for us right now.
_OUTAGES = {
    "57P01": "the server ended the connection",  # a shutdown, or pg_terminate_backend
    "57P02": "the server crashed",
    "57P03": "the server is starting up",
}
_OUTAGE_CLASSES = {
    "08": "connection failure",
    "53": "the server is out of resources",  # 53100 (disk full) is a storage problem
}
# The UNIQUE constraints of users, as PostgreSQL names them (table_column_key).
_USER_NAME_CLASHES = {"users_username_key": username_exists, "users_email_key": email_exists}

_PASSWORD_PARAMETER = re.compile(r"(password=)[^&\s]*", re.IGNORECASE)


class PreparationError(CannotPrepare):
    """At start-up, the PostgreSQL database could not be reached, or not migrated."""


def redact(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) as ``***``."""
    head, at, tail = url.rpartition("@")
    if at and "://" in head:
        scheme, _, userinfo = head.partition("://")
        if ":" in userinfo:
            head = f"{scheme}://{userinfo.split(':', 1)[0]}:***"
    return _PASSWORD_PARAMETER.sub(r"\1***", f"{head}{at}{tail}")


def connection_arguments(url: str) -> dict[str, str]:
    """
    libpq's keywords for a ``postgresql://user:password@host:port/dbname?...``
    URL, with :data:`DEFAULT_OPTIONS` where the URL is silent.

    :raises ValueError: the URL is malformed; the message hides its password.
    """
    try:
        arguments = conninfo_to_dict(url)
    except psycopg.Error as error:
        raise ValueError(f"{redact(url)} is not a usable PostgreSQL URL: {error}") from None
    return {**DEFAULT_OPTIONS, **{key: str(value) for key, value in arguments.items()}}


def describe(arguments: Mapping[str, str]) -> str:
    """Where ``arguments`` connect, for logs and errors: never the password."""
    host = arguments.get("host", "")
    port = arguments.get("port", "")
    if ":" in host:
        host = f"[{host}]"
    user = arguments.get("user", "")
    return f"postgresql://{user}{'@' if user else ''}{host}{':' if port else ''}{port}/{arguments.get('dbname', '')}"


def _hide(text: str, arguments: Mapping[str, str]) -> str:
    # libpq's messages do not quote passwords; this keeps it so if one ever does.
    password = arguments.get("password")
    return text.replace(password, "***") if password else text


def connect(arguments: Mapping[str, str]) -> psycopg.Connection:
    """
    A connection as the store uses it: autocommit, so that the dialect's BEGIN
    opens each transaction (one round trip fewer than psycopg's implicit one).
    """
    return psycopg.connect(autocommit=True, **arguments)


def connection_pool(arguments: Mapping[str, str], reactor: IReactorCore | None = None) -> ConnectionPool:
    """An adbapi pool of one reconnecting psycopg connection (see the module docstring)."""
    return ConnectionPool(
        "psycopg",
        autocommit=True,
        **arguments,
        cp_min=1,
        cp_max=1,
        # A connection that failed is replaced for the next interaction.
        cp_reconnect=True,
        cp_reactor=reactor,
    )


def _sqlstate(error: BaseException) -> str | None:
    return error.sqlstate if isinstance(error, psycopg.Error) else None


@implementer(IStore, IMeetingStore)
@attrs.define
class PostgreSQLStore(SQLStore):
    """
    :class:`~wecompany.store.interface.IStore` and
    :class:`~wecompany.store.interface.IMeetingStore` on the PostgreSQL
    database at ``url`` (``postgresql://user:password@host:port/dbname``).

    The database user needs CREATE on the database the first time (or the
    ``citext`` extension already there) and on its schema while migrations
    run; see ``docs/deployment.rst``.

    :param reactor: runs the pool's thread; adbapi uses the global reactor if
        this is ``None``.
    :raises ValueError: ``url`` is malformed (the message hides its password).
    """

    _dialect: ClassVar[Dialect] = POSTGRESQL
    _out_of_range: ClassVar[tuple[type[BaseException], ...]] = (
        OverflowError, psycopg.errors.NumericValueOutOfRange,
    )

    _url: str = attrs.field(repr=False)
    _reactor: IReactorCore | None = None
    #: Seconds between the starts of two group commits of meeting messages:
    #: none. Messages asked for while a batch is committed still go in the
    #: next; SQLite paces batches because its commits cost the daemon CPU
    #: (fsync in process), but PostgreSQL's are the server's work: unpaced,
    #: bench/store.py stored 2,048 messages/s one at a time (173 paced at
    #: 5 ms) and 12,750/s with 32 in flight (5,427), at less CPU per message.
    commit_interval: float = attrs.field(default=0.0, kw_only=True)
    _arguments: dict[str, str] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._arguments = connection_arguments(self._url)

    @property
    def address(self) -> str:
        """Where the store connects, without the password."""
        return describe(self._arguments)

    def _make_pool(self) -> ConnectionPool:
        return connection_pool(self._arguments, self._reactor)

    def _clock(self):
        return self._reactor

    def _storage_problem_of(self, error: BaseException) -> str | None:
        return _STORAGE_PROBLEMS.get(_sqlstate(error) or "")

    def _outage_of(self, error: BaseException) -> str | None:
        if isinstance(error, ConnectionLost):  # adbapi gave up the connection
            return "connection lost"
        if not isinstance(error, psycopg.OperationalError):
            return None
        state = error.sqlstate
        if state is None:  # libpq's own: no server answered, or the connection broke
            return "no connection"
        if state in _STORAGE_PROBLEMS:
            return None
        return _OUTAGES.get(state) or _OUTAGE_CLASSES.get(state[:2])

    def _unique_clash_of(self, error: Exception) -> UsernameTaken | EmailTaken | None:
        # By constraint name, not message text: the text is translated
        # (lc_messages) and quotes the clashing value.
        if not isinstance(error, psycopg.errors.UniqueViolation):
            return None
        clash = _USER_NAME_CLASHES.get(error.diag.constraint_name or "")
        return None if clash is None else clash()

    def prepare(self) -> None:
        """
        Apply pending migrations now, synchronously, on a connection of its
        own. Blocking: call it before the reactor runs (start-up), where an
        error stops the daemon before it listens. ``start()`` afterwards
        finds nothing left to migrate.

        :raises PreparationError: no connection, or a migration failed (the
            message names the database, never the password).
        :raises SchemaTooNew: the database was migrated by a newer server.
        """
        log.info("Using the PostgreSQL database {address}", address=self.address)
        try:
            connection = connect(self._arguments)
        except psycopg.Error as error:
            raise PreparationError(
                f"cannot connect to the PostgreSQL database {self.address}: {_hide(str(error), self._arguments)}"
            ) from None
        try:
            migrate_now(connection, self._dialect, load_migrations(self._dialect))
        except SchemaTooNew:
            raise
        except psycopg.Error as error:
            raise PreparationError(
                f"cannot migrate the PostgreSQL database {self.address}: {_hide(str(error), self._arguments)}"
            ) from None
        finally:
            connection.close()
