"""
Call media between the nodes of a cluster over direct connections (``--node-link``).

Everything else that crosses nodes goes through Redis pub/sub, but call
media is thousands of small packets a second, and on that path each one
costs a JSON and base64 round trip, a PUBLISH and its reply on one node
and a pub/sub parse on the other. Measured with ``bench/cluster_media.py``
(see bench/README.rst for the figures): through Redis a packet relayed
across two nodes cost about four times the CPU of the same packet relayed
on one node; over these links, about twice (one more receive and one more
send, which is the least a second node can cost).

So each node with ``--node-link`` listens for the other nodes, announces
where it can be reached in its heartbeat (``--node-link-address``, or
the listening address), and sends media for a node over a connection to
it, which it opens the first time it needs one. Until that connection is
up (and while a node has no link) media goes through Redis as before, so a
link is an optimisation that can fail without losing a call.

The protocol: ``u32`` length-prefixed frames; the first byte of a frame
is its kind.

=====  ===================================================================
``H``  hello, first from both sides: JSON ``{"v": 1, "node": id, "nonce": hex}``
``P``  proof: HMAC-SHA256(link key, ``proof`` + the peer's nonce + own node id)
``M``  media: ``u8 op``, ``u8 n`` + the session id, ``u8 n`` + the call id, the packet
=====  ===================================================================

The link key is derived from the cluster's shared JWT secret and its Redis
prefix (:func:`link_key`), so only nodes of the same cluster get past the
hello, and fresh nonces on both sides mean a recorded handshake cannot be
replayed. A connection that has not proved itself within
:data:`HANDSHAKE_TIMEOUT`, or sends anything out of order, is closed.
The media is not encrypted unless the endpoints are TLS ones
(``--node-link ssl:...`` and ``--node-link-address tls:...``): run links
over a private network otherwise (docs/cluster.rst).

A link whose send buffer is full drops media, as the TCP port does for a
client that cannot keep up: media is real-time, and memory stays bounded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets

from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver

from wecompany.backpressure import SendGate, tune_realtime

#: Media for a client of the receiving node (the call's owner relayed it).
TO_CLIENT = 0
#: Media from a party on the sending node, for the call the receiving node owns.
FROM_PARTY = 1
HANDSHAKE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
#: Seconds before connecting again to a node a connection failed to; doubled up to the maximum.
RETRY_FIRST, RETRY_MAX = 1.0, 30.0
#: Bytes a link may queue in user space before it counts as full (media is dropped then).
LINK_BUFFER = 1 << 20
MAX_ID = 255
_VERSION = 1


def link_key(secret: bytes, prefix: str) -> bytes:
    """The key the nodes of one cluster (one secret, one Redis prefix) prove themselves with."""
    return hmac.new(secret, b"wecompany node link\0" + prefix.encode(), hashlib.sha256).digest()


def _proof(key: bytes, nonce: str, node: str) -> bytes:
    return hmac.new(key, b"proof\0" + nonce.encode() + b"\0" + node.encode(), hashlib.sha256).digest()


class LinkProtocol(Int32StringReceiver):
    """One connection between two nodes, in either direction (see the module docstring)."""

    log = Logger()

    def __init__(self, links: "NodeLinks", expected: str | None = None) -> None:
        self.links = links
        self.expected = expected  # the node an outgoing connection was made to
        self.MAX_LENGTH = links.max_frame
        self.peer: str | None = None  # once proved
        self.nonce = secrets.token_hex(16)
        self._peer_hello: tuple[str, str] | None = None
        self._timeout = None
        self.gate = SendGate(LINK_BUFFER)

    def connectionMade(self) -> None:
        self.links.opened(self)
        tune_realtime(self.transport, LINK_BUFFER)
        self.gate.attach(self.transport)
        self._timeout = self.links.clock.callLater(HANDSHAKE_TIMEOUT, self._give_up, "no handshake in time")
        self.sendString(b"H" + json.dumps({"v": _VERSION, "node": self.links.node_id, "nonce": self.nonce},
                                          separators=(",", ":")).encode())

    def stringReceived(self, frame: bytes) -> None:
        kind = frame[:1]
        if self.peer is not None:
            if kind == b"M" and self._media(frame):
                return
            self._give_up("a malformed frame")
        elif kind == b"H" and self._peer_hello is None:
            self._hello(frame[1:])
        elif kind == b"P" and self._peer_hello is not None:
            self._check_proof(frame[1:])
        else:
            self._give_up("a frame out of order")

    def _hello(self, body: bytes) -> None:
        try:
            hello = json.loads(body)
            node, nonce = hello["node"], hello["nonce"]
            valid = (hello.get("v") == _VERSION and isinstance(node, str) and 0 < len(node) <= MAX_ID
                     and isinstance(nonce, str) and len(nonce) == 32)
        except (ValueError, TypeError, KeyError, AttributeError):
            valid = False
        if not valid:
            self._give_up("a malformed hello")
            return
        if node == self.links.node_id or (self.expected is not None and node != self.expected):
            self._give_up(f"a hello from node {node!r}")
            return
        self._peer_hello = (node, nonce)
        self.sendString(b"P" + _proof(self.links.key, nonce, self.links.node_id))

    def _check_proof(self, proof: bytes) -> None:
        node, _ = self._peer_hello
        if not hmac.compare_digest(proof, _proof(self.links.key, self.nonce, node)):
            self._give_up("a wrong proof (another cluster's secret?)")
            return
        self._cancel_timeout()
        self.peer = node
        self.links.ready(self)

    def _media(self, frame: bytes) -> bool:
        try:
            op, n = frame[1], frame[2]
            sid = frame[3:3 + n].decode("ascii")
            m = frame[3 + n]
            call = frame[4 + n:4 + n + m].decode("ascii")
        except (IndexError, UnicodeDecodeError):
            return False
        if op not in (TO_CLIENT, FROM_PARTY) or len(frame) < 4 + n + m:
            return False
        self.links.received(self.peer, op, sid, call, frame[4 + n + m:])
        return True

    def send_media(self, op: int, sid: str, call: str, data: bytes) -> bool:
        """Queue one packet; False when the link is full and the packet was dropped."""
        if self.gate.blocked:
            return False
        s, c = sid.encode("ascii"), call.encode("ascii")
        self.sendString(b"M" + bytes((op, len(s))) + s + bytes((len(c),)) + c + data)
        return True

    def lengthLimitExceeded(self, length: int) -> None:
        self._give_up(f"a frame of {length} bytes")

    def _give_up(self, why: str) -> None:
        self.log.warn("cluster: closing the media link with {peer}: {why}",
                      peer=self.peer or (self._peer_hello or (self.expected or "a new connection",))[0], why=why)
        self._cancel_timeout()
        self.transport.abortConnection()

    def _cancel_timeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def connectionLost(self, reason) -> None:
        self._cancel_timeout()
        self.links.lost(self)


class _OneLink(Factory):
    """``connectProtocol``'s one-shot factory, without its "Starting factory" line at every link."""

    noisy = False

    def __init__(self, protocol) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr):
        return self.protocol_instance


class _LinkFactory(Factory):
    noisy = False

    def __init__(self, links: "NodeLinks") -> None:
        self.links = links

    def buildProtocol(self, addr):
        protocol = LinkProtocol(self.links)
        protocol.factory = self
        return protocol


class NodeLinks:
    """
    This node's media links to the other nodes of its cluster.

    :param clock: ``IReactorTime``.
    :param node_id: this node's id.
    :param key: :func:`link_key` of the cluster.
    :param connect: ``address -> IStreamClientEndpoint`` for another node's
        announced address (``clientFromString`` with the reactor).
    :param address: where the other nodes reach this one, a client endpoint
        string; None to announce the listening port's address once it listens.
    :param max_frame: the longest frame accepted (a media packet and its header).
    """

    log = Logger()

    def __init__(self, clock, node_id: str, key: bytes, *, connect, address: str | None = None,
                 max_frame: int = 1 << 20) -> None:
        self.clock = clock
        self.node_id = node_id
        self.key = key
        self.connect = connect
        self.address = address
        self.max_frame = max_frame + 2 * MAX_ID + 8
        self.links: dict[str, LinkProtocol] = {}  # proved, by peer node
        self.addresses: dict[str, str] = {}  # what each peer announced
        self._open: set[LinkProtocol] = set()
        self._connecting: set[str] = set()
        self._retry: dict[str, tuple[float, float]] = {}  # node -> (not before, next delay)
        self._timers: dict = {}  # node -> the DelayedCall of the next attempt
        self._stopped = False
        self._receivers: list = []
        self.sent = self.dropped = self.received_packets = 0

    def factory(self) -> Factory:
        """The factory of the ``--node-link`` listening port."""
        return _LinkFactory(self)

    def listening(self, port) -> None:
        """The port listens: without ``--node-link-address``, announce its address."""
        if self.address is None:
            host = port.getHost()
            kind = "tcp6" if ":" in host.host else "tcp"
            self.address = f"{kind}:host={host.host.replace(':', chr(92) + ':')}:port={host.port}"
        self.log.info("cluster: media links on {address}", address=self.address)

    def on_media(self, receiver) -> None:
        """``receiver(node, op, sid, call_id, data)`` gets each packet a proved link brings."""
        self._receivers.append(receiver)

    # -- the other nodes -------------------------------------------------------
    def peer_address(self, node: str, address) -> None:
        """What ``node``'s heartbeat announced (None: it has no link)."""
        if not isinstance(address, str) or not address:
            address = None
        if self.addresses.get(node) == address:
            return
        if address is None:
            self.addresses.pop(node, None)
        else:
            self.addresses[node] = address
        self._retry.pop(node, None)
        self._cancel_timer(node)
        link = self.links.pop(node, None)  # moved: reach it where it is now
        if link is not None:
            link.transport.loseConnection()
        # At once, not at the first packet: media sent while a link is being
        # made goes through Redis, and could be overtaken by the next packets.
        self._connect(node)

    def forget(self, node: str) -> None:
        """``node`` is gone from the cluster."""
        self.addresses.pop(node, None)
        self._retry.pop(node, None)
        self._cancel_timer(node)
        for link in [link for link in self._open if node in (link.peer, link.expected)]:
            link.transport.loseConnection()

    # -- media -----------------------------------------------------------------
    def send(self, node: str, op: int, sid: str, call: str, data: bytes) -> bool | None:
        """
        Send one packet to ``node`` over its link: True when it was sent,
        False when it was dropped because the link is full, None when there
        is no link yet (one is being made, if ``node`` announced an
        address): then the caller sends it the other way.
        """
        link = self.links.get(node)
        if link is None:
            self._connect(node)
            return None
        if link.send_media(op, sid, call, data):
            self.sent += 1
            return True
        self.dropped += 1
        return False

    def received(self, node: str, op: int, sid: str, call: str, data: bytes) -> None:
        self.received_packets += 1
        for receiver in self._receivers:
            receiver(node, op, sid, call, data)

    # -- connections -------------------------------------------------------------
    def _connect(self, node: str) -> None:
        address = self.addresses.get(node)
        if address is None or node in self._connecting or node in self.links or self._stopped \
                or any(link.expected == node for link in self._open):  # one on its way
            return
        not_before, _ = self._retry.get(node, (0.0, RETRY_FIRST))
        if self.clock.seconds() < not_before:
            return
        self._connecting.add(node)
        try:
            d = self.connect(address).connect(_OneLink(LinkProtocol(self, expected=node)))
        except Exception as error:  # a malformed address announced
            self._connecting.discard(node)
            self._failed(node, address, error)
            return
        d.addTimeout(CONNECT_TIMEOUT, self.clock)
        d.addErrback(lambda failure: self._failed(node, address, failure.value))
        d.addBoth(lambda _: self._connecting.discard(node))

    def _failed(self, node: str, address: str, error) -> None:
        _, delay = self._retry.get(node, (0.0, RETRY_FIRST))
        self._retry[node] = (self.clock.seconds() + delay, min(RETRY_MAX, 2 * delay))
        self._schedule(node, delay)
        self.log.warn("cluster: no media link to node {node} at {address} ({error}): its media goes "
                      "through Redis; trying again in {delay:.0f} s", node=node, address=address,
                      error=error, delay=delay)

    def _schedule(self, node: str, delay: float) -> None:
        if not self._stopped and node not in self._timers:
            self._timers[node] = self.clock.callLater(delay, self._attempt, node)

    def _attempt(self, node: str) -> None:
        self._timers.pop(node, None)
        self._connect(node)

    def _cancel_timer(self, node: str) -> None:
        timer = self._timers.pop(node, None)
        if timer is not None and timer.active():
            timer.cancel()

    def opened(self, link: LinkProtocol) -> None:
        self._open.add(link)

    def ready(self, link: LinkProtocol) -> None:
        self._retry.pop(link.peer, None)
        if link.peer not in self.links:
            self.log.info("cluster: media link with node {node} is up", node=link.peer)
        self.links[link.peer] = link  # the newest, if both nodes connected at once

    def lost(self, link: LinkProtocol) -> None:
        self._open.discard(link)
        if link.peer is not None and self.links.get(link.peer) is link:
            del self.links[link.peer]
            others = [other for other in self._open if other.peer == link.peer]
            if others:
                self.links[link.peer] = others[-1]
            else:
                self.log.info("cluster: media link with node {node} closed", node=link.peer)
                if link.peer in self.addresses:
                    self._schedule(link.peer, RETRY_FIRST)

    def stop(self) -> None:
        """Close every link (the listening port is closed with the daemon's others)."""
        self._stopped = True
        for node in list(self._timers):
            self._cancel_timer(node)
        for link in list(self._open):
            link.transport.loseConnection()
