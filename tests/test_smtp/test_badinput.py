"""
Bad input, as a table: each row's input gets exactly the reply shown, then
the same connection still works, and so does a new one. Clients vanishing
mid-command or mid-DATA leave nothing behind.
"""

import base64

from twisted.trial import unittest

from tests.test_smtp.support import (
    connect,
    files_on_disk,
    make_mail_server,
    run_threads_inline,
)

EHLO = b"EHLO client.test\r\n"
MAIL = b"MAIL FROM:<s@remote.test>\r\n"
RCPT = b"RCPT TO:<alice@example.test>\r\n"

# (what it is, set-up sent first, the bad input (one packet, or a list of
# packets), the exact reply)
TABLE = [
    ("command line over 512 octets", EHLO, b"NOOP " + b"x" * 506 + b"\r\n",
     b"500 5.5.2 Line too long\r\n"),
    ("a line of exactly 512 octets is fine", EHLO, b"NOOP " + b"x" * 505 + b"\r\n",
     b"250 2.0.0 Ok\r\n"),
    ("endless line in pieces", EHLO, [b"y" * 4000] * 50 + [b"\r\n"],
     b"500 5.5.2 Line too long\r\n"),
    ("overlong MAIL", EHLO, b"MAIL FROM:<" + b"a" * 600 + b"@remote.test>\r\n",
     b"500 5.5.2 Line too long\r\n"),
    ("binary garbage", EHLO, b"\x00\xff\xfe\x80garbage\r\n",
     b"500 5.5.2 Syntax error: command must be printable ASCII\r\n"),
    ("a TLS ClientHello", b"", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n",
     b"500 5.5.2 Syntax error: command must be printable ASCII\r\n"),
    ("unknown command", EHLO, b"FOO bar\r\n", b"500 5.5.2 Command not recognized\r\n"),
    ("empty line", EHLO, b"\r\n", b"500 5.5.2 Command not recognized\r\n"),
    ("bare LF ends a command line", EHLO, b"NOOP\n", b"250 2.0.0 Ok\r\n"),
    ("EHLO without a name", b"", b"EHLO\r\n", b"501 5.5.4 Syntax: EHLO hostname\r\n"),
    ("MAIL before EHLO", b"", MAIL, b"503 5.5.1 Send HELO/EHLO first\r\n"),
    ("RCPT before MAIL", EHLO, RCPT, b"503 5.5.1 Need MAIL command\r\n"),
    ("DATA before MAIL", EHLO, b"DATA\r\n", b"503 5.5.1 Need MAIL command\r\n"),
    ("DATA without RCPT", EHLO + MAIL, b"DATA\r\n", b"503 5.5.1 Need RCPT command\r\n"),
    ("DATA with an argument", EHLO + MAIL + RCPT, b"DATA now\r\n",
     b"501 5.5.4 Syntax: DATA\r\n"),
    ("nested MAIL", EHLO + MAIL, MAIL, b"503 5.5.1 Nested MAIL command\r\n"),
    ("MAIL without FROM:", EHLO, b"MAIL <s@remote.test>\r\n",
     b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"),
    ("unclosed sender path", EHLO, b"MAIL FROM:<s@remote.test\r\n",
     b"501 5.1.7 Bad sender address syntax\r\n"),
    ("bad SIZE", EHLO, b"MAIL FROM:<s@remote.test> SIZE=big\r\n",
     b"501 5.5.4 Bad SIZE parameter\r\n"),
    ("unsupported MAIL parameter", EHLO, b"MAIL FROM:<s@remote.test> SMTPUTF8\r\n",
     b"555 5.5.4 Unsupported MAIL parameter SMTPUTF8\r\n"),
    ("recipient without domain", EHLO + MAIL, b"RCPT TO:<alice>\r\n",
     b"501 5.1.3 Bad recipient address syntax\r\n"),
    ("RCPT without TO:", EHLO + MAIL, b"RCPT <alice@example.test>\r\n",
     b"501 5.5.4 Syntax: RCPT TO:<address>\r\n"),
    ("RSET with an argument", EHLO, b"RSET now\r\n", b"501 5.5.4 Syntax: RSET\r\n"),
    ("VRFY without an argument", EHLO, b"VRFY\r\n", b"501 5.5.4 Syntax: VRFY address\r\n"),
    ("malformed AUTH PLAIN", EHLO, b"AUTH PLAIN " + base64.b64encode(b"no-nul") + b"\r\n",
     b"501 5.5.2 Malformed PLAIN response\r\n"),
    ("AUTH response not base64", EHLO + b"AUTH LOGIN\r\n", b"!!!\r\n",
     b"501 5.5.2 Cannot decode base64 response\r\n"),
    ("overlong AUTH response", EHLO + b"AUTH PLAIN\r\n", b"A" * 1000 + b"\r\n",
     b"500 5.5.2 Line too long\r\n"),
]


class BadInputTests(unittest.TestCase):
    def setUp(self):
        run_threads_inline(self)
        self.server = make_mail_server(self)

    def test_table(self):
        for name, setup, bad, expected in TABLE:
            conn = connect(self.server, ip="127.0.0.1")
            conn.send(setup)
            packets = bad if isinstance(bad, list) else [bad]
            reply = b"".join(conn.send(packet) for packet in packets)
            self.assertEqual(reply, expected, name)
            self.assertEqual(conn.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n", name)
            self.assertEqual(conn.send(b"RSET\r\n"), b"250 2.0.0 Ok\r\n", name)
            self.assertTrue(connect(self.server).send(EHLO).startswith(b"250-"), name)
        self.assertEqual(files_on_disk(self.server), [])

    def test_transaction_still_works_after_errors(self):
        conn = connect(self.server)
        conn.send(EHLO + b"RCPT TO:<alice@example.test>\r\nFOO\r\n" + b"x" * 700 + b"\r\n")
        replies = conn.send(MAIL + RCPT + b"DATA\r\nhi\r\n.\r\n")
        self.assertIn(b"250 2.0.0 Ok: queued as ", replies)


# (what the client sent before vanishing)
VANISHING = [
    ("mid-command", b"MAIL FROM:<s@rem"),
    ("mid-AUTH", b"AUTH LOGIN\r\n"),
    ("after RCPT", MAIL + RCPT),
    ("right after 354", MAIL + RCPT + b"DATA\r\n"),
    ("mid-DATA", MAIL + RCPT + b"DATA\r\nSubject: x\r\n\r\nhalf"),
    ("mid-DATA after a CR", MAIL + RCPT + b"DATA\r\nSubject: x\r\n\r\nline\r"),
    ("mid-DATA after CRLF dot", MAIL + RCPT + b"DATA\r\nSubject: x\r\n\r\nline\r\n."),
    ("mid-DATA of a tainted message", MAIL + RCPT + b"DATA\r\nx\n.\n"),
]


class VanishingClientTests(unittest.TestCase):
    def test_table(self):
        run_threads_inline(self)
        server = make_mail_server(self)
        for name, sent in VANISHING:
            conn = connect(server, ip="127.0.0.1")
            conn.send(EHLO + sent)
            conn.transport.loseConnection()
            self.assertTrue(conn.closed, name)
            self.assertEqual(files_on_disk(server), [], name)
        self.assertEqual(self.flushLoggedErrors(), [])
        replies = connect(server).send(EHLO + MAIL + RCPT + b"DATA\r\nhi\r\n.\r\n")
        self.assertIn(b"250 2.0.0 Ok: queued as ", replies)
