"""
The SFU worker process: ``python -m wecompany.sfu.worker``.

Serves the wire protocol of /work/briefs/wire.md (one JSON object per line;
requests on stdin, replies and events on stdout, logs on stderr) over a
:class:`~wecompany.sfu.forwarding.Forwarder`. Each request runs as its own
task, so replies may come in any order; per-peer ordering is the
forwarder's (a peer's ops wait for its ``open_peer``, negotiation ops take
the peer's lock).

Limits: a line over 1 MiB ends the process (protocol error); at most
``MAX_IN_FLIGHT`` requests run at once (more get ``busy``); if the daemon
stops reading and more than ``MAX_OUTPUT_BUFFER`` bytes wait for stdout, the
worker exits rather than grow without bound. It exits 0 after ``shutdown``,
on EOF of stdin and on SIGTERM, finishing every recording (trailer written,
fsynced; see :mod:`.recording`) and then closing every peer.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import sys
from typing import Any, Callable, Optional

from wecompany.errors import InvalidInput, NotFound, PeerNotFound, Unavailable, WeCompanyError
from wecompany.sfu import aiortc_internals
from wecompany.sfu.forwarding import Forwarder, log

MAX_LINE = 1 << 20
MAX_IN_FLIGHT = 256
MAX_OUTPUT_BUFFER = 16 << 20
# Finishing a recording that someone joined mid-way remuxes it (see recording.py).
RECORDING_FINISH_TIMEOUT = 60

OPS = ("configure", "open_peer", "add_candidate", "renegotiate", "apply_answer",
       "request_keyframe", "close_peer", "start_recording", "stop_recording", "stats", "shutdown")


class ProtocolError(Exception):
    """The input stream cannot be read any more (over-long line)."""


def encode(message: dict) -> bytes:
    """One protocol line: compact JSON (no raw newline: JSON escapes them) and ``\\n``."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n"


def error_kind(error: BaseException) -> str:
    if isinstance(error, PeerNotFound):
        return "peer_not_found"
    if isinstance(error, Unavailable):
        return "busy"
    if isinstance(error, (InvalidInput, NotFound)):
        return "invalid"
    return "internal"


def error_reply(request_id: Any, kind: str, message: str) -> dict:
    return {"id": request_id, "error": {"kind": kind, "message": message}}


class Dispatcher:
    """
    Decodes request lines, runs each op on the forwarder and writes exactly
    one reply per request through ``write`` (a callable taking a dict).
    """

    def __init__(self, forwarder: Forwarder, write: Callable[[dict], None],
                 on_shutdown: Callable[[], None]) -> None:
        self.forwarder = forwarder
        self.write = write
        self.on_shutdown = on_shutdown
        self.in_flight = 0
        self._tasks: set[asyncio.Task] = set()

    def handle_line(self, line: bytes) -> Optional[asyncio.Task]:
        """Start handling one line (without its newline); -> the task, or None if answered at once."""
        if not line.strip():
            return None
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            self.write(error_reply(None, "invalid", f"malformed JSON: {e}"))
            return None
        if not isinstance(request, dict):
            self.write(error_reply(None, "invalid", "a request must be a JSON object"))
            return None
        request_id = request.get("id")
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            self.write(error_reply(None if not isinstance(request_id, (str, float)) else request_id,
                                   "invalid", "id must be an integer"))
            return None
        op, args = request.get("op"), request.get("args", {})
        if op not in OPS:
            self.write(error_reply(request_id, "invalid", f"unknown op: {op!r}"))
            return None
        if not isinstance(args, dict):
            self.write(error_reply(request_id, "invalid", "args must be an object"))
            return None
        if self.in_flight >= MAX_IN_FLIGHT:
            self.write(error_reply(request_id, "busy", "too many requests in flight"))
            return None
        self.in_flight += 1
        task = asyncio.ensure_future(self._run(request_id, op, args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _run(self, request_id: int, op: str, args: dict) -> None:
        try:
            result = await self._call(op, args)
        except WeCompanyError as e:
            self.write(error_reply(request_id, error_kind(e), e.message))
        except Exception as e:  # noqa: BLE001 - one bad op must not end the worker
            log(f"sfu worker: {op} failed: {e!r}")
            self.write(error_reply(request_id, "internal", f"{type(e).__name__}: {e}"))
        else:
            self.write({"id": request_id, "result": result})
            if op == "shutdown":
                self.on_shutdown()
        finally:
            self.in_flight -= 1

    async def _call(self, op: str, args: dict) -> Any:
        if op == "shutdown":
            return {}
        method = getattr(self.forwarder, op)
        try:
            inspect.signature(method).bind(**args)
        except TypeError as e:
            raise InvalidInput(f"bad args for {op}: {e}") from e
        return await method(**args)

    async def drain(self) -> None:
        """Wait for the requests still running."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)


class Output:
    """stdout as a non-blocking pipe: writes queue in the transport; too much queued ends the process."""

    def __init__(self, transport: asyncio.WriteTransport, on_overflow: Callable[[], None]) -> None:
        self.transport = transport
        self.on_overflow = on_overflow
        self.overflowed = False

    def write(self, message: dict) -> None:
        if self.overflowed or self.transport.is_closing():
            return
        self.transport.write(encode(message))
        if self.transport.get_write_buffer_size() > MAX_OUTPUT_BUFFER:
            self.overflowed = True
            log("sfu worker: the daemon does not read stdout; exiting")
            self.on_overflow()


async def serve() -> int:
    loop = asyncio.get_running_loop()
    # Our protocol owns fd 1; anything else printing to stdout goes to stderr.
    out_file = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    write_transport, _ = await loop.connect_write_pipe(asyncio.Protocol, out_file)
    reader = asyncio.StreamReader(limit=MAX_LINE + 1)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    stop = asyncio.Event()
    exit_code = 0

    def fail() -> None:
        nonlocal exit_code
        exit_code = 1
        stop.set()

    output = Output(write_transport, fail)
    forwarder = Forwarder(output.write)
    dispatcher = Dispatcher(forwarder, output.write, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    output.write({"event": "ready", "pid": os.getpid(), "aiortc": aiortc_internals.aiortc_version()})

    async def read_requests() -> None:
        nonlocal exit_code
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:
                if e.partial.strip():
                    dispatcher.handle_line(e.partial)
                break
            except asyncio.LimitOverrunError:
                log("sfu worker: request line over 1 MiB; exiting")
                exit_code = 2
                break
            if len(line) > MAX_LINE + 1:
                log("sfu worker: request line over 1 MiB; exiting")
                exit_code = 2
                break
            dispatcher.handle_line(line.rstrip(b"\r\n"))
        stop.set()

    reading = asyncio.ensure_future(read_requests())
    await stop.wait()
    reading.cancel()
    await dispatcher.drain()
    try:
        await asyncio.wait_for(forwarder.recordings.close(), timeout=RECORDING_FINISH_TIMEOUT)
    except asyncio.TimeoutError:
        log("sfu worker: finishing recordings timed out")
    try:
        await asyncio.wait_for(forwarder.close(), timeout=10)
    except asyncio.TimeoutError:
        log("sfu worker: closing peers timed out")
    # Let the last replies reach the pipe.
    for _ in range(50):
        if write_transport.get_write_buffer_size() == 0 or exit_code == 1:
            break
        await asyncio.sleep(0.02)
    write_transport.close()
    return exit_code


def main() -> None:
    sys.exit(asyncio.run(serve()))


if __name__ == "__main__":
    main()
