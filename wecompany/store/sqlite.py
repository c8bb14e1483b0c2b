"""
The default durable store: SQLite through adbapi.

One connection (``cp_max=1``) on one pool thread: writes are serialised in the
order they were asked for, and a read queued after a write sees it. Commits
are synchronous (``synchronous=FULL``), so an offline message acknowledged to
its sender survives a crash.
"""

from __future__ import annotations

import sqlite3
from typing import ClassVar

import attrs
from twisted.enterprise.adbapi import ConnectionPool
from twisted.internet.interfaces import IReactorCore
from zope.interface import implementer

from wecompany.privatefs import create_private_file
from wecompany.store.dialect import SQLITE, Dialect
from wecompany.store.interface import IMeetingStore, IStore
from wecompany.store.schema import load_migrations, migrate_now
from wecompany.store.sql import SQLStore

# RETURNING arrived in SQLite 3.35.
MINIMUM_SQLITE = (3, 35, 0)

_PRAGMAS = (
    # Readers do not block the writer (a no-op for ":memory:").
    "PRAGMA journal_mode=WAL",
    # A commit is on disk before its Deferred fires.
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    # Wait for another process's write lock rather than fail at once.
    "PRAGMA busy_timeout=5000",
)


def _configure(connection: sqlite3.Connection) -> None:
    # Autocommit mode: transactions are begun explicitly by the dialect, so
    # DDL in a migration is inside its transaction too (the sqlite3 module
    # would otherwise begin one only before INSERT/UPDATE/DELETE).
    connection.isolation_level = None
    for pragma in _PRAGMAS:
        connection.execute(pragma)


def _create_private(path: str) -> None:
    # SQLite creates a database 0644 less the umask, and its -wal and -shm
    # files with the database's mode: made 0600 first, all three are private.
    if path != ":memory:" and not path.startswith("file:"):
        create_private_file(path)


def connection_pool(path: str, reactor: IReactorCore | None = None) -> ConnectionPool:
    """An adbapi pool of one SQLite connection to ``path`` (or ``":memory:"``), created 0600."""
    _create_private(path)
    if sqlite3.sqlite_version_info < MINIMUM_SQLITE:
        raise RuntimeError(
            f"SQLite {sqlite3.sqlite_version} is too old; the store needs"
            f" {'.'.join(map(str, MINIMUM_SQLITE))} or newer"
        )
    return ConnectionPool(
        "sqlite3",
        path,
        check_same_thread=False,
        cp_min=1,
        cp_max=1,
        cp_openfun=_configure,
        cp_reactor=reactor,
    )


@implementer(IStore, IMeetingStore)
@attrs.define
class SQLiteStore(SQLStore):
    """
    :class:`~wecompany.store.interface.IStore` and
    :class:`~wecompany.store.interface.IMeetingStore` on the SQLite database at ``path``.

    :param reactor: runs the pool's thread; adbapi uses the global reactor if
        this is ``None``.
    """

    _dialect: ClassVar[Dialect] = SQLITE

    _path: str
    _reactor: IReactorCore | None = None
    # Each commit costs an fsync and a round trip through the pool's thread
    # (20-35 % of a core at 300-900 small commits/s, measured): under a
    # stream of chat, 200 commits/s are plenty.
    commit_interval: float = attrs.field(default=0.005, kw_only=True)

    def _make_pool(self) -> ConnectionPool:
        return connection_pool(self._path, self._reactor)

    def _storage_problem_of(self, error: BaseException) -> str | None:
        name = getattr(error, "sqlite_errorname", "") if isinstance(error, sqlite3.Error) else ""
        if name == "SQLITE_FULL":
            return "disk full"
        if name.startswith("SQLITE_IOERR"):
            return "disk I/O error"
        return None

    def _clock(self):
        return self._reactor

    def prepare(self) -> None:
        """
        Apply pending migrations now, synchronously, on a connection of its
        own. Blocking: call it before the reactor runs (start-up), where an
        error can stop the daemon before it listens. ``start()`` afterwards
        finds nothing left to migrate.
        """
        _create_private(self._path)
        connection = sqlite3.connect(self._path)
        try:
            _configure(connection)
            migrate_now(connection, self._dialect, load_migrations(self._dialect))
        finally:
            connection.close()
