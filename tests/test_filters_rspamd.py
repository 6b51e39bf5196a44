"""
[antispam.rspamd]: the scanner against a twisted.web server on loopback in
this process, standing in for rspamd's /checkv2 (what it is sent: the
message and rspamd's request headers; each of rspamd's actions mapped to
ours, with the reason; an HTTP 500, a reply that is not JSON, no
connection, the timeout on a Clock), rspamd's reply parser, the config
keys. A real rspamd: tests/integration/test_rspamd.py.
"""

import json
from io import BytesIO
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web import resource, server

from mailsrv import config, preflight
from mailsrv.policy import apply
from mailsrv.policy.actions import HEADER, NONE, Action
from mailsrv.policy.checks.rspamd import RspamdScanner, ScanError, parse_reply, quiet_agent
from mailsrv.policy.scanning import CHUNK
from mailsrv.policy.hooks import INLINE, Message
from mailsrv.policy.judgement import Judgement
from tests.fuzzing import examples
from tests.helpers import log_lines

SESSION = SimpleNamespace(ip="192.0.2.7", helo="client.test", user=None)
TRANSACTION = SimpleNamespace(sender="x@remote.test", recipients=[
    SimpleNamespace(address="alice@example.test"), SimpleNamespace(address="bob@example.test")])
SMALL = b"From: x@remote.test\r\nSubject: hi\r\n\r\nhello\r\n"
BIG = SMALL + bytes(range(256)) * (2 * CHUNK // 256) + b"tail"
SYMBOLS = {"MISSING_DATE": {"name": "MISSING_DATE", "score": 1.0},
           "BIG_ONE": {"name": "BIG_ONE", "score": 7.5},
           "ARC_NA": {"name": "ARC_NA", "score": 0.0},
           "SMALL_ONE": {"name": "SMALL_ONE", "score": 0.4},
           "GOOD": {"name": "GOOD", "score": -1.0}}


def reply(action, score=8.9, **more):
    return json.dumps({"is_skipped": False, "score": score, "required_score": 15.0,
                       "action": action, "symbols": SYMBOLS, **more}).encode()


class FakeRspamd(resource.Resource):
    """/checkv2: records each request; answers C{self.answer} (code, body), or never."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []
        self.answer = (200, reply("no action", 0.9))
        self.silent = False
        self.hang_up = False

    def render_POST(self, request):
        self.requests.append((request.path, request.requestHeaders, request.content.read()))
        if self.hang_up:
            request.transport.abortConnection()
        if self.silent or self.hang_up:
            return server.NOT_DONE_YET
        code, body = self.answer
        request.setResponseCode(code)
        return body


class QuietSite(server.Site):
    """The fake rspamd's site, without a line per request (the scanner's are tested)."""

    noisy = False

    def log(self, request):
        pass


class ScannerTests(unittest.TestCase):
    def setUp(self):
        self.rspamd = FakeRspamd()
        port = reactor.listenTCP(0, QuietSite(self.rspamd), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}"
        self.clock = task.Clock()
        self.lines = log_lines(self)  # (after the port's line)

    def scanner(self, on_error="tempfail", url=None, action=Action("reject")):
        return RspamdScanner(quiet_agent(reactor, 30.0), url or self.url, 30.0, on_error,
                             action, "[rspamd] ", self.clock)

    def scan(self, data=SMALL, **kwargs):
        return self.scanner(**kwargs).check(SESSION, TRANSACTION,
                                            Message(len(data), lambda: BytesIO(data)))

    def assert_found(self, verdict, spam, action, reason):
        finding = verdict.finding
        self.assertEqual((finding.spam, finding.action, finding.reasons),
                         (spam, action, (reason,)))

    @defer.inlineCallbacks
    def test_the_request(self):
        """The message as sent, to /checkv2, with IP, Helo, From and a Rcpt per recipient."""
        yield self.scan()
        [(path, headers, body)] = self.rspamd.requests
        self.assertEqual((path, body), (b"/checkv2", SMALL))
        self.assertEqual([headers.getRawHeaders(name) for name in
                          (b"IP", b"Helo", b"From", b"Rcpt", b"User")],
                         [[b"192.0.2.7"], [b"client.test"], [b"x@remote.test"],
                          [b"alice@example.test", b"bob@example.test"], None])

    @defer.inlineCallbacks
    def test_the_user_and_an_empty_sender(self):
        session = SimpleNamespace(ip="192.0.2.7", helo=None, user="alice@example.test")
        transaction = SimpleNamespace(sender="", recipients=[])
        yield self.scanner().check(session, transaction, Message(len(SMALL),
                                                                 lambda: BytesIO(SMALL)))
        [(_, headers, _)] = self.rspamd.requests
        self.assertEqual([headers.getRawHeaders(name) for name in
                          (b"IP", b"Helo", b"From", b"Rcpt", b"User")],
                         [[b"192.0.2.7"], None, None, None, [b"alice@example.test"]])

    @defer.inlineCallbacks
    def test_a_big_message_in_chunks_read_in_threads(self):
        self.assertGreater(len(BIG), INLINE)
        yield self.scan(BIG)
        self.assertEqual(self.rspamd.requests[0][2], BIG)

    @defer.inlineCallbacks
    def test_each_action(self):
        """rspamd's actions become ours; the reason: action, score/required, top symbols."""
        top = "BIG_ONE(7.5) MISSING_DATE(1) SMALL_ONE(0.4)"
        for action, ours, spam in (("no action", NONE, False),
                                   ("add header", HEADER, True),
                                   ("rewrite subject", Action("subject"), True),
                                   ("greylist", Action("tempfail"), False),
                                   ("soft reject", Action("tempfail"), False),
                                   ("reject", Action("reject"), True)):
            self.rspamd.answer = (200, reply(action))
            verdict = yield self.scan()
            self.assert_found(verdict, spam, ours,
                              f"rspamd {action.replace(' ', '_')} 8.90/15 {top}")
            self.assertEqual(verdict.finding.subject_prefix, "[rspamd] " if spam else None)
        self.assertEqual(self.lines, [])  # (and no client factory's lines)

    @defer.inlineCallbacks
    def test_the_sections_action_for_rspamds_reject(self):
        self.rspamd.answer = (200, reply("reject", 20, messages={"smtp_message": "Go away"}))
        verdict = yield self.scan(action=Action("move", "Junk"))
        self.assertEqual((verdict.finding.action, verdict.finding.refusal),
                         (Action("move", "Junk"), ""))
        verdict = yield self.scan()
        self.assertEqual(verdict.finding.refusal, "Go away")

    @defer.inlineCallbacks
    def test_http_500(self):
        self.rspamd.answer = (500, b'{"error": "internal"}')
        for on_error, action in (("tempfail", Action("tempfail")), ("accept", NONE)):
            verdict = yield self.scan(on_error=on_error)
            self.assert_found(verdict, False, action, "rspamd unscanned")
        self.assertEqual(self.lines, [
            f"rspamd {self.url}: HTTP 500: '{{\"error\": \"internal\"}}'; message from "
            f"192.0.2.7 {outcome}" for outcome in ("deferred (on_error tempfail)",
                                                   "accepted unscanned (on_error accept)")])

    @defer.inlineCallbacks
    def test_bad_json(self):
        self.rspamd.answer = (200, b"<html>proxy error</html>")
        verdict = yield self.scan()
        self.assert_found(verdict, False, Action("tempfail"), "rspamd unscanned")
        [line] = self.lines
        self.assertIn("not rspamd's reply (JSONDecodeError", line)
        self.assertIn("'<html>proxy error</html>'", line)

    @defer.inlineCallbacks
    def test_no_connection(self):
        port = reactor.listenTCP(0, QuietSite(self.rspamd), interface="127.0.0.1")
        url = f"http://127.0.0.1:{port.getHost().port}"
        yield port.stopListening()
        del self.lines[:]
        verdict = yield self.scan(on_error="accept", url=url)
        self.assert_found(verdict, False, NONE, "rspamd unscanned")
        [line] = self.lines
        self.assertTrue(line.startswith(f"rspamd {url}: cannot connect: "), line)

    @defer.inlineCallbacks
    def test_connection_lost_before_the_reply(self):
        self.rspamd.hang_up = True
        verdict = yield self.scan()
        self.assert_found(verdict, False, Action("tempfail"), "rspamd unscanned")
        [line] = self.lines
        self.assertIn(f"rspamd {self.url}: connection lost: ", line)

    @defer.inlineCallbacks
    def test_timeout(self):
        self.rspamd.silent = True
        d = self.scan()
        while not self.rspamd.requests:
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.clock.advance(30)
        verdict = yield d
        self.assert_found(verdict, False, Action("tempfail"), "rspamd unscanned")
        self.assertEqual(self.lines, [f"rspamd {self.url}: no reply in 30s; message from "
                                      "192.0.2.7 deferred (on_error tempfail)"])


    @defer.inlineCallbacks
    def test_a_message_that_cannot_be_read_is_no_rspamd_error(self):
        """The framework's 451 4.3.0 (and traceback) for our own failure, not on_error."""
        def broken():
            raise OSError("gone")
        d = self.scanner(on_error="accept").check(SESSION, TRANSACTION, Message(10, broken))
        with self.assertRaises(OSError):
            yield d
        self.assertEqual(self.lines, [])


class ParserTests(unittest.TestCase):
    def test_symbols_by_score(self):
        parsed = parse_reply(reply("add header"))
        self.assertEqual([name for name, _ in parsed.symbols],
                         ["BIG_ONE", "MISSING_DATE", "SMALL_ONE", "ARC_NA", "GOOD"])

    def test_gtube(self):
        """rspamd's GTUBE reply: skipped, no score of its own."""
        parsed = parse_reply(b'{"is_skipped":true,"score":15.0,"required_score":15.0,'
                             b'"action":"reject","symbols":{"GTUBE":{"name":"GTUBE",'
                             b'"score":0.0,"metric_score":0.0}},"messages":'
                             b'{"smtp_message":"Gtube pattern"}}')
        self.assertEqual((parsed.reason(), parsed.message),
                         ("rspamd reject 15.00/15 GTUBE(0)", "Gtube pattern"))

    def test_what_is_not_its_reply(self):
        for body in (b"", b"[]", b"{}", b'{"action": "reject"}', b"\xff\xfe",
                     b'{"action": "panic", "score": 1, "required_score": 2}',
                     b'{"action": "reject", "score": "x", "required_score": 2}',
                     b'{"action": 1, "score": 1, "required_score": 2}',
                     b'{"action": "reject", "score": 1, "required_score": 2, "symbols": [1]}',
                     b'{"action": "reject", "score": 1, "required_score": 2, '
                     b'"symbols": {"A": 1}}'):
            self.assertRaises(ScanError, parse_reply, body)

    @examples(200)
    @given(st.one_of(st.binary(max_size=200),
                     st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=5),
                                  lambda inner: st.lists(inner, max_size=3)
                                  | st.dictionaries(st.sampled_from(
                                      ["action", "score", "required_score", "symbols",
                                       "messages", "smtp_message", "A"]), inner, max_size=5))
                     .map(lambda value: json.dumps(value).encode())))
    def test_any_reply_parses_or_is_a_scan_error(self, body):
        try:
            parse_reply(body)
        except ScanError:
            pass


class ReplyToTheClientTests(unittest.TestCase):
    """What the framework makes of the scanner's verdicts after the final dot."""

    def at_end(self, verdict):
        judgement = Judgement(checked=True, content=True).adding([verdict])
        return apply.at_end(judgement, SESSION, SimpleNamespace(sender="x@remote.test"), "Q")

    def setUp(self):
        log_lines(self)
        self.rspamd = RspamdScanner(None, "http://127.0.0.1:11333", 30.0, "tempfail",
                                    Action("reject"), None, task.Clock())

    def test_reject(self):
        verdict = self.at_end(self.rspamd._judge((200, reply("reject", 20))))
        self.assertEqual((verdict.code, verdict.text), (550, "Message refused as spam"))

    def test_reject_with_rspamds_message(self):
        """rspamd's smtp_message (GTUBE's "Gtube pattern") is what the client is told."""
        verdict = self.at_end(self.rspamd._judge(
            (200, reply("reject", 20, messages={"smtp_message": "Gtube pattern"}))))
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text),
                         (554, "5.7.1", "Gtube pattern"))

    def test_soft_reject(self):
        verdict = self.at_end(self.rspamd._judge((200, reply("soft reject"))))
        self.assertEqual((verdict.code, verdict.enhanced), (451, "4.7.1"))


class ConfigTests(unittest.TestCase):
    def load(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return config.load(path).antispam.rspamd

    def test_defaults(self):
        self.assertEqual(self.load("[antispam.rspamd]\n"),
                         config.RspamdSettings(action="reject"))
        self.assertEqual((config.RspamdSettings.url, config.RspamdSettings.on_error,
                          config.RspamdSettings.timeout),
                         ("http://127.0.0.1:11333", "tempfail", 30.0))

    def test_keys(self):
        settings = self.load('[antispam.rspamd]\nurl = "http://10.0.0.2:11333"\n'
                             'on_error = "accept"\ntimeout = 5\naction = "header"\n'
                             'subject_prefix = "[R] "\n')
        self.assertEqual(settings, config.RspamdSettings(
            action="header", url="http://10.0.0.2:11333", on_error="accept", timeout=5.0,
            subject_prefix="[R] "))

    def test_check_config_wants_an_http_url(self):
        for url in ("https://127.0.0.1:11333", "127.0.0.1:11333", "http://x:port", "http://"):
            path = self.mktemp()
            with open(path, "w") as f:
                f.write(f'[antispam.rspamd]\nurl = "{url}"\n')
            with self.assertRaises(config.ConfigError) as raised:
                preflight.check_settings(config.load(path), reactor)
            self.assertIn("[antispam.rspamd] url", str(raised.exception))

    def test_bad_on_error(self):
        self.assertRaises(config.ConfigError, self.load,
                          '[antispam.rspamd]\non_error = "maybe"\n')
