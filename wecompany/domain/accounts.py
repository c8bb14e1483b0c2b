"""Accounts: registration, password and token login. Shared by TCP and REST."""

from __future__ import annotations

import hashlib
import secrets

from twisted.logger import Logger

from wecompany.errors import (
    USER_NOT_FOUND, WRONG_PASSWORD, Forbidden, InvalidCredentials, InvalidInput, RegistrationClosed,
    Unauthenticated, UsernameTaken,
)
from wecompany.domain.passwords import PasswordPolicy, check_email, check_username


class Accounts:
    """
    The account service.

    :param store: an :class:`~wecompany.store.interface.IStore`.
    :param hasher: a :class:`~wecompany.domain.passwords.PasswordHasher`.
    :param tokens: a :class:`~wecompany.domain.tokens.TokenIssuer`.
    :param clock: an ``IReactorTime``.
    :param guard: the :class:`~wecompany.domain.ratelimit.LoginGuard` every
        password check goes through (one for all transports).
    :param users: the :class:`~wecompany.domain.usercache.UserCache` token
        logins and profile reads go through (the store invalidates it); None:
        every read goes to the store.
    :param open_registration: whether clients may register themselves
        (``--registration open``); when not, :meth:`register` refuses and
        accounts are made by an operator (:meth:`create`).
    """

    log = Logger()

    def __init__(self, store, hasher, tokens, clock, guard, policy: PasswordPolicy | None = None,
                 users=None, open_registration: bool = True) -> None:
        self.store = store
        self.hasher = hasher
        self.tokens = tokens
        self.clock = clock
        self.guard = guard
        self.policy = policy or PasswordPolicy()
        self.users = users
        self.open_registration = open_registration

    async def register(self, username: str, password: str, email: str | None = None,
                       nickname: str | None = None):
        """
        A client registering itself (TCP REGISTER, REST register) -> UserRecord;
        :class:`RegistrationClosed` under ``--registration closed``.
        """
        if not self.open_registration:
            raise RegistrationClosed()
        return await self.create(username, password, email, nickname)

    async def create(self, username: str, password: str, email: str | None = None,
                     nickname: str | None = None, role: str = "user"):
        """
        Validate, hash off-thread and create the account -> UserRecord: the
        one way an account is made, by a client's registration or by an
        operator (``wecompany user add``, whatever ``--registration`` says).
        """
        check_username(username)
        if email is not None:
            check_email(email)
        self.policy.check(password, username)
        # Fail fast on a taken name before paying for a hash; the store checks
        # again inside its transaction.
        if await self.store.get_user_by_username(username) is not None:
            raise UsernameTaken()
        password_hash = await self.hasher.hash(password)
        user = await self.store.create_user(username, password_hash, email, nickname,
                                            self.clock.seconds(), role=role)
        self.log.info("registered user {user_id} ({username}, {role})", user_id=user.id, username=user.username,
                      role=role)
        return user

    async def authenticate(self, login: str, password: str, address: str):
        """
        Username (or email) and password, from client ``address`` -> UserRecord.

        Raises :class:`InvalidCredentials` with error_code 1003 (no such user)
        or 1004 (wrong password). Both cost the same: a hash is verified
        either way (against a dummy for an unknown user), and both count as a
        failure against the address and the account (an unknown name counts
        against the name) in :attr:`guard`, whose slot is taken before the
        hash; past its limits the answer is :class:`RateLimited`.
        """
        if not isinstance(login, str) or not isinstance(password, str):
            raise InvalidInput("username and password must be strings")
        await self.guard.check_address(address)
        user = await self.store.get_user_by_login(login) if login else None
        usable = user is not None and user.status != "deleted"
        attempt = await self.guard.attempt(address, f"user:{user.id}" if usable else f"name:{login.strip().lower()}")
        try:
            ok = await self.hasher.verify(user.password_hash if usable else None, password)
        except BaseException:
            attempt.abandoned()  # not decided (the hash queue is full): nothing to count
            raise
        if not usable:
            attempt.failed()
            raise InvalidCredentials("user not found", error_code=USER_NOT_FOUND)
        if not ok:
            attempt.failed()
            raise InvalidCredentials("invalid password", error_code=WRONG_PASSWORD)
        attempt.succeeded()
        self._check_active(user)
        if self.hasher.needs_rehash(user.password_hash):
            await self.store.set_password_hash(user.id, await self.hasher.hash(password))
        await self.store.record_login(user.id, self.clock.seconds())
        return user

    async def authenticate_token(self, token: str):
        """
        A valid access token of an existing, active user -> UserRecord.

        The token must name the user's current token version: raising it
        (:meth:`~wecompany.store.interface.IMeetingStore.revoke_all_tokens`)
        ends every token issued before at once. The user's row is read for
        each token checked (from :attr:`users`, which every write to it
        invalidates before the write is acknowledged), so this costs nothing more.
        """
        claims = self.tokens.verify(token)
        user = await self.user(claims["user_id"])
        if user is None or user.status == "deleted":
            raise Unauthenticated("invalid token")
        self._check_active(user)  # a banned user hears why (403), not just that the token is old
        if claims.get("ver", 0) != user.token_version:
            raise Unauthenticated("token revoked: log in again")
        return user

    async def user(self, user_id: int):
        """The user's current record (from the cache when it has it) -> UserRecord or None."""
        if self.users is None:
            return await self.store.get_user(user_id)
        return await self.users.user(user_id, self.store.get_user)

    async def profile(self, user_id: int):
        """The user's current profile (from the cache when it has it) -> ProfileRecord or None."""
        if self.users is None:
            return await self.store.get_profile(user_id)
        return await self.users.profile(user_id, self.store.get_profile)

    def issue_token(self, user) -> str:
        return self.tokens.issue(user.id, user.username, user.email, user.token_version)

    @staticmethod
    def _check_active(user) -> None:
        if user.status == "banned":
            raise Forbidden("account is disabled")


class LogMailer:
    """
    The default mail sender: writes the message to the daemon's log, as the
    spec asks. Deployments plug in a real sender with the same ``send``.
    Reset links are secrets: keep such logs private, or configure a sender.
    """

    log = Logger()

    async def send(self, to: str, subject: str, body: str) -> None:
        self.log.info("mail to {to}: {subject}\n{body}", to=to, subject=subject, body=body)


class Credentials:
    """
    Refresh tokens and password life cycle on top of :class:`Accounts`.

    Refresh tokens are random (256 bits), handed out once and stored only as
    their SHA-256; each use rotates them, and a replayed rotated token revokes
    its whole family (someone stole it). Reset tokens are single use and
    expire after ``reset_ttl``. A new password signs the user out everywhere
    through ``lifecycle`` (:class:`~wecompany.domain.lifecycle.AccountLifecycle`).
    """

    log = Logger()

    def __init__(self, accounts: Accounts, lifecycle, mailer=None, refresh_ttl: float = 30 * 86400,
                 reset_ttl: float = 3600, reset_url: str = "/reset-password?token={token}") -> None:
        self.accounts = accounts
        self.lifecycle = lifecycle
        self.store = accounts.store
        self.clock = accounts.clock
        self.mailer = mailer or LogMailer()
        self.refresh_ttl = refresh_ttl
        self.reset_ttl = reset_ttl
        self.reset_url = reset_url

    async def login(self, login: str, password: str, address: str) -> tuple:
        """-> (user, access_token, refresh_token)"""
        user = await self.accounts.authenticate(login, password, address)
        return user, self.accounts.issue_token(user), await self._new_refresh(user.id)

    async def issue(self, user) -> tuple[str, str]:
        """Fresh access and refresh tokens for ``user`` (after registration)."""
        return self.accounts.issue_token(user), await self._new_refresh(user.id)

    async def refresh(self, refresh_token: str) -> tuple:
        """Rotate ``refresh_token`` -> (user, access_token, new_refresh_token)."""
        if not isinstance(refresh_token, str) or not 16 <= len(refresh_token) <= 200:
            raise Unauthenticated("invalid refresh token")
        now = self.clock.seconds()
        new_value = secrets.token_urlsafe(32)
        record = await self.store.rotate_refresh_token(_digest(refresh_token), _digest(new_value), now,
                                                       now + self.refresh_ttl)
        if record is None:
            raise Unauthenticated("invalid or expired refresh token")
        user = await self.store.get_user(record.user_id)
        if user is None or user.status == "deleted":
            raise Unauthenticated("invalid or expired refresh token")
        self.accounts._check_active(user)
        return user, self.accounts.issue_token(user), new_value

    async def logout(self, user, refresh_token: str) -> None:
        """Revoke ``refresh_token`` if it is one of ``user``'s (anyone else's is left alone)."""
        if isinstance(refresh_token, str) and refresh_token:
            await self.store.revoke_refresh_token(_digest(refresh_token), user.id, self.clock.seconds())

    async def change_password(self, user, old_password: str, new_password: str, address: str) -> tuple:
        """
        Verify the old password and set the new one, which signs the user out
        everywhere; -> (user, access_token, refresh_token), fresh ones for
        the caller. The old password is a guess like a login's (someone
        holding a stolen token could try them here), so it goes through the
        same guard.
        """
        attempt = await self.accounts.guard.attempt(address, f"user:{user.id}")
        try:
            ok = await self.accounts.hasher.verify(user.password_hash, old_password)
        except BaseException:
            attempt.abandoned()
            raise
        if not ok:
            attempt.failed()
            raise InvalidCredentials("invalid password", error_code=WRONG_PASSWORD)
        attempt.succeeded()
        await self._set_password(user, new_password)
        user = await self.store.get_user(user.id)
        return user, self.accounts.issue_token(user), await self._new_refresh(user.id)

    async def forgot_password(self, email: str) -> None:
        """
        Create a single-use reset token and mail it. Answers the same whether
        or not the address is known, so it cannot be used to probe for accounts.
        """
        user = await self.store.get_user_by_login(email) if isinstance(email, str) and "@" in email else None
        if user is None or user.status != "active" or not user.email:
            self.log.info("password reset requested for an unknown address")
            return
        token = secrets.token_urlsafe(32)
        now = self.clock.seconds()
        await self.store.add_password_reset(_digest(token), user.id, now, now + self.reset_ttl)
        link = self.reset_url.format(token=token)
        await self.mailer.send(user.email, "Reset your WeCompany password",
                               f"Someone asked to reset the password of {user.username}.\n"
                               f"Use this token within {int(self.reset_ttl // 60)} minutes: {token}\n"
                               f"or open {link}\nIf it was not you, ignore this message.")

    async def reset_password(self, token: str, new_password: str) -> None:
        if not isinstance(token, str) or not 16 <= len(token) <= 200:
            raise InvalidInput("invalid or expired reset token")
        user_id = await self.store.consume_password_reset(_digest(token), self.clock.seconds())
        user = await self.store.get_user(user_id) if user_id is not None else None
        if user is None or user.status == "deleted":
            raise InvalidInput("invalid or expired reset token")
        await self._set_password(user, new_password)

    async def set_password(self, user, new_password: str) -> None:
        """
        An operator's new password for ``user`` (``wecompany user passwd``):
        the same policy and hashing as a change or reset, and it signs the
        user out everywhere.
        """
        if user.status == "deleted":
            raise InvalidInput("the account is deleted")
        await self._set_password(user, new_password)

    async def _set_password(self, user, new_password: str) -> None:
        self.accounts.policy.check(new_password, user.username)
        await self.store.set_password_hash(user.id, await self.accounts.hasher.hash(new_password))
        await self.lifecycle.sign_out_everywhere(user.id, PasswordChanged())
        self.log.info("password of user {user_id} changed", user_id=user.id)

    async def _new_refresh(self, user_id: int) -> str:
        value = secrets.token_urlsafe(32)
        now = self.clock.seconds()
        await self.store.add_refresh_token(_digest(value), user_id, secrets.token_hex(8), now,
                                           now + self.refresh_ttl)
        return value


class PasswordChanged(Unauthenticated):
    default_message = "the password was changed: log in again"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
