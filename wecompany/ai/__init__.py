"""
The AI engines behind ``/api/v1/speech``, ``/api/v1/audio`` and ``/api/v1/ai``:
speech recognition, denoising, emotion and synthetic-speech detection, run
in worker processes, never in the reactor's (:mod:`wecompany.ai.processes`).
See ``docs/ai.rst``.
"""
