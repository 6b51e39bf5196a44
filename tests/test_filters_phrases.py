"""
[antispam.phrases]: the phrase list, normalised words, what is scanned,
and the filter through the SMTP protocol with the server's own config.
"""

from pathlib import Path

from twisted.internet import task
from twisted.trial import unittest

from mailsrv.policy import content
from mailsrv.policy.actions import Action
from mailsrv.policy.checks.phrases import PhraseFilter, normalized, scanned_text
from mailsrv.policy.lists import read_phrases, watched
from tests.helpers import log_lines
from tests.test_smtp.support import (
    connect,
    make_mail_server,
    maildir_messages,
    run_threads_inline,
    send_to_alice,
)

MESSAGE = (b"From: =?utf-8?q?V=2EI=2EA=2EG=2ER=2EA?= <x@remote.test>\r\n"
           b"Subject: Your   ORDER\r\nContent-Type: text/html\r\n\r\n"
           b"<p>Get c-h-e-a-p <b>pills</b> at spam.example today</p>"
           b"<script>hidden phrase</script>\r\n")


class WatchedListTests:
    """
    A phrase or URL list as the filter watches it (L{watched}): start-up
    takes the good lines and logs each bad one; an edit with a bad line is
    not used, the previous contents stay and one log line says why.

    @cvar read: the list's reader; C{lines}, three good lines; C{bad}, a
        bad line and C{problem}, what the log says of it; C{entries}, from
        good lines to what the list holds.
    """

    def watch(self, *lines):
        self.path = Path(self.mktemp())
        self.path.write_text("".join(line + "\n" for line in lines))
        self.clock = task.Clock()
        return watched(str(self.path), self.read, self.clock)

    def test_start_up_takes_the_good_lines(self):
        logged = log_lines(self)
        first, second, _ = self.lines
        listed = self.watch(first, self.bad, second)
        self.assertEqual(listed.value, self.entries(first, second))
        self.assertEqual(logged, [f"{self.path}:2: {self.problem} (left out)"])

    def test_an_edit_with_a_bad_line_keeps_the_previous_contents(self):
        first, second, third = self.lines
        listed = self.watch(first)
        logged = log_lines(self)
        self.path.write_text(f"{first}\n{second}\n{self.bad}\n")
        self.clock.advance(1)
        self.assertEqual(listed.get(), self.entries(first))
        self.assertEqual(logged, [f"keeping the previous contents of {self.path}: "
                                  f"{self.path}:3: {self.problem}"])
        self.path.write_text(f"{first}\n{second}\n{third}\n")  # fixed
        self.clock.advance(1)
        self.assertEqual(listed.get(), self.entries(first, second, third))
        self.assertEqual(len(logged), 1)


class PhraseListTests(WatchedListTests, unittest.TestCase):
    read = staticmethod(read_phrases)
    lines = ("cheap pills", "lottery", "act now")
    bad, problem = "no", "'no': a phrase has 3-32 characters"
    entries = staticmethod(lambda *lines: lines)

    def test_read(self):
        path = self.mktemp()
        Path(path).write_text("Cheap  Pills\nno\ncheap pills\nspam.example\n" + "x" * 33 + "\n")
        phrases, skipped = read_phrases(path)
        self.assertEqual(phrases, ("cheap pills", "spam.example"))
        self.assertEqual([str(e) for e in skipped], [
            f"{path}:2: 'no': a phrase has 3-32 characters",
            f"{path}:5: '{'x' * 33}': a phrase has 3-32 characters"])


class FilterTests(unittest.TestCase):
    def judge(self, phrases, normalize=True, scan="all"):
        path = self.mktemp()
        Path(path).write_text("".join(p + "\n" for p in phrases))
        check = PhraseFilter(watched(path, read_phrases, task.Clock()), normalize, scan,
                             Action("subject"), "[PHRASE] ")
        return check.judge(content.parse(MESSAGE)).finding

    def test_normalized_words(self):
        self.assertEqual(normalized("V.I.A.G.R.A  c-h-e-a-p!", True), "viagra cheap")
        self.assertEqual(normalized("V.I.A.G.R.A  c-h-e-a-p!", False), "v.i.a.g.r.a c-h-e-a-p!")
        finding = self.judge(["cheap pills", "viagra", "spam.example", "lottery"])
        self.assertEqual(finding.reasons, ("phrase cheap pills", "phrase viagra",
                                           "phrase spam.example"))
        self.assertEqual((finding.spam, finding.subject_prefix), (True, "[PHRASE] "))

    def test_as_written(self):
        self.assertFalse(self.judge(["cheap pills"], normalize=False).spam)
        self.assertEqual(self.judge(["your order", "at spam.example"], normalize=False).reasons,
                         ("phrase your order", "phrase at spam.example"))

    def test_what_is_scanned(self):
        parsed = content.parse(MESSAGE)
        self.assertEqual(scanned_text(parsed, "subject"), "Your   ORDER")
        self.assertIn("V.I.A.G.R.A <x@remote.test>", scanned_text(parsed, "headers"))
        self.assertNotIn("ORDER", scanned_text(parsed, "body"))
        self.assertNotIn("hidden phrase", scanned_text(parsed, "all"))
        self.assertFalse(self.judge(["viagra"], scan="body").spam)
        self.assertTrue(self.judge(["viagra"], scan="headers").spam)
        self.assertFalse(self.judge(["cheap pills"], scan="subject").spam)

    def test_encoded_words_the_email_package_refuses(self):
        """Broken base64, a charset named in 8-bit bytes: read as written (was a 451)."""
        parsed = content.parse(b"Subject: =?utf-8?b?a?= cheap\r\n"
                               b"X-Name: =?u\xffx?q?pills?=\r\n\r\nx\r\n")
        self.assertEqual(scanned_text(parsed, "subject"), "=?utf-8?b?a?= cheap")
        self.assertIn("=?u\ufffdx?q?pills?=", scanned_text(parsed, "headers"))


class ThroughSMTPTests(unittest.TestCase):
    def setUp(self):
        run_threads_inline(self)

    def test_phrase_found(self):
        phrases = Path(self.mktemp())
        phrases.write_text("cheap pills\n")
        server = make_mail_server(self, antispam={"phrases": {
            "file": str(phrases.absolute()), "action": "subject"}})
        self.assertTrue(send_to_alice(connect(server), MESSAGE).startswith(b"250 "))
        [stored] = maildir_messages(server, "alice@example.test")
        self.assertIn(b"X-Mailsrv-Spam: yes; reasons=phrase cheap pills\r\n", stored)
        self.assertIn(b"Subject: [SPAM] Your   ORDER\r\n", stored)
