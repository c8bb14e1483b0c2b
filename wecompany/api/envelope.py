"""
The JSON envelope every REST response is wrapped in (see the API spec).

Success: ``{"code","message":"success","data","timestamp","request_id"}``;
error: ``{"code","message","error","error_code"?,"timestamp","request_id"}``.
Compact JSON, UTF-8.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import secrets

from wecompany.errors import WeCompanyError

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
#: The times a client may send: 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
MIN_TIME = 0.0
MAX_TIME = float((datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc) - _EPOCH)
                 .total_seconds())
# What can be written at all (years 1 to 9999); a stored time outside it is shown at the nearest end.
_FIRST_SECOND = int((datetime.datetime(1, 1, 1, tzinfo=datetime.timezone.utc) - _EPOCH).total_seconds())
_LAST_SECOND = int(MAX_TIME)


def rfc3339(seconds: float | None) -> str | None:
    """
    POSIX seconds -> ``2025-10-02T10:00:00Z`` (None, and NaN, -> None).

    Never raises: one bad stored value must not break every read that
    shows it, so a time beyond what RFC 3339 can write (years 1-9999) is
    shown as the nearest end of that range.
    """
    global _last_rfc3339
    if seconds is None or seconds != seconds:
        return None
    whole = math.floor(min(max(seconds, _FIRST_SECOND), _LAST_SECOND))
    last = _last_rfc3339
    if last[0] == whole:  # a busy room stamps many messages within one second
        return last[1]
    text = (_EPOCH + datetime.timedelta(seconds=whole)).isoformat().replace("+00:00", "Z")
    _last_rfc3339 = (whole, text)
    return text


_last_rfc3339: tuple[int | None, str] = (None, "")


def parse_rfc3339(text: str) -> float:
    """
    RFC 3339 / ISO 8601 with a zone -> POSIX seconds, between
    :data:`MIN_TIME` and :data:`MAX_TIME`; ValueError otherwise.
    """
    if not isinstance(text, str) or len(text) > 40:
        raise ValueError("not a date-time")
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("date-time needs a time zone (e.g. Z)")
    seconds = (moment - _EPOCH).total_seconds()
    if not MIN_TIME <= seconds <= MAX_TIME:
        raise ValueError("date-time out of range")
    return seconds


def request_id_for(request) -> str:
    """The client's ``X-Request-ID`` when it is sane, else a new one; remembered on the request."""
    existing = getattr(request, "wecompany_request_id", None)
    if existing is not None:
        return existing
    given = (request.getHeader(b"x-request-id") or b"").decode("latin-1")
    rid = given if _REQUEST_ID_OK.match(given) else secrets.token_hex(16)
    request.wecompany_request_id = rid
    return rid


def success(request, data, now: float, code: int = 200) -> bytes:
    request.setResponseCode(code)
    _headers(request)
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
