"""The client address behind trusted proxies: X-Forwarded-For read from the right."""

from __future__ import annotations

import ipaddress

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from wecompany.config import parse_networks
from wecompany.proxies import MAX_FORWARDED, NO_PROXIES, TrustedProxies, address_for, parse_ip


def trusting(spec: str) -> TrustedProxies:
    return TrustedProxies.of(parse_networks("trusted-proxies", spec))


class ParseIPTests(SynchronousTestCase):
    def test_the_forms_proxies_write(self):
        for text, expected in [("192.0.2.1", "192.0.2.1"), (" 192.0.2.1 ", "192.0.2.1"),
                               ("192.0.2.1:443", "192.0.2.1"), ("2001:db8::1", "2001:db8::1"),
                               ("[2001:db8::1]", "2001:db8::1"), ("[2001:db8::1]:443", "2001:db8::1"),
                               ("::ffff:192.0.2.9", "192.0.2.9"), ("fe80::1%eth0", "fe80::1")]:
            self.assertEqual(str(parse_ip(text)), expected, text)

    def test_malformed(self):
        for text in ["", "unknown", "192.0.2", "192.0.2.1:http", "[2001:db8::1", "[2001:db8::1]x",
                     "999.0.0.1", "2001:db8::g", "<script>", "192.0.2.1:"]:
            self.assertIsNone(parse_ip(text), text)


class TrustTests(SynchronousTestCase):
    def test_networks_and_addresses(self):
        trusted = trusting("10.0.0.0/8, 127.0.0.1, fd00::/8")
        self.assertTrue(trusted.trusts("10.200.0.1"))
        self.assertTrue(trusted.trusts(IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertFalse(trusted.trusts("127.0.0.2"))
        self.assertTrue(trusted.trusts(IPv6Address("TCP", "fd12::5", 1)))
        self.assertTrue(trusted.trusts("::ffff:10.1.1.1"))  # a dual-stack socket's IPv4 peer
        self.assertFalse(trusted.trusts("2001:db8::1"))
        self.assertFalse(trusted.trusts(UNIXAddress(b"/run/x.sock")))
        self.assertFalse(trusted.trusts("not an address"))

    def test_nobody_by_default(self):
        self.assertFalse(NO_PROXIES)
        self.assertFalse(NO_PROXIES.trusts("127.0.0.1"))
        self.assertFalse(TrustedProxies.of(None))

    def test_address_for(self):
        self.assertEqual(address_for("192.0.2.1"), IPv4Address("TCP", "192.0.2.1", 0))
        self.assertEqual(address_for("2001:db8::1", 5), IPv6Address("TCP", "2001:db8::1", 5))


class ForwardedForTests(SynchronousTestCase):
    trusted = trusting("10.0.0.0/8, fd00::/8")

    def client(self, peer: str, *values) -> str:
        return self.trusted.forwarded_client(peer, list(values))

    def test_from_a_trusted_proxy_the_first_untrusted_from_the_right(self):
        self.assertEqual(self.client("10.0.0.1", "203.0.113.7"), "203.0.113.7")
        # nginx -> HAProxy -> us: both proxies skipped.
        self.assertEqual(self.client("10.0.0.1", "203.0.113.7, 10.0.0.2"), "203.0.113.7")
        # What the client wrote itself, left of what the proxies saw, is not believed.
        self.assertEqual(self.client("10.0.0.1", "198.51.100.1, 203.0.113.7, 10.0.0.2"), "203.0.113.7")
        # Repeated headers are one list, in order.
        self.assertEqual(self.client("10.0.0.1", "198.51.100.1", b"203.0.113.7", "10.0.0.2"), "203.0.113.7")

    def test_a_spoofed_header_from_an_untrusted_peer_changes_nothing(self):
        self.assertEqual(self.client("203.0.113.7", "10.0.0.1"), "203.0.113.7")
        self.assertEqual(self.client("203.0.113.7", "198.51.100.1"), "203.0.113.7")
        self.assertEqual(NO_PROXIES.forwarded_client("127.0.0.1", ["198.51.100.1"]), "127.0.0.1")

    def test_without_a_header_or_all_trusted(self):
        self.assertEqual(self.client("10.0.0.1"), "10.0.0.1")
        self.assertEqual(self.client("10.0.0.1", ""), "10.0.0.1")
        # Only proxies in the chain: the leftmost is as far as it goes.
        self.assertEqual(self.client("10.0.0.1", "10.0.0.3, 10.0.0.2"), "10.0.0.3")

    def test_malformed_values_keep_the_peer(self):
        for value in ["unknown", "203.0.113.7, garbage", "203.0.113.7; for=x", "999.1.1.1", "_hidden"]:
            self.assertEqual(self.client("10.0.0.1", value), "10.0.0.1", value)
        # Left of the first untrusted address nothing is read, so nothing there can spoil it.
        self.assertEqual(self.client("10.0.0.1", "garbage, 203.0.113.7"), "203.0.113.7")
        # Empty list elements are allowed.
        self.assertEqual(self.client("10.0.0.1", "203.0.113.7, , 10.0.0.2"), "203.0.113.7")

    def test_too_long_a_chain_keeps_the_peer(self):
        chain = ", ".join(["10.0.0.9"] * MAX_FORWARDED + ["10.0.0.8"])
        self.assertEqual(self.client("10.0.0.1", chain), "10.0.0.1")

    def test_ipv6(self):
        self.assertEqual(self.client("fd00::1", "2001:db8::7"), "2001:db8::7")
        self.assertEqual(self.client("fd00::1", "[2001:db8::7]:51234, fd00::2"), "2001:db8::7")
        self.assertEqual(self.client("::ffff:10.0.0.1", "2001:db8::7"), "2001:db8::7")
        self.assertEqual(self.client("2001:db8::9", "2001:db8::7"), "2001:db8::9")
        self.assertEqual(self.client("fd00::1", "::ffff:203.0.113.7"), "203.0.113.7")
        self.assertIsInstance(ipaddress.ip_address(self.client("fd00::1", "2001:DB8::7")), ipaddress.IPv6Address)
