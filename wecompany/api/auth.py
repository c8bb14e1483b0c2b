"""``/api/v1/auth``: register, login, refresh, logout, forgot and reset password."""

from __future__ import annotations

from wecompany.api.routing import PUBLIC, Call, endpoint
from wecompany.api.validation import Field
from wecompany.api.views import MESSAGE_SCHEMA, TOKENS_SCHEMA, USER_SCHEMA, user_view
from wecompany.errors import InvalidCredentials, InvalidInput, WeCompanyError

PASSWORD = Field("string", required=True, min_length=1, max_length=1024)


class AuthRoutes:
    """Mixin of :class:`~wecompany.api.app.RestAPI`."""

    @endpoint("POST", "/v1/auth/register", summary="Create an account", tag="auth", auth=PUBLIC,
              body={"username": Field("string", required=True, min_length=1, max_length=64),
                    "email": Field("string", required=True, min_length=1, max_length=254),
                    "password": PASSWORD,
                    "nickname": Field("string", max_length=64)},
              data=USER_SCHEMA, errors=(400, 503), rate_limited=True)
    async def register(self, call: Call):
        b = call.body
        user = await self.accounts.register(b["username"], b["password"], b["email"], b.get("nickname") or None)
        return user_view(user, await self.store.get_profile(user.id))

    @endpoint("POST", "/v1/auth/login", summary="Log in with username or email", tag="auth", auth=PUBLIC,
              body={"username": Field("string", required=True, min_length=1, max_length=254,
                                      description="username or email"),
                    "password": PASSWORD},
              data=TOKENS_SCHEMA, errors=(400, 403, 503), rate_limited=True)
    async def login(self, call: Call):
        try:
            user, access, refresh = await self.credentials.login(call.body["username"], call.body["password"],
                                                                 self.client_address(call.request))
        except InvalidCredentials as e:
            self.domain.stats.login("rest", ok=False)
            # The client family expects 400 with the reason for bad credentials.
            raise InvalidInput(e.message, error_code=e.error_code) from None
        except WeCompanyError:  # refused (rate limits, a banned account)
            self.domain.stats.login("rest", ok=False)
            raise
        self.domain.stats.login("rest", ok=True)
        return await self._tokens_view(user, access, refresh)

    @endpoint("POST", "/v1/auth/refresh", summary="Rotate a refresh token", tag="auth", auth=PUBLIC,
              body={"refresh_token": Field("string", required=True, min_length=1, max_length=512)},
              data=TOKENS_SCHEMA, errors=(400, 401, 403), rate_limited=True)
    async def refresh(self, call: Call):
        user, access, refresh = await self.credentials.refresh(call.body["refresh_token"])
        return await self._tokens_view(user, access, refresh)

    @endpoint("POST", "/v1/auth/logout", summary="Revoke one of the caller's refresh tokens", tag="auth",
              body={"refresh_token": Field("string", max_length=512)}, data=MESSAGE_SCHEMA, errors=(400, 401))
    async def logout(self, call: Call):
        await self.credentials.logout(call.user, call.body.get("refresh_token", ""))
        return {"message": "logged out"}

    @endpoint("POST", "/v1/auth/forgot-password", summary="Mail a single-use password reset token",
              tag="auth", auth=PUBLIC, body={"email": Field("string", required=True, min_length=3, max_length=254)},
              data=MESSAGE_SCHEMA, errors=(400,), rate_limited=True)
    async def forgot_password(self, call: Call):
        await self.credentials.forgot_password(call.body["email"])
        return {"message": "if the address belongs to an account, a reset token has been sent to it"}

    @endpoint("POST", "/v1/auth/reset-password", summary="Set a new password with a reset token",
              tag="auth", auth=PUBLIC,
              body={"token": Field("string", required=True, min_length=1, max_length=512),
                    "new_password": PASSWORD},
              data=MESSAGE_SCHEMA, errors=(400,), rate_limited=True)
    async def reset_password(self, call: Call):
        await self.credentials.reset_password(call.body["token"], call.body["new_password"])
        return {"message": "password changed"}

    async def _tokens_view(self, user, access: str, refresh: str) -> dict:
        return {"token": access, "access_token": access, "refresh_token": refresh, "token_type": "Bearer",
                "expires_in": int(self.accounts.tokens.ttl),
                "user": user_view(user, await self.store.get_profile(user.id))}
