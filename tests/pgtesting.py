"""
Fresh PostgreSQL databases for tests.

The server is the one ``WECOMPANY_TEST_POSTGRESQL`` names (a
``postgresql://`` URL to any database the user may connect to; the user must
be allowed to create databases and roles), by default
``postgresql://postgres@127.0.0.1:5432/test``. Nothing touches the tables of
the database the URL names: tests get databases of their own,
``wc_test_<random>``, in one of two ways:

* :func:`scratch_database`: created for the test and dropped in its cleanup,
  for tests that change the schema or start from none;
* :func:`emptied_database`: one database per test class and process,
  created by its first test and dropped when the process exits, with every
  row deleted and every id sequence restarted before each test. Creating a
  database and migrating it costs the server most of a second, emptying it a
  millisecond or two: this is what lets the behaviour suite run on a fresh
  store for each of its tests.

When the server cannot be reached the test is skipped, naming the variable,
unless ``CI`` is set: there a missing database is a failure, not a skip.

The few administrative statements (CREATE/DROP DATABASE, pg_terminate_backend)
run synchronously on the test's thread: they are short, and no store waits
on the reactor for them.
"""

from __future__ import annotations

import atexit
import os
import secrets
from urllib.parse import urlsplit, urlunsplit

import attrs
import psycopg
from psycopg import sql
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest

from wecompany.store.postgres import redact

ENVIRONMENT_VARIABLE = "WECOMPANY_TEST_POSTGRESQL"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/test"

POLL_INTERVAL = 0.01
WAIT_TIMEOUT = 10.0


def server_url() -> str:
    return os.environ.get(ENVIRONMENT_VARIABLE) or DEFAULT_SERVER


@attrs.define
class _Server:
    """The administrative connection, made once per process (or the reason it could not be)."""

    connection: psycopg.Connection | None = None
    unreachable: str | None = None

    def admin(self, testcase) -> psycopg.Connection:
        if self.connection is not None and self.connection.closed:
            self.connection = None
        if self.connection is None and self.unreachable is None:
            try:
                self.connection = psycopg.connect(server_url(), autocommit=True, connect_timeout=5,
                                                  application_name="wecompany-tests")
            except psycopg.Error as error:
                self.unreachable = str(error).strip()
        if self.connection is None:
            where = redact(server_url())
            if os.environ.get("CI"):
                testcase.fail(f"CI is set, but the PostgreSQL server {where} ({ENVIRONMENT_VARIABLE}) "
                              f"cannot be reached: {self.unreachable}")
            raise SkipTest(f"no PostgreSQL server at {where}: set {ENVIRONMENT_VARIABLE} to the URL of one "
                           f"({self.unreachable})")
        return self.connection


_server = _Server()


def admin(testcase) -> psycopg.Connection:
    """An autocommit connection to the server's own database (skips or fails the test if there is none)."""
    return _server.admin(testcase)


def database_url(name: str) -> str:
    """The server URL, for the database ``name`` instead."""
    return urlunsplit(urlsplit(server_url())._replace(path="/" + name))


def scratch_database(testcase, *options: str) -> str:
    """
    Create an empty database for ``testcase``, dropped when it ends; -> its URL.

    :param options: more ``CREATE DATABASE`` options (``"LOCALE_PROVIDER icu"``...),
        written by the test itself.
    """
    connection = admin(testcase)
    name = f"wc_test_{secrets.token_hex(6)}"
    statement = sql.SQL("CREATE DATABASE {} {}").format(sql.Identifier(name), sql.SQL(" ".join(options)))
    connection.execute(statement)
    # FORCE: a store a failed test left open must not keep the database.
    testcase.addCleanup(connection.execute, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                        .format(sql.Identifier(name)))
    return database_url(name)


_SHARED: dict[str, str] = {}  # test class -> URL of its database in this process

# Every row of every table but schema_version; ids start at 1 again.
_EMPTY = """
DO $$
DECLARE
    name text;
BEGIN
    FOR name IN SELECT tablename FROM pg_tables
                WHERE schemaname = current_schema() AND tablename <> 'schema_version' LOOP
        EXECUTE format('DELETE FROM %I', name);
    END LOOP;
    PERFORM setval(c.oid, 1, false) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'S' AND n.nspname = current_schema();
END
$$
"""


def emptied_database(testcase) -> str:
    """
    The database of ``testcase``'s class in this process, made if need be,
    with no rows in it (its schema is kept) -> its URL.
    """
    key = f"{type(testcase).__module__}.{type(testcase).__qualname__}"
    url = _SHARED.get(key)
    if url is None:
        connection = admin(testcase)
        name = f"wc_test_{secrets.token_hex(6)}"
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = _SHARED[key] = database_url(name)
        if len(_SHARED) == 1:
            atexit.register(_drop_shared)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(_EMPTY)
    return url


def _drop_shared() -> None:
    connection = _server.connection
    if connection is None or connection.closed:
        return
    for url in _SHARED.values():
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                           .format(sql.Identifier(database_name(url))))


@attrs.frozen
class Role:
    name: str
    password: str = attrs.field(repr=False)

    def url(self, url: str) -> str:
        """``url``, logging in as this role."""
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{self.name}:{self.password}@{host}"))


def scratch_role(testcase) -> Role:
    """
    A login role with a password and no privileges, dropped when the test
    ends. Make it before the databases it is given rights in: cleanups run
    last first, and a role with rights in a database cannot be dropped.
    """
    connection = admin(testcase)
    role = Role(f"wc_test_{secrets.token_hex(6)}", secrets.token_hex(16))
    connection.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role.name),
                                                                        sql.Literal(role.password)))
    testcase.addCleanup(connection.execute, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role.name)))
    return role


def connect(testcase, url: str) -> psycopg.Connection:
    """A connection of the test's own to the database at ``url`` (autocommit), closed in its cleanup."""
    connection = psycopg.connect(url, autocommit=True, application_name="wecompany-tests")
    testcase.addCleanup(connection.close)
    return connection


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


async def wait_until(testcase, condition, what: str, timeout: float = WAIT_TIMEOUT):
    """
    Poll ``condition()`` (a synchronous query) on the reactor until it is
    true: for states only the server can tell, such as a transaction waiting
    for a lock. Fails the test after ``timeout`` seconds.
    """
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() >= deadline:
            testcase.fail(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, POLL_INTERVAL, lambda: None)


def waiting_for_locks(testcase, url: str) -> int:
    """How many sessions on the database of ``url`` wait for a lock."""
    (count,) = admin(testcase).execute(
        "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE NOT l.granted AND a.datname = %s",
        (database_name(url),),
    ).fetchone()
    return count
