"""decode_json: the one JSON decoder for client input, on every transport."""

from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from wecompany.errors import InvalidInput
from wecompany.jsontext import MAX_DEPTH, decode_json

# JSON values as a client could send them (text without surrogates: those are not text).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=30)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


class DecodeJsonTests(SynchronousTestCase):
    def test_plain_documents(self):
        self.assertEqual(decode_json(b'{"a":[1,2,{"b":"\\u00e9\\ud83d\\ude00"}]}'),
                         {"a": [1, 2, {"b": "\u00e9\U0001F600"}]})
        self.assertEqual(decode_json('"text"'), "text")

    def test_depth_limit(self):
        self.assertEqual(decode_json(nested(MAX_DEPTH)), json.loads(nested(MAX_DEPTH)))
        for depth in (MAX_DEPTH + 1, 5000, 100_000):  # the last exhausts json's recursion limit
            error = self.assertRaises(InvalidInput, decode_json, nested(depth).encode())
            self.assertIn("request body", error.message)
        deep_object = '{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1)
        self.assertRaises(InvalidInput, decode_json, deep_object)

    def test_many_brackets_that_do_not_nest_are_fine(self):
        wide = "[" + ",".join(["[]"] * 1000) + "]"
        self.assertEqual(len(decode_json(wide)), 1000)
        self.assertEqual(decode_json('{"sdp":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}'), {"sdp": "[" * 37})

    def test_lone_surrogates_are_refused(self):
        for raw in (b'"\\ud800"', b'{"nickname":"\\udfff"}', b'{"\\ud800":1}', b'["ok","\\uDBFF x"]'):
            error = self.assertRaises(InvalidInput, decode_json, raw, "message")
            self.assertIn("surrogate", error.message)
            self.assertIn("message", error.message)

    def test_not_json(self):
        for raw in (b"NaN", b'{"a":Infinity}', b"[-Infinity]", b"\xff\xfe{}", b"{", b"", b"\xed\xa0\x80"):
            self.assertRaises(InvalidInput, decode_json, raw)

    @settings(max_examples=300)
    @given(VALUES)
    def test_any_json_value_round_trips(self, value):
        raw = json.dumps(value, ensure_ascii=True).encode()
        self.assertEqual(decode_json(raw), json.loads(raw))
        self.assertEqual(decode_json(json.dumps(value, ensure_ascii=False).encode()), json.loads(raw))

    @settings(max_examples=500)
    @given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
    def test_anything_else_is_a_clear_error(self, raw):
        try:
            document = decode_json(raw)
        except InvalidInput:
            return
        # What it accepts can always be encoded again, as replies do.
        json.dumps(document, allow_nan=False, ensure_ascii=False).encode("utf-8")
