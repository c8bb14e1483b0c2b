"""
Media processing in a child process, so that it cannot stall the reactor.

PyAV lets go of Python's global lock while FFmpeg decodes and encodes, but
the processing steps between its calls (and OpenCV's per-frame work for
``enhance``) hold it. Measured on this project's 2-core machine, with a
job in a thread and the main thread running a 5 ms sleep loop: transcode,
compress, trim and thumbnail delayed that loop by at most 3.5 ms, but
``enhance`` (denoise, sharpen, low light) by up to 445 ms and ``upscale``
by 73 ms. A reactor delayed that long delays every client's messages and
call media. So every job runs in its own ``python -m
wecompany.media.worker`` process: the worker thread that runs the job
(:class:`~wecompany.media.jobs.JobQueue`) only waits on the child's pipes.

The child reads one JSON request on stdin and writes JSON lines on stdout:
``{"progress": f}`` as it goes, then ``{"result": {...}}`` or
``{"error": {...}}``. It runs at a lower CPU priority than the daemon, with
an address-space limit, so a job competes with the reactor for neither CPU
nor memory. Cancelling (the job's timeout, the daemon stopping) kills it,
and what it left in its output directory is removed.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys

import attrs
from twisted.logger import Logger

from wecompany.errors import InvalidInput, Unavailable, WeCompanyError
from wecompany.media.process import Limits, ProcessingCancelled, ProcessingFailed, Result

log = Logger()

#: Seconds between looks at the job's cancellation flag while the child runs.
POLL = 0.2
#: Bytes of the child's stderr kept for the log when it fails.
STDERR_TAIL = 4096
#: The child's address space (bytes): FFmpeg and OpenCV on a large video use a few hundred MiB.
ADDRESS_SPACE = 4 << 30
#: How much lower than the daemon's the child's CPU priority is (os.nice).
NICENESS = 10


def run_isolated(process_type: str, src_path: str, dst_dir: str, params: dict, limits: Limits = Limits(), *,
                 progress=None, cancelled=None, python: str = sys.executable,
                 address_space: int = ADDRESS_SPACE) -> Result:
    """
    :func:`wecompany.media.process.run` in a child process, with the same
    arguments and outcome: the :class:`Result`, or the same errors
    (InvalidInput 400, ProcessingFailed 422/4002, Unavailable 503/4001).
    Blocking: call it in a worker thread.
    """
    request = {"process_type": process_type, "src": src_path, "dst": dst_dir, "params": params,
               "limits": attrs.asdict(limits), "address_space": address_space, "niceness": NICENESS}
    child = subprocess.Popen([python, "-m", "wecompany.media.worker"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                             env=_child_environment(), close_fds=True)
    outcome = None
    stderr = b""
    try:
        try:
            child.stdin.write(json.dumps(request).encode())
            child.stdin.close()
        except BrokenPipeError:
            # The child is gone before reading its request: what it said (on
            # stderr) and its exit status, read below, tell why.
            pass
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ)
            selector.register(child.stderr, selectors.EVENT_READ)
            pending = b""
            open_pipes = 2
            while open_pipes:
                if cancelled is not None and cancelled():
                    raise ProcessingCancelled()
                for key, _ in selector.select(POLL):
                    data = os.read(key.fd, 65536)
                    if not data:
                        selector.unregister(key.fileobj)
                        open_pipes -= 1
                    elif key.fileobj is child.stderr:
                        stderr = (stderr + data)[-STDERR_TAIL:]
                    else:
                        pending += data
                        *lines, pending = pending.split(b"\n")
                        for line in lines:
                            outcome = _message(line, progress) or outcome
        child.wait()
    except BaseException:
        _kill(child)
        shutil.rmtree(dst_dir, ignore_errors=True)
        raise
    finally:
        for pipe in (child.stdout, child.stderr):
            pipe.close()
    if outcome is None:
        shutil.rmtree(dst_dir, ignore_errors=True)
        log.error("media job: the worker process ended with {status} and no answer: {stderr}",
                  status=child.returncode, stderr=stderr.decode("utf-8", "replace"))
        raise ProcessingFailed("processing failed")
    kind, value = outcome
    if kind == "error":
        raise _error(value)
    return Result(**value)


def _message(line: bytes, progress):
    """One line from the child -> ("result"|"error", value), or None after a progress report."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    if "progress" in message:
        if progress is not None:
            progress(float(message["progress"]))
        return None
    if "result" in message:
        return "result", message["result"]
    if "error" in message:
        return "error", message["error"]
    return None


def _error(fields: dict) -> WeCompanyError:
    code, message, error_code = fields.get("code"), fields.get("message") or None, fields.get("error_code")
    if code == 400:
        return InvalidInput(message)
    if code == 503:
        return Unavailable(message, error_code=error_code)
    return ProcessingFailed(message)


def _kill(child: subprocess.Popen) -> None:
    if child.poll() is None:
        try:
            os.killpg(child.pid, signal.SIGKILL)  # its own session: anything it started goes too
        except ProcessLookupError:
            pass
        child.wait()


def _child_environment() -> dict:
    # The child must import this very package (also when run from a checkout)
    # and nothing of the daemon's own settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECOMPANY_")}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
