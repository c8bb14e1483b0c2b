"""
Processing jobs on media items: ``POST /media/process`` and
``/video/enhancement``.

A job is asked for on an item the caller may read. Its parameters are
checked at once (400), then it is queued in the
:class:`~wecompany.media.jobs.JobQueue` (503 when full) and answered 202
with its id. It runs in a worker thread that only waits on a child process
(:mod:`wecompany.media.isolated`), reading the item where the file storage
keeps it (a directory) or from a local copy fetched first (S3). Its
result becomes a new item of the caller's, of the same meeting, within the
caller's quota (:meth:`~wecompany.domain.media.MediaService.add_result`),
and the job then reports that item's id. Whatever a job fetched or wrote
is removed when it ends, however it ends.
"""

from __future__ import annotations

import os
import secrets
import shutil

from twisted.logger import Logger

from wecompany.errors import NotFound, Unavailable
from wecompany.media.isolated import run_isolated
from wecompany.media.process import Limits, validate
from wecompany.privatefs import make_private_dir, open_private

#: Bytes read from the file storage at a time when an item is fetched for a job.
FETCH_BLOCK = 1 << 20
#: Job ids are 22 characters; anything much longer names no job.
MAX_JOB_ID = 64


class MediaProcessing:
    """
    :param media: the :class:`~wecompany.domain.media.MediaService`.
    :param jobs: the :class:`~wecompany.media.jobs.JobQueue`.
    :param run_disk: the disk thread pool's runner.
    :param work_dir: where jobs fetch items and write results (this node's).
    :param run_job: runs one job in the worker thread, with
        :func:`wecompany.media.process.run`'s arguments (default: in a child
        process; tests may run it in place).
    """

    log = Logger()

    def __init__(self, media, jobs, run_disk, work_dir: str, run_job=run_isolated, limits: Limits = Limits(),
                 mirror=None) -> None:
        self.media = media
        self.jobs = jobs
        self.mirror = mirror  # a JobMirror when clustered: the jobs other nodes run
        self._run_disk = run_disk
        self.work_dir = os.path.abspath(work_dir)
        self._run_job = run_job
        self.limits = limits

    async def submit(self, user_id: int, media_id: int, process_type: str, params) -> dict:
        """Queue a job on an item ``user_id`` may read -> ``{job_id, status}``."""
        record = await self.media.readable(user_id, media_id)
        params = validate(process_type, params if params is not None else {}, self.limits)
        if not self.jobs.has_room():  # before fetching anything
            raise Unavailable("processing queue full")
        job_dir = os.path.join(self.work_dir, secrets.token_hex(12))
        await self._run_disk(make_private_dir, job_dir)
        try:
            source, fetched = await self._source(record, job_dir)
            job = self.jobs.submit(user_id, self._work, process_type, source, fetched, job_dir, params,
                                   on_done=lambda job, result: self._done(job, result, record, job_dir,
                                                                          process_type))
        except BaseException:
            await self._run_disk(shutil.rmtree, job_dir, True)
            raise
        self.log.info("media job {job} for user {user}: {kind} of item {item}", job=job.job_id, user=user_id,
                      kind=process_type, item=record.id)
        return {"job_id": job.job_id, "status": job.status}

    async def status(self, user_id: int, job_id: str) -> dict:
        """
        The caller's job: ``{job_id, status, progress, result_media_id,
        error}``, from this node's queue or, in a cluster, as the node
        running it last wrote it; else NotFound.
        """
        try:
            return self.jobs.to_json(self.jobs.get(job_id, user_id))
        except NotFound:
            if self.mirror is None or len(job_id) > MAX_JOB_ID:
                raise
        found = await self.mirror.look_up(job_id)
        if found is None or found.get("owner") != user_id:
            raise NotFound("no such job")
        return found["job"]

    async def _source(self, record, job_dir: str) -> tuple[str, bool]:
        """Where the job reads the item: (path, whether it is a copy made for the job)."""
        path_of = getattr(self.media.storage, "path_of", None)
        if path_of is not None:
            return path_of(record.storage_key), False
        path = os.path.join(job_dir, "source")
        out = await self._run_disk(open_private, path, "wb")
        try:
            async for block in self.media.blocks(record, FETCH_BLOCK):
                await self._run_disk(out.write, block)
        finally:
            await self._run_disk(out.close)
        return path, True

    def _work(self, process_type, source, fetched, job_dir, params, *, progress, cancelled):
        """In the worker thread: run the job, then drop the copy it read."""
        try:
            return self._run_job(process_type, source, os.path.join(job_dir, "out"), params, limits=self.limits,
                                 progress=progress, cancelled=cancelled)
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        finally:
            if fetched:
                try:
                    os.unlink(source)
                except FileNotFoundError:
                    pass

    async def _done(self, job, result, record, job_dir: str, process_type: str) -> None:
        """On the reactor: the result becomes an item (or is removed if it cannot)."""
        try:
            stem = os.path.splitext(record.filename)[0] or "media"
            name = f"{stem}-{process_type}{result.filename_suffix}"
            item = await self.media.add_result(job.owner_id, record, result.path, name, result.content_type)
            job.result_media_id = item.id
        finally:
            await self._run_disk(shutil.rmtree, job_dir, True)

