"""How domain records look in JSON (and their OpenAPI schemas)."""

from __future__ import annotations

from wecompany.api.envelope import rfc3339


def user_view(user, profile=None) -> dict:
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email or "",
        "nickname": profile.nickname if profile is not None else user.username,
        "avatar": profile.avatar if profile is not None else "",
        "phone": profile.phone if profile is not None else "",
        "role": user.role,
        "status": user.status,
        "last_login": rfc3339(user.last_login),
        "created_at": rfc3339(user.created_at),
    }


def _nullable(schema: dict) -> dict:
    return {**schema, "nullable": True}  # OpenAPI 3.0


DATETIME = {"type": "string", "format": "date-time"}

USER_SCHEMA = {
    "type": "object",
    "required": ["id", "username", "email", "nickname", "avatar", "phone", "role", "status",
                 "last_login", "created_at"],
    "properties": {
        "id": {"type": "integer"},
        "username": {"type": "string"},
        "email": {"type": "string"},
        "nickname": {"type": "string"},
        "avatar": {"type": "string"},
        "phone": {"type": "string"},
        "role": {"type": "string", "enum": ["user", "admin"]},
        "status": {"type": "string", "enum": ["active", "banned", "deleted"]},
        "last_login": _nullable(DATETIME),
        "created_at": DATETIME,
    },
}

TOKENS_SCHEMA = {
    "type": "object",
    "required": ["token", "access_token", "refresh_token", "token_type", "expires_in", "user"],
    "properties": {
        "token": {"type": "string"},
        "access_token": {"type": "string"},
        "refresh_token": {"type": "string"},
        "token_type": {"type": "string", "enum": ["Bearer"]},
        "expires_in": {"type": "integer"},
        "user": USER_SCHEMA,
    },
}

MESSAGE_SCHEMA = {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}


def page_schema(item: dict) -> dict:
    return {
        "type": "object",
        "required": ["list", "total", "page", "page_size", "total_pages"],
        "properties": {
            "list": {"type": "array", "items": item},
            "total": {"type": "integer"},
            "page": {"type": "integer"},
            "page_size": {"type": "integer"},
            "total_pages": {"type": "integer"},
        },
    }


def page_view(items: list, total: int, page: int, page_size: int) -> dict:
    return {"list": items, "total": total, "page": page, "page_size": page_size,
            "total_pages": (total + page_size - 1) // page_size}
