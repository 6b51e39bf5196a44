"""
The content filters of the body hook: [antispam.mime] (IMail's four
broken-MIME-header checks) and [antispam.attachments], on messages built
here and through the SMTP protocol with the server's own config.
"""

from io import BytesIO
from pathlib import Path

from hypothesis import given
from twisted.internet import defer
from twisted.trial import unittest

from mailsrv.config import DEFAULT_BLOCKED_EXTENSIONS
from mailsrv.policy import content
from mailsrv.policy.actions import Action
from mailsrv.policy.checks.attachments import BlockedAttachments, blocked, extension
from mailsrv.policy.checks.mime import BrokenMIME, broken_headers
from mailsrv.policy.hooks import Message
from tests.fuzzing import examples
from tests.test_policy_content import MESSAGES, TOP, attachment, multipart, zipped
from tests.test_smtp.support import (
    connect,
    files_on_disk,
    make_mail_server,
    maildir_messages,
    run_threads_inline,
    send_to_alice,
)

PLAIN = b"Content-Type: text/plain\r\n\r\nhello"


def broken(message):
    return broken_headers(content.parse(message))


class BrokenMIMETests(unittest.TestCase):
    def test_a_good_message(self):
        folded = (TOP + b"Content-Type: multipart/mixed;\r\n\tboundary=\"b\"\r\n\r\n"
                  b"--b\r\n" + PLAIN + b"\r\n--b--\r\n")
        self.assertEqual(broken(folded), [])
        self.assertEqual(broken(multipart(b"b", PLAIN, header=TOP)), [])

    def test_opening_boundary_in_the_header(self):
        message = (TOP + b"Content-Type: multipart/mixed; boundary=\"b\"\r\n--b\r\n" + PLAIN
                   + b"\r\n--b--\r\n")
        self.assertEqual(broken(message), ["boundary-in-header"])

    def test_a_boundary_over_70_characters(self):
        self.assertEqual(broken(multipart(b"b" * 71, PLAIN, header=TOP)), ["long-boundary"])
        self.assertEqual(broken(multipart(b"b" * 70, PLAIN, header=TOP)), [])

    def test_multipart_without_boundary(self):
        message = TOP + b"Content-Type: multipart/mixed\r\n\r\n--b\r\n" + PLAIN
        self.assertEqual(broken(message), ["no-boundary"])

    def test_boundary_on_a_line_without_leading_white_space(self):
        message = (TOP + b"Content-Type: multipart/mixed;\r\nboundary=\"b\"\r\n\r\n--b\r\n"
                   + PLAIN + b"\r\n--b--\r\n")
        self.assertEqual(broken(message), ["unfolded-boundary", "no-boundary"])

    def test_in_a_nested_part(self):
        inner = b"Content-Type: multipart/alternative\r\n\r\n" + PLAIN
        self.assertEqual(broken(multipart(b"b", inner, header=TOP)), ["no-boundary"])

    def test_the_filter(self):
        run_threads_inline(self)
        check = BrokenMIME(Action("move", "Junk"))
        message = TOP + b"Content-Type: multipart/mixed\r\n\r\nx"
        verdict = verdict_of(self, check, message)
        self.assertEqual((verdict.finding.spam, verdict.finding.reasons, verdict.finding.action),
                         (True, ("mime no-boundary",), Action("move", "Junk")))
        verdict = verdict_of(self, check, TOP + b"\r\nx")
        self.assertFalse(verdict.finding.spam)


def _message(data):
    return Message(len(data), lambda: BytesIO(data))


def verdict_of(testcase, check, data):
    """What C{check} says of the message C{data}, given at once or by a Deferred."""
    return testcase.successResultOf(defer.maybeDeferred(check.check, None, None, _message(data)))


EXTENSIONS = frozenset(DEFAULT_BLOCKED_EXTENSIONS)


def refused(message, content_types=()):
    return blocked(content.parse(message), EXTENSIONS, frozenset(content_types))


class AttachmentTests(unittest.TestCase):
    def test_extension(self):
        for name, expected in [("a.exe", "exe"), ("invoice.pdf.EXE", "exe"), ("a.exe. .", "exe"),
                               ("dir\\sub/x.js", "js"), (".exe", ""), ("exe", ""), ("a.", "")]:
            self.assertEqual(extension(name), expected, name)

    def test_by_extension_double_extensions_included(self):
        message = multipart(b"b", PLAIN, attachment(b"invoice.pdf.exe", b"MZ"),
                            attachment(b"report.pdf", b"%PDF"),
                            attachment(b"run.scr  ", b"MZ"), header=TOP)
        self.assertEqual(refused(message), ["invoice.pdf.exe", "run.scr"])

    def test_hidden_by_an_opening_boundary_in_the_header(self):
        message = (TOP + b"Content-Type: multipart/mixed; boundary=\"b\"\r\n--b\r\n"
                   + attachment(b"evil.exe", b"MZ") + b"\r\n--b--\r\n")
        self.assertEqual(refused(message), ["evil.exe"])
        self.assertEqual(broken(message), ["boundary-in-header"])

    def test_names_inside_zip_files(self):
        message = multipart(b"b", attachment(b"docs.zip", zipped("a.txt", "sub/setup.exe")),
                            header=TOP)
        self.assertEqual(refused(message), ["docs.zip:sub/setup.exe"])

    def test_in_an_attached_message(self):
        attached = TOP + multipart(b"c", attachment(b"x.vbs", b"x"))
        message = multipart(b"b", b"Content-Type: message/rfc822\r\n\r\n" + attached,
                            header=TOP)
        self.assertEqual(refused(message), ["x.vbs"])

    def test_by_content_type(self):
        message = multipart(b"b", PLAIN,
                            attachment(b"a.bin", b"MZ", b"application/x-msdownload"),
                            b"Content-Type: application/x-sh\r\n\r\necho", header=TOP)
        self.assertEqual(refused(message, ["application/x-msdownload"]),
                         ["a.bin (application/x-msdownload)"])
        self.assertEqual(refused(message, ["application/*"]),
                         ["a.bin (application/x-msdownload)", "application/x-sh"])
        self.assertEqual(refused(message, ["multipart/*"]), [])

    def test_the_filter(self):
        run_threads_inline(self)
        check = BlockedAttachments(EXTENSIONS, (), Action("reject"))
        message = multipart(b"b", attachment(b"a.pdf.exe", b"MZ"), header=TOP)
        finding = verdict_of(self, check, message).finding
        self.assertEqual((finding.spam, finding.reasons, finding.refusal),
                         (True, ("attachment a.pdf.exe",), "Attachment refused: a.pdf.exe"))


class ThroughSMTPTests(unittest.TestCase):
    """The filters as the config turns them on, through the SMTP protocol."""

    def setUp(self):
        run_threads_inline(self)

    def send(self, message, **antispam):
        self.server = make_mail_server(self, antispam=antispam)
        return send_to_alice(connect(self.server), message)

    def inbox(self):
        return maildir_messages(self.server, "alice@example.test")

    def test_broken_mime_header(self):
        message = TOP + b"Content-Type: multipart/mixed\r\n\r\n--b\r\n" + PLAIN + b"\r\n"
        reply = self.send(message, mime={})
        self.assertTrue(reply.startswith(b"250 "), reply)
        [stored] = self.inbox()
        self.assertIn(b"X-Mailsrv-Spam: yes; reasons=mime no-boundary\r\n" + message, stored)

    def test_clean_message(self):
        message = multipart(b"b", PLAIN, attachment(b"a.pdf", b"%PDF"), header=TOP)
        self.send(message, mime={}, attachments={"action": "reject"})
        [stored] = self.inbox()
        self.assertIn(b"X-Mailsrv-Spam: no; reasons=-\r\n" + message, stored)

    def test_attachment_refused_with_554(self):
        message = multipart(b"b", PLAIN, attachment(b"invoice.pdf.exe", b"MZ"), header=TOP)
        reply = self.send(message, attachments={"action": "reject"})
        self.assertEqual(reply, b"554 5.7.1 Attachment refused: invoice.pdf.exe\r\n")
        self.assertEqual(files_on_disk(self.server), [])

    def test_other_rejections_keep_their_reply(self):
        message = (TOP + b"Content-Type: multipart/mixed\r\n\r\n"
                   + attachment(b"x.exe", b"MZ"))
        reply = self.send(message, mime={"action": "reject"}, attachments={})
        self.assertEqual(reply, b"550 5.7.1 Message refused as spam\r\n")

    def test_own_subject_prefix(self):
        message = TOP + b"Content-Type: multipart/mixed\r\n\r\nx\r\n"
        self.send(message, mime={"action": "move:Junk", "subject_prefix": "[MIME] "})
        junk = Path(self.server.store.maildir("alice@example.test", "Junk")) / "new"
        [stored] = [p.read_bytes() for p in junk.iterdir()]
        self.assertIn(b"\r\nSubject: [MIME] hi\r\n", stored)

    def test_attachment_moved(self):
        message = multipart(b"b", attachment(b"a.zip", zipped("b.js")), header=TOP)
        self.send(message, attachments={"action": "move:Junk"})
        self.assertEqual(self.inbox(), [])
        junk = Path(self.server.store.maildir("alice@example.test", "Junk")) / "new"
        [stored] = [p.read_bytes() for p in junk.iterdir()]
        self.assertIn(b"X-Mailsrv-Spam: yes; reasons=attachment a.zip:b.js\r\n", stored)


class PropertyTests(unittest.TestCase):
    @examples(200)
    @given(MESSAGES)
    def test_every_message_gets_a_verdict(self, message):
        """Random and broken MIME through both filters: a verdict, never an exception."""
        run_threads_inline(self)
        for check in (BrokenMIME(Action("header")),
                      BlockedAttachments(EXTENSIONS, ("application/*",), Action("reject"))):
            self.assertTrue(verdict_of(self, check, message).accepted)
