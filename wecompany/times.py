"""
Time stamps as clients see them: RFC 3339 in UTC, both ways.

Times are POSIX seconds (float, UTC) everywhere inside the server; the
transports write them with :func:`rfc3339` and read clients' with
:func:`parse_rfc3339`, which bounds them.
"""

from __future__ import annotations

import datetime
import math

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
    if seconds is None or seconds != seconds:
        return None
    whole = math.floor(min(max(seconds, _FIRST_SECOND), _LAST_SECOND))
    text = _written.get(whole)
    if text is None:
        text = (_EPOCH + datetime.timedelta(seconds=whole)).isoformat().replace("+00:00", "Z")
        if len(_written) >= _MAX_WRITTEN:
            _written.clear()
        _written[whole] = text
    return text


# Seconds already written: a response shows the same few times again and
# again (now, a user's creation and last login, a page of meetings), and a
# busy room stamps many messages within one second. Bounded: emptied when full.
_MAX_WRITTEN = 4096
_written: dict[int, str] = {}


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
