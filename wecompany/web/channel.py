"""
The HTTP channel of the site: Twisted's ``HTTPChannel`` with the deadlines a
public server needs, and the request path known before the body arrives.

Twisted's own timeout restarts with every byte received, so a client that
sends one header line, or one byte of body, every few seconds holds its
connection (and a file descriptor) for ever. This channel gives each phase
of a request a deadline of its own:

* **head**: the request line and headers must be complete within
  ``header_timeout`` seconds (counted from the connection for its first
  request, from the request's first byte after that);
* **body**: a body gets ``body_timeout`` seconds, plus one more for every
  ``min_body_rate`` bytes that arrive, so a large upload over a slow but
  honest link finishes and a trickle does not;
* **idle**: a kept-alive connection may wait ``idle_timeout`` seconds for
  its next request.

A request that runs out of time is answered 408 and the connection closed;
an idle one is just closed. While a request is being handled nothing is
timed here, and once a WebSocket has taken the connection over (the
transport is no longer the channel's) the deadlines stop.

Timers run on the site's reactor (``callLater``), so tests drive them with a
fake clock. A request does not set or cancel a timer of its own: each phase
only notes when it ends (:attr:`DeadlineChannel.expires_at`), and one timer
per connection, which fires no later than that, looks again when it fires.
A kept-alive connection's timer goes off at most every ``header_timeout``
seconds while it waits (a new request's headers may start at any moment),
and its requests cost no timer at all: two ``callLater`` and two ``cancel``
per request cost a tenth of a cheap authenticated request in the reactor.
"""

from __future__ import annotations

from twisted.web.http import HTTPChannel

from wecompany.api.envelope import dumps
from wecompany.times import rfc3339

NEW, IDLE, HEAD, BODY, BUSY = "new", "idle", "head", "body", "busy"


class TimeoutPolicy:
    """The deadlines of :class:`DeadlineChannel` (seconds, and bytes per second)."""

    def __init__(self, header_timeout: float = 20.0, body_timeout: float = 30.0, idle_timeout: float = 75.0,
                 min_body_rate: float = 4096.0) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.idle_timeout = idle_timeout
        self.min_body_rate = min_body_rate


class DeadlineChannel(HTTPChannel):
    """
    ``site.timeouts`` (a :class:`TimeoutPolicy`) gives the deadlines.
    ``request_path`` is the path of the request being received, from its
    request line (the request itself learns it only once its body is in).
    """

    request_path: bytes = b""
    #: When the current phase runs out of time (None: nothing is timed now).
    expires_at: float | None = None
    _phase = NEW
    _deadline = None  # the one timer: fires at or before expires_at
    _body_started = 0.0
    _body_received = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        self.setTimeout(None)  # Twisted's restarts with every byte: these deadlines replace it
        self._arm(self._policy().header_timeout)

    def lineReceived(self, line: bytes) -> None:
        if self._phase in (NEW, IDLE) and line:
            # The first line of a request (Twisted ignores one empty line before it).
            if self._phase == IDLE:
                self._arm(self._policy().header_timeout)
            self._phase = HEAD
            self.request_path = _path_of(line)
        super().lineReceived(line)

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        if self.length != 0 and self._phase == HEAD:
            self._phase = BODY
            self._body_started = self._now()
            self._body_received = 0
            self._arm(self._policy().body_timeout)

    def rawDataReceived(self, data: bytes) -> None:
        if self._phase == BODY:
            self._body_received += len(data)
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        self._phase = BUSY
        self.expires_at = None  # the timer, if it fires meanwhile, finds nothing to do
        super().allContentReceived()

    def requestDone(self, request) -> None:
        # Set before Twisted goes on to any pipelined request it buffered.
        self._phase = IDLE
        self._arm(self._policy().idle_timeout)
        super().requestDone(request)

    def connectionLost(self, reason) -> None:
        self._cancel()
        super().connectionLost(reason)

    # -- deadlines --------------------------------------------------------------
    def _policy(self) -> TimeoutPolicy:
        return getattr(self.site, "timeouts", None) or _DEFAULT_POLICY

    def _now(self) -> float:
        return self.site.reactor.seconds()

    def _arm(self, delay: float) -> None:
        """The current phase ends ``delay`` seconds from now."""
        now = self._now()
        self.expires_at = now + delay
        self._wake_by(now, self._timer_delay(delay))

    def _timer_delay(self, remaining: float) -> float:
        # Waiting for the next request, a request line may come at any moment
        # and start the (shorter) header deadline: look at least that often,
        # so that the timer never has to be moved sooner.
        if self._phase == IDLE:
            return min(remaining, self._policy().header_timeout)
        return remaining

    def _wake_by(self, now: float, delay: float) -> None:
        timer = self._deadline
        if timer is None or not timer.active():
            self._deadline = self.callLater(delay, self._expired)
        elif timer.getTime() > now + delay:
            timer.reset(delay)  # sooner: only when a phase's deadline is shorter than the header deadline

    def _cancel(self) -> None:
        self.expires_at = None
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport is None or self._phase == BUSY or self.expires_at is None:
            return  # a WebSocket took the connection over, or a request is being handled
        now = self._now()
        if self.expires_at > now:  # the phase changed since the timer was set: look again later
            self._wake_by(now, self._timer_delay(self.expires_at - now))
            return
        if self._phase == BODY:
            policy = self._policy()
            allowed = self._body_started + policy.body_timeout + self._body_received / policy.min_body_rate
            if allowed > now:  # the body is still arriving fast enough
                self._arm(allowed - now)
                return
        if self._phase in (HEAD, BODY):
            what = "headers" if self._phase == HEAD else "body"
            message = f"request {what} not received in time"
            body = dumps({"code": 408, "message": message, "error": message,
                          "timestamp": rfc3339(self._now()), "request_id": ""})
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                                 b"Content-Type: application/json; charset=utf-8\r\n"
                                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.timeoutConnection()  # closes, and aborts a client that does not let go


_DEFAULT_POLICY = TimeoutPolicy()


def _path_of(request_line: bytes) -> bytes:
    parts = request_line.split(b" ")
    target = parts[1] if len(parts) > 1 else b""
    return target.split(b"?", 1)[0]
