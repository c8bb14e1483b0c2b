"""
Versioned schema migrations.

Migrations are the files ``migrations/NNNN_name.sql`` of this package, applied
in order. Each one runs in a single transaction together with the row that
records its version in ``schema_version``, so a migration is applied entirely
or not at all. Several processes may start on one database at the same
moment: each migration transaction waits for any other's
(:meth:`Dialect.begin_migration`) and looks again before it applies anything,
so each migration is applied once.
"""

from __future__ import annotations

import re
from importlib import resources
from string import Template
from typing import Any

import attrs
from twisted.enterprise.adbapi import ConnectionPool
from twisted.logger import Logger

from wecompany.store.dialect import Dialect

log = Logger()

_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
# A statement ends with ';' at the end of a line; a ';' inside a line (in a
# string literal, say) does not split.
_END_OF_STATEMENT = re.compile(r";[ \t]*$", re.MULTILINE)


class CannotPrepare(Exception):
    """
    At start-up, the database cannot be used for a reason the operator must
    fix (unreachable, or migrated by a newer server); the message says it
    all, and the daemon reports it as one line, not a traceback.
    """


class SchemaTooNew(CannotPrepare):
    """The database was migrated by a newer server than this one."""


@attrs.frozen
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(script: str) -> tuple[str, ...]:
    """Split a migration script into statements, without its ``--`` comment lines."""
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("--"))
    return tuple(piece.strip() for piece in _END_OF_STATEMENT.split(code) if piece.strip())


def load_migrations(dialect: Dialect) -> tuple[Migration, ...]:
    """Read this package's migration files, with the dialect's column types filled in."""
    folder = resources.files("wecompany.store").joinpath("migrations")
    migrations = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is not None:
            script = Template(entry.read_text(encoding="utf-8")).substitute(dialect.column_types)
            migrations.append(Migration(int(match[1]), match[2], split_statements(script)))
    migrations.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in migrations]
    if versions != list(range(1, len(migrations) + 1)):
        raise ValueError(f"migrations must be numbered 1, 2, 3... without gaps, found {versions}")
    return tuple(migrations)


def _pending(applied: set[int], migrations: tuple[Migration, ...]) -> list[Migration]:
    """
    The migrations still to apply.

    :raises SchemaTooNew: if the database has a version newer than any of
        ``migrations``; nothing is changed then.
    """
    known = max((migration.version for migration in migrations), default=0)
    newest = max(applied, default=0)
    if newest > known:
        raise SchemaTooNew(
            f"database schema version {newest} is newer than this server knows "
            f"(up to {known}); run a newer server or point this one at another database"
        )
    return [migration for migration in migrations if migration.version not in applied]


def _applied_log(migration: Migration) -> None:
    log.info("Applied schema migration {version} ({name})", version=migration.version, name=migration.name)


async def migrate(pool: ConnectionPool, dialect: Dialect, migrations: tuple[Migration, ...]) -> None:
    """Apply the migrations the database lacks, through the pool (see :func:`_pending`)."""
    applied = await pool.runInteraction(_applied_versions, dialect)
    for migration in _pending(applied, migrations):
        if await pool.runInteraction(_apply, dialect, migration):
            _applied_log(migration)


def migrate_now(connection: Any, dialect: Dialect, migrations: tuple[Migration, ...]) -> None:
    """
    :func:`migrate` on a plain DB-API connection, synchronously: for start-up,
    before the reactor runs, so a schema problem stops the daemon at once.
    """
    applied = _interact_now(connection, _applied_versions, dialect)
    for migration in _pending(applied, migrations):
        if _interact_now(connection, _apply, dialect, migration):
            _applied_log(migration)


def _interact_now(connection: Any, interaction, *args: Any) -> Any:
    """What ``ConnectionPool.runInteraction`` does, in the calling thread."""
    cursor = connection.cursor()
    try:
        result = interaction(cursor, *args)
        connection.commit()
        return result
    except BaseException:
        connection.rollback()
        raise
    finally:
        cursor.close()


def _applied_versions(txn: Any, dialect: Dialect) -> set[int]:
    dialect.begin_migration(txn)
    for statement in dialect.schema_setup:
        dialect.execute(txn, statement)
    # Created only when missing: creating, even IF NOT EXISTS, may need
    # privileges that a database already up to date does not.
    if dialect.execute(txn, dialect.table_exists, ("schema_version",)).fetchone() is None:
        dialect.execute(
            txn,
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (version INTEGER PRIMARY KEY, name TEXT NOT NULL)",
        )
    return {version for (version,) in dialect.execute(txn, "SELECT version FROM schema_version").fetchall()}


def _apply(txn: Any, dialect: Dialect, migration: Migration) -> bool:
    dialect.begin_migration(txn)
    # Another process may have applied it since we looked.
    if dialect.execute(
        txn, "SELECT 1 FROM schema_version WHERE version = ?", (migration.version,)
    ).fetchone():
        return False
    for statement in migration.statements:
        dialect.execute(txn, statement)
    dialect.execute(
        txn,
        "INSERT INTO schema_version (version, name) VALUES (?, ?)",
        (migration.version, migration.name),
    )
    return True
