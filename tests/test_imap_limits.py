"""
The IMAP server's limits on names, lines, literals, nesting and FETCH
partials (issue 13, finding 6): a clean NO or BAD for each, nothing
created on disk, no traceback, and the connection goes on.
"""

import os
import time
import tracemalloc

from twisted.logger import globalLogPublisher

from mailsrv import errorlog
from mailsrv.imap import mailbox as mailbox_module
from tests.test_imap import ALICE, MESSAGE, IMAPTestCase
from tests.helpers import opened


class LimitTestCase(IMAPTestCase):
    def setUp(self):
        super().setUp()
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.patch(errorlog, "client_errors", errorlog.ClientErrorLog(self.clock.seconds))

    def errors(self):
        """Logged errors and tracebacks."""
        return [e for e in self.events
                if "log_failure" in e or e.get("log_level", None) is not None
                and e["log_level"].name in ("error", "critical")]

    def folders_on_disk(self):
        return sorted(n for n in os.listdir(self.store.maildir(ALICE)) if n.startswith("."))


class FolderNameTests(LimitTestCase):
    def test_folder_name_with_control_characters_refused(self):
        c = self.selected(MESSAGE)
        before = self.folders_on_disk()
        refused = b"a NO Folder names may not contain control characters\r\n"
        # CR, LF, NUL, ^A, DEL and C1 NEL, as modified UTF-7 (RFC 3501 5.1.3)
        for name in (b"a&AA0-b", b"a&AAo-b", b"&AAA-", b"x&AAE-", b"&AH8-", b"&AIU-"):
            self.assertEqual(c.cmd(b"a CREATE " + name), refused, name)
            self.assertEqual(c.cmd(b"a RENAME Junk " + name), refused, name)
            self.assertEqual(c.cmd(b"a COPY 1 " + name), refused, name)
            self.assertEqual(c.cmd(b"a MOVE 1 " + name), refused, name)
            self.assertEqual(c.cmd(b"a SUBSCRIBE " + name), refused, name)
            c.cmd(b"a APPEND " + name + b" {3}")
            self.assertEqual(c.cmd(b"abc"), refused, name)
        # the bytes themselves are no valid mUTF-7
        self.assertEqual(c.cmd(b"a CREATE {3}"), b"+ Ready for 3 octets of text\r\n")
        self.assertEqual(c.cmd(b"a\rb"), b"a NO Mailbox name is not valid mUTF-7\r\n")
        self.assertEqual(self.folders_on_disk(), before)
        self.assertNotIn(b"\r", (self.store.maildir(ALICE) / "subscriptions").read_bytes())
        self.assertEqual(self.errors(), [])
        self.assertEqual(c.cmd(b"n NOOP"), b"n OK NOOP completed\r\n")

    def test_overlong_folder_name_refused(self):
        c = self.client()
        c.login()
        longest = b"x" * 254  # ".xxx": a directory name of 255 bytes
        self.assertEqual(c.cmd(b"a CREATE " + longest), b"a OK Mailbox created\r\n")
        self.assertEqual(c.cmd(b"b CREATE " + longest + b"y"),
                         b"b NO Folder names may be at most 254 bytes long\r\n")
        self.assertEqual(c.cmd(b"c CREATE " + "\xe9".encode("imap4-utf-7") * 128),
                         b"c NO Folder names may be at most 254 bytes long\r\n")
        self.assertEqual(c.cmd(b"d RENAME " + longest + b" " + longest + b"y"),
                         b"d NO Folder names may be at most 254 bytes long\r\n")
        self.assertEqual(c.cmd(b"e CREATE " + b"/".join([b"a"] * 16)),
                         b"e OK Mailbox created\r\n")
        self.assertEqual(c.cmd(b"f CREATE " + b"/".join([b"b"] * 17)),
                         b"f NO Folder names may have at most 16 levels\r\n")
        self.assertEqual(self.errors(), [])

    def test_8bit_folder_name_refused(self):
        c = self.client()
        c.login()
        invalid = b"NO Mailbox name is not valid mUTF-7\r\n"
        for command in (b'CREATE "\xc3\xa9t\xc3\xa9"', b"CREATE &Jjo", b"CREATE &AGE-",
                        b'SELECT "\xff"', b'STATUS "\xc3\xa9" (MESSAGES)',
                        b'DELETE "\xc3\xa9"', b'RENAME Junk "\xc3\xa9"',
                        b'LIST "" "\xc3\xa9"', b'SUBSCRIBE "\xc3\xa9"'):
            self.assertEqual(c.cmd(b"a " + command), b"a " + invalid, command)
        # patterns are no names: a lone & matches nothing and is no error
        for pattern in (b"&", b"&-*", b'"&Jjo"', b"%&"):
            self.assertEqual(c.cmd(b'l LIST "" ' + pattern), b"l OK LIST completed\r\n")
        self.assertEqual(c.cmd(b"a CREATE &Jjo-"), b"a OK Mailbox created\r\n")
        self.assertIn(b'"&Jjo-"', c.cmd(b'l LIST "" *'))
        self.assertEqual(self.errors(), [])

    def test_folder_names_stay_inside_the_store(self):
        c = self.client()
        c.login()
        before = sorted(p for p, _, _ in os.walk(self.root))
        for name in (b"..", b"../x", b"a/../../b", b"/etc", b"a//b", b".hidden",
                     b"a.b", b"~/x/.", b'"a/.."'):
            for command in (b"CREATE ", b"RENAME Junk ", b"SELECT ", b"DELETE "):
                reply = c.cmd(b"a " + command + name)
                self.assertTrue(reply.startswith(b"a NO "), (command, name, reply))
        self.assertEqual(sorted(p for p, _, _ in os.walk(self.root)), before)
        self.assertEqual(self.errors(), [])


class LineTests(LimitTestCase):
    def test_overlong_line_gets_tagged_bad(self):
        c = self.client()
        self.assertEqual(c.send(b"a1 NOOP " + b"x" * 70000 + b"\r\nb NOOP\r\n"),
                         b"a1 BAD Line too long\r\nb OK NOOP completed\r\n")
        # the rest of a command after a literal
        self.assertEqual(c.cmd(b"c LOGIN {5}"), b"+ Ready for 5 octets of text\r\n")
        self.assertEqual(c.send(b"alice" + b" y" * 40000 + b"\r\n"),
                         b"c BAD Line too long\r\n")
        self.assertEqual(c.cmd(b"d NOOP"), b"d OK NOOP completed\r\n")
        # IDLE's DONE line
        c.login()
        self.assertEqual(c.cmd(b"i IDLE"), b"+ idling\r\n")
        self.assertEqual(c.cmd(b"D" * 70000), b"i BAD Expected DONE\r\n")
        self.assertEqual(c.cmd(b"e NOOP"), b"e OK NOOP completed\r\n")
        self.assertEqual(self.errors(), [])

    def test_overlong_line_announcing_literal_plus_closes(self):
        """The client sends the literal at once: its bytes are no commands."""
        c = self.client()
        c.login()
        self.assertEqual(
            c.send(b"a APPEND INBOX " + b"x" * 70000 + b" {9+}\r\nb LOGOUT\r\n"),
            b"a BAD Line too long\r\n* BYE Cannot read the rest of that command\r\n")
        self.assertTrue(c.transport.disconnecting)

    def test_literal_limits(self):
        c = self.client()
        self.assertEqual(c.cmd(b"a LOGIN {-1}"), b"a BAD Syntax error: Bad literal size\r\n")
        self.assertEqual(
            c.cmd(b"b LOGIN {4097}"),
            b"b BAD Syntax error: Literal too long! I accept at most 4096 octets\r\n")
        c.login()
        self.assertEqual(c.cmd(b"c APPEND INBOX {-1}"),
                         b"c BAD Syntax error: Expected a literal: {size}\r\n")
        self.assertEqual(c.cmd(b"d APPEND INBOX {36700161}"),
                         b"d NO [TOOBIG] Message larger than 36700160 bytes\r\n")
        self.assertEqual(c.cmd(b"e NOOP"), b"e OK NOOP completed\r\n")

    def test_deep_parentheses_get_bad(self):
        c = self.selected(MESSAGE)
        too_deep = b"b BAD Too deeply nested: at most 100 levels\r\n"
        self.assertEqual(c.cmd(b"b SEARCH " + b"(" * 1000 + b"ALL" + b")" * 1000), too_deep)
        self.assertEqual(c.cmd(b"b FETCH 1 " + b"(" * 1000), too_deep)
        self.assertEqual(c.cmd(b"b ID " + b"(" * 101 + b")" * 101), too_deep)
        self.assertEqual(c.cmd(b"a SEARCH " + b"(" * 100 + b"ALL" + b")" * 100),
                         b"* SEARCH 1\r\na OK SEARCH completed\r\n")
        # parentheses inside a quoted string are text
        self.assertEqual(c.cmd(b'a SEARCH SUBJECT "' + b"(" * 1000 + b'"'),
                         b"* SEARCH\r\na OK SEARCH completed\r\n")
        # NOT and OR nest too
        self.assertEqual(
            c.cmd(b"c SEARCH " + b"NOT " * 1000 + b"ALL"),
            b"c BAD Invalid search: criteria nested over 100 levels\r\n")
        self.assertEqual(
            c.cmd(b"c SEARCH " + b"OR ALL " * 1000 + b"ALL"),
            b"c BAD Invalid search: criteria nested over 100 levels\r\n")
        self.assertEqual(c.cmd(b"n NOOP"), b"n OK NOOP completed\r\n")
        self.assertEqual(self.errors(), [])


def peak_memory(run):
    """The most memory (bytes) allocated at once while C{run()} ran."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class SequenceSetTests(LimitTestCase):
    """Issue 14: the cost of a sequence set follows the mailbox, not its numbers."""

    def test_search_huge_uid_range_costs_the_mailbox_size(self):
        c = self.selected(MESSAGE, MESSAGE, MESSAGE)
        # 2,000,000 first: the code that expanded ranges fails there (a set
        # of 2 million numbers), before 4294967295 could exhaust memory
        for top in (b"2000000", b"4294967295"):
            for command, reply in (
                (b"a UID SEARCH UID 1:%s", b"* SEARCH 1 2 3\r\na OK SEARCH completed\r\n"),
                (b"a SEARCH 2:%s", b"* SEARCH 2 3\r\na OK SEARCH completed\r\n"),
                (b"a SEARCH NOT UID %s:2", b"* SEARCH 1\r\na OK SEARCH completed\r\n"),
                (b"a UID FETCH 3:%s (UID)", b"* 3 FETCH (UID 3)\r\na OK FETCH completed\r\n"),
                (b"a STORE 3:%s +FLAGS.SILENT (\\Flagged)", b"a OK STORE completed\r\n"),
                (b"a UID EXPUNGE 3:%s", b"a OK EXPUNGE completed\r\n"),
            ):
                line = command % top
                replies = []
                peak = peak_memory(lambda: replies.append(c.cmd(line)))
                self.assertEqual(replies, [reply], line)
                self.assertLess(peak, 1 << 20, line)
        self.assertEqual(self.errors(), [])

    def test_many_ranges_parse_in_linear_time(self):
        """Twisted's parser re-sorted the whole set after each range."""
        c = self.selected(MESSAGE, MESSAGE)
        ranges = b",".join(b"%d" % n for n in range(1, 20000, 2))  # 10,000 ranges
        started = time.process_time()
        self.assertEqual(c.cmd(b"a FETCH " + ranges + b" (UID)"),
                         b"* 1 FETCH (UID 1)\r\na OK FETCH completed\r\n")
        self.assertEqual(c.cmd(b"a UID SEARCH UID " + ranges),
                         b"* SEARCH 1\r\na OK SEARCH completed\r\n")
        self.assertLess(time.process_time() - started, 2)

    def test_sequence_numbers_beyond_rfc_get_bad(self):
        c = self.selected(MESSAGE)
        for token, part in ((b"0", b"0"), (b"4294967296", b"4294967296"), (b"+1", b"+1"),
                            (b"1_0", b"1_0"), (b"2:", b"2:"), (b"1::2", b"1::2"),
                            (b"1,,2", b""), (b"1:x", b"1:x")):
            self.assertEqual(c.cmd(b"a FETCH " + token + b" (UID)"),
                             b"a BAD Syntax error: Bad message number %r\r\n" % part, token)
            self.assertEqual(c.cmd(b"a SEARCH UID " + token),
                             b"a BAD Invalid search: bad message set %r\r\n" % token, token)
        self.assertEqual(c.cmd(b"a UID FETCH *:* (UID)"),
                         b"* 1 FETCH (UID 1)\r\na OK FETCH completed\r\n")


class LiteralSyncTests(LimitTestCase):
    """
    Issue 14: a literal is read as data, never as commands, whatever was
    pipelined before it and whether or not its command is refused.
    """

    MAIL = b"Subject: hi\r\n\r\nx1 CREATE rf-inj\r\nx2 LOGOUT\r\n"

    def test_pipelined_append_literal_is_not_run_as_commands(self):
        c = self.selected(MESSAGE)
        slow_fetch = b"f FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)])\r\n"
        fetched = (b"* 1 FETCH (BODY[HEADER.FIELDS (Subject)] {24}\r\n"
                   b"Subject: Hello there\r\n\r\n)\r\nf OK FETCH completed\r\n")
        # LITERAL+: the mail follows at once
        self.assertEqual(
            c.send(slow_fetch + b"a APPEND INBOX {%d+}\r\n" % len(self.MAIL) + self.MAIL
                   + b"\r\nn NOOP\r\n"),
            fetched + b"* 2 EXISTS\r\n* 1 RECENT\r\na OK [APPENDUID 1795000000 2] APPEND completed\r\n"
            b"n OK NOOP completed\r\n")
        # a synchronising literal: the client waits for the continuation
        self.assertEqual(c.send(slow_fetch + b"b APPEND INBOX {%d}\r\n" % len(self.MAIL)),
                         fetched + b"+ Ready for %d octets of data\r\n" % len(self.MAIL))
        self.assertEqual(c.send(self.MAIL + b"\r\n"),
                         b"* 3 EXISTS\r\n* 2 RECENT\r\nb OK [APPENDUID 1795000000 3] APPEND completed\r\n")
        self.assertNotIn("rf-inj", self.store.folders(ALICE))
        self.assertEqual(opened(self.store, ALICE).read_start(3, 1000), self.MAIL)
        self.assertEqual(self.errors(), [])

    def test_refused_command_skips_its_literal_plus(self):
        c = self.client()
        refused = [
            (b"a FROBNICATE {%d+}", b"a BAD Unknown command\r\n"),
            (b"a FETCH 1 BODY[] {%d+}", b"a BAD Command not valid in this state\r\n"),
            (b"a NOOP {%d+}",
             b"a BAD Illegal syntax: Too many arguments for command: b'{%d}'\r\n"),
            (b"a APPEND INBOX " + b"(" * 101 + b" {%d+}",
             b"a BAD Too deeply nested: at most 100 levels\r\n"),
        ]
        c.login()
        for line, reply in refused:
            size = len(self.MAIL)
            # the rest of the refused command may announce another literal
            sent = (line % size + b"\r\n" + self.MAIL + b" {5+}\r\nx3 CREATE rf-inj"
                    + b"\r\nn NOOP\r\n")
            expected = (reply % size if b"%d" in reply else reply) + b"n OK NOOP completed\r\n"
            self.assertEqual(c.send(sent), expected, line)
        self.assertNotIn("rf-inj", self.store.folders(ALICE))

    def test_append_mailbox_as_literal(self):
        c = self.selected()
        self.assertEqual(c.send(b"a APPEND {5+}\r\nINBOX (\\Seen) {%d+}\r\n" % len(MESSAGE)
                                + MESSAGE + b"\r\n"),
                         b"* 1 EXISTS\r\n* 1 RECENT\r\na OK [APPENDUID 1795000000 1] APPEND completed\r\n")
        self.assertEqual(c.cmd(b"b APPEND {5}"), b"+ Ready for 5 octets of text\r\n")
        self.assertEqual(c.send(b"INBOX {%d}\r\n" % len(MESSAGE)),
                         b"+ Ready for %d octets of data\r\n" % len(MESSAGE))
        self.assertEqual(c.send(MESSAGE + b"\r\n"),
                         b"* 2 EXISTS\r\n* 2 RECENT\r\n"
                         b"b OK [APPENDUID 1795000000 2] APPEND completed\r\n")
        self.assertEqual(c.cmd(b"f FETCH 1:* (FLAGS)"),
                         b"* 1 FETCH (FLAGS (\\Recent \\Seen))\r\n* 2 FETCH (FLAGS (\\Recent))\r\n"
                         b"f OK FETCH completed\r\n")


class PartialTests(LimitTestCase):
    def test_partial_range_is_clamped(self):
        c = self.selected(MESSAGE)
        size = len(MESSAGE)
        self.assertEqual(
            c.cmd(b"a FETCH 1 BODY.PEEK[]<0.4294967295>"),
            b"* 1 FETCH (BODY[]<0> {%d}\r\n%b)\r\na OK FETCH completed\r\n" % (size, MESSAGE))
        self.assertEqual(
            c.cmd(b"a FETCH 1 BODY.PEEK[]<4294967295.4294967295>"),
            b"* 1 FETCH (BODY[]<4294967295> {0}\r\n)\r\na OK FETCH completed\r\n")
        body = MESSAGE.split(b"\r\n\r\n", 1)[1]
        self.assertEqual(
            c.cmd(b"a FETCH 1 BODY.PEEK[TEXT]<3.4294967295>"),
            b"* 1 FETCH (BODY[TEXT]<3> {%d}\r\n%b)\r\na OK FETCH completed\r\n"
            % (len(body) - 3, body[3:]))
        self.assertEqual(
            c.cmd(b"a FETCH 1 BODY.PEEK[HEADER]<4.4294967295>"),
            b"* 1 FETCH (BODY[HEADER]<4> {%d}\r\n%b)\r\na OK FETCH completed\r\n"
            % (size - len(body) - 4, MESSAGE[4:size - len(body)]))

    def test_partial_numbers_beyond_rfc_get_bad(self):
        c = self.selected(MESSAGE)
        bad = (b"b BAD Syntax error: Partial <offset.length> must be numbers up to "
               b"4294967295, length not 0\r\n")
        for partial in (b"<0.99999999999999>", b"<99999999999999.1>", b"<0.4294967296>",
                        b"<-1.5>", b"<0.-5>", b"<0.0>"):
            self.assertEqual(c.cmd(b"b FETCH 1 BODY[]" + partial), bad, partial)
        self.assertEqual(c.cmd(b"n NOOP"), b"n OK NOOP completed\r\n")
        self.assertFalse(c.transport.disconnecting)
        self.assertEqual(self.errors(), [])


class ClientErrorLogTests(LimitTestCase):
    def test_client_error_logs_one_line(self):
        """1,000 commands that fail inside the server: one traceback in all."""
        def broken(mailbox, query, uid, saved):
            raise RuntimeError("a bug any client can reach")

        self.patch(mailbox_module.Mailbox, "search", broken)
        c = self.selected(MESSAGE)
        for i in range(1000):
            self.assertEqual(c.cmd(b"s%d SEARCH ALL" % i),
                             b"s%d NO SEARCH failed: server error\r\n" % i)
        errors = self.errors()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len([e for e in errors if "log_failure" in e]), 1)
        self.assertEqual(len(errors), 1000)
        line = errors[-1]["log_format"]
        self.assertEqual(
            line, "IMAP SEARCH failed: imap 127.0.0.1:40000: "
                  "RuntimeError: a bug any client can reach")
        self.assertEqual(c.cmd(b"n NOOP"), b"n OK NOOP completed\r\n")
