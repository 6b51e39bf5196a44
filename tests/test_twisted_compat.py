"""
What mailsrv expects of Twisted's privates (mailsrv/imap/_twisted_compat.py's
PRIVATES, the only ones it touches: tests/test_architecture.py), checked
against the installed Twisted: each still exists, is what we take it for
(a callable with the same parameter names, or an attribute), and is still
used by the Twisted methods that make it matter; then each hook and
attribute is driven once through Twisted's own code. A Twisted upgrade
that changes one fails here, with its name and the Twisted version.
"""

import inspect
import re
from io import BytesIO

import twisted
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.mail import imap4
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailsrv.imap import _twisted_compat as compat
from tests.test_architecture import ROOT, twisted_privates_in

TWISTED = f"Twisted {twisted.__version__}"


def _where(private):
    owner = private.owner
    return f"{getattr(owner, '__qualname__', owner.__name__)}.{private.name}"


def _resolve(private):
    """The object C{private} names, or L{None} if it is gone."""
    found = private.owner
    for part in private.name.split("."):
        found = getattr(found, part, None)
    return found


def _source_name(private):
    """How Twisted's source spells it: C{__ebFetch} for C{_IMAP4Server__ebFetch}."""
    prefix = f"_{getattr(private.owner, '__name__', '')}__"
    return private.name[len(prefix) - 2:] if private.name.startswith(prefix) else private.name


class PrivatesTests(unittest.TestCase):
    """Each of PRIVATES, as the installed Twisted has it."""

    def test_each_exists(self):
        for private in compat.PRIVATES:
            if private.parameters is None:
                continue  # an attribute may be set by a method only (test_each_attribute)
            self.assertIsNotNone(_resolve(private),
                                 f"{TWISTED}: {_where(private)} is gone, and "
                                 "mailsrv/imap/_twisted_compat.py relies on it")

    def test_each_callable_takes_the_same_parameters(self):
        for private in compat.PRIVATES:
            if private.parameters is None:
                continue
            found = _resolve(private)
            self.assertTrue(callable(found), f"{TWISTED}: {_where(private)} is no callable")
            names = tuple(inspect.signature(found).parameters)
            if inspect.isclass(private.owner):
                names = names[1:]  # self
            self.assertEqual(names, private.parameters,
                             f"{TWISTED}: {_where(private)} takes {names}, "
                             f"mailsrv/imap/_twisted_compat.py passes {private.parameters}")

    def test_each_attribute_is_one(self):
        for private in compat.PRIVATES:
            if private.parameters is not None:
                continue
            assigned = re.compile(rf"\bself\.{re.escape(private.name)}\s*=")
            sources = [inspect.getsource(getattr(private.owner, name)) for name in private.used_by
                       if hasattr(private.owner, name)]  # else test_each_is_still_used fails
            self.assertTrue(hasattr(private.owner, private.name)
                            or any(assigned.search(source) for source in sources),
                            f"{TWISTED}: {_where(private)} is neither on the class nor set by "
                            f"{', '.join(private.used_by)}")
            self.assertFalse(callable(_resolve(private)),
                             f"{TWISTED}: {_where(private)} is now a method")

    def test_each_is_still_used_where_it_matters(self):
        for private in compat.PRIVATES:
            used = re.compile(rf"\bself\.{re.escape(_source_name(private))}\b")
            for name in private.used_by:
                method = getattr(private.owner, name, None)
                self.assertIsNotNone(method, f"{TWISTED}: {private.owner.__name__}.{name} "
                                     f"is gone: who uses {private.name} now?")
                self.assertRegex(inspect.getsource(method), used,
                                 f"{TWISTED}: {private.owner.__name__}.{name} no longer uses "
                                 f"{private.name}: what mailsrv hooks or keeps there is dead")

    def test_privates_lists_every_private_the_module_touches(self):
        declared = {private.name.split(".")[0] for private in compat.PRIVATES}
        declared |= {name for private in compat.PRIVATES for name in private.used_by}
        path = ROOT / "mailsrv/imap/_twisted_compat.py"
        touched = {name.split(".")[-1] for _, name in twisted_privates_in(path.read_text(),
                                                                           vars(compat))}
        self.assertEqual(touched - declared, set(), "add them to PRIVATES")


class _Recorder(compat.TwistedIMAP4Server):
    """The hooks a subclass defines, recording their calls; no idle timer."""

    timeOut = None

    def __init__(self):
        super().__init__()
        self.calls = []
        self.makeConnection(StringTransport())

    def arguments_failed(self, failure, tag):
        self.calls.append(("arguments_failed", failure, tag))

    def fetch_failed(self, failure, tag):
        self.calls.append(("fetch_failed", failure, tag))

    def fetch_broke_off(self, failure):
        self.calls.append(("fetch_broke_off", failure))

    def replay_blocked(self):
        self.calls.append(("replay_blocked",))

    def mailbox_selected(self, mbox, command, tag):
        self.calls.append(("mailbox_selected", mbox, command, tag))

    def sent(self):
        return self.transport.value()


class _Mailbox:
    def __init__(self, fetched=()):
        self.fetched = fetched

    def fetch(self, messages, uid):
        if isinstance(self.fetched, Exception):
            raise self.fetched
        return list(self.fetched)

    def getFlags(self):
        return []

    def getHierarchicalDelimiter(self):
        return "/"


class HooksTests(unittest.TestCase):
    """Each hook and attribute, driven through Twisted's code."""

    def setUp(self):
        self.server = _Recorder()
        self.server.transport.clear()

    def test_untagged_responses_wait_for_the_tagged_end(self):
        server = self.server
        server.blocked = []
        server.sendUntaggedResponse(b"1 EXISTS", isAsync=True)
        self.assertEqual((server.queued_untagged, server.sent()), ([b"1 EXISTS"], b""),
                         f"{TWISTED}: sendUntaggedResponse no longer queues in _queuedAsync")
        server.sendPositiveResponse(b"a1", b"done")
        self.assertEqual((server.queued_untagged, server.sent()),
                         ([], b"* 1 EXISTS\r\na1 OK done\r\n"),
                         f"{TWISTED}: _respond no longer sends _queuedAsync before a tagged end")

    def test_every_response_goes_through_respond(self):
        seen = []
        self.patch(_Recorder, "respond", lambda server, *line: seen.append(line))
        self.server.sendBadResponse(b"a1", b"no")
        self.server.sendUntaggedResponse(b"BYE")
        self.assertEqual(seen, [(b"BAD", b"a1", b"no"), (b"BYE", None, None)],
                         f"{TWISTED}: the send*Response methods no longer call _respond")

    def test_a_failed_argument_reaches_arguments_failed(self):
        def refuse(server, line):
            raise ValueError("bad")

        class Server(_Recorder):
            unauth_TEST = (lambda server, tag, arg: None, refuse)
        server = Server()
        server.dispatchCommand(b"a1", b"TEST", b"x")
        [(hook, failure, tag)] = server.calls
        self.assertEqual((hook, failure.type, tag), ("arguments_failed", ValueError, b"a1"),
                         f"{TWISTED}: __doCommand's errback is no longer __ebDispatch")

    def test_a_failed_fetch_reaches_fetch_failed(self):
        server = self.server
        server.mbox = _Mailbox(RuntimeError("disk"))
        server.do_FETCH(b"a1", None, [compat.flags_item()])
        [(hook, failure, tag)] = server.calls
        self.assertEqual((hook, failure.type, tag), ("fetch_failed", RuntimeError, b"a1"),
                         f"{TWISTED}: do_FETCH's errback is no longer __ebFetch")
        self.assertFalse(hasattr(server, "_oldTimeout"),
                         f"{TWISTED}: do_FETCH no longer keeps its idle timer in _oldTimeout")

    def test_a_fetch_that_breaks_off_reaches_fetch_broke_off(self):
        server = self.server
        server.mbox = _Mailbox([(1, object())])
        server.spewMessage = lambda *args: defer.fail(RuntimeError("gone"))
        server.do_FETCH(b"a1", None, [compat.flags_item()])
        [(hook, failure)] = server.calls
        self.assertEqual((hook, failure.type), ("fetch_broke_off", RuntimeError),
                         f"{TWISTED}: a message's FETCH errback is no longer __ebSpewMessage")

    def test_the_end_of_a_fetch_reaches_replay_blocked(self):
        server = self.server
        server.mbox = _Mailbox([])
        server.do_FETCH(b"a1", None, [compat.flags_item()])
        self.assertEqual((server.sent(), server.calls),
                         (b"a1 OK FETCH completed\r\n", [("replay_blocked",)]),
                         f"{TWISTED}: FETCH no longer calls _unblock after its tagged reply")

    def test_select_reaches_mailbox_selected_and_select_failed(self):
        server, mailbox = self.server, _Mailbox()
        server.account = type("Account", (), {"select": lambda self, name, rw: {
            "INBOX": mailbox}[name]})()
        server.select_mailbox(b"a1", b"INBOX", 1, b"SELECT")
        self.assertEqual(server.calls, [("mailbox_selected", mailbox, b"SELECT", b"a1")],
                         f"{TWISTED}: _selectWork no longer calls _cbSelectWork")
        failures = []
        self.patch(_Recorder, "select_failed", lambda *args: failures.append(args[1:]))
        server.select_mailbox(b"a2", b"Nowhere", 0, b"EXAMINE")
        [(failure, command, tag)] = failures
        self.assertEqual((failure.type, command, tag), (KeyError, b"EXAMINE", b"a2"),
                         f"{TWISTED}: _selectWork no longer calls _ebSelectWork")

    def test_a_string_literal_is_read_into_the_pending_literal(self):
        server = self.server
        d = server.string_literal(3)
        self.assertEqual((server.parseState, server.sent()),
                         ("pending", b"+ Ready for 3 octets of text\r\n"),
                         f"{TWISTED}: _stringLiteral no longer asks for the literal")
        self.assertIsNotNone(server.pending_literal,
                             f"{TWISTED}: _stringLiteral no longer sets _pendingLiteral")
        server.dataReceived(b"abc rest\r\n")
        self.assertEqual((self.successResultOf(d), server.pending_literal), ((b"abc", b" rest"), None),
                         f"{TWISTED}: rawDataReceived and parse_pending no longer read "
                         "the literal in _pendingLiteral")

    def test_send_listing(self):
        self.server.send_listing(defer.succeed([("INBOX", _Mailbox())]), b"a1", b"LSUB")
        self.assertEqual(self.server.sent(), b'* LSUB () "/" "INBOX"\r\na1 OK LSUB completed\r\n',
                         f"{TWISTED}: _cbListWork answers differently")


class HelpersTests(unittest.TestCase):
    def test_literal(self):
        self.assertEqual(compat.literal(b"ab\r\n"), b"{4}\r\nab\r\n", f"{TWISTED}: _literal")

    def test_fetch_items_are_those_twisted_spews(self):
        for item, kind in ((compat.flags_item(), "flags"), (compat.uid_item(), "uid")):
            self.assertEqual(item.type, kind, f"{TWISTED}: _FetchParser's items changed")
            self.assertTrue(hasattr(compat.TwistedIMAP4Server, "spew_" + kind))

    def test_literal_file_memory_limit(self):
        self.assertGreater(compat.LITERAL_MEMORY_LIMIT, 0)
        small = compat.LiteralFile(10, defer.Deferred(), memory_limit=10)
        big = compat.LiteralFile(11, defer.Deferred(), memory_limit=10)
        self.assertIsInstance(small.data, BytesIO)
        self.assertFalse(isinstance(big.data, BytesIO),
                         f"{TWISTED}: LiteralFile no longer reads _memoryFileLimit")
        big.data.close()


class ReliedOnTests(unittest.TestCase):
    """
    What the servers take from Twisted beyond PRIVATES and older Twisted
    lacks: why setup.py asks for Twisted 26.10 at least (with 24.3, 33 POP3
    and IMAP tests failed for these three).
    """

    def test_fetch_items_as_server_reads_them(self):
        """
        FETCH's items come from Twisted's parser as instances of its
        private C{_FetchParser} classes; server.py reads their attributes
        and their C{getBytes} (Twisted 24.11).
        """
        query, _ = compat.TwistedIMAP4Server().arg_fetchatt(
            b"(BODY.PEEK[1.HEADER.FIELDS.NOT (To)]<0.10> BODY[TEXT] FLAGS)")
        header, text, flags = query
        self.assertTrue(hasattr(header, "getBytes"), f"{TWISTED}: FETCH's items have no getBytes")
        self.assertEqual(
            [(item.type, item.part, bool(item.header), bool(item.text), bool(item.mime),
              item.empty, item.peek, item.partialBegin, item.partialLength, item.getBytes())
             for item in (header, text)],
            [("body", (0,), True, False, False, False, True, 0, 10,
              b"BODY[1.HEADER.FIELDS.NOT (To)]<0.10>"),
             ("body", (), False, True, False, False, False, None, None, b"BODY[TEXT]")],
            f"{TWISTED}: FETCH's parsed body items changed")
        self.assertEqual((header.header.fields, header.header.negate, flags.type),
                         ([b"TO"], True, "flags"), f"{TWISTED}: FETCH's parsed items changed")

    def test_list_patterns_are_no_regular_expressions(self):
        """A LIST pattern's other characters match themselves (Twisted 26.10); else BAD."""
        message = f"{TWISTED}: wildcardToRegexp reads a pattern as a regular expression"
        try:
            pattern = imap4.wildcardToRegexp("a(b[c%", "/")
        except re.error:
            self.fail(message)
        self.assertTrue(pattern.fullmatch("a(b[cd") and not pattern.fullmatch("a(b[c/d"), message)

    def test_failure_frames_are_hashable(self):
        """
        L{mailsrv.errorlog} keys errors by their innermost frame: tuples
        since Twisted 24.10, lists before once a Deferred cleaned the failure.
        """
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        failure.cleanFailure()
        frame = failure.frames[-1][1:3]
        self.assertIsInstance(frame, tuple, f"{TWISTED}: Failure.frames holds no tuples")
