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
    def test_initial_migration_for_sqlite(self):
        [initial] = load_migrations(SQLITE)
        self.assertEqual((initial.version, initial.name), (1, "initial"))
        script = "\n".join(initial.statements)
        self.assertNotIn("$", script)
        self.assertIn("id INTEGER PRIMARY KEY AUTOINCREMENT", script)
        self.assertIn("username TEXT COLLATE NOCASE NOT NULL UNIQUE", script)
        tables = [s.split()[2] for s in initial.statements if s.startswith("CREATE TABLE")]
        self.assertEqual(tables, ["users", "profiles", "contacts", "offline_messages", "files"])


class MigrateTests(TestCase):
    def setUp(self):
        self.pool = connection_pool(":memory:", reactor)
        self.addCleanup(self.pool.close)

    async def tables(self):
        rows = await self.pool.runQuery("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        return [name for (name,) in rows if not name.startswith("sqlite_")]

    async def test_failed_migration_changes_nothing(self):
        broken = Migration(2, "broken", ("CREATE TABLE good (x INTEGER)", "CREATE TABLE bad ("))
        migrations = (*load_migrations(SQLITE), broken)
        await self.assertFailure(
            Deferred.fromCoroutine(migrate(self.pool, SQLITE, migrations)), sqlite3.OperationalError
        )
        self.assertNotIn("good", await self.tables())
        self.assertEqual(await self.pool.runQuery("SELECT version FROM schema_version"), [(1,)])

        fixed = Migration(2, "fixed", ("CREATE TABLE good (x INTEGER)",))
        await migrate(self.pool, SQLITE, (*load_migrations(SQLITE), fixed))
        self.assertIn("good", await self.tables())
        self.assertEqual(
            await self.pool.runQuery("SELECT version, name FROM schema_version ORDER BY version"),
            [(1, "initial"), (2, "fixed")],
        )
