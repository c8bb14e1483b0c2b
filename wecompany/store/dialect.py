"""
What differs between the SQL databases the store runs on.

Queries (:mod:`wecompany.store.sql`) are written once, in portable SQL with
``?`` placeholders, and migrations name column types as ``$serial_pk``,
``$bigint``, ``$float`` and ``$text_nocase``. A :class:`Dialect` fills those in,
says how a transaction begins, and how the migrations of several processes
keep out of each other's way: :data:`SQLITE` and :data:`POSTGRESQL`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs


@attrs.frozen
class Dialect:
    """
    :ivar column_types: substitutions for the ``$names`` in migration files.
    :ivar begin_read: statement that opens a read transaction, or ``None`` where
        the driver opens one implicitly.
    :ivar begin_write: the same for transactions that write.
    :ivar placeholder: the driver's parameter marker, replacing ``?``.
    :ivar max_params: how many parameters one statement may carry; longer id
        lists are sent in chunks of this size.
    :ivar lock_rows: appended to a SELECT whose rows a write transaction
        decides on (a meeting's capacity, a refresh token about to be
        rotated), so that a concurrent transaction waits for this one: ``" FOR
        UPDATE"`` where writers run concurrently (PostgreSQL); empty where a
        write transaction already excludes every other writer.
    :ivar ascii_case: appended to a text expression (a column, a parameter)
        that is case-folded by ``lower()`` or sorted ignoring case, so that
        case is folded for ASCII letters only, whatever the database's
        locale: SQLite's ``lower()`` and ``NOCASE`` already do so (and
        :func:`wecompany.store.common.fold_case` copies them).
    :ivar schema_setup: statements run before the migrations, in the
        transaction that looks for them (extensions the column types need).
    :ivar schema_lock: statement that makes a migration transaction wait for
        any other process's, or ``None`` where ``begin_write`` already does.
    :ivar table_exists: a query with one parameter, a table's name, that
        gives a row if the table exists (in the schema the store uses).
    :ivar integer_bits: the widest integer a parameter may be; a wider one is
        an :class:`OverflowError` before it is sent (as the sqlite3 module
        refuses to bind it), so that every database answers it the same way.
    """

    name: str
    column_types: Mapping[str, str]
    begin_read: str | None
    begin_write: str | None
    table_exists: str
    placeholder: str = "?"
    max_params: int = 500
    lock_rows: str = ""
    ascii_case: str = ""
    schema_setup: tuple[str, ...] = ()
    schema_lock: str | None = None
    integer_bits: int = 64

    def begin(self, txn: Any, write: bool) -> None:
        """Open a transaction on the adbapi transaction (cursor) ``txn``."""
        statement = self.begin_write if write else self.begin_read
        if statement is not None:
            txn.execute(statement)

    def begin_migration(self, txn: Any) -> None:
        """Open a write transaction that changes the schema, once no other process is migrating."""
        self.begin(txn, write=True)
        if self.schema_lock is not None:
            txn.execute(self.schema_lock)

    def execute(self, txn: Any, query: str, params: Sequence[object] = ()) -> Any:
        """Run ``query``, written with ``?`` placeholders; returns ``txn`` for fetching."""
        if self.placeholder != "?":
            query = query.replace("?", self.placeholder)
        params = tuple(params)
        limit = 1 << (self.integer_bits - 1)
        for value in params:
            if type(value) is int and not -limit <= value < limit:
                raise OverflowError(f"{value} does not fit in {self.integer_bits} bits")
        txn.execute(query, params)
        return txn


SQLITE = Dialect(
    name="sqlite",
    column_types={
        # AUTOINCREMENT: an id is never reused, even after its row is deleted.
        "serial_pk": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "bigint": "INTEGER",
        "float": "REAL",
        # Comparisons and ORDER BY on the column ignore (ASCII) case.
        "text_nocase": "TEXT COLLATE NOCASE",
    },
    # The connection runs in autocommit mode (see wecompany.store.sqlite), so
    # transactions are begun here. IMMEDIATE takes the write lock up front, so
    # a check-then-insert cannot interleave with another process's write.
    begin_read="BEGIN",
    begin_write="BEGIN IMMEDIATE",
    table_exists="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
    # SQLite before 3.32 allows 999 parameters per statement.
    max_params=500,
    # BEGIN IMMEDIATE already excludes every other writer (and SQLite has no
    # FOR UPDATE), migrations included.
    lock_rows="",
    schema_lock=None,
)


# Any 64-bit number will do: every WeCompany daemon on the database uses this one.
_SCHEMA_LOCK_KEY = 0x5743_5343_4845_4D41  # "WCSCHEMA"

POSTGRESQL = Dialect(
    name="postgresql",
    column_types={
        # Ids come from a sequence, so one is never reused; BIGINT, as JSON
        # integers up to 2**53 stay exact in every client.
        "serial_pk": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "bigint": "BIGINT",
        "float": "DOUBLE PRECISION",
        # Equality, UNIQUE and ORDER BY ignore case (citext compares lower()
        # of both sides); unlike a nondeterministic collation, it also works
        # with the LIKE of the store's searches.
        "text_nocase": "CITEXT",
    },
    # The connection runs in autocommit mode (see wecompany.store.postgres):
    # one BEGIN, the statements, one COMMIT, and no round trip more. A read
    # sees one snapshot (a count and its page agree), as in SQLite; writes run
    # at READ COMMITTED and lock the rows they decide on (lock_rows).
    begin_read="BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    begin_write="BEGIN",
    # Not CREATE TABLE IF NOT EXISTS alone: that needs CREATE on the schema
    # even when the table is there, and a user with rights on the tables only
    # must be able to start a daemon on an up-to-date database.
    table_exists="SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename = ?",
    placeholder="%s",
    max_params=500,
    # Several daemons write at once: of two joins to one meeting, the second
    # waits for the first to commit, then counts its seat.
    lock_rows=" FOR UPDATE",
    # lower() and citext's ordering follow the database's locale otherwise
    # (en_US.UTF-8 sorts "_a" after "b" and folds "É"); the "C" collation
    # folds and sorts as SQLite does.
    ascii_case=' COLLATE "C"',
    # A trusted extension since PostgreSQL 13: a user with CREATE on the
    # database may add it; once there, IF NOT EXISTS needs no privilege.
    schema_setup=("CREATE EXTENSION IF NOT EXISTS citext",),
    # Two daemons starting at once: the second waits here until the first
    # has committed, then finds the migration applied. Released at commit.
    schema_lock=f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK_KEY})",
)
