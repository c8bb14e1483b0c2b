"""
Media processing: the engine behind ``POST /media/process`` and the AI
``/video/enhancement`` route.

* :mod:`wecompany.media.process`: pure, synchronous functions on local
  files (``validate``, ``run``, ``probe``), with PyAV and, for enhancement,
  OpenCV; they run in worker threads, never on the reactor thread.
* :mod:`wecompany.media.jobs`: :class:`~wecompany.media.jobs.JobQueue`, the
  bounded runner that puts them in those threads and reports on them.

Neither knows about HTTP, storage or accounts: the media service fetches the
source file, submits the work and stores the result.
"""
