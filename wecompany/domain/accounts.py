"""Accounts: registration, password and token login. Shared by TCP and REST."""

from __future__ import annotations

from twisted.logger import Logger

from wecompany.errors import (
    USER_NOT_FOUND, USERNAME_EXISTS, WRONG_PASSWORD, Conflict, Forbidden, InvalidCredentials,
    Unauthenticated,
)
from wecompany.domain.passwords import PasswordPolicy, check_email, check_username


class Accounts:
    """
    The account service.

    :param store: an :class:`~wecompany.store.interface.IStore`.
    :param hasher: a :class:`~wecompany.domain.passwords.PasswordHasher`.
    :param tokens: a :class:`~wecompany.domain.tokens.TokenIssuer`.
    :param clock: an ``IReactorTime``.
    """

    log = Logger()

    def __init__(self, store, hasher, tokens, clock, policy: PasswordPolicy | None = None) -> None:
        self.store = store
        self.hasher = hasher
        self.tokens = tokens
        self.clock = clock
        self.policy = policy or PasswordPolicy()

    async def register(self, username: str, password: str, email: str | None = None,
                       nickname: str | None = None):
        """Validate, hash off-thread and create the account -> UserRecord."""
        check_username(username)
        if email is not None:
            check_email(email)
        self.policy.check(password, username)
        # Fail fast on a taken name before paying for a hash; the store checks
        # again inside its transaction.
        if await self.store.get_user_by_username(username) is not None:
            raise Conflict("username already exists", error_code=USERNAME_EXISTS)
        password_hash = await self.hasher.hash(password)
        user = await self.store.create_user(username, password_hash, email, nickname,
                                            self.clock.seconds())
        self.log.info("registered user {user_id} ({username})", user_id=user.id, username=user.username)
        return user

    async def authenticate(self, login: str, password: str):
        """
        Username (or email) and password -> UserRecord.

        Raises :class:`InvalidCredentials` with error_code 1003 (no such user)
        or 1004 (wrong password); the hash is verified in both cases so the
        answer takes the same time.
        """
        if not isinstance(login, str) or not isinstance(password, str) or not login:
            raise InvalidCredentials("user not found", error_code=USER_NOT_FOUND)
        user = await self.store.get_user_by_login(login)
        usable = user is not None and user.status != "deleted"
        ok = await self.hasher.verify(user.password_hash if usable else None, password)
        if not usable:
            raise InvalidCredentials("user not found", error_code=USER_NOT_FOUND)
        if not ok:
            raise InvalidCredentials("invalid password", error_code=WRONG_PASSWORD)
        self._check_active(user)
        if self.hasher.needs_rehash(user.password_hash):
            await self.store.set_password_hash(user.id, await self.hasher.hash(password))
        await self.store.record_login(user.id, self.clock.seconds())
        return user

    async def authenticate_token(self, token: str):
        """A valid access token of an existing, active user -> UserRecord."""
        claims = self.tokens.verify(token)
        user = await self.store.get_user(claims["user_id"])
        if user is None or user.status == "deleted":
            raise Unauthenticated("invalid token")
        self._check_active(user)
        return user

    def issue_token(self, user) -> str:
        return self.tokens.issue(user.id, user.username, user.email)

    @staticmethod
    def _check_active(user) -> None:
        if user.status == "banned":
            raise Forbidden("account is disabled")
