"""MeetingPages: pages of the meeting list read through, all forgotten on any change, bounded by meetings held."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from wecompany.domain.meetingpages import MeetingPages


class MeetingPagesTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.pages = MeetingPages(self.clock, max_meetings=25, max_age=10.0)
        self.reads = []

    def page(self, offset=0, limit=10, statuses=None, keyword=None, rows=10):
        def read():
            self.reads.append((offset, limit, statuses, keyword))
            return succeed((100, tuple(range(offset, offset + min(limit, rows)))))
        return self.successResultOf(Deferred.fromCoroutine(self.pages.page(offset, limit, statuses, keyword, read)))

    def test_each_page_read_once(self):
        self.assertEqual(self.page(), (100, tuple(range(10))))
        self.page()
        self.page(keyword="x")
        self.page(statuses=("ongoing",))
        self.page(keyword="x")
        self.assertEqual(len(self.reads), 3)

    def test_any_change_forgets_every_page(self):
        self.page()
        self.page(offset=10)
        self.pages.invalidate(42)
        self.page()
        self.page(offset=10)
        self.assertEqual(len(self.reads), 4)
        self.pages.invalidate_all()
        self.assertEqual(len(self.pages), 0)

    def test_a_read_older_than_a_change_does_not_fill(self):
        pending = Deferred()
        d = Deferred.fromCoroutine(self.pages.page(0, 10, None, None, lambda: pending))
        self.pages.invalidate(1)
        pending.callback((1, ("old",)))
        self.assertEqual(self.successResultOf(d), (1, ("old",)))
        self.assertEqual(len(self.pages), 0)

    def test_bounded_by_the_meetings_held(self):
        # Each page weighs 1 + its meetings: two pages of 10 fit in 25, a third does not.
        self.page(offset=0)
        self.page(offset=10)
        self.page(offset=20)
        self.assertEqual((len(self.pages), self.pages.weight), (2, 22))
        self.page(offset=10)
        self.page(offset=20)
        self.assertEqual(len(self.reads), 3)
        self.page(offset=0)  # the least recently used went first
        self.assertEqual(len(self.reads), 4)
        # A page larger than the whole cache is answered, not kept.
        self.page(offset=0, limit=100, rows=100)
        self.assertLessEqual(self.pages.weight, 25)

    def test_pages_age(self):
        self.page()
        self.clock.advance(9.9)
        self.page()
        self.clock.advance(0.1)
        self.page()
        self.assertEqual(len(self.reads), 2)
