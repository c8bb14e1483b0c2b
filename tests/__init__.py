"""
WeCompany's tests (``python -m twisted.trial tests``).

Property tests (hypothesis) run derandomized, with no example database and
no deadline: the same cases on every run and machine, so a failure in CI is
one anyone can reproduce, and a noisy machine cannot fail a test by being slow.
"""

from hypothesis import settings

settings.register_profile("wecompany", derandomize=True, database=None, deadline=None)
settings.load_profile("wecompany")
