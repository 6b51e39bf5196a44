"""
Table tests of the pure SMTP parsing functions.
"""

from twisted.trial import unittest

from mailsrv.smtp.commands import (
    CommandError,
    MailParams,
    is_http_request,
    parse_helo,
    parse_mail,
    parse_mail_params,
    parse_rcpt,
    split_command,
)


class TableTestCase(unittest.TestCase):
    def assertTable(self, function, table):
        """Each (input, expected) row: expected is a value or an error reply."""
        for text, expected in table:
            if isinstance(expected, CommandError):
                with self.assertRaises(CommandError, msg=repr(text)) as caught:
                    function(text)
                self.assertEqual(str(caught.exception), str(expected), repr(text))
            else:
                self.assertEqual(function(text), expected, repr(text))


def error(code, enhanced, text):
    return CommandError(code, enhanced, text)


class SplitCommandTests(TableTestCase):
    def test_table(self):
        self.assertTable(split_command, [
            (b"EHLO client.test", ("EHLO", "client.test")),
            (b"mail FROM:<a@b.test>", ("MAIL", "FROM:<a@b.test>")),
            (b"QUIT", ("QUIT", "")),
            (b"NOOP   ", ("NOOP", "")),
            (b"", ("", "")),
            (b"rcpt TO:<x@y.test>  ", ("RCPT", "TO:<x@y.test>")),
            (b"MAIL FROM:<\xc3\xa9@b.test>",
             error(500, "5.5.2", "Syntax error: command must be printable ASCII")),
            (b"NO\x00OP", error(500, "5.5.2", "Syntax error: command must be printable ASCII")),
            (b"\x16\x03\x01\x02\x00", error(500, "5.5.2",
                                          "Syntax error: command must be printable ASCII")),
        ])

    def test_http(self):
        for line, expected in [
            (b"GET / HTTP/1.1", True),
            (b"POST /cgi-bin/x HTTP/1.0", True),
            (b"CONNECT mail.example.test:25 HTTP/1.1", True),
            (b"get /index.html http/1.1", True),
            (b"OPTIONS * HTTP/1.1", True),
            (b"HELP GET", False),
            (b"EHLO GET", False),
            (b"GET", False),
        ]:
            self.assertEqual(is_http_request(line), expected, line)

    def test_helo(self):
        self.assertTable(parse_helo, [
            ("client.test", "client.test"),
            ("[192.0.2.1]", "[192.0.2.1]"),
            ("client.test extra words", "client.test"),
            ("", error(501, "5.5.4", "Syntax: EHLO hostname")),
        ])


class MailParamsTests(TableTestCase):
    def test_table(self):
        self.assertTable(parse_mail_params, [
            ("", MailParams()),
            ("SIZE=1000", MailParams(size=1000)),
            ("size=0 body=8bitmime", MailParams(size=0, body="8BITMIME")),
            ("BODY=7BIT", MailParams(body="7BIT")),
            ("BODY=7BIT  SIZE=12", MailParams(size=12, body="7BIT")),
            ("SIZE", error(501, "5.5.4", "Bad SIZE parameter")),
            ("SIZE=", error(501, "5.5.4", "Bad SIZE parameter")),
            ("SIZE=-1", error(501, "5.5.4", "Bad SIZE parameter")),
            ("SIZE=12k", error(501, "5.5.4", "Bad SIZE parameter")),
            ("SIZE=" + "9" * 21, error(501, "5.5.4", "Bad SIZE parameter")),
            ("BODY=BINARYMIME", error(501, "5.5.4", "Bad BODY parameter")),
            ("BODY", error(501, "5.5.4", "Bad BODY parameter")),
            ("SIZE=1 SIZE=2", error(501, "5.5.4", "Duplicate MAIL parameter SIZE")),
            ("SMTPUTF8", error(555, "5.5.4", "Unsupported MAIL parameter SMTPUTF8")),
            ("RET=FULL", error(555, "5.5.4", "Unsupported MAIL parameter RET")),
        ])


class PathTests(TableTestCase):
    def test_mail(self):
        bad_sender = error(501, "5.1.7", "Bad sender address syntax")
        self.assertTable(parse_mail, [
            ("FROM:<a@b.test>", ("a@b.test", MailParams())),
            ("from:<A@B.test>", ("A@B.test", MailParams())),
            ("FROM: <a@b.test>", ("a@b.test", MailParams())),
            ("FROM:<>", ("", MailParams())),
            ("FROM:<> SIZE=100", ("", MailParams(size=100))),
            ("FROM:<a@b.test> SIZE=5 BODY=8BITMIME", ("a@b.test", MailParams(5, "8BITMIME"))),
            ("FROM:a@b.test", ("a@b.test", MailParams())),
            ("FROM:<@relay.test,@r2.test:a@b.test>", ("a@b.test", MailParams())),
            ('FROM:<"john doe"@b.test>', ('"john doe"@b.test', MailParams())),
            ('FROM:<"a>b"@b.test>', ('"a>b"@b.test', MailParams())),
            ("FROM:<alice>", ("alice", MailParams())),
            ("FROM:<a@[192.0.2.1]>", ("a@[192.0.2.1]", MailParams())),
            ("FROM:", bad_sender),
            ("FROM:<a@b.test", bad_sender),
            ("FROM:<a b@c.test>", bad_sender),
            ("FROM:<a@b.test>SIZE=1", bad_sender),
            ("FROM:<@relay.test>", bad_sender),
            ("FROM:<a@@b.test>", bad_sender),
            ("FROM:<a@b..test>", bad_sender),
            ("FROM:<<a@b.test>>", bad_sender),
            ("TO:<a@b.test>", error(501, "5.5.4", "Syntax: MAIL FROM:<address>")),
            ("<a@b.test>", error(501, "5.5.4", "Syntax: MAIL FROM:<address>")),
            ("FROM:<a@b.test> FOO=1", error(555, "5.5.4", "Unsupported MAIL parameter FOO")),
        ])

    def test_rcpt(self):
        bad = error(501, "5.1.3", "Bad recipient address syntax")
        self.assertTable(parse_rcpt, [
            ("TO:<a@b.test>", "a@b.test"),
            ("to: <a@b.test>", "a@b.test"),
            ("TO:<Postmaster>", "Postmaster"),
            ("TO:<@x.test:a@b.test>", "a@b.test"),
            ("TO:<>", bad),
            ("TO:<alice>", bad),
            ("TO:<a@b.test", bad),
            ("TO:", bad),
            ("TO:<a@b.test> NOTIFY=NEVER", error(555, "5.5.4", "Unsupported RCPT parameter")),
            ("FROM:<a@b.test>", error(501, "5.5.4", "Syntax: RCPT TO:<address>")),
        ])
