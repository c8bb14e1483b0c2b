"""``/api/v1/admin``: user and meeting administration (role ``admin``) and ``/api/v1/stats``."""

from __future__ import annotations

from wecompany.api.routing import ADMIN, Call, endpoint
from wecompany.api.validation import PAGE, Field
from wecompany.api.views import MEETING_SCHEMA, MESSAGE_SCHEMA, USER_SCHEMA, meeting_view, page_schema, page_view, user_view

from wecompany.domain.meetings import STATUSES
from wecompany.errors import InvalidInput, NotFound

USER = "/v1/admin/users/<int:user_id>"

STATS_SCHEMA = {
    "type": "object",
    "required": ["online_users", "sessions", "active_calls", "calls", "rooms", "meetings"],
    "properties": {
        "online_users": {"type": "integer"}, "sessions": {"type": "integer"},
        "active_calls": {"type": "integer"}, "calls": {"type": "integer"}, "rooms": {"type": "integer"},
        "meetings": {"type": "object", "properties": {s: {"type": "integer"} for s in STATUSES}},
        "users": {"type": "integer"},
        "cluster": {"type": "object", "description": "admin only: this node, Redis, the live nodes"},
    },
}


class AdminRoutes:
    """Mixin of :class:`~wecompany.api.app.RestAPI`."""

    @endpoint("GET", "/v1/admin/users", summary="List users", tag="admin", auth=ADMIN,
              query={**PAGE, "keyword": Field("string", max_length=100),
                     "status": Field("string", choices=("active", "banned", "deleted"))},
              data=page_schema(USER_SCHEMA), errors=(400,))
    async def admin_list_users(self, call: Call):
        q = call.query
        total, users = await self.store.list_users((q["page"] - 1) * q["page_size"], q["page_size"],
                                                   keyword=q.get("keyword") or None, status=q.get("status"))
        profiles = await self.store.get_profiles([u.id for u in users])
        return page_view([user_view(u, profiles.get(u.id)) for u in users], total, q["page"], q["page_size"])

    @endpoint("GET", USER, summary="A user", tag="admin", auth=ADMIN, data=USER_SCHEMA, errors=(404,))
    async def admin_get_user(self, call: Call):
        user = await self._target(call)
        return user_view(user, await self.store.get_profile(user.id))

    @endpoint("PUT", USER, summary="Change a user's role, status or email", tag="admin", auth=ADMIN,
              body={"role": Field("string", choices=("user", "admin")),
                    "status": Field("string", choices=("active", "banned")),
                    "email": Field("string", min_length=3, max_length=254),
                    "nickname": Field("string", min_length=1, max_length=64)},
              data=USER_SCHEMA, errors=(400, 404))
    async def admin_update_user(self, call: Call):
        user = await self._target(call)
        changes = {k: call.body[k] for k in ("role", "email") if k in call.body}
        status = call.body.get("status")
        if user.id == call.user.id and (changes.get("role", "admin") != "admin" or status == "banned"):
            raise InvalidInput("administrators cannot demote or ban themselves")
        if changes:
            user = await self.store.update_user(user.id, changes)
        # A ban signs the user out everywhere: the domain's one path for it.
        if status == "banned" and user.status != "banned":
            user = await self.lifecycle.ban(user)
        elif status == "active" and user.status != "active":
            user = await self.lifecycle.unban(user)
        profile = await self.store.get_profile(user.id)
        if "nickname" in call.body:
            profile = await self.store.update_profile(user.id, {"nickname": call.body["nickname"]},
                                                      self.clock.seconds())
        return user_view(user, profile)

    @endpoint("POST", USER + "/ban", summary="Ban a user (signs the user out everywhere: tokens, sessions)",
              tag="admin",
              auth=ADMIN, data=USER_SCHEMA, errors=(400, 404))
    async def admin_ban_user(self, call: Call):
        user = await self._target(call)
        if user.id == call.user.id:
            raise InvalidInput("administrators cannot ban themselves")
        user = await self.lifecycle.ban(user)
        return user_view(user, await self.store.get_profile(user.id))

    @endpoint("POST", USER + "/unban", summary="Lift a ban", tag="admin", auth=ADMIN, data=USER_SCHEMA,
              errors=(400, 404))
    async def admin_unban_user(self, call: Call):
        user = await self.lifecycle.unban(await self._target(call))
        return user_view(user, await self.store.get_profile(user.id))

    @endpoint("DELETE", USER, summary="Delete a user's account", tag="admin", auth=ADMIN, data=MESSAGE_SCHEMA,
              errors=(400, 404))
    async def admin_delete_user(self, call: Call):
        user = await self._target(call)
        if user.id == call.user.id:
            raise InvalidInput("use DELETE /api/v1/users/account to delete your own account")
        await self.lifecycle.delete_account(user)
        return {"message": "account deleted"}

    @endpoint("GET", "/v1/admin/meetings", summary="List every meeting", tag="admin", auth=ADMIN,
              query={**PAGE, "status": Field("string", choices=STATUSES), "keyword": Field("string", max_length=100)},
              data=page_schema(MEETING_SCHEMA), errors=(400,))
    async def admin_list_meetings(self, call: Call):
        q = call.query
        total, meetings = await self.meetings.list(q["page"], q["page_size"], q.get("status"), q.get("keyword"))
        return page_view([meeting_view(m) for m in meetings], total, q["page"], q["page_size"])

    @endpoint("POST", "/v1/admin/meetings/<int:meeting_id>/end", summary="Force-end a meeting", tag="admin",
              auth=ADMIN, data=MEETING_SCHEMA, errors=(400, 404))
    async def admin_end_meeting(self, call: Call):
        return meeting_view(await self.meetings.end(call.user, call.params["meeting_id"], force=True))

    @endpoint("GET", "/v1/admin/stats", summary="Service statistics", tag="admin", auth=ADMIN, data=STATS_SCHEMA)
    async def admin_stats(self, call: Call):
        stats = await self._stats()
        stats["users"], _ = await self.store.list_users(0, 1)
        stats["cluster"] = self.domain.cluster.status()
        return stats

    @endpoint("GET", "/v1/stats/overview", summary="Live statistics", tag="stats", data=STATS_SCHEMA)
    async def stats_overview(self, call: Call):
        return await self._stats()

    async def _stats(self) -> dict:
        meetings = {}
        for status in STATUSES:
            meetings[status], _ = await self.store.list_meetings(0, 1, statuses=(status,))
        return {**self.domain.live_counts(), "meetings": meetings}

    async def _target(self, call: Call):
        user = await self.store.get_user(call.params["user_id"])
        if user is None:
            raise NotFound("no such user", error_code=1003)
        return user


