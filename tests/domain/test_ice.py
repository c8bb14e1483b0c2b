"""ICE servers and time-limited TURN credentials (TURN REST API convention)."""

import base64
import hashlib
import hmac

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wecompany.domain.ice import DEFAULT_STUN, IceServers


class IceServersTests(SynchronousTestCase):
    def test_never_empty(self):
        self.assertEqual(IceServers(Clock(), stun_urls=()).for_user(1), [{"urls": list(DEFAULT_STUN)}])

    def test_turn_credentials(self):
        clock = Clock()
        clock.advance(1000)
        ice = IceServers(clock, ("stun:s:3478",), ("turn:t:3478",), b"shared-secret", turn_ttl=60)
        stun, turn = ice.for_user(42)
        self.assertEqual(stun, {"urls": ["stun:s:3478"]})
        self.assertEqual(turn["username"], "1060:42")
        expected = base64.b64encode(hmac.new(b"shared-secret", b"1060:42", hashlib.sha1).digest()).decode()
        self.assertEqual(turn["credential"], expected)

    def test_turn_without_secret_has_no_credentials(self):
        servers = IceServers(Clock(), ("stun:s",), ("turn:t",)).for_user(1)
        self.assertEqual(servers[1], {"urls": ["turn:t"]})
