"""
``multipart/form-data`` bodies, parsed as they arrive and within bounds.

The request feeds each chunk of the body to a :class:`StreamingForm` the
moment it is read (:mod:`wecompany.web.request`), so no whole body is ever
parsed at once on the reactor thread, and nothing of it is kept beyond the
parts themselves. The parser is the ``multipart`` package's push parser, with limits on the number of parts, the size of each part's
headers and the size of a field, so a body of 200,000 empty parts is refused
after the first few instead of being taken apart.

A form made with a ``file_sink`` (the media upload path's
:class:`~wecompany.web.spool.SpoolUpload`) keeps no file part in memory:
each chunk of a part with a file name goes to the sink as it is parsed, and
the part is left with empty ``data`` and the sink as its ``spool``.
"""

from __future__ import annotations

import attrs
import multipart

from wecompany.errors import InvalidInput, TooLarge

KiB = 1024
MAX_BOUNDARY = 70  # RFC 2046


@attrs.frozen
class FormLimits:
    """
    :ivar max_parts: parts in one body.
    :ivar max_header_size: bytes of one part's header block.
    :ivar max_headers: header lines of one part.
    :ivar max_field_size: bytes of a part without a file name (a plain field).
    :ivar max_file_size: bytes of a part with a file name (the body limit
        bounds it anyway).
    """

    max_parts: int = 16
    max_header_size: int = 4 * KiB
    max_headers: int = 8
    max_field_size: int = 64 * KiB
    max_file_size: int = 1 << 40


@attrs.frozen
class Part:
    name: str
    filename: str | None
    content_type: str
    data: bytes = attrs.field(repr=False)
    #: The file sink that took the bytes of a file part, when the form has one.
    spool: object | None = attrs.field(default=None, repr=False)


def boundary_of(content_type: bytes | str | None) -> str | None:
    """The boundary of a ``multipart/form-data`` Content-Type, or None when it is not one."""
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    kind, options = multipart.parse_options_header(content_type or "")
    if kind != "multipart/form-data":
        return None
    return options.get("boundary") or None


class StreamingForm:
    """
    One ``multipart/form-data`` body, fed chunk by chunk.

    :meth:`feed` and :meth:`finish` raise :class:`InvalidInput` for a
    malformed body and :class:`TooLarge` past a limit; after that the form is
    spent. :meth:`finish` returns field name -> parts, in order.

    ``file_sink``, when given, takes the file parts: ``open(name, filename,
    content_type)``, ``write(bytes)`` (each may raise a WeCompanyError,
    which ends the form) and ``close()``.

    :raises InvalidInput: at construction, for a boundary the parser refuses.
    """

    def __init__(self, boundary: str, limits: FormLimits = FormLimits(), file_sink=None) -> None:
        self.limits = limits
        self.file_sink = file_sink
        self._sinking = False
        if not 1 <= len(boundary) <= MAX_BOUNDARY:
            raise InvalidInput(f"malformed multipart body: the boundary must be 1-{MAX_BOUNDARY} characters")
        try:
            # Not strict: strict mode refuses an epilogue that arrives in a
            # later chunk than the closing boundary, so it would depend on how
            # the network cut the body. The limits apply either way.
            self._parser = multipart.PushMultipartParser(
                boundary, max_header_size=limits.max_header_size, max_header_count=limits.max_headers,
                max_segment_count=limits.max_parts)
        except multipart.MultipartError as error:
            raise InvalidInput(f"malformed multipart body: {error}") from None
        self.parts: dict[str, list[Part]] = {}
        self._segment = None
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        """Parse what ``chunk`` completes; never more than ``chunk`` holds."""
        if chunk:
            self._run(chunk)

    def finish(self) -> dict[str, list[Part]]:
        """The whole body has arrived: -> the parts, or raise if the body is incomplete."""
        self._run(b"")
        return self.parts

    def _run(self, chunk: bytes) -> None:
        try:
            for event in self._parser.parse(chunk):
                if isinstance(event, multipart.MultipartSegment):
                    self._start(event)
                elif event is None:
                    self._end()
                else:
                    self._data(event)
        except multipart.ParserLimitReached as error:
            raise TooLarge(f"multipart body over a limit: {error}") from None
        except multipart.MultipartError as error:
            raise InvalidInput(f"malformed multipart body: {error}") from None

    def _start(self, segment) -> None:
        if segment.disposition != "form-data" or segment.name is None:
            raise InvalidInput("malformed multipart body: a part is not form-data with a name")
        self._segment, self._chunks, self._size = segment, [], 0
        self._sinking = segment.filename is not None and self.file_sink is not None
        if self._sinking:
            self.file_sink.open(segment.name, segment.filename, segment.content_type)

    def _data(self, chunk) -> None:
        segment = self._segment
        self._size += len(chunk)
        limit = self.limits.max_file_size if segment.filename is not None else self.limits.max_field_size
        if self._size > limit:
            what = "file" if segment.filename is not None else f"field {segment.name!r}"
            raise TooLarge(f"multipart {what} larger than {limit} bytes")
        if self._sinking:
            self.file_sink.write(bytes(chunk))
        else:
            self._chunks.append(bytes(chunk))

    def _end(self) -> None:
        segment = self._segment
        if self._sinking:
            self.file_sink.close()
            self.parts.setdefault(segment.name, []).append(
                Part(segment.name, segment.filename, segment.content_type or "application/octet-stream", b"",
                     spool=self.file_sink))
            self._segment, self._sinking = None, False
            return
        self.parts.setdefault(segment.name, []).append(
            Part(segment.name, segment.filename, segment.content_type or "application/octet-stream",
                 b"".join(self._chunks)))
        self._segment, self._chunks = None, []
