"""
The daemon's configuration: one frozen, validated :class:`Config`.

Every option can come from four places; the first that sets it wins:

1. the command line (``--max-frame 4M``),
2. the environment (``WECOMPANY_MAX_FRAME=4M``),
3. the ``[wecompany]`` section of an INI file (``--config FILE`` or
   ``WECOMPANY_CONFIG``), keys spelled with dashes or underscores,
4. the defaults below.

Values are parsed and checked once, here, so a typo is a
:class:`ConfigError` naming the option before anything listens. Nothing in
this module touches the network or the global reactor: endpoint strings are
checked by building (not listening on) an endpoint, with a stand-in for the
reactor that building never uses, and their port numbers are read with
:func:`split_endpoint`, which follows Twisted's documented endpoint syntax.
"""

from __future__ import annotations

import configparser
import difflib
import math
import os
import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
from twisted.internet.endpoints import clientFromString, serverFromString

from wecompany.privatefs import make_private_dir

ENV_PREFIX = "WECOMPANY_"
CONFIG_ENV = "WECOMPANY_CONFIG"
FILE_SECTION = "wecompany"
SECRET_FILE_NAME = "jwt.secret"
SQLITE_FILE_NAME = "wecompany.sqlite3"

KiB = 1024
MiB = 1024 * KiB
MIN_FRAME = KiB
MAX_FRAME = 64 * MiB
# RFC 7518 section 3.2: an HS256 key must be at least as long as the hash.
MIN_SECRET_BYTES = 32
DEFAULT_REDIS_PORT = 6379

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_SIZE = re.compile(r"(\d+)\s*(k|kib|m|mib)?", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "k": KiB, "kib": KiB, "m": MiB, "mib": MiB}
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


class ConfigError(ValueError):
    """A configuration value is malformed or out of range; the message names the option."""


def option_label(name: str) -> str:
    """The command-line spelling of an option name: ``max_frame`` -> ``max-frame``."""
    return name.replace("_", "-")


def _fail(name: str, value: object, expected: str) -> ConfigError:
    return ConfigError(f"{option_label(name)}: {value!r} is not {expected}")


def _text(name: str, value: object, expected: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(name, value, expected)
    return value.strip()


_PORT_KINDS = ("tcp", "tcp6", "ssl")


class _NoReactor:
    """
    What endpoint parsing is given as its reactor: building an endpoint only
    stores it (listening would use it), so a string is checked without
    importing, or starting, any reactor.
    """


def split_endpoint(text: str) -> tuple[str, list[str], dict[str, str]]:
    """
    ``"tcp:8888:interface=127.0.0.1"`` -> ``("tcp", ["8888"], {"interface": "127.0.0.1"})``.

    Twisted's endpoint syntax: arguments are separated by colons, ``name=value``
    ones are keyword arguments, and a backslash makes the next character
    (a colon, an equals sign, a backslash) literal.
    """
    pieces: list[tuple[str, int]] = []  # (text, position of its first unescaped "=" or -1)
    current: list[str] = []
    equals = -1
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            pieces.append(("".join(current), equals))
            current, equals = [], -1
        else:
            if char == "=" and equals < 0:
                equals = len(current)
            current.append(char)
    pieces.append(("".join(current), equals))
    kind = pieces[0][0]
    args, kwargs = [], {}
    for piece, equals in pieces[1:]:
        if equals >= 0:
            kwargs[piece[:equals]] = piece[equals + 1:]
        else:
            args.append(piece)
    return kind, args, kwargs


def _port_number(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None
    return int(text)


# -- parsers: (option name, raw value) -> checked value -------------------------
# Each accepts its own output unchanged, so a value can be parsed twice
# (once with its source named in errors, once by the Config converter).


def parse_endpoint(name: str, value: object) -> str:
    """A server endpoint string; a bare port number ``N`` means ``tcp:N``."""
    expected = "an endpoint such as tcp:8888, tcp:8888:interface=127.0.0.1 or ssl:8443:privateKey=key.pem"
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = _text(name, value, expected)
    if text.isdigit():
        text = f"tcp:{text}"
    try:
        # Building an endpoint parses the description (and loads TLS keys)
        # but does not listen.
        serverFromString(_NoReactor(), text)
    except Exception as error:
        raise ConfigError(f"{option_label(name)}: {value!r} is not a valid endpoint ({error})") from None
    kind, args, kwargs = split_endpoint(text)
    if kind in _PORT_KINDS:
        port = _port_number(kwargs.get("port", args[0] if args else None))
        if port is None or not 0 <= port <= 65535:
            raise _fail(name, value, "an endpoint with a port between 0 and 65535")
    return text


def parse_client_endpoint(name: str, value: object) -> str:
    """A client endpoint string such as ``tcp:host=10.0.0.5:port=7100``."""
    text = _text(name, value, "a client endpoint such as tcp:host=10.0.0.5:port=7100")
    try:
        clientFromString(_NoReactor(), text)
    except Exception as error:
        raise ConfigError(f"{option_label(name)}: {value!r} is not a valid client endpoint ({error})") from None
    return text


def parse_path(name: str, value: object) -> str:
    """A filesystem path, made absolute against the working directory."""
    return os.path.abspath(os.path.expanduser(_text(name, value, "a path")))


def parse_size(name: str, value: object) -> int:
    """A byte count: ``1048576``, ``512K``, ``512KiB``, ``4M``, ``4MiB`` (binary units)."""
    expected = f"a size between {MIN_FRAME} and {MAX_FRAME} bytes (e.g. 1048576, 512K, 4MiB)"
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.fullmatch(_text(name, value, expected))
        if match is None:
            raise _fail(name, value, expected)
        unit = match.group(2).lower() if match.group(2) else None
        size = int(match.group(1)) * _SIZE_UNITS[unit]
    if not MIN_FRAME <= size <= MAX_FRAME:
        raise _fail(name, value, expected)
    return size


_BYTES = re.compile(r"(\d+)\s*(k|kib|m|mib|g|gib|t|tib)?", re.IGNORECASE)
_BYTE_UNITS = {None: 1, "k": KiB, "kib": KiB, "m": MiB, "mib": MiB, "g": 1024 * MiB, "gib": 1024 * MiB,
               "t": MiB * MiB, "tib": MiB * MiB}


def parse_bytes(minimum: int, maximum: int) -> Callable[[str, object], int]:
    """A byte count between ``minimum`` and ``maximum``: ``1048576``, ``512K``, ``4MiB``, ``5G``, ``1TiB``."""

    def parse(name: str, value: object) -> int:
        expected = f"a size between {minimum} and {maximum} bytes (e.g. 536870912, 512M, 5GiB)"
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        else:
            match = _BYTES.fullmatch(_text(name, value, expected))
            if match is None:
                raise _fail(name, value, expected)
            unit = match.group(2).lower() if match.group(2) else None
            size = int(match.group(1)) * _BYTE_UNITS[unit]
        if not minimum <= size <= maximum:
            raise _fail(name, value, expected)
        return size

    parse.__doc__ = parse_bytes.__doc__
    return parse


def parse_bool(name: str, value: object) -> bool:
    """1/0, true/false, yes/no, on/off (any case)."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise _fail(name, value, "a boolean (1/0, true/false, yes/no, on/off)")


def _positive(name: str, value: object, expected: str) -> float:
    if isinstance(value, bool):
        raise _fail(name, value, expected)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _fail(name, value, expected) from None
    if not (math.isfinite(number) and number > 0):
        raise _fail(name, value, expected)
    return number


def parse_seconds(name: str, value: object) -> float:
    """A positive, finite number of seconds; fractions allowed."""
    return _positive(name, value, "a positive number of seconds")


def parse_rate(name: str, value: object) -> float:
    """A positive, finite number (a rate or a count); fractions allowed."""
    return _positive(name, value, "a positive number")


def parse_count(name: str, value: object) -> int:
    """A positive whole number."""
    if isinstance(value, bool):
        raise _fail(name, value, "a positive whole number")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if not text.isdigit():
            raise _fail(name, value, "a positive whole number")
        number = int(text)
    if number < 1:
        raise _fail(name, value, "a positive whole number")
    return number


def parse_prefix(name: str, value: object) -> str:
    """Printable text without spaces (a Redis key prefix)."""
    text = _text(name, value, "a key prefix such as wecompany:")
    if not re.fullmatch(r"[!-~]{1,64}", text):
        raise _fail(name, value, "1-64 printable characters without spaces")
    return text


def parse_node_id(name: str, value: object) -> str:
    """Letters, digits, dots, dashes and underscores."""
    text = _text(name, value, "a node id such as node-1")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", text):
        raise _fail(name, value, "1-64 letters, digits, dots, dashes or underscores")
    return text


def parse_database(name: str, value: object) -> str:
    """``sqlite:PATH``, a path ending in .db/.sqlite/.sqlite3, or a ``postgresql://`` URL."""
    expected = "sqlite:PATH, a path ending in .db, .sqlite or .sqlite3, or a postgresql:// URL"
    text = _text(name, value, expected)
    if text.startswith(("postgresql://", "postgres://")):
        return text
    if text.startswith("sqlite:"):
        path = text[len("sqlite:"):]
    elif text.lower().endswith(_SQLITE_SUFFIXES) and "://" not in text:
        path = text
    else:
        path = ""
    if not path.strip():
        raise _fail(name, value, expected)
    return "sqlite:" + parse_path(name, path)


@attrs.frozen
class RedisAddress:
    """Where the Redis mirror connects; ``str()`` is a URL without the password."""

    host: str
    port: int = DEFAULT_REDIS_PORT
    db: int = 0
    password: str | None = attrs.field(default=None, repr=False)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"


def parse_redis(name: str, value: object) -> RedisAddress:
    """``redis://[:password@]host[:port][/db]`` or ``tcp:host:port``."""
    if isinstance(value, RedisAddress):
        return value
    expected = "redis://host:port/db or tcp:host:port"
    text = _text(name, value, expected)
    try:
        if text.startswith("redis://"):
            parts = urlsplit(text)
            db_text = parts.path.strip("/") or "0"
            address = RedisAddress(
                host=parts.hostname or "",
                port=DEFAULT_REDIS_PORT if parts.port is None else parts.port,
                db=int(db_text) if db_text.isdigit() else -1,
                password=parts.password,
            )
        elif text.startswith("tcp:"):
            _, args, kwargs = split_endpoint(text)
            host = kwargs.get("host", args[0] if args else "")
            port = _port_number(kwargs.get("port", args[1] if len(args) > 1 else None))
            if port is None:
                raise ValueError("no port")
            address = RedisAddress(host=host, port=port)
        else:
            raise ValueError("unknown scheme")
    except (TypeError, ValueError, AttributeError):
        raise _fail(name, value, expected) from None
    if not address.host or not 0 < address.port <= 65535 or address.db < 0:
        raise _fail(name, value, f"{expected} with a host, a port from 1 to 65535 and a db number")
    return address


@attrs.frozen
class SharedDirectory:
    """``--file-storage file:/path``: files in a directory every node mounts."""

    path: str

    def __str__(self) -> str:
        return f"file:{self.path}"


@attrs.frozen
class S3Location:
    """
    ``--file-storage s3://bucket/prefix?endpoint=...&region=...``: files in an
    S3-compatible object store. It names no credentials: those come from the
    standard boto chain (environment, config files, instance role).
    """

    bucket: str
    #: What every key starts with: empty, or ending in ``/``.
    prefix: str = ""
    #: The store's URL (MinIO, Ceph ...); None for AWS itself.
    endpoint: str | None = None
    region: str | None = None

    def __str__(self) -> str:
        query = "&".join(f"{key}={value}" for key, value in (("endpoint", self.endpoint), ("region", self.region))
                         if value is not None)
        return f"s3://{self.bucket}/{self.prefix}" + (f"?{query}" if query else "")


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_REGION = re.compile(r"[a-z0-9-]{1,32}")
_S3_PARAMETERS = ("endpoint", "region")


def parse_file_storage(name: str, value: object) -> SharedDirectory | S3Location:
    """``file:/path`` (a shared directory) or ``s3://bucket/prefix?endpoint=URL&region=NAME``."""
    if isinstance(value, (SharedDirectory, S3Location)):
        return value
    expected = "file:/path or s3://bucket/prefix?endpoint=http://host:port&region=name"
    text = _text(name, value, expected)
    if text.startswith("file:"):
        path = text[len("file:"):]
        if path.startswith("//"):
            path = path[2:]  # file:///srv/x -> /srv/x
        if not path.strip():
            raise _fail(name, value, expected)
        return SharedDirectory(parse_path(name, path))
    if not text.startswith("s3://"):
        raise _fail(name, value, expected)
    no_credentials = (f"{option_label(name)}: credentials do not belong in s3:// (the value is not shown); "
                      f"boto finds them in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or the "
                      f"AWS config files")
    parts = urlsplit(text)
    if "@" in parts.netloc:
        raise ConfigError(no_credentials)
    if parts.fragment or not _BUCKET.fullmatch(parts.netloc):
        raise _fail(name, value, "s3://bucket/... with a bucket name of 3-63 lower-case letters, digits, dots "
                                 "and dashes")
    segments = [segment for segment in parts.path.split("/") if segment]
    if not all(_PREFIX_SEGMENT.fullmatch(segment) for segment in segments):
        raise _fail(name, value, "s3://bucket/prefix with a prefix of letters, digits, dots, dashes and "
                                 "underscores, separated by /")
    found: dict[str, str] = {}
    for pair in filter(None, parts.query.split("&")):
        key, equals, item = pair.partition("=")
        if key not in _S3_PARAMETERS or not equals or key in found:
            raise ConfigError(f"{option_label(name)}: {key[:32]!r} is not a parameter of s3:// (each may be "
                              f"given once: {', '.join(_S3_PARAMETERS)}; credentials come from the environment "
                              f"or the AWS config files, never from here)")
        found[key] = unquote(item)
    endpoint = found.get("endpoint")
    if endpoint is not None:
        address = urlsplit(endpoint)
        if "@" in address.netloc:
            raise ConfigError(no_credentials)
        if address.scheme not in ("http", "https") or not address.hostname or address.query or address.fragment:
            raise ConfigError(f"{option_label(name)}: endpoint {endpoint!r} is not an http:// or https:// URL")
        endpoint = endpoint.rstrip("/")
    region = found.get("region")
    if region is not None and not _REGION.fullmatch(region):
        raise ConfigError(f"{option_label(name)}: region {region!r} is not a region name such as us-east-1")
    return S3Location(bucket=parts.netloc, prefix="".join(f"{segment}/" for segment in segments),
                      endpoint=endpoint, region=region)


def parse_secret(name: str, value: object) -> bytes:
    """A signing secret of at least :data:`MIN_SECRET_BYTES` bytes; never echoed in errors."""
    secret = value.encode("utf-8") if isinstance(value, str) else value
    if not isinstance(secret, bytes) or len(secret.strip()) < MIN_SECRET_BYTES:
        raise ConfigError(f"{option_label(name)}: must be at least {MIN_SECRET_BYTES} bytes long")
    return secret.strip()


def parse_list(name: str, value: object) -> tuple[str, ...]:
    """A comma-separated list (or a list/tuple): ``a, b`` -> ``("a", "b")``; empty items dropped."""
    if isinstance(value, (list, tuple)):
        items = [str(item).strip() for item in value]
    else:
        items = [item.strip() for item in _text(name, value, "a comma-separated list").split(",")]
    items = [item for item in items if item]
    if not items:
        raise _fail(name, value, "a comma-separated list with at least one item")
    return tuple(items)


def parse_origins(name: str, value: object) -> tuple[str, ...]:
    """Origins allowed to open WebSocket connections: ``*``, or URLs (``*`` wildcards allowed)."""
    origins = parse_list(name, value)
    for origin in origins:
        if origin != "*" and not re.match(r"^https?://[A-Za-z0-9*.\-]+(:\d+)?$", origin):
            raise _fail(name, value, "* or origins such as https://meet.example.com or https://*.example.com")
    return origins


def parse_ice_urls(scheme: str) -> Callable[[str, object], tuple[str, ...]]:
    """ICE server URLs of one kind: ``stun:host:port`` or ``turn:``/``turns:host:port?transport=...``."""
    schemes = ("stun:", "stuns:") if scheme == "stun" else ("turn:", "turns:")

    def parse(name: str, value: object) -> tuple[str, ...]:
        urls = parse_list(name, value)
        for url in urls:
            if not url.startswith(schemes) or len(url) <= len(url.split(":", 1)[0]) + 1:
                raise _fail(name, value, f"comma-separated {' or '.join(schemes)} URLs")
        return urls

    parse.__doc__ = f"{scheme.upper()} server URLs, comma-separated."
    return parse


def parse_inference_url(name: str, value: object) -> str:
    """An ``http://`` or ``https://`` base URL of a KServe v2 inference server, without credentials."""
    expected = "an http:// or https:// URL such as http://127.0.0.1:8000"
    text = _text(name, value, expected).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise _fail(name, value, expected)
    if "@" in parts.netloc:
        raise ConfigError(f"{option_label(name)}: credentials do not belong in the URL (the value is not shown)")
    return text


def parse_model_name(name: str, value: object) -> str:
    """A model name on the inference server: letters, digits, dots, dashes and underscores."""
    text = _text(name, value, "a model name such as emotion_wav2vec")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", text):
        raise _fail(name, value, "1-128 letters, digits, dots, dashes or underscores")
    return text


def parse_choice(*choices: str) -> Callable[[str, object], str]:
    """One of ``choices``."""

    def parse(name: str, value: object) -> str:
        text = _text(name, value, "one of " + ", ".join(choices)).lower()
        if text not in choices:
            raise _fail(name, value, "one of " + ", ".join(choices))
        return text

    parse.__doc__ = "One of: " + ", ".join(choices) + "."
    return parse


def parse_networks(name: str, value: object) -> tuple:
    """
    Comma-separated addresses or CIDR blocks (``10.0.0.0/8, ::1``) as
    :mod:`ipaddress` networks; a bare address is a network of one.
    """
    import ipaddress

    networks = []
    for item in parse_list(name, value):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise _fail(name, item, "an address or CIDR block such as 10.0.0.0/8, 127.0.0.1 or fd00::/8") from None
    return tuple(networks)


def parse_addresses(name: str, value: object) -> tuple[str, ...]:
    """Comma-separated IP addresses (``192.0.2.10, 2001:db8::1``), without ports."""
    import ipaddress

    addresses = []
    for item in parse_list(name, value):
        try:
            addresses.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise _fail(name, item, "an IP address such as 192.0.2.10 or 2001:db8::1") from None
    return tuple(addresses)


def parse_address(name: str, value: object) -> str:
    """One IP address (``192.0.2.10``), without a port."""
    addresses = parse_addresses(name, value)
    if len(addresses) != 1:
        raise _fail(name, value, "one IP address such as 192.0.2.10")
    return addresses[0]


def parse_port_range(name: str, value: object) -> tuple[int, int]:
    """A UDP port range ``LOW-HIGH`` (``40000-49999``), both ends included."""
    if isinstance(value, tuple) and len(value) == 2:
        low, high = value
    else:
        match = re.fullmatch(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*", str(value))
        if match is None:
            raise _fail(name, value, "a port range such as 40000-49999")
        low, high = int(match.group(1)), int(match.group(2))
    if not 1024 <= low <= high <= 65535:
        raise _fail(name, value, "a port range LOW-HIGH with 1024 <= LOW <= HIGH <= 65535")
    return (low, high)


def optional(parse: Callable[[str, object], Any]) -> Callable[[str, object], Any]:
    """Wrap ``parse`` so that ``None`` or an empty string means "not set"."""

    def parse_optional(name: str, value: object) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return parse(name, value)

    parse_optional.__doc__ = parse.__doc__
    return parse_optional


def _option(default: Any, parse: Callable[[str, object], Any], doc: str, **kwargs: Any) -> Any:
    """A Config field whose value goes through ``parse`` and whose help feeds ``--help``."""
    return attrs.field(
        default=default,
        converter=attrs.Converter(lambda value, field: parse(field.name, value), takes_field=True),
        metadata={"parse": parse, "doc": doc},
        kw_only=True,
        **kwargs,
    )


def _hide_password(database: str | None) -> str:
    if database is None or "://" not in database:
        return repr(database)
    parts = urlsplit(database)
    if parts.password is None:
        return repr(database)
    return repr(database.replace(f":{parts.password}@", ":***@", 1))


@attrs.frozen
class Config:
    """
    The validated daemon configuration.

    Build it with :meth:`from_sources`; ``Config(port="9000")`` also works
    and applies the same parsing. Field names are the long command-line
    options with dashes turned into underscores.
    """

    port: str = _option("tcp:8888", parse_endpoint,
                        "endpoint of the binary TCP protocol; a bare number N means tcp:N")
    http_port: str = _option("tcp:8000", parse_endpoint,
                             "endpoint of the HTTP site (REST API, WebSocket, /health); a bare number N means tcp:N")
    data_dir: str = _option("./wecompany-data", parse_path,
                            "directory for the SQLite database, the generated JWT secret and files")
    database: str | None = _option(None, optional(parse_database),
                                   "sqlite:PATH, a .db/.sqlite/.sqlite3 path or a postgresql:// URL "
                                   "(default: SQLite file wecompany.sqlite3 in the data directory)",
                                   repr=_hide_password)
    redis: RedisAddress | None = _option(None, optional(parse_redis),
                                         "redis://host:port/db or tcp:host:port of the Redis mirror (default: off)")
    redis_prefix: str = _option("wecompany:", parse_prefix,
                                "prefix of every Redis key and channel of the cluster (two clusters can share "
                                "one Redis with different prefixes)")
    node_id: str | None = _option(None, optional(parse_node_id),
                                  "this node's id in the cluster (default: generated at each start)")
    node_timeout: float = _option(15.0, parse_seconds,
                                  "seconds after which a node whose heartbeat stopped counts as dead, and the "
                                  "others end its calls and drop its sessions")
    node_link: str | None = _option(None, optional(parse_endpoint),
                                    "endpoint on which this node takes the other nodes' direct connections for "
                                    "call media, e.g. tcp:7100:interface=10.0.0.5 (default: off, media between "
                                    "nodes goes through Redis)")
    node_link_address: str | None = _option(None, optional(parse_client_endpoint),
                                            "how the other nodes reach this node's node-link, a client endpoint "
                                            "such as tcp:host=10.0.0.5:port=7100 or tls:host=node1:port=7100 "
                                            "(default: node-link's interface and port)")
    max_frame: int = _option(MiB, parse_size,
                             "largest TCP frame accepted or sent, in bytes; K/KiB/M/MiB suffixes allowed "
                             "(1 KiB to 64 MiB)")
    allow_anonymous: bool = _option(False, parse_bool, "let TCP clients use the service without an account")
    login_timeout: float = _option(10.0, parse_seconds, "seconds a new connection has to authenticate")
    idle_timeout: float = _option(90.0, parse_seconds, "seconds of silence after which a connection is closed")
    ring_timeout: float = _option(30.0, parse_seconds, "seconds a call may ring before it is rejected")
    max_call: float = _option(3600.0, parse_seconds, "longest a call may last, in seconds")
    record_calls: str | None = _option(None, optional(parse_path),
                                       "directory to record relayed call media into (default: off)")
    file_storage: SharedDirectory | S3Location | None = _option(
        None, optional(parse_file_storage),
        "where avatars and transferred files are kept, for every node of a cluster: file:/path (a shared "
        "directory, e.g. NFS) or s3://bucket/prefix?endpoint=URL&region=NAME (S3-compatible, needs "
        "wecompany[s3]; credentials from the standard AWS chain) (default: the data directory)")
    max_upload: int = _option(512 * MiB, parse_bytes(KiB, MiB * MiB),
                              "largest file one media upload may have (413 past it); K/M/G/T suffixes allowed")
    media_quota: int = _option(5 * 1024 * MiB, parse_bytes(0, 1024 * MiB * MiB),
                               "bytes of media one user may keep (uploads and processing results); "
                               "K/M/G/T suffixes allowed")
    media_workers: int = _option(2, parse_count,
                                 "media-processing jobs (POST /media/process, /video/enhancement) run at once, "
                                 "each in a child process")
    media_queue: int = _option(8, parse_count,
                               "media-processing jobs that may wait for a worker; past them a job is refused "
                               "with 503")
    media_job_timeout: float = _option(3600.0, parse_seconds,
                                       "seconds a media-processing job may run before it is stopped (it fails "
                                       "with 4002)")
    jwt_secret: bytes | None = _option(None, optional(parse_secret),
                                       "HS256 secret for access tokens, at least 32 bytes "
                                       "(default: generated once into DATA_DIR/jwt.secret)",
                                       repr=False)
    token_ttl: float = _option(86400.0, parse_seconds, "lifetime of issued access tokens, in seconds")
    auth_rate: float = _option(1.0, parse_rate,
                               "auth requests (REST login, register, refresh and password reset, and TCP "
                               "auth frames) per second allowed from one client address, sustained")
    auth_burst: float = _option(20.0, parse_rate,
                                "auth requests (REST and TCP together) one client address may make in a burst")
    login_failures_per_address: int = _option(20, parse_count,
                                              "wrong passwords (login, password change, meeting password) "
                                              "one client address may give in a login-failure window")
    login_failures_per_account: int = _option(5, parse_count,
                                              "wrong passwords one account (or meeting) may be given in a "
                                              "login-failure window, from every address together")
    login_failure_window: float = _option(60.0, parse_seconds,
                                          "seconds a wrong password counts, from the first of a run")
    http_header_timeout: float = _option(20.0, parse_seconds,
                                         "seconds an HTTP client has to send a request's line and headers")
    http_body_timeout: float = _option(30.0, parse_seconds,
                                       "seconds an HTTP request body may take, plus one for every 4 KiB "
                                       "that arrives (a slow honest upload finishes; a trickle does not)")
    http_idle_timeout: float = _option(75.0, parse_seconds,
                                       "seconds a kept-alive HTTP connection may wait for its next request")
    max_connections_per_address: int = _option(256, parse_count,
                                               "connections one client address (an IPv6 /64) may hold open "
                                               "on each port; more are refused")
    ws_max_message: int = _option(MiB, parse_size,
                                  "largest WebSocket signaling message; larger ones get an error message")
    ws_rate: float = _option(50.0, parse_rate, "signaling messages per second one connection may send, sustained")
    ws_burst: float = _option(100.0, parse_rate, "signaling messages one connection may send in a burst")
    ws_ping_interval: float = _option(30.0, parse_seconds, "seconds between WebSocket pings the server sends")
    ws_ping_timeout: float = _option(60.0, parse_seconds,
                                     "seconds a WebSocket client has to answer a ping before it is dropped")
    ws_fast_path: bool = _option(True, parse_bool,
                                 "take whole WebSocket text frames and write prepared ones without Autobahn's "
                                 "per-frame machinery (relies on Autobahn internals, checked at start; "
                                 "--no-ws-fast-path serves plain Autobahn)")
    allowed_origins: tuple = _option("*", parse_origins,
                                     "comma-separated origins allowed to open signaling connections "
                                     "(* for any; wildcards such as https://*.example.com)")
    stun_servers: tuple = _option("stun:stun.l.google.com:19302", parse_ice_urls("stun"),
                                  "comma-separated STUN URLs handed to meeting clients")
    turn_servers: tuple | None = _option(None, optional(parse_ice_urls("turn")),
                                         "comma-separated TURN URLs handed to meeting clients (default: none)")
    turn_secret: bytes | None = _option(None, optional(parse_secret),
                                        "TURN REST API shared secret (coturn use-auth-secret): clients get "
                                        "time-limited TURN credentials", repr=False)
    turn_ttl: float = _option(86400.0, parse_seconds, "lifetime of TURN credentials, in seconds")
    heartbeat_interval: float = _option(30.0, parse_seconds,
                                        "seconds between client heartbeats that clients are told to use")

    # The AI engines (wecompany.ai, docs/ai.rst).
    ai_anonymous: bool = _option(False, parse_bool,
                                 "serve the token-less /api/v1/ai/ aliases (health, info, asr, emotion, synthesis) "
                                 "to anyone: CPU-heavy work for unauthenticated clients, rate-limited per address")
    ai_anonymous_rate: float = _option(0.2, parse_rate,
                                       "requests per second one client address may make on the token-less AI "
                                       "aliases, sustained")
    ai_anonymous_burst: float = _option(5.0, parse_rate,
                                        "requests one client address may make on the token-less AI aliases "
                                        "in a burst")
    ai_workers: int = _option(2, parse_count, "worker processes that run AI engines (speech recognition, denoising)")
    ai_max_pending: int = _option(8, parse_count,
                                  "AI requests running or waiting for a worker; more are answered 503 (4001)")
    ai_timeout: float = _option(60.0, parse_seconds,
                                "seconds an AI request may take, waiting included, before it is answered 503")
    ai_max_audio_bytes: int = _option(10 * MiB, parse_size, "largest audio an AI request may send, in bytes")
    ai_max_audio_seconds: float = _option(120.0, parse_seconds, "longest audio an AI request may send, in seconds")
    ai_denoiser: str = _option("rnnoise", parse_choice("rnnoise", "spectral-gate"),
                               "denoising engine used when a request names none: rnnoise (speech) or "
                               "spectral-gate (any sound with quieter stretches)")
    kserve_url: str | None = _option(None, optional(parse_inference_url),
                                     "base URL of a KServe v2 / Triton HTTP inference server for the emotion and "
                                     "synthetic-speech models (default: none; those requests answer 503)")
    kserve_binary: bool = _option(False, parse_bool,
                                  "send the audio to --kserve-url as raw float32 bytes (the binary tensor data "
                                  "extension, which Triton and KServe serve) instead of a JSON array, 2.6 times "
                                  "smaller and far cheaper to build and parse")
    emotion_model: str | None = _option(None, optional(parse_model_name),
                                        "model on --kserve-url that finds the emotion in speech")
    emotion_labels: tuple | None = _option(None, optional(parse_list),
                                           "comma-separated labels of the emotion model's scores, in order, "
                                           "when its answer carries none")
    synthesis_model: str | None = _option(None, optional(parse_model_name),
                                          "model on --kserve-url that scores speech as synthetic")
    synthesis_labels: tuple | None = _option(None, optional(parse_list),
                                             "comma-separated labels of the synthesis model's scores, in order, "
                                             "when it gives more than one and no labels")

    # The meeting SFU (wecompany.sfu, docs/sfu.rst).
    sfu: bool = _option(True, parse_bool,
                        "serve the browser client's media path under /api/v1/webrtc, forwarding encoded "
                        "audio and video between participants in worker processes (--no-sfu: those routes "
                        "answer 503)")
    sfu_workers: int | None = _option(None, optional(parse_count),
                                      "media worker processes; each room lives in one (default: one per core)")
    sfu_addresses: tuple | None = _option(None, optional(parse_addresses),
                                          "comma-separated local addresses the media workers gather ICE host "
                                          "candidates on (default: every interface but loopback)")
    sfu_public_address: str | None = _option(None, optional(parse_address),
                                             "address announced in the SFU's candidates instead of the local "
                                             "one (a host behind 1:1 NAT, such as a cloud VM's public address)")
    sfu_udp_ports: tuple | None = _option(None, optional(parse_port_range),
                                          "UDP port range the media workers use, LOW-HIGH (default: any "
                                          "free port); open it in the firewall")
    sfu_require_token: bool = _option(False, parse_bool,
                                      "require a Bearer token on every SFU call (the family's browser client "
                                      "sends none; without this a peer is bound to the caller's open "
                                      "signaling session: docs/sfu.rst says what that leaves open)")

    # Running it (docs/operations.rst).
    registration: str = _option("open", parse_choice("open", "closed"),
                                "open: anyone may register (TCP REGISTER, POST /api/v1/auth/register); "
                                "closed: only an administrator makes accounts (wecompany user add, the console)")
    web_root: str | None = _option(None, optional(parse_path),
                                   "directory of a web client's static files served at / on the HTTP port "
                                   "(the API, WebSocket, /health and /metrics paths take precedence; "
                                   "default: the built-in console)")
    metrics_port: str | None = _option(None, optional(parse_endpoint),
                                       "endpoint of a listener of its own for /metrics (e.g. "
                                       "tcp:9100:interface=127.0.0.1); default: /metrics on the HTTP site")
    log_format: str = _option("text", parse_choice("text", "json"),
                              "text (one line per event) or json (one JSON object per line)")
    log_level: str = _option("info", parse_choice("debug", "info", "warn", "error", "critical"),
                             "the least severe level logged")
    trusted_proxies: tuple | None = _option(None, optional(parse_networks),
                                            "addresses or CIDR blocks of reverse proxies whose X-Forwarded-For "
                                            "(HTTP) and PROXY protocol header (TCP port) name the real client; "
                                            "from any other peer both are ignored")

    def __attrs_post_init__(self) -> None:
        # Port 0 asks the system for a free port, so two of them never clash.
        # (also behind a wrapper: haproxy:tcp:0).
        if self.port == self.http_port and not re.match(r"^(haproxy:)?[a-z0-9]+:0(:|$)", self.port):
            raise ConfigError(f"port and http-port: both are {self.port!r}; they must differ")
        if self.metrics_port is not None and self.metrics_port in (self.port, self.http_port) \
                and not re.match(r"^[a-z0-9]+:0(:|$)", self.metrics_port):
            raise ConfigError(f"metrics-port: {self.metrics_port!r} is already another listener's; they must differ")
        if self.node_link is not None:
            if self.redis is None:
                raise ConfigError("node-link: links between the nodes of a cluster need --redis")
            interface = split_endpoint(self.node_link)[2].get("interface", "")
            if self.node_link_address is None and interface in ("", "0.0.0.0", "::"):
                raise ConfigError(f"node-link: {self.node_link!r} listens on every interface: say with "
                                  "--node-link-address how the other nodes reach this one, or give it "
                                  "interface=ADDRESS")
        elif self.node_link_address is not None:
            raise ConfigError("node-link-address: it needs --node-link")
        for model in ("emotion_model", "synthesis_model"):
            if getattr(self, model) is not None and self.kserve_url is None:
                raise ConfigError(f"{option_label(model)}: the model needs the server it is on: give --kserve-url")

    @property
    def database_kind(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        if self.database is None or self.database.startswith("sqlite:"):
            return "sqlite"
        return "postgresql"

    @property
    def sqlite_path(self) -> str | None:
        """The absolute SQLite file path, or ``None`` for PostgreSQL."""
        if self.database is None:
            return os.path.join(self.data_dir, SQLITE_FILE_NAME)
        if self.database.startswith("sqlite:"):
            return self.database[len("sqlite:"):]
        return None

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Every option name, in declaration order (underscore spelling)."""
        return tuple(field.name for field in attrs.fields(cls))

    @classmethod
    def from_sources(cls, cli: Mapping[str, Any], environ: Mapping[str, str],
                     config_file: str | None = None) -> Config:
        """
        Merge the command line, the environment, a config file and the defaults.

        :param cli: option name (dashes or underscores) -> value; ``None``
            means "not given on the command line".
        :param environ: the process environment; ``WECOMPANY_<NAME>`` sets
            option ``<name>``, ``WECOMPANY_CONFIG`` names the config file when
            ``config_file`` is ``None``. Any other ``WECOMPANY_*`` variable is
            an error, so a misspelt one is not silently ignored.
        :param config_file: path of an INI file with a ``[wecompany]`` section.
        :raises ConfigError: naming the option, the value and where it came from.
        """
        names = cls.option_names()
        if config_file is None:
            config_file = environ.get(CONFIG_ENV) or None
        chosen: dict[str, tuple[object, str]] = {}
        if config_file is not None:
            chosen.update(_read_config_file(config_file, names))
        chosen.update(_read_environ(environ, names))
        for key, value in cli.items():
            if value is not None:
                chosen[_known_name(key, names, "command-line option")] = (value, "the command line")
        fields = attrs.fields_dict(cls)
        values = {}
        for name, (value, source) in chosen.items():
            try:
                values[name] = fields[name].metadata["parse"](name, value)
            except ConfigError as error:
                raise ConfigError(f"{error} (from {source})") from None
        return cls(**values)


def _known_name(key: str, names: tuple[str, ...], what: str) -> str:
    name = key.strip().lower().replace("-", "_")
    if name in names:
        return name
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {option_label(close[0])!r}?)" if close else ""
    raise ConfigError(f"unknown {what} {key!r}{hint}")


def _read_environ(environ: Mapping[str, str], names: tuple[str, ...]) -> dict[str, tuple[object, str]]:
    found = {}
    for variable, value in environ.items():
        if not variable.startswith(ENV_PREFIX) or variable == CONFIG_ENV:
            continue
        name = variable[len(ENV_PREFIX):].lower()
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {ENV_PREFIX}{close[0].upper()}?)" if close else ""
            raise ConfigError(f"unknown environment variable {variable}{hint}; "
                              f"{ENV_PREFIX}* variables are reserved for options")
        found[name] = (value, f"environment variable {variable}")
    return found


def _read_config_file(path: str, names: tuple[str, ...]) -> dict[str, tuple[object, str]]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as config:
            parser.read_file(config, source=path)
    except (OSError, UnicodeDecodeError, configparser.Error) as error:
        raise ConfigError(f"config: cannot read {path}: {error}") from None
    extra = [section for section in parser.sections() if section != FILE_SECTION]
    if extra:
        raise ConfigError(f"config file {path}: unknown section [{extra[0]}]; options go in [{FILE_SECTION}]")
    if not parser.has_section(FILE_SECTION):
        return {}
    found: dict[str, tuple[object, str]] = {}
    for key, value in parser.items(FILE_SECTION):
        name = _known_name(key, names, f"option in config file {path}:")
        if name in found:
            raise ConfigError(f"config file {path}: {option_label(name)} is set twice")
        found[name] = (value, f"config file {path}")
    return found


def load_or_create_secret(data_dir: str) -> bytes:
    """
    Return the JWT signing secret kept in ``<data_dir>/jwt.secret``.

    The first call creates ``data_dir`` (mode 0700) if needed and writes 32
    random bytes, hex encoded, readable by the owner only. The file is linked
    into place only if absent, so two daemons starting together agree on one
    secret. This does blocking file I/O: call it from the composition root
    before the reactor runs, and only when ``Config.jwt_secret`` is ``None``.

    :raises ConfigError: if the file exists but is too short to be a secret.
    """
    make_private_dir(data_dir)
    path = os.path.join(data_dir, SECRET_FILE_NAME)
    if not os.path.exists(path):
        _create_secret_file(path)
    with open(path, "rb") as secret_file:
        secret = secret_file.read().strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"jwt-secret: {path} holds fewer than {MIN_SECRET_BYTES} bytes")
    return secret


def _create_secret_file(path: str) -> None:
    temporary = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as secret_file:
            os.fchmod(secret_file.fileno(), 0o600)
            secret_file.write(secrets.token_hex(32).encode("ascii") + b"\n")
            secret_file.flush()
            os.fsync(secret_file.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process won the race; use its secret
    finally:
        os.unlink(temporary)
