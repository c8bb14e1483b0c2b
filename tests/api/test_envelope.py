"""The envelope's helpers: RFC 3339 time stamps both ways."""

from twisted.trial.unittest import SynchronousTestCase

from wecompany.api.envelope import parse_rfc3339, rfc3339


class Rfc3339Tests(SynchronousTestCase):
    def test_whole_seconds_in_utc(self):
        self.assertEqual(rfc3339(0), "1970-01-01T00:00:00Z")
        self.assertEqual(rfc3339(1_700_000_000.999), "2023-11-14T22:13:20Z")
        self.assertEqual(rfc3339(-1.5), "1969-12-31T23:59:58Z")
        self.assertIsNone(rfc3339(None))

    def test_the_remembered_second_is_never_stale(self):
        # One second is remembered (busy rooms stamp many messages in it):
        # going on, going back and coming back must all still be right.
        for seconds, text in ((100.2, "1970-01-01T00:01:40Z"), (100.9, "1970-01-01T00:01:40Z"),
                              (101.0, "1970-01-01T00:01:41Z"), (99.99, "1970-01-01T00:01:39Z"),
                              (101.5, "1970-01-01T00:01:41Z"), (86_400 + 101.5, "1970-01-02T00:01:41Z")):
            self.assertEqual(rfc3339(seconds), text, seconds)

    def test_round_trip(self):
        self.assertEqual(parse_rfc3339(rfc3339(1_700_000_000)), 1_700_000_000)
        self.assertEqual(parse_rfc3339("2023-11-14T23:13:20+01:00"), 1_700_000_000)
        self.assertRaises(ValueError, parse_rfc3339, "2023-11-14T22:13:20")
