"""
[antispam] outbound and outbound_action (issue 18): the content filters
also judge mail that logged-in users send to remote domains, with an
action that fits it (hold in the queue, reject with the reasons, header);
their mail to local users only, and everything with the option off, is
not read.
"""

from pathlib import Path

from twisted.trial import unittest

from mailsrv import config
from mailsrv.policy.actions import Action, parse_action
from mailsrv.policy.judgement import Judgement
from mailsrv.policy.verdict import Verdict
from tests.test_smtp.support import (
    PASSWORD,
    connect,
    maildir_messages,
    make_mail_server,
    run_threads_inline,
)
from tests.test_smtp.test_server import plain, queue_id

SPAM = b"Subject: hello\r\n\r\nbuy cheap pills today\r\n"
GOOD = b"Subject: lunch\r\n\r\nsee you at noon\r\n"


class JudgementTests(unittest.TestCase):
    def test_the_outbound_action_replaces_the_filters(self):
        found = Verdict.found(True, Action("move", "Junk"), ("phrase cheap pills",),
                              subject_prefix="[P] ")
        judgement = Judgement(True, outbound_action=Action("hold")).adding([found])
        self.assertEqual((judgement.action, judgement.subject_prefix("[SPAM] ")),
                         (Action("hold"), None))
        clean = Judgement(True, outbound_action=Action("hold")).adding([Verdict.found(False)])
        self.assertEqual(clean.action.kind, "none")

    def test_hold_only_for_outbound(self):
        self.assertRaises(ValueError, parse_action, "hold")
        with self.assertRaises(config.ConfigError) as caught:
            config.parse({"antispam": {"outbound": True, "outbound_action": "move:Junk"}},
                         Path("/x/mailsrv.toml"))
        self.assertIn("[antispam] outbound_action", str(caught.exception))


class ThroughSubmissionTests(unittest.TestCase):
    def setUp(self):
        run_threads_inline(self)

    def server(self, **antispam):
        phrases = Path(self.mktemp()).absolute()
        phrases.write_text("cheap pills\n")
        self.mail = make_mail_server(self, listen=[
            {"protocol": "smtp", "role": "submission", "endpoint": "tcp:0"}],
            antispam={"phrases": {"file": str(phrases), "action": "move:Junk"}, **antispam})
        conn = connect(self.mail, secure=True)
        conn.send(b"EHLO laptop.test\r\n")
        reply = conn.send(f"AUTH PLAIN {plain('alice@example.test', PASSWORD)}\r\n".encode())
        self.assertTrue(reply.startswith(b"235 "), reply)
        return conn

    def send(self, conn, to, message):
        conn.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<" + to + b">\r\nDATA\r\n")
        return conn.send(message + b".\r\n")

    def envelope(self, reply):
        qid = queue_id(reply)
        self.assertIsNotNone(qid, reply)
        return self.mail.spool.load(qid), self.mail.spool.message_path(qid).read_bytes()

    def test_spam_to_a_remote_domain_is_held(self):
        conn = self.server(outbound=True)
        envelope, stored = self.envelope(self.send(conn, b"carol@remote.test", SPAM))
        self.assertTrue(envelope.held)
        self.assertIn(b"X-Mailsrv-Spam: yes; reasons=phrase cheap pills\r\n", stored)
        self.assertIn(b"\r\nSubject: hello\r\n", stored)  # (no prefix on our user's mail)
        envelope, stored = self.envelope(self.send(conn, b"carol@remote.test", GOOD))
        self.assertFalse(envelope.held)
        self.assertIn(b"X-Mailsrv-Spam: no; reasons=-\r\n", stored)

    def test_rejected_with_the_reasons(self):
        conn = self.server(outbound=True, outbound_action="reject")
        self.assertEqual(self.send(conn, b"carol@remote.test", SPAM),
                         b"550 5.7.1 Message not sent: it looks like spam "
                         b"(phrase cheap pills)\r\n")
        self.assertEqual(self.mail.spool.ids(), [])

    def test_mail_to_local_users_only_is_not_read(self):
        conn = self.server(outbound=True)
        self.assertTrue(self.send(conn, b"bob@example.test", SPAM).startswith(b"250 "))
        [stored] = maildir_messages(self.mail, "bob@example.test")
        self.assertNotIn(b"X-Mailsrv-Spam", stored)

    def test_off_by_default(self):
        conn = self.server()
        envelope, stored = self.envelope(self.send(conn, b"carol@remote.test", SPAM))
        self.assertFalse(envelope.held)
        self.assertNotIn(b"X-Mailsrv-Spam", stored)
