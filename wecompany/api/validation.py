"""
Declarative validation of JSON bodies and query strings.

A route declares its fields once; the same declaration validates requests
(400 with a message naming the field) and becomes the request schema of the
OpenAPI document, so the two cannot disagree.
"""

from __future__ import annotations

import math

import attrs

from wecompany.times import parse_rfc3339
from wecompany.domain.ids import MAX_ID
from wecompany.errors import InvalidInput
from wecompany.jsontext import decode_json

MISSING = object()


@attrs.frozen
class Field:
    """
    One field. ``kind``: ``string``, ``integer``, ``number``, ``boolean``,
    ``datetime`` (RFC 3339 string -> POSIX seconds), ``object`` (nested
    ``fields``; without them, any object, which the handler validates),
    ``array`` (of anything; ``max_length`` items at most), ``id`` (a
    positive id given as a JSON number or as its decimal string, as the
    browser client's SFU calls send user ids).
    """

    kind: str
    required: bool = False
    nullable: bool = False
    min_length: int | None = None
    max_length: int | None = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None
    fields: dict | None = None
    default: object = MISSING
    description: str = ""
    strip: bool = False  # trim surrounding white space before checking lengths
    strict: bool = False  # objects: unknown keys are an error, not ignored

    def parse(self, name: str, value):
        if value is None:
            if self.nullable:
                return None
            raise InvalidInput(f"{name} must not be null")
        kind = self.kind
        if kind == "string" or kind == "datetime":
            if not isinstance(value, str):
                raise InvalidInput(f"{name} must be a string")
            if kind == "datetime":
                try:
                    return parse_rfc3339(value)
                except ValueError:
                    raise InvalidInput(f"{name} must be an RFC 3339 date-time such as 2025-10-02T10:00:00Z, "
                                       "between 1970-01-01 and 9999-12-31 (UTC)") from None
            if self.strip:
                value = value.strip()
            if self.min_length is not None and len(value) < self.min_length:
                raise InvalidInput(f"{name} must be at least {self.min_length} characters")
            if self.max_length is not None and len(value) > self.max_length:
                raise InvalidInput(f"{name} must be at most {self.max_length} characters")
            if "\x00" in value:
                raise InvalidInput(f"{name} must not contain NUL characters")
        elif kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"{name} must be an integer")
            if not -MAX_ID <= value <= MAX_ID:  # no database stores it, no id is that large
                raise InvalidInput(f"{name} is out of range (at most {MAX_ID})")
        elif kind == "id":
            if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
                value = int(value, 10)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
                raise InvalidInput(f"{name} must be a positive id (a number or its decimal string)")
        elif kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidInput(f"{name} must be a number")
        elif kind == "boolean":
            if not isinstance(value, bool):
                raise InvalidInput(f"{name} must be true or false")
        elif kind == "object":
            if not isinstance(value, dict):
                raise InvalidInput(f"{name} must be an object")
            if self.fields is None and not self.strict:
                return value  # free-form: the handler checks it
            if self.strict:
                unknown = sorted(set(value) - set(self.fields or {}))
                if unknown:
                    raise InvalidInput(f"unknown field {name}.{unknown[0]}")
            return parse_fields(self.fields or {}, value, prefix=f"{name}.")
        elif kind == "array":
            if not isinstance(value, list):
                raise InvalidInput(f"{name} must be an array")
            if self.max_length is not None and len(value) > self.max_length:
                raise InvalidInput(f"{name} must have at most {self.max_length} items")
            return value
        else:  # pragma: no cover - a programming error in a declaration
            raise ValueError(f"unknown field kind {kind}")
        if self.minimum is not None and value < self.minimum:
            raise InvalidInput(f"{name} must be at least {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise InvalidInput(f"{name} must be at most {self.maximum:g}")
        if self.choices is not None and value not in self.choices:
            raise InvalidInput(f"{name} must be one of: {', '.join(map(str, self.choices))}")
        return value

    def json_schema(self) -> dict:
        if self.kind == "datetime":
            schema = {"type": "string", "format": "date-time"}
        elif self.kind == "object":
            schema = object_schema(self.fields or {})
            if self.strict:
                schema["additionalProperties"] = False
        elif self.kind == "array":
            schema = {"type": "array", "items": {}}
            if self.max_length is not None:
                schema["maxItems"] = self.max_length
        elif self.kind == "id":
            schema = {"oneOf": [{"type": "integer", "minimum": 1, "maximum": MAX_ID},
                                {"type": "string", "pattern": "^[0-9]{1,20}$"}]}
        else:
            schema = {"type": self.kind}
        for key, attr in (("minLength", "min_length"), ("maxLength", "max_length" if self.kind != "array" else ""),
                          ("minimum", "minimum"), ("maximum", "maximum")):
            if attr and getattr(self, attr) is not None:
                schema[key] = getattr(self, attr)
        if self.choices is not None:
            schema["enum"] = list(self.choices)
        if self.nullable:
            schema["nullable"] = True  # OpenAPI 3.0
        description = self.description
        if self.strip:
            description = (description + " " if description else "") + "(surrounding white space is trimmed)"
        if description:
            schema["description"] = description
        return schema


def parse_fields(fields: dict, document: dict, prefix: str = "") -> dict:
    """Validate ``document`` against ``fields``; unknown keys are ignored. -> dict of present fields."""
    out = {}
    for name, field in fields.items():
        if name in document:
            out[name] = field.parse(prefix + name, document[name])
        elif field.required:
            raise InvalidInput(f"{prefix}{name} is required")
        elif field.default is not MISSING:
            out[name] = field.default
    return out


def object_schema(fields: dict) -> dict:
    schema = {"type": "object", "properties": {n: f.json_schema() for n, f in fields.items()}}
    required = [n for n, f in fields.items() if f.required]
    if required:
        schema["required"] = required
    return schema


def parse_json(raw: bytes, fields: dict) -> dict:
    """Decode a JSON object body (:func:`~wecompany.jsontext.decode_json`) and validate it."""
    document = decode_json(raw) if raw.strip() else {}
    if not isinstance(document, dict):
        raise InvalidInput("request body must be a JSON object")
    return parse_fields(fields, document)


def parse_query(args: dict, fields: dict) -> dict:
    """
    Validate query parameters (``request.args``: bytes -> [bytes]). Integers,
    booleans and strings are converted from text; a repeated parameter uses its
    first value.
    """
    document = {}
    for name, field in fields.items():
        values = args.get(name.encode())
        if not values:
            continue
        try:
            text = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{name} is not valid UTF-8") from None
        if field.kind == "integer":
            try:
                document[name] = int(text, 10)
            except ValueError:
                raise InvalidInput(f"{name} must be an integer") from None
        elif field.kind == "boolean":
            if text.lower() not in ("true", "false", "1", "0"):
                raise InvalidInput(f"{name} must be true or false")
            document[name] = text.lower() in ("true", "1")
        else:
            document[name] = text
    return parse_fields(fields, document)


PAGE = {
    "page": Field("integer", minimum=1, maximum=1_000_000, default=1, description="page number, from 1"),
    "page_size": Field("integer", minimum=1, maximum=100, default=10, description="items per page"),
}
