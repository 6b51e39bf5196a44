"""
[antispam.rspamd] with a real rspamd (Debian's package; .ci/run installs
it), started here on free loopback ports with Debian's config and a local
one of ours (tests/rspamdserver.py: rules that give each of rspamd's
actions for a known token, DNS to a stub, no Redis): the scanner on GTUBE,
a clean message and each action; then through SMTP with the real server:
GTUBE refused, a clean message delivered with rspamd in its
X-Mailsrv-Spam, rspamd stopped with on_error tempfail (451) and accept.
"""

from io import BytesIO
from types import SimpleNamespace

from twisted.internet import defer, reactor
from twisted.trial import unittest

from mailsrv.policy.actions import HEADER, NONE, Action
from mailsrv.policy.checks.rspamd import RspamdScanner, quiet_agent
from mailsrv.policy.hooks import Message
from tests.helpers import log_lines
from tests.integration.harness import MailServerProcess
from tests.rspamdserver import (
    HEADER_TOKEN,
    REJECT_TOKEN,
    SOFT_REJECT_TOKEN,
    SUBJECT_TOKEN,
    TEST_RULES,
    RspamdServer,
    rspamd_missing,
)

# The GTUBE test string (spamassassin.apache.org/gtube), which rspamd rejects.
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
TOP = (b"From: x@remote.test\r\nTo: alice@example.test\r\nSubject: hi\r\n"
       b"Date: Sun, 06 Dec 2026 06:00:00 +0000\r\nMessage-ID: <1@remote.test>\r\n")
CLEAN = TOP + b"\r\nhello, nothing to see here\r\n"
SESSION = SimpleNamespace(ip="127.0.0.1", helo="client.test", user=None)
TRANSACTION = SimpleNamespace(sender="x@remote.test",
                              recipients=[SimpleNamespace(address="alice@example.test")])


def with_body(text):
    return TOP + b"\r\n" + text + b"\r\n"


def started_rspamd(testcase):
    """A running L{RspamdServer} with the test rules, stopped after the test (or skip)."""
    why = rspamd_missing()
    if why is not None:
        raise unittest.SkipTest(why)
    rspamd = RspamdServer(rules=TEST_RULES)
    testcase.addCleanup(rspamd.cleanup)
    return rspamd.start()


class ScannerTests(unittest.TestCase):
    """The scanner on the reactor, against the real rspamd (one test: it starts in ~15s)."""

    def setUp(self):
        self.rspamd = started_rspamd(self)
        self.lines = log_lines(self)

    def scan(self, data):
        scanner = RspamdScanner(quiet_agent(reactor, 30), self.rspamd.url, 30, "tempfail",
                                Action("reject"), None, reactor)
        return scanner.check(SESSION, TRANSACTION, Message(len(data), lambda: BytesIO(data)))

    @defer.inlineCallbacks
    def test_gtube_clean_and_each_action(self):
        verdict = yield self.scan(with_body(GTUBE))
        self.assertEqual((verdict.finding.spam, verdict.finding.action,
                          verdict.finding.refusal), (True, Action("reject"), "Gtube pattern"))
        self.assertEqual(verdict.finding.reasons, ("rspamd reject 15.00/15 GTUBE(0)",))
        verdict = yield self.scan(CLEAN)
        self.assertEqual((verdict.finding.spam, verdict.finding.action), (False, NONE))
        self.assertTrue(verdict.finding.reasons[0].startswith("rspamd no_action "),
                        verdict.finding.reasons)
        for token, action, symbol in ((REJECT_TOKEN, Action("reject"), "MAILSRV_TEST_REJECT"),
                                      (HEADER_TOKEN, HEADER, "MAILSRV_TEST_HEADER"),
                                      (SUBJECT_TOKEN, Action("subject"), "rewrite_subject"),
                                      (SOFT_REJECT_TOKEN, Action("tempfail"), "soft_reject")):
            verdict = yield self.scan(with_body(b"it says " + token))
            self.assertEqual(verdict.finding.action, action, verdict.finding.reasons)
            self.assertIn(symbol, verdict.finding.reasons[0])
        self.assertEqual(self.lines, [])


class SMTPTests(unittest.TestCase):
    """The real server with [antispam.rspamd] and the real rspamd, through SMTP."""

    def server(self, rspamd, **settings):
        server = MailServerProcess(extra={"antispam": {
            "rspamd": {"url": rspamd.url, **settings}}})
        self.addCleanup(server.cleanup)
        return server.start()

    def test_gtube_and_clean(self):
        server = self.server(started_rspamd(self))
        self.assertEqual(server.send(with_body(GTUBE)), (554, b"5.7.1 Gtube pattern"))
        self.assertEqual(server.send(CLEAN)[0], 250)
        [path] = server.maildir_files()
        self.assertIn("X-Mailsrv-Spam: no; reasons=rspamd no_action ", path.read_text())
        server.wait_for_log("refused message from 127.0.0.1 sender=<x@remote.test>: "
                            "X-Mailsrv-Spam: yes; reasons=rspamd reject 15.00/15 GTUBE(0)")

    def test_rspamd_stopped(self):
        rspamd = started_rspamd(self)
        deferring, accepting = self.server(rspamd), self.server(rspamd, on_error="accept")
        rspamd.stop()
        code, text = deferring.send(CLEAN)
        self.assertEqual((code, text[:5]), (451, b"4.7.1"))
        self.assertEqual(deferring.maildir_files(), [])
        deferring.wait_for_log(f"rspamd {rspamd.url}: cannot connect: ")
        self.assertEqual(accepting.send(with_body(GTUBE))[0], 250)
        [path] = accepting.maildir_files()
        self.assertIn("X-Mailsrv-Spam: no; reasons=rspamd unscanned\n", path.read_text())
        accepting.wait_for_log("accepted unscanned (on_error accept)")
