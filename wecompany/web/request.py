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

On the paths the site streams uploads for (``site.upload_sink_for(path)``,
the media upload), the file part goes to a
:class:`~wecompany.web.spool.SpoolUpload` instead, which writes it to a
spool file in the disk thread pool and pauses the transport while the disk
is behind; the request carries it as ``upload``, and discards it when the
request ends unless a handler has claimed it.
"""

from __future__ import annotations

from io import BytesIO

from twisted.web.http import RESPONSES
from twisted.web.server import Request

from wecompany.api.envelope import dumps, request_id_for
from wecompany.times import rfc3339
from wecompany.errors import TooLarge, WeCompanyError
from wecompany.proxies import address_for, host_of
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
    #: The :class:`~wecompany.web.spool.SpoolUpload` of a streamed upload, or None.
    upload = None
    _body_done = False
    _stream: StreamingForm | None = None
    _rejected = False
    _received = 0
    _limit = DEFAULT_MAX_BODY
    _client_address = None

    def getClientAddress(self):
        """
        The client's address: the peer's (after any PROXY header), or, from a
        trusted proxy (``site.trusted_proxies``, a
        :class:`~wecompany.proxies.TrustedProxies`), the one its
        ``X-Forwarded-For`` names. Everything that asks for a request's client
        (the access log, the rate limits, the API) asks this.
        """
        if self._client_address is not None:
            return self._client_address
        peer = super().getClientAddress()
        site = getattr(self.channel, "site", None)
        trusted = getattr(site, "trusted_proxies", None)
        host = host_of(peer)
        if not trusted or host is None:
            return peer
        client = trusted.forwarded_client(host, self.requestHeaders.getRawHeaders(b"x-forwarded-for", []))
        self._client_address = peer if client == host else address_for(client)
        return self._client_address

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
            sinks = getattr(site, "upload_sink_for", None)
            make_sink = sinks(getattr(self.channel, "request_path", b"")) if sinks is not None else None
            try:
                if make_sink is not None:
                    # May start an admission check (the caller, its quota) that
                    # refuses the upload while it arrives.
                    self.upload = make_sink(self, length)
                    self.upload.when_failed(self._reject)
                    self.notifyFinish().addBoth(self._release_upload)
                self._stream = StreamingForm(boundary, limits, file_sink=self.upload)
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
        self._body_done = True
        self.wecompany_started = self.channel.site.reactor.seconds()
        # Every response carries its request id, which its access-log line names.
        self.setHeader(b"x-request-id", request_id_for(self).encode())
        super().requestReceived(command, path, version)

    def _release_upload(self, _) -> None:
        # The request is over (answered, or its connection lost).
        if self.upload is not None and not self.upload.claimed:
            self.upload.discard()

    def _reject(self, error: WeCompanyError) -> None:
        """Answer ``error`` in the envelope now, and close: the rest of the body is not read."""
        if self._rejected or self._body_done:
            return  # already answered, or the body is in and the handler answers
        self._rejected = True
        if self.upload is not None:
            self.upload.discard()
        self._stream = None
        self.content = None
        transport = self.channel.transport if self.channel is not None else None
        if transport is None:  # the connection is gone already
            return
        status = b"%d %s" % (error.code, RESPONSES.get(error.code, b"Error"))
        answer = {"code": error.code, "message": error.message, "error": error.detail or error.message}
        if error.error_code is not None:
            answer["error_code"] = error.error_code
        answer.update(timestamp=rfc3339(self.channel.site.reactor.seconds()), request_id=request_id_for(self))
        body = dumps(answer)
        transport.write(b"HTTP/1.1 " + status + b"\r\n"
                        b"Content-Type: application/json; charset=utf-8\r\n"
                        b"X-Request-Id: " + request_id_for(self).encode() + b"\r\n"
                        b"Connection: close\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        transport.loseConnection()
