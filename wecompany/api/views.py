"""How domain records look in JSON (and their OpenAPI schemas)."""

from __future__ import annotations

from wecompany.times import rfc3339


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

PASSWORD_CHANGED_SCHEMA = {
    "type": "object",
    "required": ["message", "token", "access_token", "refresh_token", "token_type", "expires_in"],
    "properties": {"message": {"type": "string"},
                   **{k: v for k, v in TOKENS_SCHEMA["properties"].items() if k != "user"}},
}


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


SETTINGS_SCHEMA = {
    "type": "object",
    "properties": {k: {"type": "boolean"} for k in (
        "enable_video", "enable_audio", "enable_screen_share", "enable_chat", "enable_recording", "enable_ai",
        "mute_on_join", "require_approval")},
}

MEETING_SCHEMA = {
    "type": "object",
    "required": ["id", "title", "description", "creator_id", "start_time", "end_time", "max_participants",
                 "meeting_type", "status", "has_password", "settings", "created_at", "updated_at"],
    "properties": {
        "id": {"type": "integer"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "creator_id": {"type": "integer"},
        "start_time": DATETIME,
        "end_time": _nullable(DATETIME),
        "max_participants": {"type": "integer"},
        "meeting_type": {"type": "string", "enum": ["video", "audio"]},
        "status": {"type": "string", "enum": ["scheduled", "ongoing", "ended", "cancelled"]},
        "has_password": {"type": "boolean"},
        "settings": SETTINGS_SCHEMA,
        "created_at": DATETIME,
        "updated_at": DATETIME,
    },
}

PARTICIPANT_SCHEMA = {
    "type": "object",
    "required": ["id", "user_id", "username", "nickname", "meeting_id", "role", "status", "audio_enabled",
                 "video_enabled", "joined_at", "left_at"],
    "properties": {
        "id": {"type": "integer"},
        "user_id": {"type": "integer"},
        "username": {"type": "string"},
        "nickname": {"type": "string"},
        "meeting_id": {"type": "integer"},
        "role": {"type": "string", "enum": ["host", "moderator", "participant"]},
        "status": {"type": "string", "enum": ["invited", "joined", "left"]},
        "audio_enabled": {"type": "boolean"},
        "video_enabled": {"type": "boolean"},
        "joined_at": _nullable(DATETIME),
        "left_at": _nullable(DATETIME),
    },
}

CHAT_MESSAGE_SCHEMA = {
    "type": "object",
    "required": ["id", "meeting_id", "user_id", "username", "nickname", "content", "message_type", "created_at"],
    "properties": {
        "id": {"type": "integer"},
        "meeting_id": {"type": "integer"},
        "user_id": {"type": "integer"},
        "username": {"type": "string"},
        "nickname": {"type": "string"},
        "content": {"type": "string"},
        "message_type": {"type": "string", "enum": ["text", "system", "file"]},
        "created_at": DATETIME,
    },
}

ICE_SERVER_SCHEMA = {
    "type": "object",
    "required": ["urls"],
    "properties": {"urls": {"type": "array", "items": {"type": "string"}},
                   "username": {"type": "string"}, "credential": {"type": "string"}},
}

JOIN_SCHEMA = {
    "type": "object",
    "required": ["meeting_id", "room_id", "participant_id", "role", "meeting", "participant", "ice_servers"],
    "properties": {
        "meeting_id": {"type": "integer"},
        "room_id": {"type": "string"},
        "participant_id": {"type": "integer"},
        "role": {"type": "string"},
        "meeting": MEETING_SCHEMA,
        "participant": PARTICIPANT_SCHEMA,
        "ice_servers": {"type": "array", "minItems": 1, "items": ICE_SERVER_SCHEMA},
    },
}


def meeting_view(m) -> dict:
    return {
        "id": m.id, "title": m.title, "description": m.description, "creator_id": m.creator_id,
        "start_time": rfc3339(m.start_time), "end_time": rfc3339(m.end_time),
        "max_participants": m.max_participants, "meeting_type": m.meeting_type, "status": m.status,
        "has_password": m.password_hash is not None, "settings": dict(m.settings),
        "created_at": rfc3339(m.created_at), "updated_at": rfc3339(m.updated_at),
    }


def participant_view(p) -> dict:
    return {
        "id": p.id, "user_id": p.user_id, "username": p.username, "nickname": p.nickname,
        "meeting_id": p.meeting_id, "role": p.role, "status": p.status, "audio_enabled": p.audio_enabled,
        "video_enabled": p.video_enabled, "joined_at": rfc3339(p.joined_at), "left_at": rfc3339(p.left_at),
    }


def chat_message_view(m) -> dict:
    return {
        "id": m.id, "meeting_id": m.meeting_id, "user_id": m.user_id, "username": m.username,
        "nickname": m.nickname, "content": m.content, "message_type": m.message_type,
        "created_at": rfc3339(m.created_at),
    }
