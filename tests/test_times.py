"""RFC 3339 time stamps both ways (wecompany.times)."""

import datetime
import math

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wecompany.times import MAX_TIME, MIN_TIME, parse_rfc3339, rfc3339

UTC = datetime.timezone.utc
ZONES = st.builds(lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes)),
                  st.integers(-23 * 60 - 59, 23 * 60 + 59))


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


class BoundedTimeTests(SynchronousTestCase):
    """Times are bounded when they come in, and writing one can never fail."""

    def test_input_range(self):
        self.assertEqual(parse_rfc3339("1970-01-01T00:00:00Z"), MIN_TIME)
        self.assertEqual(parse_rfc3339("9999-12-31T23:59:59Z"), MAX_TIME)
        for outside in ("9999-12-31T23:59:59-23:59", "1969-12-31T23:59:59Z", "0001-01-01T00:00:00+23:59"):
            self.assertRaises(ValueError, parse_rfc3339, outside)

    def test_writing_never_fails(self):
        self.assertEqual(rfc3339(MAX_TIME + 86400), "9999-12-31T23:59:59Z")
        self.assertEqual(rfc3339(1e300), "9999-12-31T23:59:59Z")
        self.assertEqual(rfc3339(math.inf), "9999-12-31T23:59:59Z")
        self.assertEqual(rfc3339(-1e300), "0001-01-01T00:00:00Z")
        self.assertIsNone(rfc3339(math.nan))

    @settings(max_examples=300)
    @given(st.floats(allow_nan=True, allow_infinity=True))
    def test_any_number_is_written(self, seconds):
        text = rfc3339(seconds)
        if seconds != seconds:
            self.assertIsNone(text)
        else:
            self.assertRegex(text, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

    @settings(max_examples=300)
    @given(st.text(max_size=45))
    def test_any_text_parses_into_the_range_or_is_refused(self, text):
        try:
            seconds = parse_rfc3339(text)
        except ValueError:
            return
        self.assertTrue(MIN_TIME <= seconds <= MAX_TIME, (text, seconds))

    @settings(max_examples=300)
    @given(st.datetimes(min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(9999, 12, 30),
                        timezones=ZONES))
    def test_any_zone_round_trips(self, moment):
        seconds = parse_rfc3339(moment.isoformat())
        self.assertEqual(seconds, moment.timestamp())
        self.assertEqual(parse_rfc3339(rfc3339(seconds)), math.floor(seconds))

    def test_seconds_written_are_remembered_bounded(self):
        from wecompany import times

        for second in range(times._MAX_WRITTEN * 2 + 10):
            self.assertLessEqual(len(times._written), times._MAX_WRITTEN)
            self.assertEqual(rfc3339(1_700_000_000 + second + 0.5),
                             datetime.datetime.fromtimestamp(1_700_000_000 + second, datetime.timezone.utc)
                             .strftime("%Y-%m-%dT%H:%M:%SZ"))
        # Remembered ones answer alike, whatever the fraction.
        self.assertEqual(rfc3339(1_700_000_000.9), rfc3339(1_700_000_000.1))
