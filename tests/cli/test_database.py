"""``wecompany backup`` and ``wecompany migrate`` through the real entry point."""

from __future__ import annotations

import os
import sqlite3
import stat

from twisted.trial.unittest import TestCase

from tests.cli.harness import CommandTestMixin
from tests.e2e.client import connect
from wecompany.cli.database import known_version


class BackupTests(CommandTestMixin, TestCase):
    async def test_a_backup_while_the_daemon_runs_opens_and_holds_the_users(self) -> None:
        await self.add_user("alice", "--admin")
        daemon = await self.daemon()
        bobby = await connect(self, daemon.tcp_port, "bobby")
        await bobby.register("bobby")  # written by the daemon, maybe still in its WAL only
        destination = os.path.join(self.base, "backup.sqlite3")
        outcome = await self.ok("backup", destination)
        self.assertIn(f"to {destination} (2 users, schema version {known_version()})", outcome.out)
        self.assertIn("not in the backup: the files", outcome.out)
        self.assertEqual(stat.S_IMODE(os.stat(destination).st_mode), 0o600)
        copy = sqlite3.connect(destination)
        self.addCleanup(copy.close)
        self.assertEqual(copy.execute("PRAGMA integrity_check").fetchone(), ("ok",))
        self.assertEqual(copy.execute("SELECT username, role FROM users ORDER BY id").fetchall(),
                         [("alice", "admin"), ("bobby", "user")])
        # An existing file is kept unless --force.
        again = await self.cli("backup", destination)
        self.assertEqual(again.status, 1)
        self.assertIn("exists (--force replaces it)", again.err)
        await self.ok("backup", destination, "--force")

    async def test_no_database_yet(self) -> None:
        outcome = await self.cli("backup", os.path.join(self.base, "b.sqlite3"))
        self.assertEqual(outcome.status, 1)
        self.assertIn("there is no database at", outcome.err)
        self.assertFalse(os.path.exists(os.path.join(self.base, "b.sqlite3")))

    async def test_postgresql_without_pg_dump_says_so(self) -> None:
        outcome = await self.cli("--database", "postgresql://wc:secret@127.0.0.1:1/wc", "backup",
                                 os.path.join(self.base, "b.dump"), environ_path="/nonexistent")
        self.assertEqual(outcome.status, 1)
        self.assertIn("pg_dump is not installed", outcome.err)
        self.assertNotIn("secret", outcome.err)


class MigrateTests(CommandTestMixin, TestCase):
    async def test_migrate_a_fresh_database_then_again(self) -> None:
        outcome = await self.ok("migrate")
        self.assertIn("schema version before: none (no database yet)", outcome.out)
        self.assertIn(f"schema version after: {known_version()}", outcome.out)
        again = await self.ok("migrate")
        self.assertIn(f"schema version before: {known_version()} (this release: {known_version()})", again.out)

    async def test_an_older_schema_is_brought_up_to_date(self) -> None:
        from wecompany.store.dialect import SQLITE
        from wecompany.store.schema import load_migrations, migrate_now
        os.makedirs(self.data_dir, mode=0o700)
        connection = sqlite3.connect(os.path.join(self.data_dir, "wecompany.sqlite3"))
        connection.isolation_level = None
        migrate_now(connection, SQLITE, load_migrations(SQLITE)[:2])
        connection.close()
        outcome = await self.ok("migrate")
        self.assertIn("schema version before: 2", outcome.out)
        self.assertIn(f"schema version after: {known_version()}", outcome.out)


class PostgreSQLBackupTests(CommandTestMixin, TestCase):
    """``wecompany backup`` with ``--database postgresql://...``: pg_dump, restored with pg_restore."""

    async def test_a_dump_restores_into_an_empty_database(self) -> None:
        import shutil
        import subprocess

        from tests import pgtesting
        source = pgtesting.scratch_database(self)
        if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
            if os.environ.get("CI"):
                self.fail("pg_dump and pg_restore are needed (Debian: postgresql-client)")
            self.skipTest("pg_dump or pg_restore is not installed")
        await self.ok("--database", source, "user", "add", "alice", "--admin", "--password-stdin",
                      stdin="Xq7-Lumen-Otter\n")
        destination = os.path.join(self.base, "backup.dump")
        outcome = await self.ok("--database", source, "backup", destination)
        self.assertIn("not in the backup: the files", outcome.out)
        self.assertEqual(stat.S_IMODE(os.stat(destination).st_mode), 0o600)
        target = pgtesting.scratch_database(self)
        restored = subprocess.run(["pg_restore", "--no-owner", "--dbname", target, destination],
                                  capture_output=True, text=True, timeout=60)
        self.assertEqual(restored.returncode, 0, restored.stderr)
        copy = pgtesting.connect(self, target)
        self.assertEqual(copy.execute("SELECT username, role FROM users ORDER BY id").fetchall(),
                         [("alice", "admin")])
        listed = await self.ok("--database", target, "user", "list")
        self.assertIn("alice", listed.out)
