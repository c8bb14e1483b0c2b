"""StreamingForm: multipart/form-data parsed chunk by chunk, within bounds."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wecompany.errors import InvalidInput, TooLarge
from wecompany.web.multipart import FormLimits, StreamingForm, boundary_of

BOUNDARY = "b0undary-7f3a"


def part(name: str, data: bytes, filename: str | None = None, ctype: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    return head.encode() + b"\r\n" + data + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def parse(raw: bytes, sizes=(len,), limits: FormLimits = FormLimits()):
    form = StreamingForm(BOUNDARY, limits)
    size = sizes[0](raw) if callable(sizes[0]) else sizes[0]
    for start in range(0, len(raw), max(1, size)):
        form.feed(raw[start:start + max(1, size)])
    return form.finish()


EXAMPLE = body(part("title", b"hello"), part("avatar", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
                                          "me.png", "image/png"), part("title", b"again"))


class StreamingFormTests(SynchronousTestCase):
    def test_fields_and_files(self):
        form = parse(EXAMPLE)
        self.assertEqual([p.data for p in form["title"]], [b"hello", b"again"])
        avatar = form["avatar"][0]
        self.assertEqual((avatar.filename, avatar.content_type, avatar.data[:4]), ("me.png", "image/png",
                                                                                   b"\x89PNG"))
        self.assertEqual(form["title"][0].content_type, "application/octet-stream")

    def test_any_chunking_gives_the_same_parts(self):
        whole = parse(EXAMPLE)
        for size in (1, 2, 3, 7, 64, 1000):
            self.assertEqual(parse(EXAMPLE, sizes=(size,)), whole, size)

    def test_200000_empty_parts_are_refused_after_the_limit(self):
        # Finding 2: 1.4 MB of empty parts once took the reactor 11 s with email.parser.
        raw = body(*(part("x", b"") for _ in range(200_000)))
        self.assertGreater(len(raw), 1_400_000)
        form = StreamingForm(BOUNDARY)
        fed = 0
        with self.assertRaises(TooLarge):
            for start in range(0, len(raw), 65536):  # as the network delivers it
                fed += 1
                form.feed(raw[start:start + 65536])
        self.assertEqual(fed, 1)  # refused inside the first read, having looked at 17 parts

    def test_limits(self):
        small = FormLimits(max_parts=2, max_header_size=200, max_field_size=10, max_file_size=20)
        cases = [
            (body(part("a", b"1"), part("b", b"2"), part("c", b"3")), TooLarge),  # too many parts
            (body(part("a", b"x" * 11)), TooLarge),  # a field too large
            (body(part("f", b"x" * 21, "f.bin")), TooLarge),  # a file too large
            (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"a\"\r\nX-Pad: {'p' * 300}\r\n\r\nv\r\n"
             f"--{BOUNDARY}--\r\n".encode(), TooLarge),  # headers too large
        ]
        for raw, error in cases:
            self.assertRaises(error, parse, raw, (len,), small)
        self.assertEqual(parse(body(part("f", b"x" * 20, "f.bin")), (len,), small)["f"][0].data, b"x" * 20)

    def test_malformed(self):
        for raw in (b"garbage", body(part("a", b"1"))[:-10], f"--{BOUNDARY}\r\n\r\nno headers\r\n".encode(),
                    f"--{BOUNDARY}\r\nContent-Disposition: attachment\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
                    b""):
            self.assertRaises(InvalidInput, parse, raw)
        self.assertRaises(InvalidInput, StreamingForm, "x" * 300)  # a boundary longer than any allowed

    def test_boundary_of(self):
        self.assertEqual(boundary_of(b"multipart/form-data; boundary=abc"), "abc")
        self.assertEqual(boundary_of('multipart/form-data; boundary="a b"'), "a b")
        for other in (b"application/json", b"multipart/form-data", None, b"multipart/mixed; boundary=x"):
            self.assertIsNone(boundary_of(other))

    @settings(max_examples=300)
    @given(st.binary(max_size=400), st.integers(1, 50))
    def test_any_bytes_are_parts_or_a_clear_error(self, raw, size):
        try:
            form = parse(f"--{BOUNDARY}\r\n".encode() + raw, sizes=(size,))
        except (InvalidInput, TooLarge):
            return
        self.assertTrue(all(isinstance(p.data, bytes) for parts in form.values() for p in parts))

    @settings(max_examples=200)
    @given(st.lists(st.tuples(st.text("abcxyz_", min_size=1, max_size=8), st.binary(max_size=200),
                              st.booleans()), min_size=1, max_size=8), st.integers(1, 97))
    def test_what_a_client_sends_comes_out(self, fields, size):
        raw = body(*(part(name, data, "file.bin" if is_file else None) for name, data, is_file in fields))
        form = parse(raw, sizes=(size,))
        for name in {name for name, _, _ in fields}:
            self.assertEqual([p.data for p in form[name]], [data for n, data, _ in fields if n == name])
