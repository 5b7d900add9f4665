"""Unit tests of session_proxy_wsgi against the protocol's golden fixtures
(tests/fixtures/protocol/). Run: python3 -m unittest discover -s examples/python
The end-to-end tests, through the real proxy, are in tests/it/python.rs."""

import json
import os
import unittest

from session_proxy_wsgi import Session, decode_devices, decode_session, encode_instruction

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "protocol")


def load(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return json.load(f)


def merge(target, patch):
    """RFC 7396, as the proxy applies X-Session-Update."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def instruction(headers, name):
    values = [v for (k, v) in headers if k == name]
    return decode_session(values[-1]) if values else None


class Fixtures(unittest.TestCase):
    def test_x_session_decodes_to_the_data(self):
        for case in load("session_headers.json"):
            self.assertEqual(decode_session(case["x_session"]), case["data"], case["name"])

    def test_instructions_are_encoded_as_the_proxy_expects(self):
        # The adapter's encoding is the same canonical base64url the proxy sends.
        for case in load("session_headers.json"):
            self.assertEqual(encode_instruction(case["data"]), case["x_session"], case["name"])

    def test_every_fixture_transition_is_sent_as_a_patch_that_reproduces_it(self):
        for case in load("instructions.json"):
            before, after = case["stored_before"], case["stored_after"]
            if before is None or after is None:
                continue
            session = Session(before, "x" * 32)
            for key in list(session):
                if key not in after:
                    del session[key]
            session.update(json.loads(json.dumps(after)))
            headers = session.headers()
            update = instruction(headers, "X-Session-Update")
            replace = instruction(headers, "X-Session-Replace")
            result = replace if replace is not None else merge(before, update or {})
            self.assertEqual(result, after, case["name"])
            self.assertEqual(session.should_save, before != after, case["name"])


class Semantics(unittest.TestCase):
    def test_only_changed_and_deleted_keys_are_sent(self):
        s = Session({"a": 1, "b": {"c": 1, "d": 2}, "e": "x"}, "x" * 32)
        self.assertFalse(s.modified)
        self.assertEqual(s.headers(), [])
        s["a"] = 2
        del s["e"]
        s["b"]["d"] = 3
        del s["b"]["c"]
        self.assertTrue(s.should_save)
        self.assertEqual(instruction(s.headers(), "X-Session-Update"), {"a": 2, "b": {"c": None, "d": 3}, "e": None})

    def test_clear_replaces_destroy_and_regenerate_are_sent(self):
        s = Session({"a": 1}, "x" * 32)
        s.clear()
        s["z"] = 1
        self.assertEqual(instruction(s.headers(), "X-Session-Replace"), {"z": 1})
        s = Session({"a": 1}, "x" * 32)
        s.regenerate()
        self.assertEqual(s.headers(), [("X-Session-Regenerate", "1")])
        s.destroy()
        self.assertEqual(s.headers(), [("X-Session-Destroy", "1")])

    def test_a_stored_null_goes_whole_because_a_patch_would_remove_it(self):
        s = Session({"a": 1}, "x" * 32)
        s["n"] = None
        self.assertEqual(instruction(s.headers(), "X-Session-Replace"), {"a": 1, "n": None})
        s = Session({"a": 1}, "x" * 32)
        s["list"] = [None, 1]  # a list is replaced whole: a patch keeps the null
        self.assertEqual(instruction(s.headers(), "X-Session-Update"), {"list": [None, 1]})

    def test_modified_by_hand_is_werkzeugs_flag(self):
        s = Session({}, "x" * 32, new=True)
        self.assertTrue(s.new)
        self.assertFalse(s.should_save)
        s.modified = True
        self.assertTrue(s.should_save)
        self.assertEqual(s.headers(), [])

    def test_remember_revoke_and_devices(self):
        s = Session({"a": 1}, "x" * 32)
        s.remember("30d")
        self.assertTrue(s.should_save)
        self.assertEqual(s.headers(), [("X-Session-Remember", "30d")])
        s.remember(0)
        s.revoke("h" * 43)
        self.assertEqual(s.headers(), [("X-Session-Remember", "0"), ("X-Session-Revoke", "h" * 43)])
        with self.assertRaises(TypeError):
            s.remember(1.5)
        d = Session({"a": 1}, "x" * 32)
        d.destroy()
        d.revoke("others")
        self.assertEqual(d.headers(), [("X-Session-Destroy", "1"), ("X-Session-Revoke", "others")])
        # base64url of [{"handle":"h","current":true}], without padding
        self.assertEqual(decode_devices("W3siaGFuZGxlIjoiaCIsImN1cnJlbnQiOnRydWV9XQ"), [{"handle": "h", "current": True}])
        self.assertIsNone(decode_devices(None))


if __name__ == "__main__":
    unittest.main()
