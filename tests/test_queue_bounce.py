"""Bounces (mailsrv/queue/bounce.py): pure functions, and the DSN as a parser reads it."""

import email
from email import policy
from pathlib import Path

from twisted.trial import unittest

from mailsrv.queue.bounce import (
    DSN, POSTMASTER, bounce_target, count_received, dsn_message, read_headers, status_of,
)
from mailsrv.queue.spool import FAILED, Envelope, RecipientState

PM = "postmaster@example.test"


class BounceTargetTests(unittest.TestCase):
    def test_table(self):
        for sender, bounce, expected in [
            ("alice@example.test", "", ("alice@example.test", DSN)),
            ("", "", None),  # null sender: never a bounce
            ("", DSN, (PM, POSTMASTER)),  # a failed bounce: the postmaster, once
            ("", POSTMASTER, None),
        ]:
            envelope = Envelope(id="X", sender=sender, recipients=[], bounce=bounce)
            self.assertEqual(bounce_target(envelope, PM), expected, (sender, bounce))


class StatusTests(unittest.TestCase):
    def test_table(self):
        for last_error, expected in [
            ("h:25: 550 5.1.1 No such user", "5.1.1"),
            ("h:25: 554 Go away", "5.0.0"),
            ("MX nullmx.test: 556 5.1.10 nullmx.test does not accept mail (null MX)",
             "5.1.10"),
            ("MX nowhere.test: 5.1.2 nowhere.test has no MX or address record", "5.1.2"),
            ("local: 554 5.4.6 mail loop: 31 Received headers", "5.4.6"),
            ("gave up after 3600 s: h:25: 451 4.3.0 later", "4.4.7"),
            ("gave up after 3600 s: h:25: Connection refused: 111", "4.4.7"),
            ("[::1]:25: 550 5.7.1 Refused", "5.7.1"),
        ]:
            recipient = RecipientState("b@r.test", FAILED, last_error=last_error)
            self.assertEqual(status_of(recipient), expected, last_error)


class HeaderTests(unittest.TestCase):
    def test_read_headers_and_count_received(self):
        path = Path(self.mktemp())
        path.write_bytes(b"Received: a\r\n\tb\r\nreceived: c\nSubject: x\r\n\r\n"
                         b"Received: in the body\r\n")
        headers = read_headers(str(path))
        self.assertEqual(headers, b"Received: a\r\n\tb\r\nreceived: c\r\nSubject: x\r\n")
        self.assertEqual(count_received(headers), 2)


class DSNTests(unittest.TestCase):
    def test_parses_as_a_report(self):
        envelope = Envelope(id="ABC", sender="alice@example.test", recipients=[],
                            created=1_700_000_000)
        failed = [
            RecipientState("bob@r.test", FAILED, last_error="h:25: 550 5.1.1 No such user"),
            RecipientState("carol@r.test", FAILED,
                           last_error="gave up after 60 s: h:25: Connection refused"),
        ]
        original = b"Received: from x\r\nSubject: Hello\r\nMessage-ID: <m@x>\r\n"
        data = dsn_message(envelope, failed, original, "mail.example.test",
                           "alice@example.test", 1_700_000_100)
        report = email.message_from_bytes(data, policy=policy.default)
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        self.assertEqual(report["To"], "alice@example.test")
        self.assertEqual(report["Auto-Submitted"], "auto-replied")
        text, status, headers = report.get_payload()
        self.assertIn("<bob@r.test>: h:25: 550 5.1.1 No such user", text.get_content())
        self.assertEqual(status.get_content_type(), "message/delivery-status")
        per_message, bob, carol = status.get_payload()
        self.assertEqual(per_message["Reporting-MTA"], "dns; mail.example.test")
        self.assertEqual(
            [bob["Final-Recipient"], bob["Action"], bob["Status"], bob["Diagnostic-Code"]],
            ["rfc822; bob@r.test", "failed", "5.1.1", "smtp; 550 5.1.1 No such user"],
        )
        self.assertEqual((carol["Status"], carol["Diagnostic-Code"]), (
            "4.4.7", "X-Mailsrv; gave up after 60 s: h:25: Connection refused"))
        self.assertEqual(headers.get_content_type(), "text/rfc822-headers")
        self.assertIn("Subject: Hello", headers.get_payload())
        self.assertTrue(data.endswith(b"--\r\n"))
        self.assertNotIn(b"\n", data.replace(b"\r\n", b""))
