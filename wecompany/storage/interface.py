"""
Where the daemon keeps files, as the domain sees it.

Avatars and transferred files must be readable from every node of a
cluster, so they go through one :class:`IFileStorage` instead of the local
disk: a directory (the data directory, or a shared mount), or an
S3-compatible object store. Every method is a coroutine, and its work (file
system calls, HTTP requests) runs in the disk thread pool, never on the
reactor thread.

Keys are relative paths such as ``avatars/7-1f2e.png``: segments of
letters, digits, dots, dashes and underscores, separated by ``/``, none
starting with a dot (so no ``..`` and no hidden files). :func:`check_key`
enforces that before anything touches the backend.

Failures are the project's errors: a key that names nothing is
:class:`KeyMissing` (404); a backend that cannot be reached or refuses is
:class:`~wecompany.errors.Unavailable` (503), with the cause in the log and
never in the message.
"""

from __future__ import annotations

import re

from zope.interface import Attribute, Interface

from wecompany.errors import InvalidInput, NotFound

MAX_KEY = 512
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class KeyMissing(NotFound):
    """Nothing is stored under the key."""

    default_message = "no such file"


class IFileStorage(Interface):
    """Whole files stored under keys, written atomically, read in ranges."""

    read_size = Attribute("The number of bytes one :meth:`read` should ask for to be efficient.")

    def put_bytes(key, data):
        """
        Store ``data`` under ``key``, replacing what was there, atomically:
        a reader sees the old file or the new one, never a part.
        """

    def put_file(key, path):
        """
        Store the local file at ``path`` under ``key``, atomically, as
        :meth:`put_bytes` does, without holding it in memory. On success
        the local file is gone (moved, or uploaded and removed); on failure
        it is left for the caller to remove.
        """

    def read(key, offset, length):
        """
        At most ``length`` bytes of ``key`` from
        ``offset`` (fewer at the end, ``b""`` at or past it); fails with
        :class:`KeyMissing` when nothing is stored under ``key``.
        """

    def size(key):
        """The size of ``key`` in bytes, or None when nothing is stored under it."""

    def delete(key):
        """Remove ``key``; removing what is not there is no error."""

    def describe():
        """Where files go, for the log (``s3://bucket/prefix/``...); never a credential."""


def check_key(key: str) -> str:
    """``key`` if it is a well-formed storage key, else :class:`InvalidInput`."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY \
            or not all(_SEGMENT.fullmatch(segment) for segment in key.split("/")):
        raise InvalidInput("not a storage key")
    return key
