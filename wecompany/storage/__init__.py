"""
Files every node of a cluster can reach: avatars and transferred files.

:class:`~wecompany.storage.interface.IFileStorage` is what the domain
sees; ``--file-storage`` chooses the implementation, made once by
:func:`open_storage` (from ``build_domain``):

* by default, :class:`~wecompany.storage.local.DirectoryStorage` on the data
  directory, where the files always were (``avatars/``, ``media/``);
* ``file:/path``: the same, on a directory every node mounts;
* ``s3://bucket/prefix?endpoint=...&region=...``:
  :class:`~wecompany.storage.s3.S3Storage`, an S3-compatible object store.

Keys are the same everywhere: ``avatars/<name>`` and
``media/transfers/<xx>/<id>``.
"""

from __future__ import annotations

import os

from wecompany.config import ConfigError, S3Location, SharedDirectory
from wecompany.storage.interface import IFileStorage, KeyMissing, check_key

__all__ = ["IFileStorage", "KeyMissing", "check_key", "check_location", "open_storage"]


def open_storage(location: SharedDirectory | S3Location | None, data_dir: str, run_in_thread,
                 s3_client_factory=None) -> IFileStorage:
    """
    The storage ``--file-storage`` names (``location``; None for the data directory).

    :param run_in_thread: the disk thread pool's runner; all storage work runs in it.
    :param s3_client_factory: makes the S3 client (default: boto3's, with
        the standard credential chain); tests pass a fake.
    """
    if location is None:
        from wecompany.storage.local import DirectoryStorage
        return DirectoryStorage(data_dir, run_in_thread)
    if isinstance(location, SharedDirectory):
        from wecompany.storage.local import DirectoryStorage
        return DirectoryStorage(location.path, run_in_thread)
    from wecompany.storage.s3 import S3Storage, make_client
    if s3_client_factory is None:
        def s3_client_factory():
            return make_client(location)
    return S3Storage(s3_client_factory, location.bucket, location.prefix, run_in_thread,
                     endpoint=location.endpoint)


def check_location(location: SharedDirectory | S3Location | None) -> None:
    """
    At start, before anything listens: what ``location`` needs is there
    (boto3 for ``s3://``; the directory, mounted, for ``file:``), else
    :class:`ConfigError` saying what is missing. Blocking (one ``stat``).
    """
    if isinstance(location, S3Location):
        from wecompany.storage.s3 import require_boto3
        require_boto3()
    elif isinstance(location, SharedDirectory) and not os.path.isdir(location.path):
        # Never created here: an unmounted share would quietly become a local directory.
        raise ConfigError(f"file-storage: {location.path} is not a directory (mount the shared directory "
                          f"first, or create it)")
