"""
A ``twisted.web`` request that refuses oversized bodies before storing them.

Twisted buffers a whole request body (in memory, or a temporary file past
100 kB) before any resource sees it. This request checks the declared
``Content-Length`` as soon as the headers are in, and counts bytes of bodies
without one, and answers 413 in the JSON envelope and closes the connection
the moment a body passes its limit; nothing past the limit is kept.
"""

from __future__ import annotations

from twisted.web.server import Request

from wecompany.api.envelope import dumps, rfc3339

DEFAULT_MAX_BODY = 1 << 20


class LimitedRequest(Request):
    """
    The limit comes from the site: ``site.max_body_for(path) -> int`` when it
    has one, else :data:`DEFAULT_MAX_BODY`.
    """

    _rejected = False
    _received = 0
    _limit = DEFAULT_MAX_BODY
    _site = None

    def gotLength(self, length):
        site = getattr(self.channel, "site", None)
        path = getattr(self.channel, "_path", b"") or b""
        chooser = getattr(site, "max_body_for", None)
        self._limit = chooser(path) if chooser is not None else DEFAULT_MAX_BODY
        self._site = site
        if length is not None and length > self._limit:
            self._reject()
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self._rejected:
            return
        self._received += len(data)
        if self._received > self._limit:
            self._reject()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        if self._rejected:
            return
        site = getattr(self.channel, "site", None)
        if site is not None:
            self.wecompany_started = site.reactor.seconds()
        super().requestReceived(command, path, version)

    def _reject(self) -> None:
        self._rejected = True
        self.content = None
        message = f"request body larger than the limit of {self._limit} bytes"
        body = dumps({"code": 413, "message": message, "error": message,
                      "timestamp": rfc3339(self._site.reactor.seconds()), "request_id": ""})
        transport = self.channel.transport
        transport.write(b"HTTP/1.1 413 Payload Too Large\r\n"
                        b"Content-Type: application/json; charset=utf-8\r\n"
                        b"Connection: close\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        transport.loseConnection()
