"""
The AI engines behind ``/api/v1/speech``, ``/api/v1/audio`` and ``/api/v1/ai``:
speech recognition, denoising, emotion and synthetic-speech detection, run
off the reactor thread in a bounded pool (:mod:`wecompany.ai.service`).
See ``docs/ai.rst``.
"""
