"""Tests for wecompany.config: defaults, sources and their precedence, validation, the secret file."""

from __future__ import annotations

import os
import re
import stat

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from wecompany.config import (
    MiB,
    Config,
    ConfigError,
    RedisAddress,
    S3Location,
    SharedDirectory,
    load_or_create_secret,
    split_endpoint,
)

EXAMPLE_CONF = FilePath(__file__).parent().sibling("etc").child("wecompany.conf.example")
SECRET = "0123456789abcdef0123456789abcdef-secret"


class ConfigFileMixin:
    """Writes a config file into the test's temporary directory."""

    def write_config(self, text: str) -> str:
        path = FilePath(self.mktemp())
        path.setContent(text.encode("utf-8"))
        return path.path


class DefaultsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = Config.from_sources({}, {}, None)
        self.assertEqual(config.port, "tcp:8888")
        self.assertEqual(config.http_port, "tcp:8000")
        self.assertEqual(config.data_dir, os.path.abspath("wecompany-data"))
        self.assertIsNone(config.database)
        self.assertIsNone(config.redis)
        self.assertEqual(config.max_frame, 1048576)
        self.assertIs(config.allow_anonymous, False)
        self.assertEqual(
            (config.login_timeout, config.idle_timeout, config.ring_timeout, config.max_call),
            (10, 90, 30, 3600),
        )
        self.assertIsNone(config.record_calls)
        self.assertIsNone(config.jwt_secret)
        self.assertEqual(config.token_ttl, 86400)
        self.assertEqual(config.heartbeat_interval, 30)

    def test_direct_construction_parses(self) -> None:
        """Config(...) applies the same parsing as from_sources."""
        config = Config(port="9000", max_frame="2M", allow_anonymous="yes")
        self.assertEqual((config.port, config.max_frame, config.allow_anonymous), ("tcp:9000", 2 * MiB, True))
        self.assertEqual(Config(), Config.from_sources({}, {}))

    def test_default_database_is_sqlite_in_data_dir(self) -> None:
        config = Config(data_dir="/srv/wc")
        self.assertEqual(config.database_kind, "sqlite")
        self.assertEqual(config.sqlite_path, "/srv/wc/wecompany.sqlite3")


class ValueTests(SynchronousTestCase):
    def test_bare_port_number(self) -> None:
        self.assertEqual(Config(port="8888", http_port=8001).port, "tcp:8888")
        self.assertEqual(Config(http_port=8001).http_port, "tcp:8001")

    def test_endpoint_strings_kept(self) -> None:
        for endpoint in ["tcp:9000:interface=127.0.0.1", "tcp6:9000", "unix:/tmp/wc.sock", "tcp:0"]:
            self.assertEqual(Config(port=endpoint).port, endpoint)

    def test_max_frame_units(self) -> None:
        for text, size in [("1024", 1024), ("512K", 512 * 1024), ("512kib", 512 * 1024),
                           ("4M", 4 * MiB), ("4 MiB", 4 * MiB), ("64MiB", 64 * MiB), (2048, 2048)]:
            self.assertEqual(Config(max_frame=text).max_frame, size, text)

    def test_booleans(self) -> None:
        for word in ["1", "true", "YES", "on", "True"]:
            self.assertIs(Config(allow_anonymous=word).allow_anonymous, True, word)
        for word in ["0", "false", "no", "OFF"]:
            self.assertIs(Config(allow_anonymous=word).allow_anonymous, False, word)

    def test_fractional_seconds(self) -> None:
        config = Config(login_timeout="0.5", idle_timeout="1.25", ring_timeout=2, max_call="1e3")
        self.assertEqual((config.login_timeout, config.idle_timeout, config.ring_timeout, config.max_call),
                         (0.5, 1.25, 2.0, 1000.0))

    def test_paths_made_absolute(self) -> None:
        config = Config(data_dir="data", record_calls="rec")
        self.assertEqual(config.data_dir, os.path.abspath("data"))
        self.assertEqual(config.record_calls, os.path.abspath("rec"))

    def test_sqlite_database(self) -> None:
        for given in ["sqlite:chat.sqlite3", "chat.sqlite3", "./chat.db", "chat.SQLITE"]:
            config = Config(database=given)
            self.assertEqual(config.database_kind, "sqlite")
            self.assertEqual(config.sqlite_path, os.path.abspath(given.removeprefix("sqlite:")), given)
            self.assertEqual(config.database, "sqlite:" + config.sqlite_path)

    def test_postgresql_database(self) -> None:
        url = "postgresql://wc:pw@db.example/wecompany"
        config = Config(database=url)
        self.assertEqual((config.database, config.database_kind, config.sqlite_path), (url, "postgresql", None))
        self.assertNotIn("pw", repr(config))

    def test_redis(self) -> None:
        cases = {
            "redis://cache.local:6380/2": RedisAddress("cache.local", 6380, 2),
            "redis://cache.local": RedisAddress("cache.local", 6379, 0),
            "tcp:127.0.0.1:6379": RedisAddress("127.0.0.1", 6379, 0),
            "redis://[::1]:7000/1": RedisAddress("::1", 7000, 1),
        }
        for text, address in cases.items():
            self.assertEqual(Config(redis=text).redis, address, text)
        self.assertEqual(str(Config(redis="redis://[::1]:7000/1").redis), "redis://[::1]:7000/1")

    def test_redis_password_hidden(self) -> None:
        config = Config(redis="redis://:hunter2@cache:6379/0")
        self.assertEqual(config.redis.password, "hunter2")
        self.assertNotIn("hunter2", repr(config))
        self.assertNotIn("hunter2", str(config.redis))

    def test_empty_optional_means_off(self) -> None:
        config = Config(redis="", database=" ", record_calls="", jwt_secret="")
        self.assertEqual((config.redis, config.database, config.record_calls, config.jwt_secret),
                         (None, None, None, None))

    def test_secret_not_in_repr(self) -> None:
        config = Config(jwt_secret=SECRET)
        self.assertEqual(config.jwt_secret, SECRET.encode("ascii"))
        self.assertNotIn(SECRET, repr(config))
        self.assertNotIn("jwt_secret", repr(config))


class ValidationTests(SynchronousTestCase):
    """Each bad value is a ConfigError naming the option and the value."""

    def assertRejected(self, option: str, value: object, *, shows_value: bool = True) -> ConfigError:
        with self.assertRaises(ConfigError) as caught:
            Config(**{option: value})
        message = str(caught.exception)
        self.assertIn(option.replace("_", "-"), message)
        if shows_value:
            self.assertIn(repr(value), message)
        return caught.exception

    def test_bad_endpoints(self) -> None:
        for option in ["port", "http_port"]:
            for value in ["tcpp:80", "tcp:abc", "tcp:99999", "70000", "", "ssl:8443:privateKey=missing.pem"]:
                self.assertRejected(option, value)

    def test_same_port_twice(self) -> None:
        error = self.assertRaises(ConfigError, Config, port="tcp:9000", http_port="9000")
        self.assertIn("http-port", str(error))

    def test_bad_sizes(self) -> None:
        for value in ["lots", "1G", "-5", "1.5M", "", "1023", "65M", 64 * MiB + 1, True]:
            self.assertRejected("max_frame", value)

    def test_bad_booleans(self) -> None:
        for value in ["maybe", "2", ""]:
            self.assertRejected("allow_anonymous", value)

    def test_bad_seconds(self) -> None:
        for option in ["login_timeout", "idle_timeout", "ring_timeout", "max_call", "token_ttl",
                       "heartbeat_interval"]:
            for value in ["0", "-1", "soon", "nan", "inf", True]:
                self.assertRejected(option, value)

    def test_bad_database(self) -> None:
        for value in ["mysql://x/y", "chat.txt", "sqlite:"]:
            self.assertRejected("database", value)

    def test_bad_redis(self) -> None:
        for value in ["localhost:6379", "redis://:6379", "redis://h:99999/0", "redis://h:x/0",
                      "redis://h:6379/db", "redis://h:0/0", "tcp:h:abc", "tcp:h", "tcp:h:0"]:
            self.assertRejected("redis", value)

    def test_short_secret_not_echoed(self) -> None:
        error = self.assertRejected("jwt_secret", "tooshort", shows_value=False)
        self.assertNotIn("tooshort", str(error))


class SourceTests(ConfigFileMixin, SynchronousTestCase):
    def test_config_file(self) -> None:
        path = self.write_config(
            "[wecompany]\n"
            "port = 7000\n"
            "http-port = tcp:7001\n"
            "max_frame = 2M\n"
            "allow-anonymous = on\n"
            "redis = redis://cache:6379/1\n"
            "jwt-secret = %(not interpolated)s-0123456789abcdef0123\n"
        )
        config = Config.from_sources({}, {}, path)
        self.assertEqual((config.port, config.http_port, config.max_frame, config.allow_anonymous),
                         ("tcp:7000", "tcp:7001", 2 * MiB, True))
        self.assertEqual(config.redis, RedisAddress("cache", 6379, 1))
        self.assertEqual(config.jwt_secret, b"%(not interpolated)s-0123456789abcdef0123")

    def test_config_file_from_environment(self) -> None:
        path = self.write_config("[wecompany]\nport = 7000\n")
        self.assertEqual(Config.from_sources({}, {"WECOMPANY_CONFIG": path}).port, "tcp:7000")

    def test_config_argument_beats_environment_config(self) -> None:
        chosen = self.write_config("[wecompany]\nport = 7000\n")
        other = self.write_config("[wecompany]\nport = 7100\n")
        config = Config.from_sources({}, {"WECOMPANY_CONFIG": other}, chosen)
        self.assertEqual(config.port, "tcp:7000")

    def test_environment(self) -> None:
        environ = {
            "WECOMPANY_PORT": "7000",
            "WECOMPANY_HTTP_PORT": "7001",
            "WECOMPANY_DATA_DIR": "/srv/wc",
            "WECOMPANY_MAX_FRAME": "64K",
            "WECOMPANY_ALLOW_ANONYMOUS": "yes",
            "WECOMPANY_RING_TIMEOUT": "12.5",
            "PATH": "/usr/bin",
        }
        config = Config.from_sources({}, environ)
        self.assertEqual(
            (config.port, config.http_port, config.data_dir, config.max_frame, config.allow_anonymous,
             config.ring_timeout),
            ("tcp:7000", "tcp:7001", "/srv/wc", 64 * 1024, True, 12.5),
        )

    def test_command_line_names(self) -> None:
        config = Config.from_sources({"http-port": "7001", "max_frame": "4K", "redis": None}, {})
        self.assertEqual((config.http_port, config.max_frame, config.redis), ("tcp:7001", 4096, None))

    def test_precedence(self) -> None:
        """Command line > environment > config file > default, option by option."""
        path = self.write_config(
            "[wecompany]\nport = 7000\nhttp_port = 7001\nmax_frame = 2K\nidle_timeout = 50\n"
        )
        environ = {"WECOMPANY_PORT": "7100", "WECOMPANY_HTTP_PORT": "7101", "WECOMPANY_ALLOW_ANONYMOUS": "1"}
        cli = {"port": "7200", "allow_anonymous": False, "ring_timeout": None}
        config = Config.from_sources(cli, environ, path)
        self.assertEqual(config.port, "tcp:7200")          # command line
        self.assertEqual(config.http_port, "tcp:7101")     # environment over file
        self.assertIs(config.allow_anonymous, False)       # command line over environment
        self.assertEqual(config.max_frame, 2048)           # file
        self.assertEqual(config.idle_timeout, 50)          # file
        self.assertEqual(config.ring_timeout, 30)          # default; None means "not given"

    def test_empty_environment_value_turns_file_setting_off(self) -> None:
        path = self.write_config("[wecompany]\nredis = redis://cache\n")
        self.assertIsNone(Config.from_sources({}, {"WECOMPANY_REDIS": ""}, path).redis)

    def test_error_names_source(self) -> None:
        path = self.write_config("[wecompany]\nmax-frame = huge\n")
        cases = [
            (({"max_frame": "huge"}, {}, None), "the command line"),
            (({}, {"WECOMPANY_MAX_FRAME": "huge"}, None), "environment variable WECOMPANY_MAX_FRAME"),
            (({}, {}, path), f"config file {path}"),
        ]
        for arguments, source in cases:
            error = self.assertRaises(ConfigError, Config.from_sources, *arguments)
            self.assertIn("max-frame: 'huge'", str(error))
            self.assertIn(source, str(error))


class SourceErrorTests(ConfigFileMixin, SynchronousTestCase):
    def assertSourceError(self, pattern: str, cli=None, environ=None, config_file=None) -> None:
        error = self.assertRaises(ConfigError, Config.from_sources, cli or {}, environ or {}, config_file)
        self.assertTrue(re.search(pattern, str(error)), f"{pattern!r} not in {str(error)!r}")

    def test_unknown_file_key(self) -> None:
        path = self.write_config("[wecompany]\nmax-frme = 4K\n")
        self.assertSourceError(r"unknown option .*'max-frme'.*did you mean 'max-frame'", config_file=path)

    def test_unknown_file_section(self) -> None:
        path = self.write_config("[wecompany]\nport = 1\n[wecompnay]\nport = 2\n")
        self.assertSourceError(r"unknown section \[wecompnay\]", config_file=path)

    def test_file_key_twice(self) -> None:
        path = self.write_config("[wecompany]\nhttp-port = 1\nhttp_port = 2\n")
        self.assertSourceError(r"http-port is set twice", config_file=path)

    def test_unreadable_file(self) -> None:
        self.assertSourceError(r"cannot read .*missing\.conf", config_file=os.path.abspath("missing.conf"))
        path = self.write_config("port = 1\n")
        self.assertSourceError(r"cannot read", config_file=path)

    def test_unknown_environment_variable(self) -> None:
        self.assertSourceError(r"WECOMPANY_IDLE_TIMOUT.*did you mean WECOMPANY_IDLE_TIMEOUT",
                               environ={"WECOMPANY_IDLE_TIMOUT": "5"})

    def test_unknown_command_line_key(self) -> None:
        self.assertSourceError(r"unknown command-line option 'prot'.*did you mean 'port'", cli={"prot": "1"})


class ExampleConfigTests(SynchronousTestCase):
    """etc/wecompany.conf.example documents every option with its real default."""

    def test_every_option_documented_with_default(self) -> None:
        text = EXAMPLE_CONF.getContent().decode("utf-8")
        settings = dict(re.findall(r"^#\s*([a-z][a-z-]*) =[ ]?(.*)$", text, re.MULTILINE))
        self.assertEqual(sorted(settings), sorted(name.replace("_", "-") for name in Config.option_names()))
        uncommented = "[wecompany]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items())
        path = FilePath(self.mktemp())
        path.setContent(uncommented.encode("utf-8"))
        self.assertEqual(Config.from_sources({}, {}, path.path), Config())

    def test_example_parses_as_is(self) -> None:
        self.assertEqual(Config.from_sources({}, {}, EXAMPLE_CONF.path), Config())


class SecretTests(SynchronousTestCase):
    def test_created_private_and_reused(self) -> None:
        data_dir = os.path.join(self.mktemp(), "data")
        secret = load_or_create_secret(data_dir)
        path = os.path.join(data_dir, "jwt.secret")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(data_dir).st_mode) & 0o077, 0)
        self.assertEqual(len(secret), 64)
        int(secret, 16)  # hex
        self.assertEqual(load_or_create_secret(data_dir), secret)
        self.assertEqual(os.listdir(data_dir), ["jwt.secret"])

    def test_fresh_directories_get_different_secrets(self) -> None:
        self.assertNotEqual(load_or_create_secret(self.mktemp()), load_or_create_secret(self.mktemp()))

    def test_existing_file_used(self) -> None:
        data_dir = FilePath(self.mktemp())
        data_dir.makedirs()
        data_dir.child("jwt.secret").setContent(SECRET.encode("ascii") + b"\n")
        self.assertEqual(load_or_create_secret(data_dir.path), SECRET.encode("ascii"))

    def test_short_file_rejected(self) -> None:
        data_dir = FilePath(self.mktemp())
        data_dir.makedirs()
        data_dir.child("jwt.secret").setContent(b"short\n")
        error = self.assertRaises(ConfigError, load_or_create_secret, data_dir.path)
        self.assertIn("jwt-secret", str(error))
        self.assertNotIn("short\n", str(error))


class EphemeralPortTests(SynchronousTestCase):
    def test_both_ports_zero_allowed(self):
        config = Config.from_sources({"port": "tcp:0", "http_port": "tcp:0:interface=127.0.0.1"}, {}, None)
        self.assertEqual(config.port, "tcp:0")
        config = Config.from_sources({"port": "tcp:0", "http_port": "tcp:0"}, {}, None)
        self.assertEqual(config.http_port, "tcp:0")
        both = "haproxy:tcp:0:interface=127.0.0.1"  # behind HAProxy (the PROXY protocol)
        self.assertEqual(Config.from_sources({"port": both, "http_port": both}, {}, None).port, both)
        self.assertRaises(ConfigError, Config.from_sources, {"port": "haproxy:tcp:80", "http_port": "haproxy:tcp:80"},
                          {}, None)


class SignalingOptionTests(SynchronousTestCase):
    def test_defaults(self):
        config = Config.from_sources({}, {}, None)
        self.assertEqual((config.allowed_origins, config.turn_servers, config.turn_secret, config.ws_rate),
                         (("*",), None, None, 50.0))
        self.assertTrue(config.stun_servers[0].startswith("stun:"))

    def test_lists_and_validation(self):
        config = Config.from_sources({"allowed_origins": "https://a.example.com, https://*.b.example.com",
                                      "turn_servers": "turn:t.example.com:3478,turns:t.example.com:5349",
                                      "turn_secret": "s" * 32}, {}, None)
        self.assertEqual(len(config.allowed_origins), 2)
        self.assertEqual(config.turn_servers[1], "turns:t.example.com:5349")
        self.assertNotIn("s" * 32, repr(config))
        for key, value in (("allowed_origins", "evil"), ("stun_servers", "turn:x"), ("turn_servers", "stun:x"),
                           ("ws_rate", "0"), ("ws_ping_timeout", "-1"), ("turn_secret", "short")):
            self.assertRaises(ConfigError, Config.from_sources, {key: value}, {}, None)


class SplitEndpointTests(SynchronousTestCase):
    """Twisted's endpoint syntax, as :func:`split_endpoint` reads it (no private endpoint attributes)."""

    def test_positional_and_keyword(self) -> None:
        self.assertEqual(split_endpoint("tcp:8888:interface=127.0.0.1"),
                         ("tcp", ["8888"], {"interface": "127.0.0.1"}))
        self.assertEqual(split_endpoint("tcp:port=80"), ("tcp", [], {"port": "80"}))
        self.assertEqual(split_endpoint("unix:/tmp/wc.sock"), ("unix", ["/tmp/wc.sock"], {}))

    def test_escapes(self) -> None:
        self.assertEqual(split_endpoint(r"ssl:8443:privateKey=C\:\\keys\\k.pem:extraCertChain=a\=b"),
                         ("ssl", ["8443"], {"privateKey": r"C:\keys\k.pem", "extraCertChain": "a=b"}))
        self.assertEqual(split_endpoint(r"tcp:host\=x:1"), ("tcp", ["host=x", "1"], {}))

    def test_keyword_port_checked(self) -> None:
        self.assertEqual(Config(port="tcp:port=9000").port, "tcp:port=9000")
        with self.assertRaises(ConfigError):
            Config(port="tcp:port=70000")

    def test_no_private_endpoint_attributes_or_testing_reactor(self) -> None:
        import inspect

        import wecompany.config
        source = inspect.getsource(wecompany.config)
        for forbidden in ("._port", "._host", "MemoryReactor", "twisted.internet.testing"):
            self.assertNotIn(forbidden, source)


class FileStorageOptionTests(SynchronousTestCase):
    """--file-storage: the data directory, a shared directory, or S3."""

    def test_default_is_the_data_directory(self) -> None:
        self.assertIsNone(Config().file_storage)
        self.assertIsNone(Config.from_sources({}, {"WECOMPANY_FILE_STORAGE": ""}).file_storage)

    def test_shared_directory(self) -> None:
        for text, path in (("file:/srv/shared", "/srv/shared"), ("file:///srv/shared/", "/srv/shared"),
                           ("file:files", os.path.abspath("files"))):
            self.assertEqual(Config(file_storage=text).file_storage, SharedDirectory(path), text)
        self.assertEqual(str(SharedDirectory("/srv/x")), "file:/srv/x")

    def test_s3(self) -> None:
        cases = {
            "s3://media": S3Location("media"),
            "s3://media/": S3Location("media"),
            "s3://media/wecompany/prod": S3Location("media", "wecompany/prod/"),
            "s3://my.bucket-1/p?endpoint=http://127.0.0.1:9000/&region=eu-west-1":
                S3Location("my.bucket-1", "p/", "http://127.0.0.1:9000", "eu-west-1"),
            "s3://media?region=us-east-1": S3Location("media", region="us-east-1"),
        }
        for text, location in cases.items():
            parsed = Config(file_storage=text).file_storage
            self.assertEqual(parsed, location, text)
            # What it prints reads back as the same place.
            self.assertEqual(Config(file_storage=str(parsed)).file_storage, parsed, text)

    def test_refused(self) -> None:
        for text in ("/srv/shared", "file:", "file://", "ftp://host/x", "s3://", "s3://UPPER", "s3://ab",
                     "s3://bucket/../x", "s3://bucket/.hidden", "s3://bucket/a b",
                     "s3://bucket?endpont=http://x", "s3://bucket?region=us-east-1&region=eu-west-1",
                     "s3://bucket?endpoint=ftp://x", "s3://bucket?endpoint=http://", "s3://bucket?region=Mars 1",
                     "s3://bucket#x"):
            with self.assertRaises(ConfigError, msg=text) as caught:
                Config.from_sources({"file_storage": text}, {})
            self.assertIn("file-storage", str(caught.exception), text)

    def test_credentials_never_part_of_it(self) -> None:
        for text in ("s3://AKIAEXAMPLE:hunter2@bucket/p", "s3://bucket/p?access_key=AKIAEXAMPLE",
                     "s3://bucket/p?secret_key=hunter2", "s3://bucket?endpoint=http://AKIAEXAMPLE:hunter2@minio:9000"):
            error = self.assertRaises(ConfigError, Config.from_sources, {"file_storage": text}, {})
            self.assertNotIn("hunter2", str(error), text)
            self.assertIn("credentials", str(error), text)


class OperationsOptionTests(SynchronousTestCase):
    def test_defaults(self):
        config = Config.from_sources({}, {}, None)
        self.assertEqual((config.registration, config.web_root, config.metrics_port, config.log_format,
                          config.log_level, config.trusted_proxies), ("open", None, None, "text", "info", None))

    def test_trusted_proxies_are_networks(self):
        import ipaddress
        config = Config.from_sources({"trusted_proxies": "10.0.0.0/8, 127.0.0.1,fd00::/8"}, {}, None)
        self.assertEqual(config.trusted_proxies, (ipaddress.ip_network("10.0.0.0/8"),
                                                  ipaddress.ip_network("127.0.0.1/32"),
                                                  ipaddress.ip_network("fd00::/8")))
        self.assertIn(ipaddress.ip_address("10.2.3.4"), config.trusted_proxies[0])

    def test_bad_values(self):
        for key, value in (("trusted_proxies", "10.0.0.0/33"), ("trusted_proxies", "proxy.example.com"),
                           ("registration", "invite"), ("log_format", "xml"), ("log_level", "loud"),
                           ("metrics_port", "tcp:8000"), ("metrics_port", "nine")):
            with self.subTest(key=key, value=value):
                self.assertRaises(ConfigError, Config.from_sources, {key: value}, {}, None)

    def test_metrics_port_apart_from_the_others(self):
        config = Config.from_sources({"metrics_port": "tcp:9100:interface=127.0.0.1"}, {}, None)
        self.assertEqual(config.metrics_port, "tcp:9100:interface=127.0.0.1")
        # Port 0 twice is two free ports, not a clash.
        Config.from_sources({"port": "tcp:0", "http_port": "tcp:0", "metrics_port": "tcp:0"}, {}, None)


class SfuOptionTests(SynchronousTestCase):
    def test_defaults(self):
        config = Config()
        self.assertEqual((config.sfu, config.sfu_workers, config.sfu_addresses, config.sfu_public_address,
                          config.sfu_udp_ports, config.sfu_require_token), (True, None, None, None, None, False))

    def test_values(self):
        config = Config(sfu="off", sfu_workers="3", sfu_addresses="127.0.0.1, ::1",
                        sfu_public_address="203.0.113.5", sfu_udp_ports="40000 - 40099")
        self.assertEqual((config.sfu, config.sfu_workers, config.sfu_addresses, config.sfu_public_address,
                          config.sfu_udp_ports), (False, 3, ("127.0.0.1", "::1"), "203.0.113.5", (40000, 40099)))

    def test_bad_values(self):
        for name, value, words in (("sfu_udp_ports", "40000", "port range"),
                                   ("sfu_udp_ports", "5000-4000", "LOW <= HIGH"),
                                   ("sfu_udp_ports", "80-90", "1024"),
                                   ("sfu_public_address", "example.com", "IP address"),
                                   ("sfu_public_address", "192.0.2.1,192.0.2.2", "one IP address"),
                                   ("sfu_addresses", "10.0.0.300", "IP address"),
                                   ("sfu_workers", "0", "positive")):
            with self.assertRaises(ConfigError) as caught:
                Config(**{name: value})
            self.assertIn(words, str(caught.exception))
            self.assertIn(name.replace("_", "-"), str(caught.exception))
