"""
Domain events as JSON, for the messages nodes send each other.

Every event of :mod:`wecompany.domain.events` crosses nodes when its
recipient's session is on another node; bytes fields travel as base64. An
unknown type is refused: a node never builds what it does not know.
"""

from __future__ import annotations

import base64
import json

import attrs

from wecompany.domain import events as ev

_TYPES = {cls.__name__: cls for cls in (
    ev.TextMessage, ev.PresenceChanged, ev.CallRinging, ev.CallIncoming, ev.CallAccepted, ev.CallRejected,
    ev.CallEnded, ev.FileOffered, ev.FileChunk, ev.FileDone,
)}


def encode_event(event) -> dict:
    name = type(event).__name__
    if name not in _TYPES:
        raise TypeError(f"{name} is not an event nodes exchange")
    fields = {}
    for field in attrs.fields(type(event)):
        value = getattr(event, field.name)
        fields[field.name] = {"b64": base64.b64encode(value).decode()} if isinstance(value, bytes) else value
    return {"type": name, "fields": fields}


def decode_event(data: dict):
    cls = _TYPES[data["type"]]
    fields = {}
    for name, value in data["fields"].items():
        fields[name] = base64.b64decode(value["b64"]) if isinstance(value, dict) and "b64" in value else value
    return cls(**fields)


def dumps(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def loads(raw) -> dict:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    message = json.loads(raw)
    if not isinstance(message, dict):
        raise ValueError("a cluster message is a JSON object")
    return message
