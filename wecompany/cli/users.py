"""
``wecompany user ...``: accounts, by username.

Each command is one :class:`~wecompany.domain.useradmin.UserAdministration`
operation. When the daemon of this data directory is running, the command
asks it over its control socket (:mod:`wecompany.control`), and the
daemon's own domain does the work: a ban, a deletion or a new password
signs the user out of every live session at once, and in a cluster the
other nodes are told as for an admin's REST action. When no daemon answers
there (no socket, or a stale one), the command builds the same store and
domain the daemon would (:func:`wecompany.tap.build_store`,
:func:`wecompany.domain.core.build_domain`) and does the same operation on
the database itself; it says so. Passwords follow the registration rules
and are hashed with argon2id, as a registration's are.
"""

from __future__ import annotations

import json
import socket
import sys

from twisted.python import usage

from wecompany.cli.common import Command, CommandFailed, read_passwords, run_on_reactor
from wecompany.control import socket_path

#: Seconds to wait for the daemon's answer (a password is hashed first).
ANSWER_TIMEOUT = 60.0
#: Bytes of an answer (a list of every account is long, not endless).
MAX_ANSWER = 64 << 20


class DaemonUnreachable(Exception):
    """No daemon listens on the control socket."""


def ask_daemon(path: str, op: str, args: dict, timeout: float = ANSWER_TIMEOUT) -> dict:
    """
    One request to the daemon's control socket -> its answer.

    :raises DaemonUnreachable: no socket there, or nothing listening on it.
    """
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(timeout)
    try:
        try:
            connection.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as error:
            raise DaemonUnreachable(str(error)) from None
        except OSError as error:  # too long a path, not a socket, no permission
            raise CommandFailed(f"cannot reach the daemon at {path}: {error.strerror or error}") from None
        connection.sendall(json.dumps({"op": op, "args": args}).encode("utf-8") + b"\n")
        answer = bytearray()
        while not answer.endswith(b"\n"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
            if len(answer) > MAX_ANSWER:  # a list of many users is long, not endless
                raise CommandFailed("the daemon's answer is too long")
    except socket.timeout:
        raise CommandFailed(f"the daemon did not answer within {timeout:g} s") from None
    finally:
        connection.close()
    try:
        return json.loads(answer.decode("utf-8"))
    except ValueError:
        raise CommandFailed("the daemon's answer is not JSON (is it this version's?)") from None


def run_offline(config, op: str, args: dict) -> dict:
    """The operation on the database directly (no daemon), as the daemon would do it -> an answer."""
    return run_on_reactor(lambda reactor: offline_operation(reactor, config, op, args))


async def offline_operation(reactor, config, op: str, args: dict) -> dict:
    """Build the store and the domain, do ``op``, stop the store -> an answer as the daemon gives one."""
    from functools import partial

    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    from wecompany.config import load_or_create_secret
    from wecompany.control import OPERATIONS
    from wecompany.domain.core import build_domain
    from wecompany.domain.meetingpages import MeetingPages
    from wecompany.domain.useradmin import UserAdministration
    from wecompany.domain.usercache import UserCache
    from wecompany.errors import WeCompanyError
    from wecompany.privatefs import make_private_dir
    from wecompany.tap import build_store

    user_cache, meeting_pages = UserCache(reactor), MeetingPages(reactor)
    store = build_store(config, reactor, user_caches=[user_cache], meeting_caches=[meeting_pages])
    make_private_dir(config.data_dir)
    try:
        store.prepare()  # the schema, as the daemon's start-up applies it
    except Exception as error:
        raise CommandFailed(f"the database: {error}") from None
    pool = ThreadPool(minthreads=0, maxthreads=2, name="wecompany-cli")
    pool.start()
    run = partial(deferToThreadPool, reactor, pool)
    await store.start()
    try:
        domain = build_domain(config, reactor, store, secret=config.jwt_secret or load_or_create_secret(config.data_dir),
                              run_hash=run, run_disk=run, user_cache=user_cache, meeting_pages=meeting_pages)
        method = getattr(UserAdministration(domain), OPERATIONS[op][0])
        try:
            return {"ok": True, "result": await method(**args)}
        except WeCompanyError as error:
            return {"ok": False, "error": {"code": error.code, "error_code": error.error_code,
                                           "message": error.message}}
    finally:
        await store.stop()
        pool.stop()


def perform(config, op: str, args: dict, out=None) -> dict:
    """
    ``op`` through the daemon if it runs, else offline -> the result;
    :class:`CommandFailed` with the domain's message if it refused.
    """
    out = out if out is not None else sys.stdout
    path = socket_path(config.data_dir)
    try:
        answer = ask_daemon(path, op, args)
    except DaemonUnreachable:
        note = "no daemon is running on this data directory: done on the database directly"
        if config.redis is not None:
            note += " (the nodes of the cluster that are running see it within a minute)"
        sys.stderr.write(f"wecompany: {note}\n")
        answer = run_offline(config, op, args)
    if not answer.get("ok"):
        error = answer.get("error") or {}
        raise CommandFailed(error.get("message", "refused"))
    return answer["result"]


COLUMNS = ("id", "username", "role", "status", "email", "created_at", "last_login")


def print_table(users: list[dict], out) -> None:
    rows = [[str(user.get(column) or "-") for column in COLUMNS] for user in users]
    widths = [max([len(column)] + [len(row[i]) for row in rows]) for i, column in enumerate(COLUMNS)]
    out.write("  ".join(column.upper().ljust(widths[i]) for i, column in enumerate(COLUMNS)).rstrip() + "\n")
    for row in rows:
        out.write("  ".join(value.ljust(widths[i]) for i, value in enumerate(row)).rstrip() + "\n")


def print_user(user: dict, out) -> None:
    for key in ("id", "username", "nickname", "email", "role", "status", "created_at", "last_login"):
        out.write(f"{key}: {user.get(key) if user.get(key) not in (None, '') else '-'}\n")


class _UserCommand(Command):
    """A command naming one user."""

    op = ""
    done = ""

    def parseArgs(self, username=None):
        if not username:
            raise usage.UsageError(f"user {self.op.split('.')[1]}: which user? (a username)")
        self.username = username

    def getSynopsis(self) -> str:
        return f"Usage: wecompany [daemon options] user {self.op.split('.')[1]} NAME"

    def arguments(self) -> dict:
        return {"username": self.username}

    def run(self, config, environ) -> int:
        user = perform(config, self.op, self.arguments())
        if self.done:
            sys.stdout.write(f"{self.done.format(**user)}\n")
        else:
            print_user(user, sys.stdout)
        return 0


class AddOptions(_UserCommand):
    """``user add NAME [--admin] [--email E] [--password-stdin]``."""

    op = "user.add"
    done = "added {username} (id {id}, {role})"
    optFlags = [["admin", None, "make the account an administrator"],
                ["password-stdin", None, "read the password from the first line of standard input"]]
    optParameters = [["email", None, None, "the account's email address"]]

    def getSynopsis(self) -> str:
        return "Usage: wecompany [daemon options] user add NAME [--admin] [--email E] [--password-stdin]"

    def arguments(self) -> dict:
        [password] = read_passwords(1, self["password-stdin"], [f"Password for {self.username}"], confirm=True)
        return {"username": self.username, "password": password, "email": self["email"],
                "admin": bool(self["admin"])}


class PasswdOptions(_UserCommand):
    """``user passwd NAME [--password-stdin]``: signs the user out everywhere."""

    op = "user.passwd"
    done = "password of {username} changed; every session of the account was signed out"
    optFlags = [["password-stdin", None, "read the password from the first line of standard input"]]

    def arguments(self) -> dict:
        [password] = read_passwords(1, self["password-stdin"], [f"New password for {self.username}"], confirm=True)
        return {"username": self.username, "password": password}


class ShowOptions(_UserCommand):
    op = "user.show"
    optFlags = [["json", None, "print the account as JSON"]]

    def run(self, config, environ) -> int:
        user = perform(config, self.op, self.arguments())
        if self["json"]:
            sys.stdout.write(json.dumps(user, indent=2) + "\n")
        else:
            print_user(user, sys.stdout)
        return 0


class BanOptions(_UserCommand):
    op = "user.ban"
    done = "banned {username}; every session of the account was signed out"


class UnbanOptions(_UserCommand):
    op = "user.unban"
    done = "{username} is {status} (it logs in again)"


class DeleteOptions(_UserCommand):
    op = "user.delete"
    done = "deleted {username}; every session of the account was signed out"


class ListOptions(Command):
    """``user list [--json]``."""

    optFlags = [["json", None, "print a JSON array"]]

    def run(self, config, environ) -> int:
        users = perform(config, "user.list", {})
        if self["json"]:
            sys.stdout.write(json.dumps(users, indent=2) + "\n")
        else:
            print_table(users, sys.stdout)
        return 0


class UserOptions(usage.Options):
    """``wecompany user COMMAND``."""

    synopsis = "COMMAND [options]"
    subCommands = [
        ["add", None, AddOptions, "Add an account (asks for its password)"],
        ["list", None, ListOptions, "List every account"],
        ["show", None, ShowOptions, "Show an account"],
        ["passwd", None, PasswdOptions, "Set an account's password (signs it out everywhere)"],
        ["ban", None, BanOptions, "Ban an account (signs it out everywhere)"],
        ["unban", None, UnbanOptions, "Lift a ban"],
        ["delete", None, DeleteOptions, "Delete an account (signs it out everywhere)"],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("user: a command is required: " + ", ".join(c[0] for c in self.subCommands))

    def run(self, config, environ) -> int:
        return self.subOptions.run(config, environ)
