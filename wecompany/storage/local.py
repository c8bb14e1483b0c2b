"""
Files in a directory: the data directory (the default), or a directory
every node of a cluster mounts (``--file-storage file:/path``, e.g. NFS).

A write goes to a temporary file beside its target, under a name no other
thread or node can pick, is synced, and is renamed over the target: the
rename is what makes it atomic, so a shared file system must rename
atomically within a directory (NFS and SMB do; FUSE mounts of object
stores such as s3fs do not: use ``s3://`` for those). What is written is
private (:mod:`wecompany.privatefs`: directories 0700, files 0600), so on a
shared mount every node must run as the same user.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat

from twisted.logger import Logger
from zope.interface import implementer

from wecompany.errors import Unavailable, WeCompanyError
from wecompany.privatefs import PRIVATE_FILE, make_private_dir, open_private
from wecompany.storage.interface import IFileStorage, KeyMissing, check_key

COPY_BUFFER = 1 << 20


@implementer(IFileStorage)
class DirectoryStorage:
    """
    :param root: the directory; keys are paths below it.
    :param run_in_thread: ``f(callable, *args) -> Deferred``, the disk
        thread pool's runner: every file system call goes through it.
    """

    log = Logger()
    read_size = 64 << 10

    def __init__(self, root: str, run_in_thread) -> None:
        self.root = os.path.abspath(root)
        self._run = run_in_thread

    def describe(self) -> str:
        return f"directory {self.root}"

    def path_of(self, key: str) -> str:
        """The file that holds ``key``."""
        return os.path.join(self.root, *check_key(key).split("/"))

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self._call("write", key, _write_atomically, self.path_of(key), data)

    async def put_file(self, key: str, path: str) -> None:
        await self._call("store", key, _move_in, path, self.path_of(key))

    async def read(self, key: str, offset: int, length: int) -> bytes:
        data = await self._call("read", key, _read, self.path_of(key), offset, length)
        if data is None:
            raise KeyMissing()
        return data

    async def size(self, key: str) -> int | None:
        return await self._call("look at", key, _size, self.path_of(key))

    async def delete(self, key: str) -> None:
        await self._call("delete", key, _unlink, self.path_of(key))

    async def _call(self, what: str, key: str, f, *args):
        try:
            return await self._run(f, *args)
        except WeCompanyError:
            raise  # a full or failing disk, already told as such by the runner
        except OSError as error:
            self.log.error("file storage: cannot {what} {key} in {root}: {error}", what=what, key=key,
                           root=self.root, error=error)
            raise Unavailable("file storage is unavailable right now: try again later") from None


# File system work, run in a thread.

def _temporary(path: str) -> str:
    # A leading dot: no key can name it. Random: no other thread or node picks it.
    head, name = os.path.split(path)
    return os.path.join(head, f".{name}.{secrets.token_hex(8)}.part")


def _write_atomically(path: str, data: bytes) -> None:
    make_private_dir(os.path.dirname(path))
    temporary = _temporary(path)
    try:
        with open_private(temporary, "xb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        _unlink(temporary)
        raise


def _move_in(source: str, path: str) -> None:
    make_private_dir(os.path.dirname(path))
    descriptor = os.open(source, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fchmod(descriptor, PRIVATE_FILE)
        os.fsync(descriptor)  # the bytes are on disk before the name is
    finally:
        os.close(descriptor)
    try:
        os.replace(source, path)
        return
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    # Another file system (a shared mount): copy beside the target, then rename.
    temporary = _temporary(path)
    try:
        with open(source, "rb") as original, open_private(temporary, "xb") as out:
            shutil.copyfileobj(original, out, COPY_BUFFER)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        _unlink(temporary)
        raise
    os.unlink(source)


def _read(path: str, offset: int, length: int) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read(length)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _size(path: str) -> int | None:
    try:
        status = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) else None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except (FileNotFoundError, NotADirectoryError):
        pass
