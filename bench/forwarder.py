"""
Baseline for ``bench/bulk.py``: the smallest useful Twisted relay.

An ``Int32StringReceiver`` server that pairs connections in the order they
arrive (1st with 2nd, 3rd with 4th, ...) and forwards every frame to the
other side with ``sendString``, unchanged. No login, no calls, no flow
control, no dropping: it is what "just relaying length-prefixed frames in
Twisted" costs. Run as its own process, like the daemon:

    python bench/forwarder.py PORT [--keyed]

With ``--keyed`` (for many pairs connecting at once), a connection's first
frame is a pairing key instead (any body; the two connections that send the
same key are paired) and is not forwarded.

It prints ``ready`` once listening on 127.0.0.1:PORT and exits on SIGTERM.
"""

import sys

from twisted.internet import reactor
from twisted.internet.protocol import ServerFactory
from twisted.protocols.basic import Int32StringReceiver


class Forwarder(Int32StringReceiver):
    MAX_LENGTH = 64 << 20
    peer = None
    key = None

    def connectionMade(self):
        if not self.factory.keyed:
            self._pair(None)

    def _pair(self, key):
        waiting = self.factory.waiting.pop(key, None)
        if waiting is None:
            self.key = key
            self.factory.waiting[key] = self
        else:
            self.peer, waiting.peer = waiting, self

    def stringReceived(self, frame):
        if self.peer is not None:
            self.peer.sendString(frame)
        elif self.factory.keyed and self.key is None:
            self._pair(frame)

    def connectionLost(self, reason=None):
        if self.factory.waiting.get(self.key) is self:
            del self.factory.waiting[self.key]
        if self.peer is not None:
            self.peer.peer = None
            self.peer.transport.loseConnection()
            self.peer = None


class ForwarderFactory(ServerFactory):
    protocol = Forwarder

    def __init__(self, keyed=False):
        self.keyed = keyed
        self.waiting = {}


def main():
    port = int(sys.argv[1])
    reactor.listenTCP(port, ForwarderFactory(keyed="--keyed" in sys.argv[2:]), interface="127.0.0.1")
    reactor.callWhenRunning(lambda: print("ready", flush=True))
    reactor.run()


if __name__ == "__main__":
    main()
