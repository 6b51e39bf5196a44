"""
[antispam.statistical], the Bayesian word filter: the words it reads of a
message, its verdict, the filter through the SMTP protocol with the
server's own config, and `mailsrv filter train` changing that verdict.
"""

import io
import itertools
import mailbox
from pathlib import Path

from hypothesis import given
from twisted.internet import defer, task, threads
from twisted.trial import unittest

from mailsrv.admin import cli
from mailsrv.directory import listfile
from mailsrv.directory.listfile import WatchedFile
from mailsrv.policy import bayes, content
from mailsrv.policy.actions import Action
from mailsrv.policy.checks.statistical import StatisticalFilter, message_words
from tests.fuzzing import examples
from tests.test_filters_content import verdict_of
from tests.test_policy_content import MESSAGES
from tests.test_smtp.support import (
    connect,
    make_mail_server,
    maildir_messages,
    run_threads_inline,
    send_to_alice,
)

SPAM = (b"From: x@remote.test\r\nSubject: =?utf-8?q?Cheap_p=C3=AFlls?=\r\n"
        b"Content-Type: multipart/alternative; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nbuy cheap pills now\r\n"
        b"--b\r\nContent-Type: text/html\r\n\r\n<p>casino <b>winner</b></p>"
        b"<script>lunch meeting</script>\r\n--b--\r\n")
HAM = (b"From: y@remote.test\r\nSubject: lunch\r\n\r\n"
       b"The meeting agenda for tomorrow, and the report.\r\n")


def trained(path=None):
    table = bayes.Table()
    for _ in range(20):
        table.learn(bayes.words("cheap pills buy now casino winner"), spam=True)
        table.learn(bayes.words("meeting agenda lunch tomorrow report"), spam=False)
    if path is not None:
        table.write(path)
    return table


class WordsTests(unittest.TestCase):
    def test_what_a_reader_sees(self):
        self.assertEqual(message_words(content.parse(SPAM)),
                         ["cheap", "pïlls", "buy", "pills", "now", "casino", "winner"])
        self.assertEqual(message_words(content.parse(SPAM), frozenset({"now", "buy"})),
                         ["cheap", "pïlls", "pills", "casino", "winner"])


class FilterTests(unittest.TestCase):
    def check(self, threshold=0.9):
        clock = task.Clock()
        table = self.mktemp()
        trained(table)
        return StatisticalFilter(WatchedFile(table, bayes.Table.parse, clock),
                                 WatchedFile(self.mktemp(), bayes.parse_exclude, clock),
                                 threshold, Action("move", "Junk"), "[BAYES] ")

    def test_spam_names_its_probability_and_words(self):
        finding = self.check().judge(content.parse(SPAM)).finding
        self.assertTrue(finding.spam)
        self.assertEqual(finding.action, Action("move", "Junk"))
        self.assertRegex(finding.reasons[0], r"^statistical 1\.00 \(")
        named = finding.reasons[0][len("statistical 1.00 ("):-1].split(", ")
        self.assertEqual(len(named), 5)
        self.assertLessEqual(set(named), {"cheap", "buy", "pills", "now", "casino", "winner"})
        self.assertEqual(finding.subject_prefix, "[BAYES] ")

    def test_good_mail(self):
        self.assertFalse(self.check().judge(content.parse(HAM)).finding.spam)

    def test_a_changed_table_is_parsed_in_a_thread(self):
        """
        The old table judges until the new one is in: a big table's parse
        never holds the reactor thread, which judges a small message.
        """
        rereads = []

        def in_thread(f, *args):
            rereads.append((f, args, defer.Deferred()))
            return rereads[-1][2]
        self.patch(threads, "deferToThread", in_thread)
        clock = task.Clock()
        table = Path(self.mktemp())
        check = StatisticalFilter(WatchedFile(table, bayes.Table.parse, clock),
                                  WatchedFile(self.mktemp(), bayes.parse_exclude, clock),
                                  0.9, Action("move", "Junk"))
        self.assertFalse(verdict_of(self, check, SPAM).finding.spam)  # no table yet
        big = trained()
        for word in itertools.islice(map("".join, itertools.product("xyz", repeat=8)), 300):
            big.add_line(f"{word} 1 1")
        big.write(table)
        self.assertGreater(table.stat().st_size, listfile.INLINE)
        clock.advance(1)
        self.assertFalse(verdict_of(self, check, SPAM).finding.spam)
        clock.advance(1)
        self.assertFalse(verdict_of(self, check, SPAM).finding.spam)
        [(parse, args, parsed)] = rereads  # one re-read, in a thread
        parsed.callback(parse(*args))
        self.assertTrue(verdict_of(self, check, SPAM).finding.spam)

    @examples(100)
    @given(MESSAGES)
    def test_every_message_gets_a_verdict(self, message):
        """Random and broken MIME: a verdict, never an exception."""
        run_threads_inline(self)
        check = self.check()
        self.assertTrue(verdict_of(self, check, message).accepted)


class ThroughSMTPTests(unittest.TestCase):
    def setUp(self):
        run_threads_inline(self)
        self.table = Path(self.mktemp())
        trained(self.table)

    def send(self, message, **statistical):
        self.server = make_mail_server(self, antispam={"statistical": {
            "table": str(self.table.absolute()), **statistical}})
        return send_to_alice(connect(self.server), message)

    def test_spam_and_good_mail(self):
        self.assertTrue(self.send(SPAM).startswith(b"250 "))
        [stored] = maildir_messages(self.server, "alice@example.test")
        self.assertIn(b"X-Mailsrv-Spam: yes; reasons=statistical 1.00 (", stored)
        self.send(HAM)
        [stored] = maildir_messages(self.server, "alice@example.test")
        self.assertIn(b"X-Mailsrv-Spam: no; reasons=-\r\n", stored)

    def test_threshold_and_action(self):
        reply = self.send(SPAM, action="reject", threshold=1.0)
        self.assertTrue(reply.startswith(b"250 "), reply)  # 1.00 is rounded: below 1.0
        reply = self.send(SPAM, action="reject", threshold=0.5)
        self.assertEqual(reply, b"550 5.7.1 Message refused as spam\r\n")


class TrainTests(unittest.TestCase):
    """`mailsrv filter train`: Maildir folders and mbox files; retraining changes the verdict."""

    def setUp(self):
        self.root = Path(self.mktemp()).absolute()
        self.root.mkdir()
        self.config = self.root / "mailsrv.toml"
        self.config.write_text('[server]\nhostname = "mail.example.test"\ndata_dir = "var"\n'
                               '[domains]\nlocal = ["example.test"]\n'
                               '[antispam.statistical]\n')
        self.patch(cli.sys, "stderr", io.StringIO())

    def train(self, *args):
        stdout = io.StringIO()
        status = cli.main(["--config", str(self.config), "filter", "train", *args],
                          stdin=io.StringIO(), stdout=stdout)
        return status, stdout.getvalue()

    def test_from_a_maildir_and_an_mbox(self):
        spam = mailbox.Maildir(self.root / "Spam")
        for _ in range(3):
            spam.add(SPAM)
        good = mailbox.mbox(self.root / "good.mbox")
        good.add(HAM)
        good.flush()
        status, out = self.train("--spam", str(self.root / "Spam"),
                                 "--ham", str(self.root / "good.mbox"))
        self.assertEqual(status, 0, cli.sys.stderr.getvalue())
        table = bayes.Table.parse(self.root / "antispam-table.txt")
        self.assertEqual((table.spam_messages, table.ham_messages), (3, 1))
        self.assertEqual(table.counts["casino"], [3, 0])
        self.assertEqual(table.counts["meeting"], [0, 1])
        self.assertIn("antispam-table.txt: 15 words from 3 spam and 1 good messages", out)

    def test_retraining_changes_the_verdict(self):
        spam = mailbox.Maildir(self.root / "Spam")
        spam.add(SPAM)
        good = mailbox.Maildir(self.root / "Good")
        good.add(HAM)
        self.train("--spam", str(self.root / "Spam"), "--ham", str(self.root / "Good"))
        table = bayes.Table.parse(self.root / "antispam-table.txt")
        before, _ = table.probability(message_words(content.parse(SPAM)))
        for _ in range(5):  # the admin says: that kind of message is good mail
            self.train("--ham", str(self.root / "Spam"))
        table = bayes.Table.parse(self.root / "antispam-table.txt")
        after, _ = table.probability(message_words(content.parse(SPAM)))
        self.assertGreaterEqual(before, 0.9)  # the default threshold
        self.assertLess(after, 0.9)

    def test_refusals(self):
        self.assertEqual(self.train()[0], 1)
        self.assertIn("say --spam PATH and/or --ham PATH", cli.sys.stderr.getvalue())
        self.assertEqual(self.train("--spam", str(self.root / "nowhere"))[0], 1)
        self.assertIn("nowhere: no such folder or file", cli.sys.stderr.getvalue())
