"""
multipart/form-data bodies, parsed by the API (the Site does not parse them),
so a malformed body is a 400 in the envelope like any other bad input.
"""

from __future__ import annotations

import email.parser
import email.policy

import attrs

from wecompany.errors import InvalidInput


@attrs.frozen
class Part:
    name: str
    filename: str | None
    content_type: str
    data: bytes = attrs.field(repr=False)


def parse_form(content_type: bytes | None, body: bytes) -> dict[str, list[Part]]:
    """Parse ``body`` sent with ``content_type``; -> field name -> parts."""
    ctype = (content_type or b"").decode("latin-1")
    if not ctype.lower().startswith("multipart/form-data") or "boundary=" not in ctype:
        raise InvalidInput("send multipart/form-data with a boundary")
    head = f"MIME-Version: 1.0\r\nContent-Type: {ctype}\r\n\r\n".encode("latin-1")
    try:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    except Exception:
        raise InvalidInput("malformed multipart body") from None
    if not message.is_multipart() or message.defects:
        raise InvalidInput("malformed multipart body")
    form: dict[str, list[Part]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        data = part.get_payload(decode=True) or b""
        form.setdefault(str(name), []).append(
            Part(str(name), part.get_filename(), part.get_content_type(), data))
    return form
