"""
The daemon's control socket: how ``wecompany user ...`` reaches a running daemon.

Where
    ``<data-dir>/control.sock``, a Unix socket (Twisted's ``unix:`` endpoint
    with a lock file, ``control.sock.lock``, so a stale socket left by a
    killed daemon is replaced and a second daemon on the same data
    directory cannot take it), mode 0600 inside the 0700 data directory:
    only the daemon's own user can connect, which is the authorisation.
    There is no TCP form. A path longer than a Unix socket address allows
    (:data:`MAX_SOCKET_PATH` bytes) cannot be listened on: the daemon then
    warns at start-up and serves no control socket, and the command line
    works on the database directly.

What
    One JSON request on one line, ``{"op": "user.ban", "args": {"username":
    "bob"}}``, and one JSON answer on one line, ``{"ok": true, "result":
    {...}}`` or ``{"ok": false, "error": {"code": 404, "error_code": 1003,
    "message": "..."}}`` (the fields of :class:`~wecompany.errors.WeCompanyError`);
    then the daemon closes the connection. A request line is at most
    :data:`MAX_REQUEST` bytes: a longer one is answered with an error (413)
    and the connection closed. The operations are
    :class:`~wecompany.domain.useradmin.UserAdministration`'s (:data:`OPERATIONS`),
    so the daemon's own domain does the work: its sessions are signed out
    and its caches and its cluster are told, as for an admin's REST action.
    Requests carry passwords (``user.add``, ``user.passwd``); they are
    never logged.
"""

from __future__ import annotations

import json
import os

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from wecompany.errors import InternalError, InvalidInput, MalformedMessage, TooLarge, WeCompanyError

SOCKET_NAME = "control.sock"
#: Bytes of a request line (a username, a password and an email fit many times over).
MAX_REQUEST = 64 * 1024
#: The longest path a Unix socket address holds (Linux: sun_path of 108 bytes, NUL included).
MAX_SOCKET_PATH = 107

#: op -> (method of UserAdministration, the argument names it takes, the ones required).
OPERATIONS = {
    "user.add": ("add", ("username", "password", "email", "admin"), ("username", "password")),
    "user.list": ("list", (), ()),
    "user.show": ("show", ("username",), ("username",)),
    "user.passwd": ("passwd", ("username", "password"), ("username", "password")),
    "user.ban": ("ban", ("username",), ("username",)),
    "user.unban": ("unban", ("username",), ("username",)),
    "user.delete": ("delete", ("username",), ("username",)),
}


def socket_path(data_dir: str) -> str:
    """The control socket of the daemon whose data directory is ``data_dir``."""
    return os.path.join(os.path.abspath(data_dir), SOCKET_NAME)


def usable_socket_path(path: str) -> bool:
    """Whether ``path`` fits in a Unix socket address."""
    return len(os.fsencode(path)) <= MAX_SOCKET_PATH


def parse_request(line: bytes) -> tuple[str, dict]:
    """A request line -> (op, arguments); :class:`MalformedMessage` or :class:`InvalidInput` if it is not one."""
    try:
        request = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise MalformedMessage("a request is one line of JSON") from None
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise MalformedMessage('a request is {"op": NAME, "args": {...}}')
    op, args = request["op"], request.get("args", {})
    if op not in OPERATIONS:
        raise InvalidInput(f"unknown operation {op!r}; known: {', '.join(sorted(OPERATIONS))}")
    if not isinstance(args, dict):
        raise MalformedMessage("args must be an object")
    _, allowed, required = OPERATIONS[op]
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise InvalidInput(f"{op}: unknown argument {unknown[0]!r}")
    missing = [name for name in required if not isinstance(args.get(name), str) or not args[name]]
    if missing:
        raise InvalidInput(f"{op}: {missing[0]} is required (a string)")
    for name in ("email",):
        if args.get(name) is not None and not isinstance(args[name], str):
            raise InvalidInput(f"{op}: {name} must be a string")
    if "admin" in args and not isinstance(args["admin"], bool):
        raise InvalidInput(f"{op}: admin must be true or false")
    return op, args


def encode_answer(result=None, error: WeCompanyError | None = None) -> bytes:
    """One answer line (without its line end)."""
    if error is not None:
        answer = {"ok": False, "error": {"code": error.code, "error_code": error.error_code,
                                         "message": error.message}}
    else:
        answer = {"ok": True, "result": result}
    return json.dumps(answer, separators=(",", ":")).encode("utf-8")


class ControlProtocol(LineOnlyReceiver):
    """One request, one answer, then the connection is closed."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST
    log = Logger()

    def __init__(self, admin) -> None:
        self.admin = admin
        self._answered = False
        self._gone = False

    def connectionLost(self, reason=None) -> None:
        self._gone = True

    def lineReceived(self, line: bytes) -> None:
        if self._answered:
            return  # one request per connection; the rest is not read
        self._answered = True
        line = line.rstrip(b"\r")
        try:
            op, args = parse_request(line)
        except WeCompanyError as error:
            self._answer(error=error)
            return
        method = getattr(self.admin, OPERATIONS[op][0])
        d = Deferred.fromCoroutine(method(**args))
        d.addCallbacks(lambda result: self._answer(result), lambda failure: self._failed(op, failure))
        d.addErrback(lambda failure: self.log.failure("control answer failed", failure))

    def lineLengthExceeded(self, line: bytes) -> None:
        if not self._answered:
            self._answered = True
            self._answer(error=TooLarge(f"a request line is at most {MAX_REQUEST} bytes"))

    def _failed(self, op: str, failure) -> None:
        if failure.check(WeCompanyError):
            self._answer(error=failure.value)
            return
        self.log.failure("control request {op} failed", failure, op=op)
        self._answer(error=InternalError())

    def _answer(self, result=None, error=None) -> None:
        if self._gone:
            return  # the client went away; the operation was done all the same
        self.sendLine(encode_answer(result, error))
        self.transport.loseConnection()


class ControlFactory(Factory):
    """Makes a :class:`ControlProtocol` on ``admin`` (a :class:`~wecompany.domain.useradmin.UserAdministration`)."""

    noisy = False

    def __init__(self, admin) -> None:
        self.admin = admin

    def buildProtocol(self, addr):
        protocol = ControlProtocol(self.admin)
        protocol.factory = self
        return protocol
