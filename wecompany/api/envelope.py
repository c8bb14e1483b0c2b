"""
The JSON envelope every REST response is wrapped in (see the API spec).

Success: ``{"code","message":"success","data","timestamp","request_id"}``;
error: ``{"code","message","error","error_code"?,"timestamp","request_id"}``.
Compact JSON, UTF-8.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets

from wecompany.errors import WeCompanyError
from wecompany.times import rfc3339

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Request ids this process makes: 64 random bits for the process, then a
# count (32 hex digits in all). Unique, which is all an id for matching log
# lines needs, without asking the kernel for randomness on every request.
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count()


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def request_id_for(request) -> str:
    """The client's ``X-Request-ID`` when it is sane, else a new one; remembered on the request."""
    existing = getattr(request, "wecompany_request_id", None)
    if existing is not None:
        return existing
    given = (request.getHeader(b"x-request-id") or b"").decode("latin-1")
    if given and _REQUEST_ID_OK.match(given):
        rid = given
    else:
        rid = f"{_ID_PREFIX}{next(_id_counter) & 0xFFFFFFFFFFFFFFFF:016x}"
    request.wecompany_request_id = rid
    return rid


class Encoded(bytes):
    """``data`` already encoded by :func:`dumps`, put into the envelope as it is (a page answered again)."""


def success(request, data, now: float, code: int = 200) -> bytes:
    request.setResponseCode(code)
    _headers(request)
    if isinstance(data, Encoded):  # the same bytes dumps() would make of the whole
        return b'{"code":%d,"message":"success","data":%s,"timestamp":%s,"request_id":%s}' % (
            code, data, dumps(rfc3339(now)), dumps(request_id_for(request)))
    return dumps({"code": code, "message": "success", "data": data, "timestamp": rfc3339(now),
                  "request_id": request_id_for(request)})


def failure(request, error: WeCompanyError, now: float) -> bytes:
    request.setResponseCode(error.code)
    _headers(request)
    body = {"code": error.code, "message": error.message, "error": error.detail or error.message}
    if error.error_code is not None:
        body["error_code"] = error.error_code
    body["timestamp"] = rfc3339(now)
    body["request_id"] = request_id_for(request)
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        request.setHeader(b"retry-after", str(max(1, int(retry_after + 0.999))).encode())
    return dumps(body)


def _headers(request) -> None:
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"x-request-id", request_id_for(request).encode())
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
