"""
What differs between the SQL databases the store runs on.

Queries (:mod:`wecompany.store.sql`) are written once, in portable SQL with
``?`` placeholders, and migrations name column types as ``$serial_pk``,
``$bigint``, ``$float`` and ``$text_nocase``. A :class:`Dialect` fills those in
and says how a transaction begins. A PostgreSQL store adds its own dialect
(``%s`` placeholders, ``BIGSERIAL``, ``CITEXT``...) and reuses the rest.
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
    """

    name: str
    column_types: Mapping[str, str]
    begin_read: str | None
    begin_write: str | None
    placeholder: str = "?"
    max_params: int = 500
    lock_rows: str = ""

    def begin(self, txn: Any, write: bool) -> None:
        """Open a transaction on the adbapi transaction (cursor) ``txn``."""
        statement = self.begin_write if write else self.begin_read
        if statement is not None:
            txn.execute(statement)

    def execute(self, txn: Any, query: str, params: Sequence[object] = ()) -> Any:
        """Run ``query``, written with ``?`` placeholders; returns ``txn`` for fetching."""
        if self.placeholder != "?":
            query = query.replace("?", self.placeholder)
        txn.execute(query, tuple(params))
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
    # SQLite before 3.32 allows 999 parameters per statement.
    max_params=500,
    # BEGIN IMMEDIATE already excludes every other writer (and SQLite has no
    # FOR UPDATE).
    lock_rows="",
)
