"""Tests for wecompany.tap.Options: parsing into a Config, and usage errors for bad values."""

from __future__ import annotations

import os
import subprocess
import sys

import attrs
from twisted.python import usage
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from wecompany.config import Config, RedisAddress
from wecompany.tap import Options

REPO_ROOT = FilePath(__file__).parent().parent()


def parse(argv: list[str], environ: dict[str, str] | None = None) -> Config:
    options = Options(environ=environ or {})
    options.parseOptions(argv)
    return options.config


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(parse([]), Config())

    def test_every_config_field_is_an_option(self) -> None:
        text = str(Options(environ={}))
        for field in attrs.fields(Config):
            self.assertIn("--" + field.name.replace("_", "-"), text)

    def test_happy_path(self) -> None:
        config = parse([
            "--port", "9000", "--http-port", "tcp:9001:interface=127.0.0.1",
            "--data-dir", "/srv/wc", "--database", "chat.db", "--redis", "redis://cache:6380/1",
            "--max-frame", "256K", "--allow-anonymous", "--login-timeout", "2.5", "--idle-timeout", "60",
            "--ring-timeout", "20", "--max-call", "600", "--record-calls", "/srv/rec", "--token-ttl", "3600",
        ])
        self.assertEqual(
            (config.port, config.http_port, config.data_dir, config.sqlite_path, config.redis),
            ("tcp:9000", "tcp:9001:interface=127.0.0.1", "/srv/wc", os.path.abspath("chat.db"),
             RedisAddress("cache", 6380, 1)),
        )
        self.assertEqual(
            (config.max_frame, config.allow_anonymous, config.login_timeout, config.idle_timeout,
             config.ring_timeout, config.max_call, config.record_calls, config.token_ttl),
            (256 * 1024, True, 2.5, 60, 20, 600, "/srv/rec", 3600),
        )

    def test_environment_injected(self) -> None:
        config = parse(["--port", "9000"], {"WECOMPANY_PORT": "7000", "WECOMPANY_HTTP_PORT": "7001"})
        self.assertEqual((config.port, config.http_port), ("tcp:9000", "tcp:7001"))

    def test_config_file(self) -> None:
        path = FilePath(self.mktemp())
        path.setContent(b"[wecompany]\nport = 7000\nidle-timeout = 45\n")
        config = parse(["--config", path.path, "--idle-timeout", "50"])
        self.assertEqual((config.port, config.idle_timeout), ("tcp:7000", 50))

    def test_flag_absent_leaves_environment(self) -> None:
        self.assertIs(parse([], {"WECOMPANY_ALLOW_ANONYMOUS": "on"}).allow_anonymous, True)

    def test_no_flag_beats_environment(self) -> None:
        self.assertIs(parse(["--no-allow-anonymous"], {"WECOMPANY_ALLOW_ANONYMOUS": "on"}).allow_anonymous, False)

    def test_contradicting_flags(self) -> None:
        self.assertRaises(usage.UsageError, parse, ["--allow-anonymous", "--no-allow-anonymous"])


class UsageErrorTests(SynchronousTestCase):
    """A bad value from any source is a UsageError that names the option."""

    def assertUsageError(self, argv: list[str], option: str, environ: dict[str, str] | None = None) -> None:
        error = self.assertRaises(usage.UsageError, parse, argv, environ)
        self.assertIn(option, str(error))

    def test_bad_command_line_values(self) -> None:
        cases = [
            (["--port", "tcpp:80"], "port"),
            (["--http-port", "tcp:port=abc"], "http-port"),
            (["--max-frame", "128M"], "max-frame"),
            (["--login-timeout", "-1"], "login-timeout"),
            (["--idle-timeout", "0"], "idle-timeout"),
            (["--ring-timeout", "later"], "ring-timeout"),
            (["--max-call", "nan"], "max-call"),
            (["--redis", "cache:6379"], "redis"),
            (["--database", "mysql://db/wc"], "database"),
            (["--jwt-secret", "short"], "jwt-secret"),
        ]
        for argv, option in cases:
            self.assertUsageError(argv, option)

    def test_bad_environment_value(self) -> None:
        self.assertUsageError([], "WECOMPANY_MAX_FRAME", {"WECOMPANY_MAX_FRAME": "huge"})

    def test_unknown_environment_variable(self) -> None:
        self.assertUsageError([], "WECOMPANY_PROT", {"WECOMPANY_PROT": "1"})

    def test_missing_config_file(self) -> None:
        self.assertUsageError(["--config", os.path.abspath("nowhere.conf")], "nowhere.conf")

    def test_unknown_option(self) -> None:
        self.assertRaises(usage.UsageError, parse, ["--prot", "80"])


class TwistdCommandLineTests(SynchronousTestCase):
    """The real twistd command stops with a usage error before it listens."""

    def test_bad_port_is_usage_error(self) -> None:
        workdir = FilePath(self.mktemp())
        workdir.makedirs()
        environ = {key: value for key, value in os.environ.items() if not key.startswith("WECOMPANY_")}
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT.path, environ.get("PYTHONPATH")]))
        result = subprocess.run(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "--nodaemon", "wecompany", "--port", "tcpp:80"],
            cwd=workdir.path, env=environ, capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        # The error first, then only a hint (twistd itself would print its whole --help above it).
        lines = result.stderr.splitlines()
        self.assertTrue(lines[0].startswith("wecompany: port: 'tcpp:80' is not a valid endpoint"), result.stderr)
        self.assertEqual(lines[1:], ["Run 'twistd wecompany --help' for the options."])
        self.assertNotIn("Usage:", result.stdout + result.stderr)
        self.assertEqual(workdir.listdir(), [], "nothing (pid file, log, data dir) may be created")

    def twistd(self, *argv: str, cwd: str) -> subprocess.CompletedProcess:
        environ = {key: value for key, value in os.environ.items() if not key.startswith("WECOMPANY_")}
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT.path, environ.get("PYTHONPATH")]))
        return subprocess.run([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *argv],
                              cwd=cwd, env=environ, capture_output=True, text=True, timeout=60)

    def test_version(self) -> None:
        from importlib.metadata import version
        workdir = FilePath(self.mktemp())
        workdir.makedirs()
        result = self.twistd("wecompany", "--version", cwd=workdir.path)
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (0, f"WeCompany {version('wecompany')}\n", ""))
        self.assertEqual(workdir.listdir(), [])

    def test_usage_error_from_building_the_service_is_one_line_too(self) -> None:
        workdir = FilePath(self.mktemp())
        workdir.makedirs()
        result = self.twistd("--nodaemon", "wecompany", "--data-dir", workdir.child("data").path,
                             "--redis", "redis://127.0.0.1:1/0", cwd=workdir.path)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertTrue(result.stderr.startswith("wecompany: --redis: the nodes of a cluster must sign tokens"),
                        result.stderr)
        self.assertNotIn("Traceback", result.stdout + result.stderr)


class PidFileTests(SynchronousTestCase):
    """Where twistd's pid file goes: nowhere under --nodaemon, the data directory for a daemon."""

    def parse_as_twistd(self, argv: list[str]):
        from twisted.scripts.twistd import ServerOptions
        options = ServerOptions()
        options.parseOptions(argv)
        return options

    def test_none_under_nodaemon(self) -> None:
        data = os.path.abspath(self.mktemp())
        self.assertEqual(self.parse_as_twistd(["-n", "wecompany", "--data-dir", data])["pidfile"], "")

    def test_in_the_data_directory_for_a_daemon(self) -> None:
        data = os.path.abspath(self.mktemp())
        options = self.parse_as_twistd(["wecompany", "--data-dir", data])
        self.assertEqual(options["pidfile"], os.path.join(data, "twistd.pid"))

    def test_an_explicit_one_is_kept(self) -> None:
        data = os.path.abspath(self.mktemp())
        for argv, expected in ((["--pidfile", "/run/wecompany/wecompany.pid"], "/run/wecompany/wecompany.pid"),
                               (["-n", "--pidfile", "/run/wecompany/wecompany.pid"], "/run/wecompany/wecompany.pid"),
                               (["--pidfile="], "")):
            options = self.parse_as_twistd([*argv, "wecompany", "--data-dir", data])
            self.assertEqual(options["pidfile"], expected, argv)


class LoggerTests(SynchronousTestCase):
    """--log-format and --log-level become twistd's --logger, writing where twistd would."""

    parse_as_twistd = PidFileTests.parse_as_twistd

    def setUp(self) -> None:
        from wecompany import logs
        self.addCleanup(setattr, logs, "_chosen", logs.chosen_factory())

    def test_the_plugin_installs_its_observer_factory(self) -> None:
        from wecompany.logs import ObserverFactory, chosen_factory, twistd_observer
        data = os.path.abspath(self.mktemp())
        options = self.parse_as_twistd(["-n", "--logfile", "/var/log/wc.log", "wecompany", "--data-dir", data,
                                        "--log-format", "json", "--log-level", "warn"])
        self.assertIs(options["logger"], twistd_observer)  # twistd imported the name
        self.assertEqual(chosen_factory(), ObserverFactory("json", "warn", logfile="/var/log/wc.log",
                                                           nodaemon=True))
        self.parse_as_twistd(["wecompany", "--data-dir", data])
        self.assertEqual(chosen_factory(), ObserverFactory("text", "info"))

    def test_an_explicit_logger_is_kept(self) -> None:
        data = os.path.abspath(self.mktemp())
        options = self.parse_as_twistd(["--logger", "twisted.logger.textFileLogObserver", "wecompany",
                                        "--data-dir", data, "--log-format", "json"])
        from twisted.logger import textFileLogObserver
        self.assertIs(options["logger"], textFileLogObserver)


class FileStorageStartupTests(SynchronousTestCase):
    """What --file-storage needs is checked when the options are, before anything listens."""

    def test_a_shared_directory_must_be_there(self) -> None:
        missing = os.path.abspath(self.mktemp())
        error = self.assertRaises(usage.UsageError, parse, ["--file-storage", f"file:{missing}"])
        self.assertIn("file-storage", str(error))
        self.assertIn("mount", str(error))
        self.assertFalse(os.path.exists(missing))  # never made here: it would hide an unmounted share
        os.makedirs(missing)
        self.assertEqual(str(parse(["--file-storage", f"file:{missing}"]).file_storage), f"file:{missing}")

    def test_s3_with_boto3(self) -> None:
        try:
            import boto3  # noqa: F401
        except ImportError:
            self.assertRaises(usage.UsageError, parse, ["--file-storage", "s3://media"])
        else:
            self.assertEqual(str(parse(["--file-storage", "s3://media/wc?region=eu-west-1"]).file_storage),
                             "s3://media/wc/?region=eu-west-1")

    def test_s3_without_boto3_stops_twistd_saying_what_to_install(self) -> None:
        workdir = FilePath(self.mktemp())
        workdir.makedirs()
        environ = {key: value for key, value in os.environ.items() if not key.startswith("WECOMPANY_")}
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT.path, environ.get("PYTHONPATH")]))
        # None in sys.modules makes "import boto3" fail, as it does where boto3 is not installed.
        result = subprocess.run(
            [sys.executable, "-c", "import sys; sys.modules['boto3'] = None; "
                                   "from twisted.scripts.twistd import run; run()",
             "--nodaemon", "wecompany", "--file-storage", "s3://media/wc"],
            cwd=workdir.path, env=environ, capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("s3:// needs boto3, which is not installed; install it with: pip install 'wecompany[s3]'",
                      result.stderr.splitlines()[0])
        self.assertEqual(workdir.listdir(), [], "nothing (pid file, log, data dir) may be created")


class StoreSelectionTests(SynchronousTestCase):
    """``--database`` picks the store the daemon is built with."""

    def test_sqlite_by_default(self) -> None:
        from wecompany.store.sqlite import SQLiteStore
        from wecompany.tap import build_store
        config = parse(["--data-dir", "/srv/wc"])
        self.assertIsInstance(build_store(config, reactor=None), SQLiteStore)

    def test_postgresql_url(self) -> None:
        from wecompany.store.postgres import PostgreSQLStore
        from wecompany.tap import build_store
        config = parse(["--database", "postgresql://wc:s3cret-pw@127.0.0.1:5432/wecompany"])
        store = build_store(config, reactor=None)
        self.assertIsInstance(store, PostgreSQLStore)
        self.assertEqual(store.address, "postgresql://wc@127.0.0.1:5432/wecompany")
        self.assertNotIn("s3cret-pw", repr(store) + repr(config))

    def test_malformed_postgresql_url_is_a_usage_error_without_its_password(self) -> None:
        from wecompany.tap import build_store
        config = parse(["--database", "postgresql://wc:s3cret-pw@db/wecompany?nonsense=yes"])
        error = self.assertRaises(usage.UsageError, build_store, config, None)
        self.assertIn("--database: postgresql://wc:***@db/wecompany?nonsense=yes is not a usable PostgreSQL URL",
                      str(error))
        self.assertNotIn("s3cret-pw", str(error))


class WebRootTests(SynchronousTestCase):
    def test_a_web_root_without_an_index_is_a_usage_error(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from wecompany.tap import build_service
        empty = self.mktemp()
        os.makedirs(empty)
        config = Config(data_dir=self.mktemp(), web_root=os.path.abspath(empty))
        error = self.assertRaises(usage.UsageError, build_service, config, MemoryReactorClock())
        self.assertIn("--web-root", str(error))
        self.assertIn("has no index.html", str(error))
