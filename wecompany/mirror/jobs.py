"""
Media-processing jobs seen from every node of a cluster.

A job runs on the node that accepted it, but behind a load balancer its
client polls ``GET /media/process/:job_id`` on any node. So the node that
runs a job writes what a client is told of it to ``job:{id}`` (JSON, with
its owner) whenever its status changes, and its progress every second
while it runs; another node that does not hold the job reads the key. The
key expires: ``timeout + keep`` seconds after it was written while the job
is live, ``keep`` seconds once it finished, as the queue forgets it.

While Redis is unreachable, writes are lost (the log said so once) and
another node answers 404 for a job it cannot read; the node running the
job still answers for it.
"""

from __future__ import annotations

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from wecompany.mirror.codec import dumps, loads

#: Seconds between progress writes of a running job.
PROGRESS_EVERY = 1.0


class JobMirror:
    """
    :param cluster: this node's :class:`~wecompany.mirror.cluster.Cluster`.
    :param to_json: what a client is told of a job (``JobQueue.to_json``).
    :param keep: seconds a finished job can still be read (the queue's ``keep_finished``).
    :param timeout: seconds a job may run (the queue's ``timeout``).
    """

    log = Logger()

    def __init__(self, cluster, clock, to_json, *, keep: float, timeout: float) -> None:
        self.cluster = cluster
        self.to_json = to_json
        self.keep = keep
        self.timeout = timeout
        self._running: dict[str, object] = {}
        self._loop = LoopingCall(self._write_progress)
        self._loop.clock = clock

    def key(self, job_id: str) -> str:
        return self.cluster.key("job", job_id)

    def changed(self, job) -> None:
        """The queue's ``on_change``: write the job's state."""
        if job.status == "running":
            self._running[job.job_id] = job
        else:
            self._running.pop(job.job_id, None)
        live = job.status in ("queued", "running")
        self._write(job, self.timeout + self.keep if live else self.keep)
        if self._running and not self._loop.running:
            self._loop.start(PROGRESS_EVERY, now=False)
        elif not self._running and self._loop.running:
            self._loop.stop()

    def _write_progress(self) -> None:
        for job in list(self._running.values()):
            self._write(job, self.timeout + self.keep)

    def _write(self, job, ttl: float) -> None:
        if not self.cluster.link.up:
            return
        value = dumps({"owner": job.owner_id, "job": self.to_json(job)})
        self.cluster.track(self.cluster.link.redis.set(self.key(job.job_id), value, expire=max(1, int(ttl))),
                           f"writing media job {job.job_id}")

    async def look_up(self, job_id: str):
        """``{"owner", "job"}`` of a job another node wrote, or None."""
        if not self.cluster.link.up:
            return None
        try:
            raw = await self.cluster.link.redis.get(self.key(job_id))
        except Exception:
            self.log.failure("reading media job {job_id} failed", job_id=job_id)
            return None
        if raw is None:
            return None
        try:
            found = loads(raw)
        except ValueError:
            return None
        return found if isinstance(found, dict) and isinstance(found.get("job"), dict) else None

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
