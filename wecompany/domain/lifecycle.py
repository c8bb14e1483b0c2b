"""What deleting an account means, in one place."""

from __future__ import annotations

from twisted.logger import Logger

from wecompany.errors import Unauthenticated


class AccountDeleted(Unauthenticated):
    default_message = "account deleted"


class AccountLifecycle:
    """
    Deleting an account: the user row is kept (ids in history stay
    meaningful) but marked ``deleted`` and its email freed; every refresh
    token is revoked (access tokens stop working at once, because token
    login checks the status); the user's meetings are told (``meetings`` has
    ``user_deleted``: hosted meetings are cancelled or ended); and every live
    session of the user is closed.
    """

    log = Logger()

    def __init__(self, store, credentials, registry, meetings=None) -> None:
        self.store = store
        self.credentials = credentials
        self.registry = registry
        self.meetings = meetings

    async def delete_account(self, user) -> None:
        await self.store.update_user(user.id, {"status": "deleted", "email": None})
        await self.credentials.revoke_all(user.id)
        if self.meetings is not None:
            await self.meetings.user_deleted(user.id)
        for client in self.registry.sessions_of(str(user.id)):
            client.disconnect(AccountDeleted())
        self.log.info("user {user_id} deleted their account", user_id=user.id)
