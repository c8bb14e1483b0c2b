"""
The OpenAPI 3 document, generated from the endpoint declarations: the routes
the app serves and the document are one list, so they cannot drift apart.
"""

from __future__ import annotations

import re

from wecompany import __version__
from wecompany.api.routing import PUBLIC, endpoints_of
from wecompany.domain.ids import MAX_ID
from wecompany.api.validation import object_schema

_PARAM = re.compile(r"<(?:([a-z]+):)?([a-z_]+)>")

ERROR_SCHEMA = {
    "type": "object",
    "required": ["code", "message", "error", "timestamp", "request_id"],
    "properties": {
        "code": {"type": "integer"},
        "message": {"type": "string"},
        "error": {"type": "string"},
        "error_code": {"type": "integer"},
        "timestamp": {"type": "string", "format": "date-time"},
        "request_id": {"type": "string"},
    },
}

_ERROR_TEXT = {400: "Invalid input", 401: "Missing, invalid or expired token", 403: "Forbidden",
               404: "Not found", 409: "Conflict", 413: "Too large", 429: "Rate limited (see Retry-After)",
               503: "Unavailable"}


def success_schema(data: dict | None) -> dict:
    return {
        "type": "object",
        "required": ["code", "message", "data", "timestamp", "request_id"],
        "properties": {
            "code": {"type": "integer"},
            "message": {"type": "string", "enum": ["success"]},
            "data": data if data is not None else {},
            "timestamp": {"type": "string", "format": "date-time"},
            "request_id": {"type": "string"},
        },
    }


def openapi_path(path: str) -> str:
    return "/api" + _PARAM.sub(r"{\2}", path)


def _operation(ep, path: str, index: int) -> dict:
    op = {"operationId": ep.name if index == 0 else f"{ep.name}_alias{index}",
          "summary": ep.summary, "tags": [ep.tag]}
    params = []
    for kind, name in _PARAM.findall(path):
        params.append({"name": name, "in": "path", "required": True,
                       "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID} if kind == "int"
                       else {"type": "string"}})
    for name, field in (ep.query or {}).items():
        params.append({"name": name, "in": "query", "required": field.required, "schema": field.json_schema()})
    if params:
        op["parameters"] = params
    if ep.body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": object_schema(ep.body)}}}
        if ep.raw_body is not None:  # either body
            op["requestBody"]["content"][ep.raw_body] = {"schema": {"type": "object", "additionalProperties": True}}
    elif ep.raw_body is not None:
        op["requestBody"] = {"required": True,
                             "content": {ep.raw_body: {"schema": {"type": "object", "additionalProperties": True}}}}
    if ep.auth != PUBLIC:
        op["security"] = [{"bearerAuth": []}]
    if ep.produces == "application/json":  # bare JSON, not the envelope: ``data`` is the whole answer
        success = {ep.produces: {"schema": ep.data or {"type": "object"}}}
    elif ep.produces is not None:
        success = {ep.produces: {"schema": {"type": "string"}}}
    else:
        success = {"application/json": {"schema": success_schema(ep.data)}}
    responses = {str(ep.status): {"description": "Success", "content": success}}
    codes = set(ep.errors) | ({401} if ep.auth != PUBLIC else set()) | ({403} if ep.auth == "admin" else set())
    if ep.body is not None or ep.query:
        codes |= {400}
    for code in sorted(codes):
        responses[str(code)] = {"description": _ERROR_TEXT.get(code, "Error"),
                                "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    responses["default"] = {"description": "Any other error, in the error envelope",
                            "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    op["responses"] = responses
    return op


def build_document(api_class) -> dict:
    paths: dict = {}
    for ep in endpoints_of(api_class):
        for index, path in enumerate((ep.path, *ep.aliases)):
            paths.setdefault(openapi_path(path), {})[ep.method.lower()] = _operation(ep, path, index)
    return {
        "openapi": "3.0.3",
        "info": {"title": "WeCompany API", "version": __version__,
                 "description": "REST API of the WeCompany server. Every response is a JSON envelope."},
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                                          "bearerFormat": "JWT"}}},
    }
