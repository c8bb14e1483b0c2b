"""
A ``twisted.web`` request that bounds its body before storing any of it.

Twisted buffers a whole request body (in memory, or a temporary file past
100 kB) before any resource sees it. This request checks the declared
``Content-Length`` as soon as the headers are in, and counts the bytes of
bodies without one, and answers 413 in the JSON envelope and closes the
connection the moment a body passes its limit; nothing past the limit is
kept.

A ``multipart/form-data`` body is not stored at all: each chunk goes to a
:class:`~wecompany.web.multipart.StreamingForm` as it is read, which keeps
only the parts, within its bounds, and the request then carries them as
``form``. A malformed one is answered 400 at once, without reading the rest.
"""

from __future__ import annotations

from io import BytesIO

from twisted.web.http import RESPONSES
from twisted.web.server import Request

from wecompany.api.envelope import dumps, request_id_for
from wecompany.times import rfc3339
from wecompany.errors import TooLarge, WeCompanyError
from wecompany.web.multipart import FormLimits, StreamingForm, boundary_of

DEFAULT_MAX_BODY = 64 << 10


class LimitedRequest(Request):
    """
    The limit comes from the site: ``site.max_body_for(path) -> int`` (and
    ``site.form_limits``, a :class:`FormLimits`, when it has them), the path
    from the channel's ``request_path``; without them,
    :data:`DEFAULT_MAX_BODY`.

    :ivar form: field name -> :class:`~wecompany.web.multipart.Part` s of a
        ``multipart/form-data`` body, or None for any other body.
    """

    form = None
    _stream: StreamingForm | None = None
    _rejected = False
    _received = 0
    _limit = DEFAULT_MAX_BODY

    def gotLength(self, length):
        site = self.channel.site
        chooser = getattr(site, "max_body_for", None)
        self._limit = chooser(getattr(self.channel, "request_path", b"")) if chooser is not None \
            else DEFAULT_MAX_BODY
        if length is not None and length > self._limit:
            self._reject(TooLarge(f"request body larger than the limit of {self._limit} bytes"))
            return
        boundary = boundary_of(self.requestHeaders.getRawHeaders(b"content-type", [None])[0])
        if boundary is not None:
            limits = getattr(site, "form_limits", None) or FormLimits()
            try:
                self._stream = StreamingForm(boundary, limits)
            except WeCompanyError as error:
                self._reject(error)
                return
            self.content = BytesIO()  # nothing of a form body is stored as such
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self._rejected:
            return
        self._received += len(data)
        if self._received > self._limit:
            self._reject(TooLarge(f"request body larger than the limit of {self._limit} bytes"))
            return
        if self._stream is None:
            super().handleContentChunk(data)
            return
        try:
            self._stream.feed(data)
        except WeCompanyError as error:
            self._reject(error)

    def requestReceived(self, command, path, version):
        if self._rejected:
            return
        if self._stream is not None:
            try:
                self.form = self._stream.finish()
            except WeCompanyError as error:
                self._reject(error)
                return
            self._stream = None
        self.wecompany_started = self.channel.site.reactor.seconds()
        super().requestReceived(command, path, version)

    def _reject(self, error: WeCompanyError) -> None:
        """Answer ``error`` in the envelope now, and close: the rest of the body is not read."""
        self._rejected = True
        self._stream = None
        self.content = None
        status = b"%d %s" % (error.code, RESPONSES.get(error.code, b"Error"))
        body = dumps({"code": error.code, "message": error.message, "error": error.detail or error.message,
                      "timestamp": rfc3339(self.channel.site.reactor.seconds()),
                      "request_id": request_id_for(self)})
        transport = self.channel.transport
        transport.write(b"HTTP/1.1 " + status + b"\r\n"
                        b"Content-Type: application/json; charset=utf-8\r\n"
                        b"Connection: close\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        transport.loseConnection()
