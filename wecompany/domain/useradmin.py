"""
An operator's user commands (``wecompany user ...``), on the domain's own services.

:class:`UserAdministration` is the one code path of each command: the
daemon runs it for a request on its control socket (:mod:`wecompany.control`),
so a ban or a new password signs the user out of that daemon's sessions at
once and goes through its caches and cluster as an admin's REST action
does; with no daemon running, the command line builds the same domain and
runs it offline (:mod:`wecompany.cli.users`). Users are named by username,
as an operator knows them.

Every answer is a JSON-able dict (:func:`user_summary`), the same from
either path.
"""

from __future__ import annotations

from twisted.logger import Logger

from wecompany.errors import USER_NOT_FOUND, InvalidInput, NotFound
from wecompany.times import rfc3339

#: Users read per store query by :meth:`UserAdministration.list`.
LIST_PAGE = 500


def user_summary(user, profile=None) -> dict:
    """What an operator sees of an account (never its password hash)."""
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email or "",
        "nickname": profile.nickname if profile is not None else user.username,
        "role": user.role,
        "status": user.status,
        "created_at": rfc3339(user.created_at),
        "last_login": rfc3339(user.last_login),
    }


class UserAdministration:
    """
    ``add``, ``list``, ``show``, ``passwd``, ``ban``, ``unban`` and ``delete``
    by username, on a :class:`~wecompany.domain.core.Domain`.
    """

    log = Logger()

    def __init__(self, domain) -> None:
        self.store = domain.store
        self.accounts = domain.accounts
        self.credentials = domain.credentials
        self.lifecycle = domain.lifecycle

    async def add(self, username: str, password: str, email: str | None = None, admin: bool = False) -> dict:
        """A new account, by the rules a registration follows (whatever ``--registration`` says)."""
        user = await self.accounts.create(username, password, email or None, role="admin" if admin else "user")
        self.log.info("operator added user {user_id} ({username})", user_id=user.id, username=user.username)
        return await self._summary(user)

    async def list(self) -> list[dict]:
        """Every account, deleted ones too, by id."""
        found, offset = [], 0
        while True:
            total, users = await self.store.list_users(offset, LIST_PAGE)
            profiles = await self.store.get_profiles([u.id for u in users])
            found.extend(user_summary(u, profiles.get(u.id)) for u in users)
            offset += len(users)
            if not users or offset >= total:
                break
        return sorted(found, key=lambda u: u["id"])

    async def show(self, username: str) -> dict:
        return await self._summary(await self._user(username))

    async def passwd(self, username: str, password: str) -> dict:
        """A new password (the password policy applies); the user is signed out everywhere."""
        user = await self._user(username)
        await self.credentials.set_password(user, password)
        self.log.info("operator set the password of user {user_id}", user_id=user.id)
        return await self._summary(await self.store.get_user(user.id))

    async def ban(self, username: str) -> dict:
        """Banned and signed out everywhere (tokens, TCP and WebSocket sessions)."""
        user = await self._user(username)
        if user.status != "banned":
            user = await self.lifecycle.ban(user)
        self.log.info("operator banned user {user_id}", user_id=user.id)
        return await self._summary(user)

    async def unban(self, username: str) -> dict:
        user = await self._user(username)
        if user.status != "active":
            user = await self.lifecycle.unban(user)
        return await self._summary(user)

    async def delete(self, username: str) -> dict:
        """Deleted (the row stays, marked deleted), signed out everywhere; hosted meetings end."""
        user = await self._user(username)
        if user.status == "deleted":
            raise InvalidInput(f"{username}: the account is already deleted")
        await self.lifecycle.delete_account(user)
        return await self._summary(await self.store.get_user(user.id))

    async def _user(self, username):
        if not isinstance(username, str) or not username:
            raise InvalidInput("a username is required")
        user = await self.store.get_user_by_username(username)
        if user is None:
            raise NotFound(f"no user named {username!r}", error_code=USER_NOT_FOUND)
        return user

    async def _summary(self, user) -> dict:
        return user_summary(user, await self.store.get_profile(user.id))
