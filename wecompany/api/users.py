"""``/api/v1/users``: profile, password, avatar, account deletion."""

from __future__ import annotations

import re
import secrets

from wecompany.api.routing import PUBLIC, Call, endpoint
from wecompany.api.validation import Field
from wecompany.api.views import MESSAGE_SCHEMA, PASSWORD_CHANGED_SCHEMA, USER_SCHEMA, user_view
from wecompany.domain.passwords import check_email
from wecompany.errors import InvalidInput, NotFound, TooLarge, Unauthenticated
from wecompany.storage import KeyMissing

MAX_AVATAR = 2 << 20
#: Where avatars are in the file storage (``--file-storage``), which every node reads.
AVATAR_KEYS = "avatars/"

# Image types are recognised by their first bytes, never by what the client claims.
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
    (b"\xff\xd8\xff", "jpg", "image/jpeg"),
    (b"GIF87a", "gif", "image/gif"),
    (b"GIF89a", "gif", "image/gif"),
)
_CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
# What upload_avatar names them: "<user id>-<hex>.<kind>".
_AVATAR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\.[a-z]+")


def image_kind(data: bytes) -> str | None:
    for magic, ext, _ in _IMAGE_MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


class UserRoutes:
    """Mixin of :class:`~wecompany.api.app.RestAPI`."""

    @endpoint("GET", "/v1/users/profile", summary="The caller's profile", tag="users", data=USER_SCHEMA,
              errors=(401,))
    async def get_profile(self, call: Call):
        return user_view(call.user, await self.accounts.profile(call.user.id))

    @endpoint("PUT", "/v1/users/profile", summary="Update the caller's profile", tag="users",
              body={"nickname": Field("string", min_length=1, max_length=64),
                    "email": Field("string", min_length=3, max_length=254),
                    "phone": Field("string", max_length=32),
                    "avatar": Field("string", max_length=512)},
              data=USER_SCHEMA, errors=(400, 401))
    async def update_profile(self, call: Call):
        b = call.body
        user = call.user
        if "email" in b and (b["email"] or "").lower() != (user.email or "").lower():
            check_email(b["email"])
            user = await self.store.update_user(user.id, {"email": b["email"]})
        if "avatar" in b and b["avatar"] and not b["avatar"].startswith(("/", "https://", "http://")):
            raise InvalidInput("avatar must be a URL")
        changes = {k: b[k] for k in ("nickname", "phone", "avatar") if k in b}
        profile = await self.store.update_profile(user.id, changes, self.clock.seconds()) if changes \
            else await self.store.get_profile(user.id)
        return user_view(user, profile)

    @endpoint("POST", "/v1/users/change-password",
              summary="Change the password. Every token and live session of the account ends (this "
                      "request's too); the answer carries fresh tokens for the caller.",
              tag="users", body={"old_password": Field("string", required=True, max_length=1024),
                                 "new_password": Field("string", required=True, max_length=1024)},
              data=PASSWORD_CHANGED_SCHEMA, errors=(400, 401, 429, 503))
    async def change_password(self, call: Call):
        try:
            user, access, refresh = await self.credentials.change_password(
                call.user, call.body["old_password"], call.body["new_password"], self.client_address(call.request))
        except Unauthenticated as e:
            raise InvalidInput(e.message, error_code=e.error_code) from None
        return {"message": "password changed; every other session must log in again", "token": access,
                "access_token": access, "refresh_token": refresh, "token_type": "Bearer",
                "expires_in": int(self.accounts.tokens.ttl)}

    @endpoint("POST", "/v1/users/upload-avatar", summary="Upload an avatar image (multipart field 'avatar' or 'file')",
              tag="users", data=USER_SCHEMA, errors=(400, 401, 413, 503), raw_body="multipart/form-data")
    async def upload_avatar(self, call: Call):
        form = call.request.form  # parsed as it arrived, within bounds (wecompany.web.multipart)
        if form is None:
            raise InvalidInput("send multipart/form-data with a boundary")
        parts = form.get("avatar") or form.get("file")
        if not parts:
            raise InvalidInput("send the image as multipart/form-data field 'avatar'")
        data = parts[0].data
        if len(data) > MAX_AVATAR:
            raise TooLarge(f"avatar larger than {MAX_AVATAR} bytes")
        kind = image_kind(data)
        if kind is None:
            raise InvalidInput("avatar must be a PNG, JPEG, GIF or WebP image")
        name = f"{call.user.id}-{secrets.token_hex(8)}.{kind}"
        await self.file_storage.put_bytes(AVATAR_KEYS + name, data)
        profile = await self.store.update_profile(call.user.id, {"avatar": f"/api/v1/avatars/{name}"},
                                                  self.clock.seconds())
        return user_view(call.user, profile)

    @endpoint("GET", "/v1/avatars/<string:name>", summary="An avatar image", tag="users", auth=PUBLIC,
              errors=(404, 503))
    async def get_avatar(self, call: Call):
        name = call.params["name"]
        ext = name.rpartition(".")[2]
        if ext not in _CONTENT_TYPES or not _AVATAR_NAME.fullmatch(name):
            raise NotFound("no such avatar")
        try:
            data = await self.file_storage.read(AVATAR_KEYS + name, 0, MAX_AVATAR + 1)
        except KeyMissing:
            raise NotFound("no such avatar") from None
        call.request.setHeader(b"content-type", _CONTENT_TYPES[ext].encode())
        call.request.setHeader(b"cache-control", b"public, max-age=86400")
        return data

    @endpoint("DELETE", "/v1/users/account", summary="Delete the caller's account", tag="users",
              data=MESSAGE_SCHEMA, errors=(401,))
    async def delete_account(self, call: Call):
        await self.lifecycle.delete_account(call.user)
        return {"message": "account deleted"}

