"""
Files only the daemon's own user may read.

The data directory holds password hashes, chats, tokens and media. Whatever
the process's umask, what the daemon creates there is made private: the
directories 0700, the files 0600 (``mode`` arguments are masked by the
umask, so each is set again explicitly). :func:`too_open` finds what an
older run, or an operator, left readable by others, for a warning at start.

These do blocking file system calls: use them at start-up, or on a disk
thread. :func:`storage_errors_unavailable` wraps the runner of that thread
so a full or failing disk is told to clients as such (503), not as an
internal error.
"""

from __future__ import annotations

import errno
import os
import stat

from wecompany.errors import Unavailable

# The disk, not the request, is at fault: the client may try again later.
_STORAGE_ERRNOS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "file system read-only", errno.EIO: "disk I/O error"}

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dir(path: str) -> None:
    """Create ``path`` and its missing parents 0700 (existing ones are left as they are)."""
    missing = []
    head = os.path.abspath(path)
    while head and not os.path.isdir(head):
        missing.append(head)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue  # made meanwhile by another thread or process: not ours to change
        os.chmod(directory, PRIVATE_DIR)


def open_private(path: str, mode: str = "xb"):
    """
    ``open(path, mode)`` for binary ``xb``, ``wb`` or ``ab``, creating the
    file 0600. An existing file opened with ``wb`` or ``ab`` keeps its mode.
    """
    flags = {"xb": os.O_CREAT | os.O_EXCL, "wb": os.O_CREAT | os.O_TRUNC, "ab": os.O_CREAT | os.O_APPEND}[mode]
    descriptor = os.open(path, flags | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), PRIVATE_FILE)
    try:
        if mode == "xb":
            os.fchmod(descriptor, PRIVATE_FILE)
        return os.fdopen(descriptor, mode)
    except BaseException:
        os.close(descriptor)
        raise


def create_private_file(path: str) -> bool:
    """Create an empty ``path`` 0600 if there is none; -> whether it was created."""
    try:
        open_private(path, "xb").close()
    except FileExistsError:
        return False
    return True


def write_private(path: str, data: bytes) -> None:
    """Write ``path`` whole and atomically (a temporary file renamed over it), 0600."""
    temporary = f"{path}.{os.getpid()}.part"
    with open_private(temporary, "wb") as out:
        os.fchmod(out.fileno(), PRIVATE_FILE)
        out.write(data)
    os.replace(temporary, path)


def exposure_warnings(paths) -> list[str]:
    """One warning for each of ``paths`` that group or others may access."""
    warnings = []
    for path in paths:
        mode = too_open(path)
        if mode is not None:
            wanted = PRIVATE_DIR if os.path.isdir(path) else PRIVATE_FILE
            warnings.append(f"{path} is open to other local users (mode {mode:04o}): it holds private data; "
                            f"chmod {wanted:o} {path}")
    return warnings


def too_open(path: str) -> int | None:
    """The permission bits of ``path`` when group or others have any access to it, else None."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
    return mode if mode & 0o077 else None


def storage_errors_unavailable(run_in_thread):
    """
    ``run_in_thread`` (``f(callable, *args) -> Deferred``) whose OSErrors of
    a full or failing disk become :class:`Unavailable` (503).
    """

    def run(f, *args, **kwargs):
        def failed(failure):
            error = failure.value
            problem = _STORAGE_ERRNOS.get(getattr(error, "errno", None)) if isinstance(error, OSError) else None
            if problem is None:
                return failure
            raise Unavailable(f"the server cannot store data right now ({problem}): try again later")

        return run_in_thread(f, *args, **kwargs).addErrback(failed)

    return run
