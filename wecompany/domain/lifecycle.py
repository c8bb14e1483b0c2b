"""What ends an account's sign-ins (a new password, a ban, deletion), in one place."""

from __future__ import annotations

from twisted.logger import Logger

from wecompany.errors import Forbidden, InvalidInput, Unauthenticated


class AccountDeleted(Unauthenticated):
    default_message = "account deleted"


class AccountBanned(Forbidden):
    default_message = "account is disabled"  # as token login answers a banned user


class AccountLifecycle:
    """
    Signing a user out everywhere, and the account changes that do it.

    :meth:`sign_out_everywhere` is the one path: every access token of the
    user stops working at once (the token version goes up, and token logins
    compare it), every refresh token is revoked, and every live session (TCP
    and WebSocket) is told why and closed. A password change or reset
    (through :class:`~wecompany.domain.accounts.Credentials`), a ban and an
    account deletion all take it.

    Deleting an account keeps the user row (ids in history stay meaningful)
    but marks it ``deleted`` and frees its email; the user's meetings are
    told (``meetings.user_deleted``: hosted meetings are cancelled or ended).

    :param store: IStore + IMeetingStore.
    :param registry: the :class:`~wecompany.domain.sessions.SessionRegistry`.
    :param clock: ``IReactorTime``.
    :param meetings: the :class:`~wecompany.domain.meetings.MeetingService`.
    """

    log = Logger()

    def __init__(self, store, registry, clock, meetings=None, cluster=None) -> None:
        from wecompany.mirror.cluster import LocalCluster

        self.store = store
        self.registry = registry
        self.clock = clock
        self.meetings = meetings
        self.cluster = cluster if cluster is not None else LocalCluster()

    async def sign_out_everywhere(self, user_id: int, error) -> int:
        """End every token and live session of the user; the sessions are told ``error``. -> refresh tokens revoked."""
        revoked = await self.store.revoke_all_tokens(user_id, self.clock.seconds())
        sessions = self.registry.sessions_of(str(user_id))
        for client in sessions:
            client.disconnect(error)
        self.cluster.sign_out_elsewhere(str(user_id), error)  # and on every other node
        self.log.info("user {user_id} signed out everywhere ({why}): {revoked} refresh tokens, {sessions} sessions",
                      user_id=user_id, why=error.message, revoked=revoked, sessions=len(sessions))
        return revoked

    async def ban(self, user):
        """-> the banned UserRecord; the user is signed out everywhere."""
        _not_deleted(user)
        banned = await self.store.update_user(user.id, {"status": "banned"})
        await self.sign_out_everywhere(user.id, AccountBanned())
        return await self.store.get_user(user.id) or banned

    async def unban(self, user):
        """-> the active UserRecord (its old tokens stay revoked: it logs in again)."""
        _not_deleted(user)
        return await self.store.update_user(user.id, {"status": "active"})

    async def delete_account(self, user) -> None:
        await self.store.update_user(user.id, {"status": "deleted", "email": None})
        await self.sign_out_everywhere(user.id, AccountDeleted())
        if self.meetings is not None:
            await self.meetings.user_deleted(user.id)
        self.log.info("user {user_id} deleted", user_id=user.id)


def _not_deleted(user) -> None:
    # A deleted account stays deleted: neither a ban nor lifting one brings it back.
    if user.status == "deleted":
        raise InvalidInput("the account is deleted")
