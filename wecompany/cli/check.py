"""
``wecompany check-config``: would the daemon start with this configuration?

One line per check, ``ok`` or ``FAIL`` (or ``warn``), and exit status 1 if
any failed:

config
    the options as start-up validates them (:class:`~wecompany.config.Config`,
    parsed with the daemon's own :class:`wecompany.tap.Options`, and
    :func:`wecompany.tap.check_startup`); a bad option is a usage error
    (exit 2) before any check runs, as at start-up.
each port
    ``--port``, ``--http-port`` and, when set, ``--metrics-port`` and
    ``--node-link``: listened on and released at once, through the same
    endpoints and with the same message as start-up (``cannot listen on
    tcp:8888 (port): address already in use``). A running daemon holds its
    ports, so this check fails for them: run it before starting, or on a
    copy of the configuration.
database
    opened, and its schema version compared with this release's: older is
    fine (start-up migrates it: ``wecompany migrate``), newer is a failure.
    Nothing is changed: an SQLite file that does not exist yet is reported,
    not made.
redis
    with ``--redis``: ``PING`` (after ``AUTH`` and ``SELECT`` when the URL
    has a password or a db) answered ``PONG`` within a few seconds.
"""

from __future__ import annotations

import socket

from twisted.python import usage

from wecompany.cli.common import Command, CommandFailed, run_on_reactor

REDIS_TIMEOUT = 3.0


def port_options(config) -> list[tuple[str, str]]:
    """(option, endpoint) of every listener the configuration asks for."""
    ports = [("port", config.port), ("http-port", config.http_port)]
    for option in ("metrics_port", "node_link"):
        value = getattr(config, option, None)
        if value is not None:
            ports.append((option.replace("_", "-"), value))
    return ports


async def check_ports(reactor, ports) -> list[tuple[bool, str]]:
    """Listen on each endpoint and stop at once -> (ok, line) each, start-up's message on failure."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory, Protocol

    from wecompany.service import Listener, listen_failure

    results = []
    for option, description in ports:
        factory = Factory.forProtocol(Protocol)
        factory.noisy = False
        try:
            port = await serverFromString(reactor, description).listen(factory)
        except Exception as error:
            listener = Listener(option, None, factory, description=description, option=option)
            results.append((False, str(listen_failure(listener, error))))
            continue
        address = port.getHost()
        await port.stopListening()
        where = f"{getattr(address, 'host', '')}:{address.port}" if hasattr(address, "port") else str(address)
        results.append((True, f"{description} ({option}) can be listened on ({where})"))
    return results


def check_redis(address, timeout: float = REDIS_TIMEOUT) -> str:
    """``PING`` ``address`` (a :class:`~wecompany.config.RedisAddress`) -> ``PONG``; CommandFailed otherwise."""
    def command(*words: str) -> bytes:
        return f"*{len(words)}\r\n".encode() + b"".join(
            f"${len(w.encode())}\r\n".encode() + w.encode() + b"\r\n" for w in words)

    commands = []
    if address.password:
        commands.append(command("AUTH", address.password))
    if address.db:
        commands.append(command("SELECT", str(address.db)))
    commands.append(command("PING"))
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout) as connection:
            connection.sendall(b"".join(commands))
            replies = b""
            while replies.count(b"\r\n") < len(commands):
                chunk = connection.recv(4096)
                if not chunk:
                    break
                replies += chunk
    except OSError as error:
        raise CommandFailed(f"no answer from {address}: {error.strerror or error}") from None
    lines = replies.split(b"\r\n")[:len(commands)]
    for line in lines:
        if line.startswith(b"-"):
            raise CommandFailed(f"{address} refused: {line[1:].decode('utf-8', 'replace')}")
    if len(lines) < len(commands) or lines[-1] != b"+PONG":
        raise CommandFailed(f"{address} did not answer PING with PONG")
    return "PONG"


class CheckConfigOptions(Command):
    """``wecompany check-config``."""

    def getSynopsis(self) -> str:
        return "Usage: wecompany [daemon options] check-config"

    def run(self, config, environ) -> int:
        from wecompany.cli.database import database_name, known_version, schema_version
        from wecompany.tap import check_startup

        failed = False

        def report(state: str, what: str, line: str) -> None:
            print(f"{state:<4} {what}: {line}")

        try:
            check_startup(config)
        except usage.UsageError as error:
            report("FAIL", "config", str(error))
            failed = True
        else:
            report("ok", "config", "the options are valid")
        for ok, line in run_on_reactor(lambda reactor: check_ports(reactor, port_options(config))):
            report("ok" if ok else "FAIL", "port", line)
            failed |= not ok
        try:
            version = schema_version(config)
        except (CommandFailed, usage.UsageError) as error:
            report("FAIL", "database", str(error))
            failed = True
        else:
            known = known_version()
            name = database_name(config)
            if version is None:
                report("ok", "database", f"{name} does not exist yet; the daemon makes it at first start")
            elif version > known:
                report("FAIL", "database", f"{name}: schema version {version} is newer than this release "
                                           f"knows ({known}); run a newer WeCompany")
                failed = True
            elif version < known:
                report("ok", "database", f"{name}: schema version {version}, this release's is {known}: "
                                         "start-up migrates it (or run 'wecompany migrate')")
            else:
                report("ok", "database", f"{name}: schema version {version}, this release's")
        if config.redis is not None:
            try:
                check_redis(config.redis)
            except CommandFailed as error:
                report("FAIL", "redis", str(error))
                failed = True
            else:
                report("ok", "redis", f"{config.redis} answered PING")
        return 1 if failed else 0
