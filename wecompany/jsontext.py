"""
JSON from clients, decoded once and safely for every transport (REST bodies,
WebSocket signaling messages).

``json.loads`` alone accepts documents the rest of the server cannot use:
nesting deep enough to exhaust the recursion limit (``RecursionError`` while
decoding, or later while encoding a reply that echoes it), an escaped lone
surrogate (``"\\ud800"``, a ``str`` no database or UTF-8 encoder accepts),
and ``NaN``/``Infinity``, which are not JSON at all. :func:`decode_json`
refuses all three with :class:`~wecompany.errors.InvalidInput`, so they are
a 400 or an ``error`` message, never a 500 somewhere further on.

The checks cost nothing for ordinary messages: the document is walked only
when its text has more brackets than the depth limit, or a ``\\u`` escape.
"""

from __future__ import annotations

import json
import re

from wecompany.errors import InvalidInput

#: Arrays and objects may nest this deep (a document that is one object is depth 1).
MAX_DEPTH = 32

_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def decode_json(raw: bytes | str, what: str = "request body", max_depth: int = MAX_DEPTH):
    """
    ``raw`` (UTF-8 bytes, or text) -> the document.

    :raises InvalidInput: naming ``what``, when it is not UTF-8 JSON, nests
        deeper than ``max_depth``, or holds an unpaired surrogate.
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        document = _DECODER.decode(text)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidInput(f"{what} is not valid JSON", detail=str(error)[:200]) from None
    escapes = "\\u" in text
    if escapes or text.count("[") + text.count("{") > max_depth:
        _check(document, what, max_depth, escapes)
    return document


def _check(document, what: str, max_depth: int, escapes: bool) -> None:
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            if depth > max_depth:
                raise InvalidInput(f"{what} nests deeper than {max_depth} levels")
            for key, item in value.items():
                if escapes and _SURROGATE.search(key):
                    raise _surrogate(what)
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            if depth > max_depth:
                raise InvalidInput(f"{what} nests deeper than {max_depth} levels")
            stack.extend((item, depth + 1) for item in value)
        elif escapes and isinstance(value, str) and _SURROGATE.search(value):
            raise _surrogate(what)


def _surrogate(what: str) -> InvalidInput:
    return InvalidInput(f"{what} holds an unpaired UTF-16 surrogate (such as \\ud800), which is not text")
