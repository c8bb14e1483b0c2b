"""
``wecompany backup DEST`` and ``wecompany migrate``, and the schema version both report.

What a backup covers
    The database only: every account, contact, offline message, meeting,
    refresh token and the records of files and media. SQLite: a copy made
    with SQLite's online backup API (``sqlite3.Connection.backup``), which
    is consistent while the daemon writes (WAL included), into ``DEST``,
    created 0600. PostgreSQL: ``pg_dump --format=custom`` into ``DEST``
    (restore it with ``pg_restore``); the password goes to pg_dump in its
    environment, never on its command line.

What it does not cover
    The files themselves: avatars and transferred files (``avatars/`` and
    ``media/`` in the data directory, or the ``--file-storage`` directory or
    bucket), call recordings (``--record-calls``), the token secret
    (``jwt.secret`` in the data directory) and the configuration. Copy those
    separately (``docs/operations.rst``, "Backup and restore").
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from urllib.parse import quote

from twisted.python import usage

from wecompany.cli.common import Command, CommandFailed

NOT_COVERED = ("not in the backup: the files (avatars/ and media/ in the data directory, or --file-storage), "
               "call recordings, jwt.secret and the configuration; copy them separately")


def known_version() -> int:
    """The newest schema version this release knows."""
    from wecompany.store.dialect import SQLITE
    from wecompany.store.schema import load_migrations

    return len(load_migrations(SQLITE))


def schema_version(config) -> int | None:
    """
    The schema version of the configured database, read without changing
    anything: None when there is no database yet (an SQLite file not made),
    0 for an empty one.

    :raises CommandFailed: the database cannot be opened or read.
    """
    if config.database_kind == "sqlite":
        path = config.sqlite_path
        if not os.path.exists(path):
            return None
        try:
            connection = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True)
            try:
                return _applied(connection.cursor(), "SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                                     "AND name = 'schema_version'")
            finally:
                connection.close()
        except sqlite3.Error as error:
            raise CommandFailed(f"cannot read the SQLite database {path}: {error}") from None
    arguments = _postgres_arguments(config)
    from wecompany.store.postgres import _hide, connect, describe
    import psycopg
    try:
        connection = connect(arguments)
        try:
            return _applied(connection.cursor(), "SELECT 1 FROM information_schema.tables "
                                                 "WHERE table_name = 'schema_version'")
        finally:
            connection.close()
    except psycopg.Error as error:
        raise CommandFailed(f"cannot read the PostgreSQL database {describe(arguments)}: "
                            f"{_hide(str(error), arguments)}") from None


def _applied(cursor, table_exists: str) -> int:
    if cursor.execute(table_exists).fetchone() is None:
        return 0
    (version,) = cursor.execute("SELECT max(version) FROM schema_version").fetchone()
    return version or 0


def _postgres_arguments(config) -> dict:
    from wecompany.tap import build_store

    build_store(config, None)  # the daemon's checks: the driver is there, the URL is usable (UsageError)
    from wecompany.store.postgres import connection_arguments
    return connection_arguments(config.database)


def describe_version(version: int | None) -> str:
    if version is None:
        return "none (no database yet)"
    return str(version)


def database_name(config) -> str:
    if config.database_kind == "sqlite":
        return config.sqlite_path
    from wecompany.store.postgres import redact
    return redact(config.database)


class MigrateOptions(Command):
    """``wecompany migrate``: the schema of this release, as the daemon applies it at start-up."""

    def getSynopsis(self) -> str:
        return "Usage: wecompany [daemon options] migrate"

    def run(self, config, environ) -> int:
        from wecompany.privatefs import make_private_dir
        from wecompany.store.schema import SchemaTooNew
        from wecompany.tap import build_store

        before = schema_version(config)
        print(f"database: {database_name(config)}")
        print(f"schema version before: {describe_version(before)} (this release: {known_version()})")
        store = build_store(config, None)
        make_private_dir(config.data_dir)
        try:
            store.prepare()
        except SchemaTooNew as error:
            raise CommandFailed(str(error)) from None
        except Exception as error:  # PreparationError, sqlite3.Error: their messages hide passwords
            raise CommandFailed(f"the migration failed: {error}") from None
        print(f"schema version after: {describe_version(schema_version(config))}")
        return 0


class BackupOptions(Command):
    """``wecompany backup DEST``: see the module docstring for what it covers."""

    optFlags = [["force", None, "replace DEST if it exists"]]

    def getSynopsis(self) -> str:
        return "Usage: wecompany [daemon options] backup DEST [--force]"

    def parseArgs(self, destination=None):
        if not destination:
            raise usage.UsageError("backup: where to? (a file name)")
        self.destination = os.path.abspath(destination)

    def run(self, config, environ) -> int:
        if os.path.exists(self.destination) and not self["force"]:
            raise CommandFailed(f"{self.destination} exists (--force replaces it)")
        if config.database_kind == "sqlite":
            users = backup_sqlite(config.sqlite_path, self.destination)
            print(f"backed up {config.sqlite_path} to {self.destination} ({users} users, schema version "
                  f"{schema_version_of_file(self.destination)})")
        else:
            backup_postgres(config, self.destination, environ)
            print(f"backed up {database_name(config)} to {self.destination} (pg_dump custom format: "
                  f"restore with pg_restore)")
        print(NOT_COVERED)
        return 0


def backup_sqlite(source: str, destination: str) -> int:
    """SQLite's online backup of ``source`` into ``destination`` (0600) -> the number of users in the copy."""
    from wecompany.privatefs import open_private

    if not os.path.exists(source):
        raise CommandFailed(f"there is no database at {source} yet")
    partial = f"{destination}.{os.getpid()}.part"
    open_private(partial, "xb").close()
    try:
        try:
            reading = sqlite3.connect(f"file:{quote(source)}?mode=rw", uri=True)
            writing = sqlite3.connect(partial)
            try:
                # Pages are copied a step at a time, and the copy restarts
                # if the daemon writes meanwhile: the result is one snapshot.
                reading.backup(writing, pages=1024)
                (users,) = writing.execute("SELECT count(*) FROM users").fetchone()
            finally:
                writing.close()
                reading.close()
        except sqlite3.Error as error:
            raise CommandFailed(f"the backup of {source} failed: {error}") from None
        os.replace(partial, destination)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return users


def schema_version_of_file(path: str) -> int:
    connection = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True)
    try:
        return _applied(connection.cursor(), "SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                             "AND name = 'schema_version'")
    finally:
        connection.close()


def backup_postgres(config, destination: str, environ) -> None:
    """``pg_dump --format=custom`` of the configured database into ``destination`` (0600)."""
    from wecompany.privatefs import open_private

    pg_dump = shutil.which("pg_dump", path=environ.get("PATH"))
    if pg_dump is None:
        raise CommandFailed("pg_dump is not installed (or not on PATH): install PostgreSQL's client tools "
                            "(Debian: postgresql-client) of the server's version or newer")
    arguments = _postgres_arguments(config)
    # libpq's environment: the password never shows in the process list.
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD",
             "dbname": "PGDATABASE", "sslmode": "PGSSLMODE", "connect_timeout": "PGCONNECT_TIMEOUT"}
    env = {key: value for key, value in environ.items() if not key.startswith("PG")}
    env.update({names[key]: value for key, value in arguments.items() if key in names})
    partial = f"{destination}.{os.getpid()}.part"
    with open_private(partial, "xb") as out:
        done = subprocess.run([pg_dump, "--format=custom", "--no-password"], stdout=out, stderr=subprocess.PIPE,
                              env=env)
    if done.returncode != 0:
        os.unlink(partial)
        message = done.stderr.decode("utf-8", "replace").strip()
        password = arguments.get("password")
        if password:
            message = message.replace(password, "***")
        raise CommandFailed(f"pg_dump failed (exit status {done.returncode}): {message}")
    os.replace(partial, destination)
    sys.stdout.flush()
