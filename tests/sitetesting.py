"""
An HTTP client for a :class:`twisted.web.server.Site` in memory: real HTTP
bytes between treq's client and the site's own channels (its body limits,
deadlines and metrics included), over ``twisted.test.iosim`` instead of
sockets, on the site's fake clock.

treq's ``StubTreq`` does the same for a bare resource, but serves it through
a ``Site`` of its own, which would skip everything our site does.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.web.client import Agent
from twisted.web.iweb import IAgent, IBodyProducer
from treq.client import HTTPClient
from zope.interface import implementer

CLIENT = IPv4Address("TCP", "127.0.0.1", 31337)


@implementer(IBodyProducer)
class WholeBody:
    """A request body written at once (requests here are small and synchronous)."""

    def __init__(self, body: bytes | str) -> None:
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.length = len(self.body)

    def startProducing(self, consumer):
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Endpoints:
    def __init__(self, reactor) -> None:
        self.reactor = reactor

    def endpointForURI(self, uri):
        return TCP4ClientEndpoint(self.reactor, "127.0.0.1", uri.port)


@implementer(IAgent)
class SiteAgent:
    """An ``IAgent`` whose every connection is to ``site``, through ``site.buildProtocol``."""

    def __init__(self, site, client_address: IPv4Address = CLIENT) -> None:
        self.site = site
        self.client_address = client_address
        self._reactor = MemoryReactorClock()
        self._agent = Agent.usingEndpointFactory(self._reactor, _Endpoints(self._reactor))
        self._pumps: list = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        response = self._agent.request(method, uri, headers, bodyProducer)
        if not self._reactor.tcpClients:
            return response
        _, port, client_factory, _, _ = self._reactor.tcpClients.pop()
        server_address = IPv4Address("TCP", "127.0.0.1", port)
        server = self.site.buildProtocol(self.client_address)
        client = client_factory.buildProtocol(None)
        self._pumps.append(iosim.connect(
            server, iosim.FakeTransport(server, isServer=True, hostAddress=server_address,
                                        peerAddress=self.client_address),
            client, iosim.FakeTransport(client, isServer=False, hostAddress=self.client_address,
                                        peerAddress=server_address)))
        return response

    def flush(self) -> None:
        """Move whatever either side has written (needed after an answer that came later)."""
        pumps, self._pumps = self._pumps, []
        for pump in pumps:
            pump.flush()
            if not (pump.clientIO.disconnected and pump.serverIO.disconnected):
                self._pumps.append(pump)


def site_client(site) -> tuple[HTTPClient, SiteAgent]:
    """A treq ``HTTPClient`` for ``site``, and its agent (for ``flush``)."""
    agent = SiteAgent(site)
    return HTTPClient(agent, data_to_body_producer=WholeBody), agent
