"""
The SASL exchanges SMTP, POP3 and IMAP share, as table tests.
"""

import base64

from twisted.trial import unittest

from mailsrv import sasl


def b64(data):
    return base64.b64encode(data).decode("ascii")


class SASLTests(unittest.TestCase):
    def assertTable(self, function, table):
        """Each (input, expected) row: a value, or an (error class, text) pair."""
        for text, expected in table:
            if isinstance(expected, tuple):
                kind, message = expected
                with self.assertRaises(kind, msg=repr(text)) as caught:
                    function(text)
                self.assertEqual(str(caught.exception), message, repr(text))
            else:
                self.assertEqual(function(text), expected, repr(text))

    def test_plain(self):
        self.assertTable(sasl.Plain().start, [
            (None, sasl.Challenge("")),
            (b64(b"\0alice@example.test\0pw"),
             sasl.Credentials(b"alice@example.test", b"pw")),
            (b64(b"alice\0alice\0pw"), sasl.Credentials(b"alice", b"pw")),
            (b64(b"\0alice\0"), sasl.Credentials(b"alice", b"")),
            (b64(b"bob\0alice\0pw"), (sasl.Forbidden, "Authentication credentials invalid")),
            (b64(b"alice\0pw"), (sasl.Malformed, "Malformed PLAIN response")),
            (b64(b"\0\0pw"), (sasl.Malformed, "Malformed PLAIN response")),
            (b64(b"a\0b\0c\0d"), (sasl.Malformed, "Malformed PLAIN response")),
            ("=", (sasl.Malformed, "Malformed PLAIN response")),
            ("not base64!", (sasl.Malformed, "Cannot decode base64 response")),
            ("AGFsaWN", (sasl.Malformed, "Cannot decode base64 response")),
            ("*", (sasl.Cancelled, "Authentication cancelled")),
            ("A" * (sasl.MAX_RESPONSE + 4), (sasl.Malformed, "Response too long")),
        ])

    def test_longest_response_taken(self):
        message = b"\0" + b"u" * 255 + b"\0" + b"p" * 1000
        self.assertEqual(sasl.Plain().respond(b64(message)),
                         sasl.Credentials(b"u" * 255, b"p" * 1000))

    def test_login(self):
        login = sasl.Login()
        self.assertEqual(login.start(None), sasl.Challenge("VXNlcm5hbWU6"))
        self.assertEqual(login.respond(b64(b"alice")), sasl.Challenge("UGFzc3dvcmQ6"))
        self.assertEqual(login.respond(b64(b"pw")), sasl.Credentials(b"alice", b"pw"))

    def test_login_initial_response_and_cancel(self):
        login = sasl.Login()
        self.assertEqual(login.start(b64(b"alice")), sasl.Challenge("UGFzc3dvcmQ6"))
        self.assertRaises(sasl.Cancelled, login.respond, "*")
        self.assertRaises(sasl.Malformed, sasl.Login().start, "%%%")

    def test_external(self):
        self.assertTable(sasl.External().start, [
            (None, sasl.Challenge("")),
            ("=", sasl.Authorization(b"")),
            (b64(b"alice@example.test"), sasl.Authorization(b"alice@example.test")),
            ("not base64!", (sasl.Malformed, "Cannot decode base64 response")),
            ("*", (sasl.Cancelled, "Authentication cancelled")),
        ])
        self.assertEqual(sasl.External().respond(""), sasl.Authorization(b""))

    def test_no_mechanism_needs_plaintext_secrets(self):
        self.assertEqual(list(sasl.mechanisms(certificate=False)), ["PLAIN", "LOGIN"])
        self.assertEqual(list(sasl.mechanisms(certificate=True)),
                         ["PLAIN", "LOGIN", "EXTERNAL"])
