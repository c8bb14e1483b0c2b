"""Bounded sending to slow clients, shared by the TCP and WebSocket transports."""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class SendGate:
    """
    Registered as a transport's streaming producer, so the transport says
    when its send buffer is full (``pauseProducing``) and when it has drained
    (``resumeProducing``). Reading is not affected.

    While the buffer is full, real-time data should be dropped (``blocked``)
    and everything else counted with :meth:`admit`: once more than ``limit``
    bytes were queued without the buffer draining, the client cannot keep up
    and should be cut off, so memory stays bounded.
    """

    def __init__(self, limit: int, on_writable=None) -> None:
        self.limit = limit
        self.blocked = False
        self.queued = 0
        self._on_writable = on_writable

    def attach(self, transport) -> None:
        # A transport taken over from another protocol (a WebSocket upgrade of
        # an HTTP connection) may still have that protocol as its producer.
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(self, True)

    def admit(self, size: int) -> bool:
        """Count ``size`` bytes about to be written; False when the client must be cut off."""
        if self.blocked:
            self.queued += size
            return self.queued <= self.limit
        return True

    def pauseProducing(self) -> None:
        self.blocked = True

    def resumeProducing(self) -> None:
        self.blocked = False
        self.queued = 0
        if self._on_writable is not None:
            self._on_writable()

    def stopProducing(self) -> None:
        self.blocked = True


def tune_realtime(transport, buffer_size: int) -> None:
    """
    Settings for a connection that carries real-time media:

    * ``TCP_NODELAY``: without it Nagle's algorithm holds a small packet back
      until the peer's delayed ACK arrives, which showed as 20 ms steps in
      relay latency (bench/media.py);
    * a send buffer of ``buffer_size`` before the transport reports itself
      full: Twisted's default (64 KiB) is less than one read of relayed
      media can add in a single reactor turn, so media was dropped to
      receivers that were keeping up (bench/bulk.py).
    """
    no_delay(transport)
    if hasattr(transport, "bufferSize"):
        transport.bufferSize = buffer_size


def no_delay(transport) -> None:
    """
    ``TCP_NODELAY``, for connections whose small messages must not wait:
    Nagle's algorithm holds a small write back while an earlier one is
    unacknowledged, until the peer's delayed ACK (up to 40 ms on Linux).
    """
    set_nodelay = getattr(transport, "setTcpNoDelay", None)
    if set_nodelay is not None:
        try:
            set_nodelay(True)
        except OSError:
            pass  # not a TCP socket (e.g. a UNIX endpoint)
