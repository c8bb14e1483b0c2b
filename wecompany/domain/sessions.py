"""Who is online: identities and the in-memory session registry."""

from __future__ import annotations

import attrs


@attrs.frozen
class Identity:
    """
    A user as seen by the live services.

    ``user_id`` is the decimal string of the account id (what the TCP protocol
    and presence carry). ``account_id`` is ``None`` only for legacy anonymous
    TCP sessions (``--allow-anonymous``), whose ``user_id`` is the string they
    claimed and which have no durable data.
    """

    user_id: str
    username: str
    account_id: int | None

    @classmethod
    def of_user(cls, user) -> "Identity":
        return cls(str(user.id), user.username, user.id)


class SessionRegistry:
    """
    Every live client of this daemon, keyed by user.

    A user has at most one *chat* session (``kind == "tcp"``: the desktop
    client that receives text, calls and files) and any number of other
    sessions (meeting signaling). A user is online while it has any session.
    Pure bookkeeping: the caller decides what replacing or closing means.
    """

    def __init__(self) -> None:
        self._chat: dict[str, object] = {}
        self._sessions: dict[str, list] = {}
        self._names: dict[str, str] = {}  # lower-case username -> user_id, online users only
        self._identities: dict[str, Identity] = {}

    def attach(self, client):
        """
        Register ``client``. Returns ``(first, replaced)``: whether the user
        just came online, and the older chat client this one displaces (or None).
        """
        ident = client.identity
        uid = ident.user_id
        sessions = self._sessions.setdefault(uid, [])
        first = not sessions
        sessions.append(client)
        self._identities[uid] = ident
        self._names[ident.username.lower()] = uid
        replaced = None
        if client.kind == "tcp":
            replaced = self._chat.get(uid)
            self._chat[uid] = client
        return first, replaced

    def detach(self, client) -> tuple[bool, bool]:
        """Forget ``client``. Returns ``(was_attached, user_went_offline)``."""
        uid = client.identity.user_id
        sessions = self._sessions.get(uid)
        if not sessions or client not in sessions:
            return False, False
        sessions.remove(client)
        if self._chat.get(uid) is client:
            del self._chat[uid]
        if sessions:
            return True, False
        del self._sessions[uid]
        ident = self._identities.pop(uid)
        if self._names.get(ident.username.lower()) == uid:
            del self._names[ident.username.lower()]
        return True, True

    def chat_client(self, user_id: str):
        return self._chat.get(user_id)

    def chat_clients(self):
        return list(self._chat.values())

    def sessions_of(self, user_id: str) -> list:
        return list(self._sessions.get(user_id, ()))

    def is_online(self, user_id: str) -> bool:
        return user_id in self._sessions

    def find_online(self, name_or_id: str) -> Identity | None:
        """An online user by user id or (case-insensitive) username."""
        ident = self._identities.get(name_or_id)
        if ident is None:
            uid = self._names.get(name_or_id.lower())
            ident = self._identities.get(uid) if uid is not None else None
        return ident

    def online(self, offset: int = 0, limit: int = 100) -> tuple[int, list[Identity]]:
        """A page of online users in the order they came online."""
        idents = list(self._identities.values())
        return len(idents), idents[offset:offset + limit]

    @property
    def online_count(self) -> int:
        return len(self._sessions)

    @property
    def session_count(self) -> int:
        return sum(len(s) for s in self._sessions.values())


class UserDirectory:
    """
    Finds a user by id or username: online ones from the registry, the rest
    from the store. Shared by the services that address users (text, calls,
    contacts, file transfers).
    """

    def __init__(self, store, registry: SessionRegistry) -> None:
        self.store = store
        self.registry = registry

    async def resolve_user(self, name_or_id: str) -> Identity | None:
        """An online user, or an account, by user id or username; None if unknown (or deleted)."""
        if not name_or_id:
            return None
        ident = self.registry.find_online(name_or_id)
        if ident is not None:
            return ident
        if name_or_id.isdigit() and len(name_or_id) < 19:
            user = await self.store.get_user(int(name_or_id))
        elif name_or_id.isascii():
            user = await self.store.get_user_by_username(name_or_id)
        else:
            user = None
        if user is None or user.status == "deleted":
            return None
        return Identity.of_user(user)
