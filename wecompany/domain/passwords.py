"""
Password and username policy, and argon2id hashing off the reactor thread.

The same rules apply to TCP REGISTER and REST register (see the API spec):
passwords 8-128 characters with at least three of lower case, upper case,
digit, symbol, and no common password inside; usernames 3-20 letters, digits
or ``_``.
"""

from __future__ import annotations

import re

import argon2
import attrs

from wecompany.errors import InvalidInput, Unavailable

USERNAME_RE = re.compile(r"^[A-Za-z0-9_]{3,20}$")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")

# Checked as substrings, case-insensitively: "MyPassword1!" is refused too.
COMMON_PASSWORDS = (
    "password", "passw0rd", "12345678", "123456789", "qwerty", "qwertz", "azerty",
    "letmein", "welcome", "iloveyou", "admin", "abc123", "11111111", "00000000",
    "monkey", "dragon", "sunshine", "princess", "football", "baseball",
    "trustno1", "superman", "1q2w3e4r", "zaq12wsx", "changeme", "wecompany",
)


@attrs.frozen
class PasswordPolicy:
    """Configurable password rules."""

    min_length: int = 8
    max_length: int = 128
    min_classes: int = 3
    common: tuple[str, ...] = COMMON_PASSWORDS

    def check(self, password: str, username: str | None = None) -> None:
        """Raise :class:`InvalidInput` saying what is wrong, or return None."""
        if not isinstance(password, str):
            raise InvalidInput("password must be a string")
        if len(password) < self.min_length:
            raise InvalidInput(f"password must be at least {self.min_length} characters")
        if len(password) > self.max_length:
            raise InvalidInput(f"password must be at most {self.max_length} characters")
        classes = sum((
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        ))
        if classes < self.min_classes:
            raise InvalidInput(
                f"password must contain at least {self.min_classes} of: lower case, upper case, digit, symbol")
        lowered = password.lower()
        for word in self.common:
            if word in lowered:
                raise InvalidInput("password contains a common password")
        if username and len(username) >= 3 and username.lower() in lowered:
            raise InvalidInput("password must not contain the username")


def check_username(username: str) -> None:
    """Raise :class:`InvalidInput` unless ``username`` is 3-20 letters, digits or ``_``."""
    if not isinstance(username, str) or not USERNAME_RE.match(username):
        raise InvalidInput("username must be 3-20 letters, digits or underscores")


def check_email(email: str) -> None:
    """Raise :class:`InvalidInput` unless ``email`` looks like an address."""
    if not isinstance(email, str) or len(email) > 254 or not EMAIL_RE.match(email):
        raise InvalidInput("email is not a valid address")


class PasswordHasher:
    """
    argon2id hashing, run through ``run_in_thread`` so a burst of logins never
    stalls the reactor.

    :param run_in_thread: ``f(callable, *args) -> Deferred``, normally
        ``functools.partial(threads.deferToThreadPool, reactor, pool)``; tests
        pass a synchronous runner.
    """

    def __init__(self, run_in_thread, time_cost: int = 3, memory_cost: int = 65536,
                 parallelism: int = 4, max_pending: int = 64) -> None:
        self._run_in_thread = run_in_thread
        self.max_pending = max_pending
        self.pending = 0
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism,
            type=argon2.Type.ID)
        # A real hash to verify against when the user does not exist, so both
        # answers cost the same time.
        self._dummy = self._hasher.hash("wecompany-dummy-password")

    async def _run(self, f, *args):
        """
        Run ``f`` in the hash threads, at most ``max_pending`` at a time
        queued: each costs a fraction of a CPU second, so past that a burst
        is refused (503, retry later) instead of queueing without bound.
        """
        if self.pending >= self.max_pending:
            raise Unavailable("too many logins in progress, try again shortly")
        self.pending += 1
        try:
            return await self._run_in_thread(f, *args)
        finally:
            self.pending -= 1

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; never raises for a wrong password or a bad hash."""
        return await self._run(self._verify, password_hash or self._dummy, password,
                               password_hash is None)

    def _verify(self, password_hash: str, password: str, dummy: bool) -> bool:
        try:
            ok = self._hasher.verify(password_hash, password)
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False
        return ok and not dummy

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)
