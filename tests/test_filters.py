"""
The action model: parsing, precedence, the summary header, the subject
rewrite, and each action carried out by the policy framework for a message
received over SMTP.
"""

import errno
from pathlib import Path

from twisted.internet import defer
from twisted.trial import unittest

from mailsrv.policy.actions import HEADER, NONE, Action, combine, parse_action
from mailsrv.policy.apply import HeaderRewriter
from mailsrv.policy.hooks import HEADER as HEADER_HOOK
from mailsrv.policy.hooks import SENDER
from mailsrv.policy.judgement import SKIPPED, Judgement, Whitelisting
from mailsrv.policy.listener import ListenerPolicy
from mailsrv.policy.verdict import Verdict
from tests.test_smtp.support import (
    connect,
    files_on_disk,
    make_mail_server,
    maildir_messages,
    run_threads_inline,
)

REJECT, TEMPFAIL, DELETE = Action("reject"), Action("tempfail"), Action("delete")
MOVE, FORWARD = Action("move", "Junk"), Action("forward", "spam@remote.test")
SUBJECT = Action("subject")


class ParseActionTests(unittest.TestCase):
    def test_valid(self):
        for text, action in [
            ("none", NONE), ("header", HEADER), ("subject", SUBJECT), ("delete", DELETE),
            ("reject", REJECT), ("tempfail", TEMPFAIL), ("move:Junk", MOVE),
            ("MOVE: Junk", MOVE),
            ("forward:spam@remote.test", FORWARD),
        ]:
            self.assertEqual(parse_action(text), action, text)

    def test_invalid(self):
        """(A move: folder's name is the store's to refuse: tests/test_config.py.)"""
        for text in ["junk", "move", "move:", "forward:nobody", "reject:now", "header:X",
                     "tempfail:60"]:
            self.assertRaises(ValueError, parse_action, text)

    def test_text_round_trips(self):
        for action in [NONE, MOVE, FORWARD, REJECT]:
            self.assertEqual(parse_action(str(action)), action)


class CombineTests(unittest.TestCase):
    """reject > tempfail > delete > move > forward > subject > header > none, pair by pair."""

    ORDER = [REJECT, TEMPFAIL, DELETE, MOVE, FORWARD, SUBJECT, HEADER, NONE]

    def test_table(self):
        for i, stronger in enumerate(self.ORDER):
            for weaker in self.ORDER[i:]:
                self.assertEqual(combine([stronger, weaker]), stronger, (stronger, weaker))
                self.assertEqual(combine([weaker, stronger]), stronger, (weaker, stronger))

    def test_nothing_is_none(self):
        self.assertEqual(combine([]), NONE)

    def test_first_of_equals(self):
        other = Action("move", "Spam")
        self.assertEqual(combine([MOVE, other]), MOVE)


class JudgementTests(unittest.TestCase):
    def test_summary_and_headers(self):
        judgement = Judgement(True).adding([
            Verdict.found(True, MOVE, ("dnsbl a 127.0.0.2",), (("X-Mailsrv-DNSBL", "x"),)),
            Verdict.found(False, NONE, ("spf none",)),
            Verdict.found(True, HEADER, ("dnsbl b 127.0.0.3",)),
        ])
        self.assertEqual((judgement.spam, judgement.action), (True, MOVE))
        self.assertEqual(judgement.summary,
                         "yes; reasons=dnsbl a 127.0.0.2, spf none, dnsbl b 127.0.0.3")
        self.assertEqual(judgement.header_block("mx.test"),
                         b"X-Mailsrv-DNSBL: x\r\nX-Mailsrv-Spam: yes; "
                         b"reasons=dnsbl a 127.0.0.2, spf none, dnsbl b 127.0.0.3\r\n")

    def test_clean(self):
        judgement = Judgement(True).adding([Verdict.found(False)])
        self.assertEqual(judgement.header_block("mx.test"), b"X-Mailsrv-Spam: no; reasons=-\r\n")

    def test_unchecked_has_no_header(self):
        self.assertEqual(SKIPPED.header_block("mx.test"), b"")

    def test_counted_findings_act_at_the_threshold(self):
        lists = Verdict.found(False, reasons=("dnsbl a 127.0.0.2",), counted=(MOVE,))
        tests = Verdict.found(False, reasons=("validation helo-fqdn",), counted=(SUBJECT,))
        spf = Verdict.found(False, HEADER, ("spf pass",))
        below = Judgement(True, threshold=2).adding([lists, spf])
        self.assertEqual((below.spam, below.action), (False, HEADER))
        self.assertEqual(below.summary, "no; reasons=dnsbl a 127.0.0.2, spf pass, "
                                        "count below threshold 1/2")
        reached = below.adding([tests])
        self.assertEqual((reached.spam, reached.action), (True, MOVE))
        self.assertEqual(reached.summary, "yes; reasons=dnsbl a 127.0.0.2, spf pass, "
                                          "validation helo-fqdn")

    def test_adding_to_a_skipped_judgement_checks_it(self):
        found = SKIPPED.adding([Verdict.found(True, SUBJECT, ("dnsbl a 127.0.0.2 received x",))])
        self.assertTrue(found.checked)
        self.assertEqual(found.header_block("mx.test"),
                         b"X-Mailsrv-Spam: yes; reasons=dnsbl a 127.0.0.2 received x\r\n")

    def test_whitelist_reasons_come_first(self):
        whitelisted = Judgement(True, whitelist=Whitelisting(("whitelist:spamskip",), True))
        self.assertEqual(whitelisted.summary, "no; reasons=whitelist:spamskip")


class HeaderRewriterTests(unittest.TestCase):
    def rewrite(self, chunks, prefix=b"[SPAM] "):
        out = []
        prefixer = HeaderRewriter(out.append, "MX.test", prefix)
        for chunk in chunks:
            prefixer.feed(chunk)
        prefixer.close()
        return b"".join(out)

    def test_prefixes_the_subject(self):
        message = b"From: a@b\r\nsubject:  hello\r\nTo: c@d\r\n\r\nSubject: body\r\n"
        self.assertEqual(self.rewrite([message]),
                         b"From: a@b\r\nSubject: [SPAM] hello\r\nTo: c@d\r\n\r\nSubject: body\r\n")

    def test_any_chunking(self):
        message = b"From: a@b\r\nSubject: hello\r\n\r\nbody\r\n"
        expected = self.rewrite([message])
        for size in (1, 2, 5, 13):
            chunks = [message[i:i + size] for i in range(0, len(message), size)]
            self.assertEqual(self.rewrite(chunks), expected, size)

    def test_adds_a_missing_subject(self):
        self.assertEqual(self.rewrite([b"From: a@b\r\n\r\nbody\r\n"]),
                         b"From: a@b\r\nSubject: [SPAM]\r\n\r\nbody\r\n")

    def test_header_only_message(self):
        self.assertEqual(self.rewrite([b"From: a@b\r\n"]), b"From: a@b\r\nSubject: [SPAM]\r\n")

    def test_folded_subject_keeps_its_lines(self):
        message = b"Subject: one\r\n two\r\nTo: c@d\r\n\r\nbody\r\n"
        self.assertEqual(self.rewrite([message]),
                         b"Subject: [SPAM] one\r\n two\r\nTo: c@d\r\n\r\nbody\r\n")

    def test_drops_authentication_results_in_our_name(self):
        """RFC 8601 5: a forged result with our authserv-id never reaches the user."""
        message = (b"Authentication-Results: mx.test; dmarc=pass\r\n"
                   b"authentication-results:\r\n (comment) MX.TEST;\r\n\tdkim=pass\r\n"
                   b"Authentication-Results: other.test; spf=fail\r\n"
                   b"Authentication-Results: mx.test.evil; spf=pass\r\n"
                   b"Subject: hi\r\n\r\n"
                   b"Authentication-Results: mx.test; in the body stays\r\n")
        expected = (b"Authentication-Results: other.test; spf=fail\r\n"
                    b"Authentication-Results: mx.test.evil; spf=pass\r\n"
                    b"Subject: hi\r\n\r\n"
                    b"Authentication-Results: mx.test; in the body stays\r\n")
        for size in (1, 7, len(message)):
            chunks = [message[i:i + size] for i in range(0, len(message), size)]
            self.assertEqual(self.rewrite(chunks, prefix=None), expected, size)

    def test_a_line_past_the_limit_is_not_held(self):
        """A 2 MB first line is passed on as it comes, with the Subject mark before it."""
        out = []
        rewriter = HeaderRewriter(out.append, "mx.test", b"[SPAM] ")
        for _ in range(32):
            rewriter.feed(b"x" * 65536)
        self.assertGreater(sum(map(len, out)), 31 * 65536)
        rewriter.feed(b"\r\nSubject: hi\r\n\r\n")
        rewriter.close()
        self.assertEqual(b"".join(out), b"Subject: [SPAM]\r\n" + b"x" * 2097152
                         + b"\r\nSubject: hi\r\n\r\n")

    def test_a_field_past_the_limit_passes_unread(self):
        huge = b"X-Long: a\r\n" + b" b\r\n" * 20000
        message = huge + b"Subject: hi\r\n\r\nbody"
        self.assertEqual(self.rewrite([message], prefix=None), message)


class Fixed:
    def __init__(self, result):
        self.result = result

    def check(self, session, transaction, sender):
        return defer.succeed(self.result)


class Standing:
    def __init__(self, skips=False):
        self.skips = skips

    def skips_antispam(self, session):
        return defer.succeed(self.skips)


MESSAGE = b"From: x@remote.test\r\nSubject: offer\r\n\r\nbuy\r\n.\r\n"


class ServerActionTests(unittest.TestCase):
    """Each action carried out by the SMTP server on a message to alice."""

    def setUp(self):
        run_threads_inline(self)
        self.server = make_mail_server(self)

    def send(self, action, spam=True, skips=False, to=b"alice@example.test"):
        connection = connect(self.server)
        finding = Verdict.found(spam, action, ("test hit",), (("X-Mailsrv-Test", "hit"),))
        factory = connection.protocol.factory
        factory.policy = ListenerPolicy(factory.policy.gates, {SENDER: [Fixed(finding)]},
                                        Standing(skips), "[SPAM] ")
        connection.send(b"EHLO client.test\r\n")
        mail = connection.send(b"MAIL FROM:<x@remote.test>\r\n")
        if not mail.startswith(b"250"):
            return mail
        connection.send(b"RCPT TO:<" + to + b">\r\n")
        data = connection.send(b"DATA\r\n")
        if not data.startswith(b"354"):
            return data
        return connection.send(MESSAGE)

    def folder(self, name):
        new = Path(self.server.store.maildir("alice@example.test", name)) / "new"
        return sorted(p.read_bytes() for p in new.iterdir()) if new.exists() else []

    def test_header(self):
        self.assertTrue(self.send(HEADER).startswith(b"250 2.0.0 Ok: queued as"))
        [message] = maildir_messages(self.server, "alice@example.test")
        self.assertIn(b"X-Mailsrv-Test: hit\r\nX-Mailsrv-Spam: yes; reasons=test hit\r\n", message)
        self.assertIn(b"\r\nSubject: offer\r\n", message)

    def test_none_still_has_the_summary(self):
        self.send(NONE, spam=False)
        [message] = maildir_messages(self.server, "alice@example.test")
        self.assertIn(b"X-Mailsrv-Spam: no; reasons=test hit\r\n", message)

    def test_skipped_has_no_header(self):
        self.send(REJECT, skips=True)
        [message] = maildir_messages(self.server, "alice@example.test")
        self.assertNotIn(b"X-Mailsrv-", message)

    def test_subject(self):
        self.send(SUBJECT)
        [message] = maildir_messages(self.server, "alice@example.test")
        self.assertIn(b"\r\nSubject: [SPAM] offer\r\n", message)

    def test_move_creates_the_folder(self):
        self.assertTrue(self.send(MOVE).startswith(b"250 "))
        self.assertEqual(maildir_messages(self.server, "alice@example.test"), [])
        [message] = self.folder("Junk")
        self.assertIn(b"X-Mailsrv-Spam: yes", message)
        self.assertIn("Junk", self.server.store.folders("alice@example.test"))
        self.send(MOVE)  # the folder exists now
        self.assertEqual(len(self.folder("Junk")), 2)

    def test_forward(self):
        self.send(Action("forward", "bob@example.test"))
        self.assertEqual(maildir_messages(self.server, "alice@example.test"), [])
        [message] = maildir_messages(self.server, "bob@example.test")
        self.assertIn(b"X-Mailsrv-Spam: yes", message)

    def test_forward_to_an_unknown_user_delivers_as_usual(self):
        self.assertTrue(self.send(Action("forward", "nobody@example.test")).startswith(b"250 "))
        [message] = maildir_messages(self.server, "alice@example.test")
        self.assertIn(b"X-Mailsrv-Spam: yes", message)

    def test_delete(self):
        self.assertTrue(self.send(DELETE).startswith(b"250 2.0.0 Ok"))
        self.assertEqual(maildir_messages(self.server, "alice@example.test"), [])
        self.assertEqual(files_on_disk(self.server), [])

    def test_reject_at_mail_with_the_reasons(self):
        self.assertEqual(self.send(REJECT), b"550 5.7.1 Refused as spam: test hit\r\n")
        self.assertEqual(maildir_messages(self.server, "alice@example.test"), [])

    def test_tempfail_at_mail(self):
        self.assertEqual(self.send(TEMPFAIL), b"451 4.7.1 Try again later: test hit\r\n")
        self.assertEqual(maildir_messages(self.server, "alice@example.test"), [])


class FromHeader:
    """A check of the header hook that judges on the From header it is shown."""

    def __init__(self, action):
        self.action = action
        self.pending = None

    def check(self, session, transaction, header):
        if self.pending is not None:
            return self.pending
        if b"From: spam" not in header:
            return defer.succeed(Verdict.accept())
        return defer.succeed(Verdict.found(True, self.action, ("from spam",)))


class MessageFilterTests(unittest.TestCase):
    """Checks of the header hook see the header section before anything is written."""

    def setUp(self):
        run_threads_inline(self)
        self.server = make_mail_server(self)

    def connect(self, action):
        """A trusted client (it skips the filters at MAIL) sends to alice."""
        self.filter = FromHeader(action)
        connection = connect(self.server)
        factory = connection.protocol.factory
        factory.policy = ListenerPolicy(factory.policy.gates, {HEADER_HOOK: [self.filter]},
                                        Standing(skips=True), "[SPAM] ")
        connection.send(b"EHLO client.test\r\nMAIL FROM:<x@remote.test>\r\n"
                        b"RCPT TO:<alice@example.test>\r\nDATA\r\n")
        return connection

    def test_subject_in_chunks(self):
        connection = self.connect(SUBJECT)
        message = b"From: spam@remote.test\r\nSubject: offer\r\n\r\nbody\r\n.\r\n"
        for i in range(0, len(message), 7):
            reply = connection.send(message[i:i + 7])
        self.assertTrue(reply.startswith(b"250 2.0.0 Ok: queued as"), reply)
        [stored] = maildir_messages(self.server, "alice@example.test")
        self.assertTrue(stored.startswith(b"Return-Path: <x@remote.test>\r\nReceived: "))
        self.assertIn(b"X-Mailsrv-Spam: yes; reasons=from spam\r\nFrom: spam@remote.test\r\n"
                      b"Subject: [SPAM] offer\r\n\r\nbody\r\n", stored)

    def test_nothing_found_leaves_the_message_unchecked(self):
        connection = self.connect(SUBJECT)
        connection.send(b"From: friend@remote.test\r\n\r\nhi\r\n.\r\n")
        [stored] = maildir_messages(self.server, "alice@example.test")
        self.assertNotIn(b"X-Mailsrv-", stored)
        self.assertTrue(stored.endswith(b"From: friend@remote.test\r\n\r\nhi\r\n"))

    def test_reject_after_the_message(self):
        connection = self.connect(REJECT)
        reply = connection.send(b"From: spam@remote.test\r\n\r\nbuy\r\n.\r\n")
        self.assertEqual(reply, b"550 5.7.1 Message refused as spam\r\n")
        self.assertEqual(files_on_disk(self.server), [])

    def test_tempfail_after_the_message(self):
        connection = self.connect(TEMPFAIL)
        reply = connection.send(b"From: spam@remote.test\r\n\r\nbuy\r\n.\r\n")
        self.assertEqual(reply, b"451 4.7.1 Message refused for now, try again later\r\n")
        self.assertEqual(files_on_disk(self.server), [])
        self.assertEqual(maildir_messages(self.server, "alice@example.test"), [])

    def test_input_waits_for_the_judgement(self):
        connection = self.connect(HEADER)
        self.filter.pending = defer.Deferred()
        self.assertEqual(connection.send(b"From: spam@remote.test\r\n\r\nbuy\r\n.\r\n"
                                         b"NOOP\r\n"), b"")
        self.filter.pending.callback(Verdict.found(True, HEADER, ("late",)))
        reply = connection.take()
        self.assertTrue(reply.startswith(b"250 2.0.0 Ok: queued as"), reply)
        self.assertTrue(reply.endswith(b"\r\n250 2.0.0 Ok\r\n"), reply)

    def test_client_gone_while_judging(self):
        connection = self.connect(HEADER)
        self.filter.pending = defer.Deferred()
        connection.send(b"From: spam@remote.test\r\n\r\nbuy")
        connection.transport.loseConnection()
        self.filter.pending.callback(Verdict.accept())
        self.assertEqual(files_on_disk(self.server), [])

    def test_write_error_while_adding_the_subject_at_the_end_refuses(self):
        """
        Regression: a message whose header never ends gets its Subject when
        the final dot comes; a failed write then was not seen, and the
        message was accepted without it.
        """
        from mailsrv.queue.spool import IncomingMessage

        real_write = IncomingMessage.write

        def write(incoming, data):
            if b"Subject: [SPAM]" in data:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(incoming, data)

        self.patch(IncomingMessage, "write", write)
        connection = self.connect(SUBJECT)
        reply = connection.send(b"From: spam@remote.test\r\n.\r\n")
        self.assertEqual(reply, b"452 4.3.1 Insufficient system storage, try again later\r\n")
        self.assertEqual(files_on_disk(self.server), [])
