"""
The body hook: a content check (the kind issue 17 adds) plugs into the
policy framework without any change to the SMTP protocol. The check here
reads the whole message as the body hook gives it, and its configured
action is carried out by the framework, never by the check.
"""

from pathlib import Path
from types import SimpleNamespace

from twisted.trial import unittest

from mailsrv.config import AntispamSettings
from mailsrv.policy import listener
from mailsrv.policy.actions import HEADER, NONE, Action
from mailsrv.policy.hooks import BODY, HEADER as HEADER_HOOK, SENDER
from mailsrv.policy.judgement import Whitelisting
from mailsrv.policy.listener import ListenerPolicy
from mailsrv.policy.verdict import Verdict
from mailsrv.queue.spool import IncomingMessage
from tests.helpers import fresh_error_log
from tests.test_filters import Standing
from tests.test_filters_whitelist import Fixed as Listed
from tests.test_smtp.support import (
    connect,
    files_on_disk,
    make_mail_server,
    maildir_messages,
    run_threads_inline,
    send_to_alice,
)


class Phrase:
    """A content check: the message is spam when it holds C{phrase}."""

    def __init__(self, phrase, action, subject_prefix=None):
        self.phrase = phrase
        self.action = action
        self.subject_prefix = subject_prefix
        self.seen = []

    def check(self, session, transaction, message):
        with message.open() as f:  # in a thread in a real check
            text = f.read()
        self.seen.append((message.size, text))
        if self.phrase not in text:
            return Verdict.found(False)
        return Verdict.found(True, self.action, ("phrase " + self.phrase.decode(),),
                             (("X-Mailsrv-Phrase", self.phrase.decode()),),
                             subject_prefix=self.subject_prefix)


MESSAGE = b"From: x@remote.test\r\nSubject: offer\r\n\r\ncheap pills\r\n"


class BodyHookTests(unittest.TestCase):
    def setUp(self):
        run_threads_inline(self)
        self.server = make_mail_server(self)

    def send(self, check, message=MESSAGE, skips=False, whitelisting=None, filters=None,
             content_for=None):
        """Send C{message} to alice through a listener whose body hook runs C{check}."""
        self.check = check
        connection = connect(self.server)
        factory = connection.protocol.factory
        factory.policy = ListenerPolicy(
            factory.policy.gates, filters or {BODY: [check]}, Standing(skips), "[SPAM] ",
            whitelists=whitelisting and Listed(whitelisting), content_for=content_for)
        return send_to_alice(connection, message)

    def inbox(self):
        return maildir_messages(self.server, "alice@example.test")

    def test_the_check_reads_the_message_as_sent(self):
        self.send(Phrase(b"pills", HEADER))
        self.assertEqual(self.check.seen, [(len(MESSAGE), MESSAGE)])

    def test_header(self):
        reply = self.send(Phrase(b"pills", HEADER))
        self.assertTrue(reply.startswith(b"250 2.0.0 Ok: queued as"), reply)
        [stored] = self.inbox()
        self.assertTrue(stored.startswith(b"Return-Path: <x@remote.test>\r\nReceived: "))
        self.assertIn(b"X-Mailsrv-Phrase: pills\r\nX-Mailsrv-Spam: yes; reasons=phrase pills\r\n"
                      + MESSAGE, stored)
        self.assertTrue(stored.endswith(MESSAGE))

    def test_nothing_found(self):
        self.send(Phrase(b"casino", HEADER))
        [stored] = self.inbox()
        self.assertIn(b"X-Mailsrv-Spam: no; reasons=-\r\n" + MESSAGE, stored)

    def test_subject(self):
        self.send(Phrase(b"pills", Action("subject")))
        [stored] = self.inbox()
        self.assertIn(b"\r\nSubject: [SPAM] offer\r\n\r\ncheap pills\r\n", stored)

    def test_move(self):
        self.send(Phrase(b"pills", Action("move", "Junk")))
        self.assertEqual(self.inbox(), [])
        junk = Path(self.server.store.maildir("alice@example.test", "Junk")) / "new"
        [stored] = [p.read_bytes() for p in junk.iterdir()]
        self.assertTrue(stored.endswith(MESSAGE))

    def test_reject_after_the_dot_keeps_nothing(self):
        reply = self.send(Phrase(b"pills", Action("reject")))
        self.assertEqual(reply, b"550 5.7.1 Message refused as spam\r\n")
        self.assertEqual(files_on_disk(self.server), [])

    def test_delete(self):
        reply = self.send(Phrase(b"pills", Action("delete")))
        self.assertTrue(reply.startswith(b"250 2.0.0 Ok: queued as"), reply)
        self.assertEqual(files_on_disk(self.server), [])

    def test_a_message_on_disk(self):
        """A message too big to hold in memory reaches the check and the Maildir whole."""
        body = b"x" * 99 + b"\r\n"
        message = MESSAGE + body * (IncomingMessage.IN_MEMORY // len(body) + 10) + b"pills\r\n"
        self.send(Phrase(b"pills", Action("subject")), message)
        self.assertEqual(self.check.seen[0][0], len(message))
        [stored] = self.inbox()
        self.assertTrue(stored.endswith(message.replace(b"Subject: ", b"Subject: [SPAM] ")))
        self.assertEqual(len([p for p in files_on_disk(self.server) if "spool" in str(p)]), 0)

    def test_client_gone_before_the_dot_leaves_nothing(self):
        connection = connect(self.server)
        factory = connection.protocol.factory
        factory.policy = ListenerPolicy(factory.policy.gates, {BODY: [Phrase(b"x", HEADER)]},
                                        Standing(), "[SPAM] ")
        connection.send(b"EHLO client.test\r\nMAIL FROM:<x@remote.test>\r\n"
                        b"RCPT TO:<alice@example.test>\r\nDATA\r\n")
        connection.send(MESSAGE + b"x" * (IncomingMessage.IN_MEMORY + 1))
        self.assertNotEqual(files_on_disk(self.server), [])  # the message as it came
        connection.transport.loseConnection()
        self.assertEqual(files_on_disk(self.server), [])

    def test_clients_that_stand_are_not_read(self):
        self.send(Phrase(b"pills", Action("reject")), skips=True)
        self.assertEqual(self.check.seen, [])
        [stored] = self.inbox()
        self.assertNotIn(b"X-Mailsrv-", stored)

    def test_content_for_clients_that_stand(self):
        """[antispam] content_for_authenticated: their mail is read, but not the admins'."""
        self.send(Phrase(b"pills", HEADER), skips=True, content_for=lambda session, t: True)
        self.assertEqual(len(self.check.seen), 1)
        self.send(Phrase(b"pills", HEADER), skips=True, content_for=lambda session, t: False)
        self.assertEqual(self.check.seen, [])
        self.assertEqual(sorted(b"X-Mailsrv-Spam: yes; reasons=phrase pills\r\n" in stored
                                for stored in self.inbox()), [False, True])

    def test_own_prefix_with_move(self):
        """A check's own subject_prefix marks the message whatever delivers it."""
        self.send(Phrase(b"pills", Action("move", "Junk"), "[PHRASE] "))
        junk = Path(self.server.store.maildir("alice@example.test", "Junk")) / "new"
        [stored] = [p.read_bytes() for p in junk.iterdir()]
        self.assertIn(b"\r\nSubject: [PHRASE] offer\r\n", stored)

    def test_own_prefixes_of_the_checks_that_found_spam(self):
        found = [Phrase(b"pills", HEADER, "[A] "), Phrase(b"cheap", Action("subject"), "[B] "),
                 Phrase(b"casino", Action("subject"), "[C] "), Phrase(b"offer", HEADER, "[A] ")]
        self.send(found[0], filters={BODY: found})
        [stored] = self.inbox()
        self.assertIn(b"\r\nSubject: [A] [B] offer\r\n", stored)

    def test_whitelisted_content_is_not_read(self):
        self.send(Phrase(b"pills", Action("reject")),
                  whitelisting=Whitelisting(("whitelist:sender",), content=True))
        self.assertEqual(self.check.seen, [])
        [stored] = self.inbox()
        self.assertIn(b"X-Mailsrv-Spam: no; reasons=whitelist:sender\r\n", stored)

    def test_findings_of_every_hook_add_up(self):
        sender = Found(Verdict.found(False, NONE, ("dnsbl a 127.0.0.2",)))
        header = Found(Verdict.found(False, NONE, ("received x",)))
        body = Phrase(b"pills", Action("subject"))
        self.send(body, filters={SENDER: [sender], HEADER_HOOK: [header], BODY: [body]})
        [stored] = self.inbox()
        self.assertIn(b"X-Mailsrv-Spam: yes; reasons=dnsbl a 127.0.0.2, received x, "
                      b"phrase pills\r\n", stored)
        self.assertIn(b"Subject: [SPAM] offer", stored)

    def test_a_failing_check_is_a_temporary_refusal(self):
        fresh_error_log(self)
        reply = self.send(Broken())
        self.assertEqual(reply, b"451 4.3.0 Temporary failure, try again later\r\n")
        self.assertEqual(files_on_disk(self.server), [])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class ContentForTests(unittest.TestCase):
    """[antispam] content_for_authenticated and admins, as the listener's policy asks them."""

    def test_admins_by_login_or_envelope_sender(self):
        judged = listener._content_for(AntispamSettings(content_for_authenticated=True,
                                                        admins=("boss@example.test",)))
        self.assertTrue(judged(Session("alice@example.test"), Transaction("alice@example.test")))
        self.assertFalse(judged(Session("Boss@example.test"), Transaction("x@remote.test")))
        self.assertFalse(judged(Session(None), Transaction("boss@EXAMPLE.test")))
        self.assertTrue(judged(Session(None), Transaction("")))

    def test_off_by_default(self):
        self.assertIsNone(listener._content_for(AntispamSettings()))


def Session(user):
    return SimpleNamespace(user=user)


def Transaction(sender):
    return SimpleNamespace(sender=sender)


class Found:
    def __init__(self, verdict):
        self.verdict = verdict

    def check(self, session, transaction, subject):
        return self.verdict


class Broken:
    def check(self, session, transaction, message):
        raise RuntimeError("scanner exploded")
