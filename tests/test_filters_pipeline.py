"""
The whole content pipeline through the SMTP protocol, every content filter
on, fed random and broken MIME (hypothesis): each message gets a proper
reply to its final dot, never 451 (a check that raised); an accepted one
is in exactly one folder, whole, with its X-Mailsrv-Spam header; a refused
one leaves nothing on disk; nothing is logged as an error.

Messages take one of three ways (L{hooks.Message.judged}): a small one
is analysed and judged at once on the reactor thread, or judged in a
thread if it has much HTML (over hooks.INLINE_HTML); a big one (over
hooks.INLINE) is analysed and judged in threads, and copied from its
spool file. The same small messages are sent each way: L{WAYS} patches
those limits (and IncomingMessage.IN_MEMORY) down; threads run at once.
"""

import base64
import quopri
import re
from pathlib import Path

from hypothesis import given, strategies as st
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.monkey import MonkeyPatcher
from twisted.trial import unittest

from mailsrv.config import DEFAULT_BLOCKED_EXTENSIONS, HTML_FEATURES
from mailsrv.policy import content, hooks
from mailsrv.policy.checks.attachments import blocked
from mailsrv.queue.dotstuff import DotStuffer
from mailsrv.queue.spool import IncomingMessage
from tests.fuzzing import examples, lines
from tests.helpers import fresh_error_log
from tests.test_filters_statistical import trained
from tests.test_policy_content import MESSAGES, TOP, attachment, multipart, zipped
from tests.test_smtp.support import (
    TO_ALICE,
    connect,
    files_on_disk,
    make_mail_server,
    run_threads_inline,
)

ALICE = "alice@example.test"
PHRASES = "cheap pills\nfree money\nviagra\n"
LISTED_HOSTS = "spam.example\n192.0.2.1\n"
REFUSED_TYPES = ("application/x-msdownload",)
# Every action path: move (statistical, urls), subject (phrases: the
# [antispam] prefix), header (html, mime), reject (attachments: 554), and
# the filters' own subject prefixes.
FILTERS = {
    "statistical": {"action": "move:Junk", "subject_prefix": "[BAYES] "},
    "phrases": {"action": "subject", "scan": "all"},
    "urls": {"action": "move:Junk", "scan": "all"},
    "html": {"action": "header", "features": list(HTML_FEATURES)},
    "mime": {"action": "header", "subject_prefix": "[MIME] "},
    "attachments": {"action": "reject", "content_types": list(REFUSED_TYPES)},
}
PREFIXES = {b"[SPAM]", b"[BAYES]", b"[MIME]"}

# What text may say: trained words, listed phrases and hosts, and the
# forms that hide them.
_WORDS = st.sampled_from([
    b"cheap", b"pills", b"casino", b"winner", b"meeting", b"agenda", b"report", b"cheap pills",
    b"free  money", b"v.i.a.g.r.a", b"V-I-A-G-R-A", b"spam.example", b"http://spam.example/x",
    b"www.spam.example", b"HTTPS://a.b.spam.example:8080/", b"http://0xC0000201/",
    b"http://www.bank.example@spam.example/", b"http://3221225985/", b"http://0300.0250.0.01/",
    b"http://%73pam.example/", b"ftp://ok.example/", b"http://[::1]/", b"http://", b"www.",
    b"caf\xc3\xa9", b"\xff\xfe\x00", b"=?utf-8?b?w6k=?=", b".", b"..", b"\t",
])
TEXT = st.lists(_WORDS, min_size=1, max_size=12).map(b" ".join)
# HTML fragments: every feature, links to listed hosts, entity tricks, broken markup.
_MARKUP = st.sampled_from([
    b"<a href='http://spam.example/'>here</a>", b"<a href=\"http://&#115;pam.example/\">x</a>",
    b"<a href='http://www.bank.example@spam.example/'>www.bank.example</a>",
    b"<a href=HTTP://0xC0000201/>www.bank.example</a>", b"<img src='http://spam.example/i.png'>",
    b"<img src=cid:1>", b"<a href='mailto:x@spam.example'>write</a>", b"via<!-- x -->gra",
    b"<p>via<xyzzy>gra</p>", b"<script>var a='</script>", b"<table><tr><td><table><td>x</table>",
    b"<span style='display:none'>cheap pills</span>", b"<div style='font-size:1px'>x</div>",
    b"<font color=#fff style='background-color: white'>free money</font>", b"&#99999999999;",
    b"&#x110000;", b"&#0;", b"&amp;#x73;", b"&lt;a href=http://spam.example&gt;", b"&", b"&#x;",
    b"&nbsp", b"<a href=", b"<!--", b"<![CDATA[", b"</", b"<a href='javascript:x()'>",
    b"<a href='http://[bad'>", b"<a href='http://a..b/'>", b"<a href=http://%zz/>",
    b"<a href='http://" + b"a." * 200 + b"example/'>", b"<style>p{color:red}", b"<?xml?>",
    b"<base href='http://spam.example/'>", b"<title>cheap pills</title>", b"<!DOCTYPE x>",
])
HTML = st.lists(st.one_of(_MARKUP, TEXT), min_size=1, max_size=12).map(b"".join)
_CHARSETS = st.sampled_from([b"utf-8", b"iso-8859-1", b"x-no-such", b"utf-7", b"rot13",
                             b"base64", b"\"", b"utf-8''", b"utf-16", b"idna", b"punycode"])


@st.composite
def text_parts(draw):
    """A text/plain or text/html part, encoded or not (its charset or encoding maybe bad)."""
    kind = draw(st.sampled_from([b"text/plain", b"text/html", b"TEXT/HTML"]))
    body = draw(HTML if kind.lower() == b"text/html" else TEXT)
    encoding = draw(st.sampled_from([b"", b"base64", b"quoted-printable", b"7bit", b"x-uuencode"]))
    if encoding == b"base64":
        body = base64.encodebytes(body)[:draw(st.none() | st.integers(0, 1000))]
    elif encoding == b"quoted-printable":
        body = quopri.encodestring(body)
    charset = draw(st.just(b"utf-8") | _CHARSETS)
    header = b"Content-Type: " + kind + b"; charset=" + charset + b"\r\n"
    if encoding:
        header += b"Content-Transfer-Encoding: " + encoding + b"\r\n"
    return header + b"\r\n" + body


_FILE_NAMES = st.sampled_from([
    b"report.pdf", b"photo.jpg", b"notes.txt", b"doc.zip", b"a.exe", b"invoice.pdf.exe",
    b"run.scr . ", b"A.JS", b"a\\b.exe", b"=?utf-8?b?w6kuZXhl?=", b"r\xc3\xa9sum\xc3\xa9.pdf",
    b"\xff.exe", b"", b"\"",
])
_ATTACHED = st.one_of(
    st.just(b"MZ"), st.binary(max_size=50),
    st.lists(st.sampled_from(["a.txt", "dir/setup.exe", "b.scr", "x.pdf", "\r\n.exe"]),
             max_size=3, unique=True).map(lambda names: zipped(*names)),
)
ATTACHMENTS = st.builds(attachment, _FILE_NAMES, _ATTACHED, st.sampled_from([
    b"application/octet-stream", b"application/zip", b"application/x-msdownload",
    b"application/pdf"]))
# Boundaries, the last five broken (too long, empty, quoting broken, ...).
_BOUNDARIES = st.sampled_from([b"b", b"=_x", b"c", b"b" * 71, b"a b", b"", b"--", b"b\"c"])


def _container(kind, boundary, parts):
    """A multipart of C{parts}, or an attached message of the first."""
    if kind == "rfc822":
        return b"Content-Type: message/rfc822\r\n\r\n" + TOP + parts[0]
    return multipart(boundary, *parts, subtype=kind)


PARTS = st.recursive(
    st.one_of(text_parts(), ATTACHMENTS),
    lambda parts: st.builds(_container, st.sampled_from(["mixed", "alternative", "rfc822"]),
                            _BOUNDARIES, st.lists(parts, min_size=1, max_size=4)),
    max_leaves=8)
# Header fields of the message's top.
_FIELDS = st.sampled_from([
    b"From: x@remote.test", b"Subject: cheap pills", b"subject:\tfree money", b"Subject:",
    b"Subject: =?utf-8?q?v=2Ei=2Ea=2Eg=2Er=2Ea?=", b"Subject: =?bogus?b?!!?=",
    b"Subject: =?utf-8?b?a?=", b"X-Name: =?u\xff?q?x?=", b"X-Folded: a", b" b",
    b"To: alice@example.test", b"X-Long: " + b"x" * 1000, b"MIME-Version: 1.0",
])
# Huge header sections: past content.MAX_HEADER, and many fields.
_HUGE = st.sampled_from([b""] * 8 + [b"X-Huge: " + b"a" * (content.MAX_HEADER + 10) + b"\r\n",
                         b"X-Many: a\r\n" * 3000])
# Lines that break MIME where they land (an unfolded boundary parameter,
# delimiters, dots for the dot-stuffing), or random bytes.
_JUNK = st.sampled_from([
    b"\r\nboundary=b\r\n", b"\r\nContent-Type: multipart/mixed;\r\n", b"\r\n--b\r\n",
    b"\r\n--b--\r\n", b"\r\n.\r\n", b"\r\n..x\r\n", b"\r\nContent-Type: text/html\r\n",
]) | st.binary(max_size=20)


@st.composite
def built_messages(draw):
    """
    A message built to reach every filter, then maybe broken: cut short,
    junk spliced in, or its first empty line dropped (the opening
    delimiter in the header block).
    """
    fields = draw(st.lists(_FIELDS, max_size=4))
    message = draw(_HUGE) + b"".join(field + b"\r\n" for field in fields) + draw(PARTS)
    breakage = draw(st.sampled_from(["none", "none", "cut", "splice", "no empty line"]))
    at = draw(st.integers(0, len(message)))
    if breakage == "cut":
        message = message[:at]
    elif breakage == "splice":
        message = message[:at] + draw(_JUNK) + message[at:]
    elif breakage == "no empty line":
        message = message.replace(b"\r\n\r\n", b"\r\n", 1)
    return message


def with_crlf(message):
    """C{message} with every line end CRLF, and a last one: what a client sends."""
    message = re.sub(rb"\r\n?|\n", b"\r\n", message)
    return message if message.endswith(b"\r\n") else message + b"\r\n"


# Random lines and bytes (MESSAGES), and twice as many messages built to
# reach every filter.
SENT = st.one_of(MESSAGES, built_messages(), built_messages()).map(with_crlf)


def data_section(message):
    """C{message} (CRLF lines) as DATA sends it: dot-stuffed, with the final dot."""
    stuffer = DotStuffer()
    return stuffer.feed(message) + stuffer.finish()


# The patches that send a message each way.
WAYS = {
    "small": (),
    "much HTML": ((hooks, "INLINE_HTML", 0),),
    "big": ((hooks, "INLINE", 0), (IncomingMessage, "IN_MEMORY", 0)),
}


def taking(way):
    """A context in which messages take C{way} (a key of L{WAYS})."""
    return MonkeyPatcher(*WAYS[way])


class PipelineTests(unittest.TestCase):
    def setUp(self):
        run_threads_inline(self)
        fresh_error_log(self)  # (each error's traceback is logged, so trial fails the test)
        lists = Path(self.mktemp()).absolute()
        lists.mkdir()
        (lists / "phrase-list.txt").write_text(PHRASES)
        (lists / "url-domain-bl.txt").write_text(LISTED_HOSTS)
        trained(lists / "antispam-table.txt")
        files = {"statistical": {"table": str(lists / "antispam-table.txt")},
                 "phrases": {"file": str(lists / "phrase-list.txt")},
                 "urls": {"file": str(lists / "url-domain-bl.txt")}}
        self.server = make_mail_server(self, antispam={
            name: {**settings, **files.get(name, {})} for name, settings in FILTERS.items()})
        self.inbox, self.junk = (Path(self.server.store.maildir(ALICE, name)) / "new"
                                 for name in ("INBOX", "Junk"))
        self.errors = []
        globalLogPublisher.addObserver(self._error_seen)
        self.addCleanup(globalLogPublisher.removeObserver, self._error_seen)

    def _error_seen(self, event):
        if event.get("log_failure") is not None or event.get("log_level") in (
                LogLevel.error, LogLevel.critical):
            self.errors.append(formatEvent(event))

    def send(self, message):
        """
        Send C{message} to alice: the reply to its final dot, and the files
        it left on disk (no file goes).
        """
        before = set(files_on_disk(self.server))
        connection = connect(self.server)
        self.assertRegex(connection.send(TO_ALICE), rb"\r\n354 [^\r\n]*\r\n\Z")
        reply = connection.send(data_section(message))
        connection.send(b"QUIT\r\n")
        after = set(files_on_disk(self.server))
        self.assertLessEqual(before, after)
        return reply, after - before

    @examples(150)
    @given(SENT)
    def test_small_messages(self, message):
        self.kept_whole_or_refused(message)

    @examples(100)
    @given(SENT)
    def test_small_messages_with_much_html(self, message):
        with taking("much HTML"):
            self.kept_whole_or_refused(message)

    @examples(100)
    @given(SENT)
    def test_big_messages(self, message):
        with taking("big"):
            self.kept_whole_or_refused(message)

    def kept_whole_or_refused(self, message):
        """
        C{message} is kept whole in INBOX or Junk, with its X-Mailsrv-Spam
        header (and maybe a Subject prefix), or refused for its attachment;
        nothing is logged as an error.
        """
        errors = len(self.errors)
        reply, left = self.send(message)
        self.assertEqual(self.errors[errors:], [])
        refused = blocked(content.parse(message), frozenset(DEFAULT_BLOCKED_EXTENSIONS),
                          frozenset(REFUSED_TYPES))
        if refused:
            self.assertRegex(reply, rb"\A554 5\.7\.1 Attachment refused: [ -~]+\r\n\Z")
            self.assertEqual(left, set())
            return
        self.assertRegex(reply, rb"\A250 2\.0\.0 Ok: queued as \S+\r\n\Z")
        # (The first message moved to Junk makes the folder, with its marker file.)
        [path] = [p for p in left if p.name != "maildirfolder"]
        self.assertIn(path.parent, (self.inbox, self.junk))
        _, found, summary_and_message = path.read_bytes().partition(b"\r\nX-Mailsrv-Spam: ")
        self.assertTrue(found)
        summary, _, stored = summary_and_message.partition(b"\r\n")
        self.assertRegex(summary, rb"\A(yes|no); reasons=[ -~]+\Z")
        spam = summary.startswith(b"yes")
        self.assertTrue(spam or path.parent == self.inbox)
        prefix = self.subject_prefix(message, stored)
        self.assertTrue(spam or not prefix)
        self.assertLessEqual(set(prefix.split()), PREFIXES)

    def subject_prefix(self, message, stored):
        """
        What C{stored} put before C{message}'s Subject, or added as one (b""
        for nothing); the test fails when they differ in anything else.
        """
        sent, kept = lines(message), lines(stored)
        same = 0
        while same < min(len(sent), len(kept)) and sent[same] == kept[same]:
            same += 1
        if len(sent) == len(kept) == same:
            return b""
        if len(kept) == len(sent) + 1 and kept[same + 1:] == sent[same:]:
            added = re.fullmatch(rb"Subject: (\S.*)\r\n", kept[same])
            self.assertIsNotNone(added, kept[same])
            return added[1]
        self.assertEqual((len(kept), kept[same + 1:]), (len(sent), sent[same + 1:]))
        self.assertEqual(sent[same][:8].lower(), b"subject:")
        text = sent[same][8:].lstrip(b" \t")
        prefixed = re.fullmatch(rb"Subject: (\S.*)" + re.escape(text), kept[same], re.DOTALL)
        self.assertIsNotNone(prefixed, (sent[same], kept[same]))
        return prefixed[1]

    @examples(30)
    @given(SENT, st.integers(min_value=0), st.sampled_from(sorted(WAYS)))
    def test_a_bare_carriage_return_is_refused(self, message, at, way):
        at %= len(message) + 1
        with taking(way):
            reply, left = self.send(message[:at] + b"\r" + message[at:])
        self.assertRegex(reply, rb"\A550 5\.6\.0 Message contains bare CR or LF")
        self.assertEqual(left, set())
