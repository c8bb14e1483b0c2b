"""The pieces of a download: Range parsing and a Content-Disposition no file name breaks."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from wecompany.web.download import Unsatisfiable, content_disposition, parse_range


class RangeTests(SynchronousTestCase):
    def test_single_ranges(self):
        for header, expected in [("bytes=0-0", (0, 0)), ("bytes=0-99", (0, 99)), ("bytes=10-", (10, 99)),
                                 ("bytes=-1", (99, 99)), ("bytes=-100", (0, 99)), ("bytes=-500", (0, 99)),
                                 ("bytes=50-5000", (50, 99)), ("BYTES = 1 - 2", (1, 2))]:
            self.assertEqual(parse_range(header, 100), expected, header)

    def test_ignored(self):
        for header in (None, "", "bytes=", "bytes=-", "bytes=a-b", "bytes=5-1", "bytes=1-2,3-4", "lines=1-2",
                       "bytes=1-2-3", "bytes 1-2"):
            self.assertIsNone(parse_range(header, 100), header)

    def test_unsatisfiable(self):
        for header, size in (("bytes=100-", 100), ("bytes=100-200", 100), ("bytes=-0", 100), ("bytes=0-", 0),
                             ("bytes=-5", 0)):
            self.assertRaises(Unsatisfiable, parse_range, header, size)


class ContentDispositionTests(SynchronousTestCase):
    def test_plain(self):
        self.assertEqual(content_disposition("a.pdf"), b"attachment; filename=\"a.pdf\"; filename*=UTF-8''a.pdf")

    def test_nothing_breaks_out(self):
        for name in ('a"; filename="evil.exe', "a\r\nSet-Cookie: x=1", "a\\\"b", "a\x00b", "%41.txt", "\u202eexe.txt"):
            header = content_disposition(name)
            fallback = header.split(b'filename="', 1)[1].split(b'"', 1)[0]
            self.assertNotIn(b'"', fallback)
            self.assertNotIn(b"\\", fallback)
            self.assertNotIn(b"\r", header)
            self.assertNotIn(b"\n", header)
            self.assertNotIn(b"\x00", header)
            self.assertEqual(header.count(b'"'), 2, header)
            self.assertEqual(header.count(b";"), 2, header)

    def test_utf8(self):
        self.assertEqual(content_disposition("\u00e9t\u00e9 \u2603.txt"),
                         b"attachment; filename=\"__t__ _.txt\"; filename*=UTF-8''%C3%A9t%C3%A9%20%E2%98%83.txt"
                         .replace(b"__t__", b"_t_"))
        self.assertEqual(content_disposition(""), b"attachment; filename=\"download\"; filename*=UTF-8''")
