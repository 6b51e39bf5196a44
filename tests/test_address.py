"""
The one address type and validator (mailsrv/address.py): tables, and
properties with hypothesis (any input gives an address or an AddressError).
"""

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from mailsrv.address import (
    Address, AddressError, domain_of, is_address, local_part_of, parse, parse_mailbox,
)

# Local parts and domains made of the characters that matter: the safe set,
# the rest of atext, the specials, dots, quotes, controls and some non-ASCII.
_CHARS = st.sampled_from(list("abzAZ09._-+/%!\"\\@ :<>,;[]\t\n\r\0\x7f") + ["\u00e9", "\u2028"])
_TEXT = st.text(_CHARS, max_size=80)


class ParseTests(unittest.TestCase):
    def test_table(self):
        for text, expected in [
            ("a@b.test", Address("a", "b.test")),
            (" Alice@Example.TEST ", Address("Alice", "Example.TEST")),
            ("a.b+c@d-e.test", Address("a.b+c", "d-e.test")),
            ('"a b"@c.test', Address('"a b"', "c.test")),
            ("a@localhost", Address("a", "localhost")),
            ("a@b.test.", Address("a", "b.test")),
            ("a@[IPv6:2001:db8::1]", Address("a", "[IPv6:2001:db8::1]")),
            ("a/b@c.test", Address("a/b", "c.test")),  # valid, but no mailbox name
        ]:
            self.assertEqual(parse(text), expected, text)
        for text in ["", "a", "@b.test", "a@", ".a@b.test", "a..b@c.test", "a.@b.test",
                     "a@-b.test", "a@b_c.test", "a@b..test", "a@b.test..", "foo@bar@b.test",
                     "a\n@b.test", "a\0@b.test", "caf\u00e9@b.test", "x" * 65 + "@b.test",
                     "a@" + "b" * 250 + ".test", "a b@c.test", None, b"a@b.test"]:
            self.assertRaises(AddressError, parse, text)
            self.assertFalse(is_address(text) if isinstance(text, str) else False)

    def test_normalised(self):
        self.assertEqual(parse("Alice@Example.TEST.").normalised, "alice@example.test")

    def test_mailbox_names(self):
        for good in ["alice@example.test", "Bob.Smith@example.test", "b_o-b2@example.test",
                     "0@example.test", "x" * 64 + "@example.test"]:
            self.assertEqual(parse_mailbox(good), parse(good), good)
        for bad in ["a/b@example.test", "..@example.test", ".hidden@example.test",
                    "../../x@example.test", "foo@bar@example.test", "-x@example.test",
                    "_x@example.test", "a+b@example.test", "a%b@example.test",
                    '"a b"@example.test', "a@[192.0.2.1]", "a..b@example.test",
                    "new\nline@example.test"]:
            with self.assertRaises(AddressError, msg=bad) as caught:
                parse_mailbox(bad)
            self.assertNotIn("\n", str(caught.exception))

    def test_errors_are_one_line_and_name_the_input(self):
        with self.assertRaises(AddressError) as caught:
            parse_mailbox("a/b@example.test")
        self.assertEqual(
            str(caught.exception),
            "'a/b@example.test': a mailbox name may hold only letters, digits, '.', '-' "
            "and '_', must start with a letter or digit, have no '..', and at most 64 "
            "characters")


class ParseProperties(unittest.TestCase):
    @settings(max_examples=500, deadline=None)
    @given(st.one_of(_TEXT, st.builds(lambda l, d: f"{l}@{d}", _TEXT, _TEXT)))
    def test_any_text_gives_an_address_or_an_address_error(self, text):
        for function in (parse, parse_mailbox):
            try:
                address = function(text)
            except AddressError as e:
                self.assertNotIn("\n", str(e))
                continue
            self.assertEqual(parse(str(address)), address)  # round trip
            self.assertEqual(parse(address.normalised), parse(str(address).lower()))

    @settings(max_examples=300, deadline=None)
    @given(st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}(\.[a-z0-9_-]{1,10}){0,3}", fullmatch=True),
           st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){1,3}", fullmatch=True))
    def test_safe_names_are_mailboxes_and_never_paths(self, local, domain):
        address = parse_mailbox(f"{local}@{domain}")
        self.assertEqual(address.normalised, f"{local}@{domain}")
        for part in (address.local, address.domain):
            self.assertNotIn("/", part)
            self.assertFalse(part.startswith("."))
            self.assertNotIn("..", part)

    @settings(max_examples=300, deadline=None)
    @given(_TEXT)
    def test_a_mailbox_name_is_safe_as_a_directory(self, local):
        try:
            address = parse_mailbox(local + "@example.test")
        except AddressError:
            return
        self.assertTrue(address.local.isascii() and address.local.isprintable())
        self.assertFalse(set(address.local) & set("/\\@\"% +"))
        self.assertNotIn(address.local[0], ".-_")


class PartsTests(unittest.TestCase):
    """Every module takes an address apart with these, so they agree on case and the root dot."""

    def test_domain_of(self):
        for text, domain in [("bob@Example.TEST", "example.test"),
                             ("bob@example.test.", "example.test"),
                             ('"a@b"@c.test', "c.test"), ("postmaster", "postmaster")]:
            self.assertEqual(domain_of(text), domain, text)

    def test_local_part_of(self):
        self.assertEqual(local_part_of('"a@b"@c.test'), '"a@b"')
        self.assertEqual(local_part_of("Bob@example.test"), "Bob")

    def test_directory_and_routing_agree_on_the_root_dot(self):
        from mailsrv.directory.directory import Directory

        directory = Directory(("example.test",), users=None, aliases=None)
        self.assertTrue(directory.is_local_address("bob@EXAMPLE.test."))

    def test_settings_agree_too(self):
        from tests.helpers import make_settings

        settings = make_settings(self.mktemp())
        self.assertTrue(settings.is_local_domain("EXAMPLE.test."))
