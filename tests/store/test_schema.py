"""Loading and applying schema migrations."""

from __future__ import annotations

import sqlite3

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from wecompany.store.dialect import SQLITE
from wecompany.store.schema import Migration, load_migrations, migrate, split_statements
from wecompany.store.sqlite import connection_pool


class SplitStatementsTests(SynchronousTestCase):
    def test_splits_at_semicolons_ending_lines(self):
        script = (
            "-- a comment; not a statement\n"
            "CREATE TABLE a (\n    x TEXT DEFAULT 'a;b'\n);\n\n"
            "INSERT INTO a VALUES ('c');  \n"
            "-- trailing comment\n"
        )
        self.assertEqual(
            split_statements(script),
            (
                "CREATE TABLE a (\n    x TEXT DEFAULT 'a;b'\n)",
                "INSERT INTO a VALUES ('c')",
            ),
        )


class LoadMigrationsTests(SynchronousTestCase):
    def test_migrations_for_sqlite(self):
        initial, meetings, token_version, media = load_migrations(SQLITE)
        self.assertEqual((initial.version, initial.name), (1, "initial"))
        self.assertEqual((meetings.version, meetings.name), (2, "meetings"))
        self.assertEqual((token_version.version, token_version.name), (3, "token_version"))
        self.assertEqual((media.version, media.name), (4, "media"))
        self.assertEqual(created_tables(media), ["media", "media_grants"])
        script = "\n".join(initial.statements + meetings.statements + token_version.statements + media.statements)
        self.assertNotIn("$", script)
        self.assertIn("id INTEGER PRIMARY KEY AUTOINCREMENT", script)
        self.assertIn("username TEXT COLLATE NOCASE NOT NULL UNIQUE", script)
        self.assertIn("start_time REAL NOT NULL", script)
        self.assertEqual(
            created_tables(initial), ["users", "profiles", "contacts", "offline_messages", "files"]
        )
        self.assertEqual(
            created_tables(meetings),
            ["meetings", "participants", "meeting_messages", "refresh_tokens", "password_resets"],
        )


def created_tables(migration):
    return [s.split()[2] for s in migration.statements if s.startswith("CREATE TABLE")]


class MigrateTests(TestCase):
    def setUp(self):
        self.pool = connection_pool(":memory:", reactor)
        self.addCleanup(self.pool.close)

    async def tables(self):
        rows = await self.pool.runQuery("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        return [name for (name,) in rows if not name.startswith("sqlite_")]

    async def test_failed_migration_changes_nothing(self):
        known = load_migrations(SQLITE)
        following = len(known) + 1
        broken = Migration(following, "broken", ("CREATE TABLE good (x INTEGER)", "CREATE TABLE bad ("))
        await self.assertFailure(
            Deferred.fromCoroutine(migrate(self.pool, SQLITE, (*known, broken))), sqlite3.OperationalError
        )
        self.assertNotIn("good", await self.tables())
        self.assertEqual(
            await self.pool.runQuery("SELECT version FROM schema_version ORDER BY version"),
            [(migration.version,) for migration in known],
        )

        fixed = Migration(following, "fixed", ("CREATE TABLE good (x INTEGER)",))
        await migrate(self.pool, SQLITE, (*known, fixed))
        self.assertIn("good", await self.tables())
        self.assertEqual(
            await self.pool.runQuery("SELECT version, name FROM schema_version ORDER BY version"),
            [(1, "initial"), (2, "meetings"), (3, "token_version"), (4, "media"), (following, "fixed")],
        )
