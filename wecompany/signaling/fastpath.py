"""
The signaling fast path: the one place that relies on Autobahn's internals.

Measured on the chat path of a busy room (``bench/signaling.py``), Autobahn
spends most of a message's time on machinery signaling does not need:
``sendData`` formats debug-log arguments on every call, logged or not
(11.5 us a message against 0.4 us for the write; a chat to a room of 10 is
10 of them); ``dataReceived`` does the same and then parses each frame
through a dozen calls; ``onMessageEnd`` fires "message" observers (this
protocol has none) through a txaio Deferred per message. The
:class:`FastPathProtocol` takes whole, masked, single-frame text messages
itself and writes prepared frames straight to the transport, whenever
Autobahn holds nothing of its own; everything else (control frames,
fragments, partial or large frames, invalid UTF-8) still goes through
Autobahn, which applies the RFC.

To do that it reads and writes attributes and methods that are not
Autobahn's public API (:data:`INSTANCE_INTERNALS`, :data:`CLASS_INTERNALS`).
So that a change in them fails loudly instead of reordering frames or
skipping checks:

* setup.cfg caps autobahn and txaio at the versions this was tested with
  (:data:`TESTED`);
* :func:`class_problems` and :func:`instance_problems` check that every
  internal used is there, with the shape expected; the factory runs them
  (at start, and on its first open connection) and serves the plain
  Autobahn path instead if one fails, and ``tests/signaling/test_fastpath.py``
  fails if any does;
* ``--no-ws-fast-path`` turns it off: :class:`SignalingProtocol` alone is
  plain, public Autobahn, and the signaling tests run against both.
"""

from __future__ import annotations

import inspect
from collections import deque

from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol
from twisted.logger import Logger

from wecompany.signaling.protocol import SignalingProtocol

#: The versions the internals below were read from and tested with.
TESTED = {"autobahn": "26.11.1", "txaio": "26.6.1"}

#: Methods of Autobahn's WebSocketProtocol used, with their parameters.
CLASS_INTERNALS = {
    "_dataReceived": ["self", "data"],
    "_cancelAutoPingTimeoutCall": ["self"],
    "onMessageEnd": ["self"],  # replaced here; it must still be what ends a message
    "sendPreparedMessage": ["self", "preparedMsg"],
}

#: Attributes of an open protocol read here, with what each must be. (Two
#: more, ``message_data`` and ``message_is_binary``, exist only while
#: Autobahn assembles a message; ``onMessageEnd`` reads them, and the test
#: sends a fragmented message through it.)
INSTANCE_INTERNALS = {
    "state": int,
    "data": bytes,
    "current_frame": type(None),  # between frames
    "inside_message": bool,
    "send_queue": deque,
    "failedByMe": bool,
    "_perMessageCompress": type(None),  # no compression is negotiated
    "autoPingRestartOnAnyTraffic": bool,
    "autoPingTimeoutCall": object,
    "maxFramePayloadSize": int,
    "maxMessagePayloadSize": int,
}

_log = Logger()


def class_problems() -> list[str]:
    """What of :data:`CLASS_INTERNALS` (and the prepared frame) is missing or changed; [] when all is well."""
    problems = []
    for name, parameters in CLASS_INTERNALS.items():
        method = getattr(WebSocketProtocol, name, None)
        if not callable(method):
            problems.append(f"WebSocketProtocol.{name} is missing")
            continue
        found = list(inspect.signature(method).parameters)
        if found != parameters:
            problems.append(f"WebSocketProtocol.{name} takes {found}, not {parameters}")
    for name in ("STATE_OPEN", "STATE_CLOSED"):
        if not isinstance(getattr(WebSocketProtocol, name, None), int):
            problems.append(f"WebSocketProtocol.{name} is not an int")
    prepared = PreparedMessage(b"{}", False, False, False)
    if getattr(prepared, "payloadHybi", None) != b"\x81\x02{}":
        problems.append("PreparedMessage.payloadHybi is not the framed message")
    return problems


def instance_problems(protocol) -> list[str]:
    """What of :data:`INSTANCE_INTERNALS` an open, idle ``protocol`` lacks or holds in another shape."""
    problems = []
    for name, kind in INSTANCE_INTERNALS.items():
        if not hasattr(protocol, name):
            problems.append(f"an open protocol has no {name}")
        elif not isinstance(getattr(protocol, name), kind):
            problems.append(f"{name} is a {type(getattr(protocol, name)).__name__}, not {kind}")
    return problems


class FastPathProtocol(SignalingProtocol):
    """
    :class:`SignalingProtocol` with the fast path. It is used only while
    ``factory.fast_path`` holds: the factory clears it, and this protocol
    then behaves exactly as its base, when a check fails.
    """

    def onOpen(self) -> None:
        factory = self.factory
        if factory.fast_path and not factory.fast_path_checked:
            factory.fast_path_checked = True
            problems = instance_problems(self)
            if problems:
                factory.disable_fast_path(problems)
        super().onOpen()

    def _send_prepared(self, message: PreparedMessage) -> None:
        # Straight to the transport when Autobahn has nothing queued of its own.
        if self.factory.fast_path and not self.send_queue and self._perMessageCompress is None:
            self.transport.write(message.payloadHybi)
        else:
            self.sendPreparedMessage(message)

    def dataReceived(self, data: bytes) -> None:
        if (self.factory.fast_path and self.state == self.STATE_OPEN and not self.data
                and self.current_frame is None and not self.inside_message and self._perMessageCompress is None):
            pos = self._take_text_frames(data)
            if pos:
                if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                    self._cancelAutoPingTimeoutCall()  # any traffic shows the peer is alive
                data = data[pos:]
                if not data or self.state == self.STATE_CLOSED:
                    return
        self._dataReceived(data)

    def _take_text_frames(self, data: bytes) -> int:
        """Deliver the whole, valid, masked text frames at the start of ``data``; -> bytes used."""
        pos, end = 0, len(data)
        limit = min(n for n in (self.maxFramePayloadSize, self.maxMessagePayloadSize, 0xFFFF) if n)
        while end - pos >= 6 and data[pos] == 0x81 and data[pos + 1] & 0x80 and self.state == self.STATE_OPEN:
            length, head = data[pos + 1] & 0x7F, pos + 2
            if length == 126:
                length, head = int.from_bytes(data[pos + 2:pos + 4], "big"), pos + 4
                if length < 126:
                    break  # not the minimal encoding: a violation for Autobahn to fail
            elif length == 127:
                break
            start = head + 4
            if length > limit or start + length > end:
                break
            key = int.from_bytes(data[head:start] * ((length + 3) // 4), "big") >> (8 * (-length % 4))
            payload = (int.from_bytes(data[start:start + length], "big") ^ key).to_bytes(length, "big")
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                break  # Autobahn fails the connection (1007), as the RFC asks
            pos = start + length
            self.onMessage(payload, False)
        return pos

    def onMessageEnd(self) -> None:
        # Autobahn's own also fires its "message" observers (this protocol
        # has none) through a txaio Deferred per message. What it does
        # besides is this.
        if not self.factory.fast_path:
            super().onMessageEnd()
            return
        if not self.failedByMe:
            self.onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None


def check_at_start(factory) -> None:
    """The class-level half of the checks, for a factory about to serve the fast path."""
    problems = class_problems()
    if problems:
        factory.disable_fast_path(problems)
