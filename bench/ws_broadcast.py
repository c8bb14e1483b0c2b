"""
Baseline for ``bench/signaling.py``: the smallest useful Autobahn chat room.

A ``WebSocketServerProtocol`` server whose rooms are named by the
``meeting_id`` query parameter. ``{"type":"join"}`` (or ``{"type":4}``) puts
the connection in its room and answers ``room-info`` with the room's size to
everyone in it; every other text message is broadcast, unchanged, to the whole
room including the sender, framed once with Autobahn's ``prepareMessage`` and
sent with ``sendPreparedMessage`` (Autobahn's own broadcast example). No
accounts, no tokens, no storage, no limits: it is what "just fanning chat
out over WebSocket in Twisted" costs. Run as its own process, like the daemon:

    python bench/ws_broadcast.py PORT

It prints ``ready`` once listening on 127.0.0.1:PORT and exits on SIGTERM.
"""

import json
import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor

JOINS = (b'{"type":"join"}', b'{"type":4}')


class Broadcaster(WebSocketServerProtocol):
    room = None
    joined = False

    def onConnect(self, request):
        self.room = self.factory.rooms.setdefault((request.params.get("meeting_id") or [""])[0], [])

    def onMessage(self, payload, isBinary):
        if payload in JOINS:
            if not self.joined:
                self.joined = True
                self.room.append(self)
                info = json.dumps({"type": "room-info", "payload": {"participant_count": len(self.room)}})
                self._broadcast(info.encode())
            return
        if self.joined:
            self._broadcast(payload)

    def _broadcast(self, payload):
        prepared = self.factory.prepareMessage(payload)
        for member in self.room:
            member.sendPreparedMessage(prepared)

    def onClose(self, wasClean, code, reason):
        if self.joined:
            self.joined = False
            self.room.remove(self)


def main():
    port = int(sys.argv[1])
    factory = WebSocketServerFactory()
    factory.protocol = Broadcaster
    factory.rooms = {}
    factory.setProtocolOptions(autoPingInterval=None)
    reactor.listenTCP(port, factory, interface="127.0.0.1", backlog=1024)
    reactor.callWhenRunning(lambda: print("ready", flush=True))
    reactor.run()


if __name__ == "__main__":
    main()
