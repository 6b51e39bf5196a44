"""
The IMAP extensions mailsrv advertises, one test class each, through the
protocol: exact bytes in, exact replies out. (tests/integration/
test_imap_clients.py drives the same extensions with imaplib against the
real server.)
"""

import gc

from hypothesis import given, strategies as st
from twisted.mail import imap4
from twisted.trial import unittest

from mailsrv.imap.mailbox import _collector_paused
from mailsrv.imap.syntax import (
    sequence_set,
    split_fetch_modifiers,
    split_store_modifier,
    take_modseq_item,
)
from mailsrv.store.folder import MailStore
from tests.test_imap import ALICE, MESSAGE, MULTIPART, IMAPTestCase
from tests.fuzzing import examples
from tests.test_imap_append import BinaryTests, CatenateTests, MultiAppendTests
from tests.helpers import opened


class UIDPlusTests(IMAPTestCase):
    """RFC 4315: APPENDUID, COPYUID, UID EXPUNGE."""

    def test_appenduid_and_copyuid(self):
        c = self.selected(MESSAGE, MESSAGE, MESSAGE)
        c.cmd(b"a APPEND Trash {3}")
        self.assertEqual(c.send(b"x\r\n\r\n"),
                         b"a OK [APPENDUID 1795000001 1] APPEND completed\r\n")
        self.assertEqual(c.cmd(b"c COPY 1:* Trash"),
                         b"c OK [COPYUID 1795000001 1:3 2:4] COPY completed\r\n")
        self.assertEqual(c.cmd(b"d UID COPY 2 Trash"),
                         b"d OK [COPYUID 1795000001 2 5] COPY completed\r\n")
        self.assertEqual(c.cmd(b"e UID COPY 9 Trash"), b"e OK COPY completed\r\n")

    def test_uid_expunge_removes_only_the_set(self):
        c = self.selected(MESSAGE, MESSAGE, MESSAGE)
        c.cmd(b"s STORE 1:3 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(c.cmd(b"x UID EXPUNGE 2:3"),
                         b"* 3 EXPUNGE\r\n* 2 EXPUNGE\r\nx OK EXPUNGE completed\r\n")
        self.assertEqual(opened(self.store, ALICE).uids(), [1])
        self.assertEqual(c.cmd(b"y EXPUNGE 1"),
                         b"y BAD Syntax: EXPUNGE, or UID EXPUNGE set\r\n")
        self.assertEqual(c.cmd(b"z EXPUNGE"), b"* 1 EXPUNGE\r\nz OK EXPUNGE completed\r\n")


class MoveTests(IMAPTestCase):
    """RFC 6851: MOVE and UID MOVE."""

    def test_move_and_uid_move(self):
        c = self.selected(MESSAGE, MULTIPART, MESSAGE, MESSAGE)
        c.cmd(b"f STORE 2 +FLAGS.SILENT (\\Flagged $Work)")
        self.assertEqual(
            c.cmd(b"m MOVE 2:3 Trash"),
            b"* OK [COPYUID 1795000001 2:3 1:2] Moved\r\n"
            b"* 3 EXPUNGE\r\n* 2 EXPUNGE\r\nm OK MOVE completed\r\n",
        )
        self.assertEqual(
            c.cmd(b"u UID MOVE 4 Trash"),
            b"* OK [COPYUID 1795000001 4 3] Moved\r\n* 2 EXPUNGE\r\nu OK MOVE completed\r\n",
        )
        trash = opened(self.store, ALICE, "Trash")
        self.assertEqual([(m.uid, m.flags) for m in trash.messages()],
                         [(1, {"\\Flagged", "$Work"}), (2, frozenset()), (3, frozenset())])
        self.assertEqual(trash.message(1).path.read_bytes(), MULTIPART)
        self.assertEqual(opened(self.store, ALICE).uids(), [1])
        self.assertEqual(c.cmd(b"n MOVE 1 Nope"), b"n NO [TRYCREATE] No such mailbox\r\n")
        self.assertEqual(c.cmd(b"e UID MOVE 99 Trash"), b"e OK MOVE completed\r\n")

    def test_other_session_sees_the_move(self):
        a = self.selected(MESSAGE, MESSAGE)
        b = self.selected()
        a.cmd(b"m MOVE 1 Junk")
        self.assertEqual(b.cmd(b"n NOOP"), b"* 1 EXPUNGE\r\nn OK NOOP completed\r\n")

    def test_read_only(self):
        c = self.selected(MESSAGE)
        c.cmd(b"e EXAMINE INBOX")
        self.assertEqual(c.cmd(b"m MOVE 1 Trash"),
                         b"m NO [READ-ONLY] Mailbox is read-only\r\n")


class NamespaceTests(IMAPTestCase):
    def test_personal_namespace_only(self):
        c = self.client()
        c.login()
        self.assertEqual(c.cmd(b"n NAMESPACE"),
                         b'* NAMESPACE (("" "/")) NIL NIL\r\nn OK NAMESPACE command completed\r\n')


class IDTests(IMAPTestCase):
    """RFC 2971, in any state."""

    def test_id(self):
        c = self.client()
        reply = b'* ID ("name" "mailsrv" "version" "0.1.0")\r\na OK ID completed\r\n'
        self.assertEqual(c.cmd(b'a ID ("name" "mutt" "version" "2.2")'), reply)
        c.login()
        self.assertEqual(c.cmd(b"a ID NIL"), reply)
        self.assertEqual(c.cmd(b"b ID"), b"b BAD Syntax error: Missing argument\r\n")
        self.assertEqual(c.cmd(b"b ID foo"),
                         b"b BAD Syntax error: Expected NIL or a parenthesized list\r\n")


class EnableTests(IMAPTestCase):
    """RFC 5161."""

    def test_enable(self):
        c = self.client()
        self.assertEqual(c.cmd(b"a ENABLE CONDSTORE"),
                         b"a BAD Command not valid in this state\r\n")
        c.login()
        self.assertEqual(c.cmd(b"a ENABLE QRESYNC CONDSTORE"),
                         b"* ENABLED CONDSTORE\r\na OK ENABLE completed\r\n")
        self.assertEqual(c.cmd(b"b ENABLE CONDSTORE"),
                         b"* ENABLED\r\nb OK ENABLE completed\r\n")
        self.assertEqual(c.cmd(b"c ENABLE"), b"c BAD Syntax: ENABLE capability...\r\n")


class LiteralPlusTests(IMAPTestCase):
    """RFC 7888: no continuation request for {N+}."""

    def test_login_and_append(self):
        c = self.client()
        reply = c.send(b"a LOGIN {18+}\r\nalice@example.test {6+}\r\nsecret\r\n")
        self.assertTrue(reply.startswith(b"a OK [CAPABILITY"), reply)
        self.assertEqual(
            c.send(b"b APPEND INBOX (\\Seen) {14+}\r\nSubject: x\r\n\r\n\r\n"),
            b"b OK [APPENDUID 1795000000 1] APPEND completed\r\n",
        )
        self.assertEqual(opened(self.store, ALICE).message(1).path.read_bytes(),
                         b"Subject: x\r\n\r\n")
        # a synchronizing literal still gets its continuation
        self.assertEqual(c.cmd(b"c APPEND INBOX {3}"), b"+ Ready for 3 octets of data\r\n")

    def test_refused_literal_closes(self):
        c = self.client()
        c.login()
        self.assertEqual(
            c.cmd(b"a APPEND INBOX {999999999999+}"),
            b"a BAD Literal refused: [TOOBIG] Message larger than 36700160 bytes\r\n"
            b"* BYE Cannot read the rest of that command\r\n",
        )
        self.assertTrue(c.transport.disconnecting)


class SpecialUseTests(IMAPTestCase):
    """RFC 6154: Drafts, Sent, Trash and Junk exist from the first login."""

    def test_created_subscribed_and_listed(self):
        self.assertEqual(self.store.folders(ALICE), ["INBOX"])
        c = self.client()
        c.login()
        self.assertEqual(
            c.cmd(b'l LIST "" "*"'),
            b'* LIST () "/" "INBOX"\r\n* LIST (\\Drafts) "/" "Drafts"\r\n'
            b'* LIST (\\Junk) "/" "Junk"\r\n* LIST (\\Sent) "/" "Sent"\r\n'
            b'* LIST (\\Trash) "/" "Trash"\r\nl OK LIST completed\r\n',
        )
        self.assertEqual(self.store.subscriptions(ALICE),
                         ["INBOX", "Drafts", "Sent", "Trash", "Junk"])
        # deleted, it comes back at the next login; others are left alone
        c.cmd(b"d DELETE Trash")
        c.cmd(b"u UNSUBSCRIBE Sent")
        self.client().login()
        self.assertEqual(self.store.subscriptions(ALICE),
                         ["INBOX", "Drafts", "Junk", "Trash"])


class KeywordTests(IMAPTestCase):
    def test_keywords_stored_listed_searched_and_kept(self):
        c = self.selected(MESSAGE, MESSAGE)
        # the new keywords are announced before the FETCH that shows them
        self.assertEqual(c.cmd(b"a STORE 1 +FLAGS ($Label1 Work)"),
                         b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1 Work)\r\n"
                         b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft "
                         b"$Label1 Work \\*)] Limited\r\n"
                         b"* 1 FETCH (FLAGS ($Label1 Work))\r\na OK STORE completed\r\n")
        self.assertEqual(c.cmd(b"b SEARCH KEYWORD Work"), b"* SEARCH 1\r\nb OK SEARCH completed\r\n")
        self.assertEqual(c.cmd(b"c SEARCH UNKEYWORD $Label1"),
                         b"* SEARCH 2\r\nc OK SEARCH completed\r\n")
        self.store = self.server.store = MailStore(self.root / "mail", self.clock)  # restart
        c = self.selected()
        reply = c.cmd(b"s SELECT INBOX")
        self.assertIn(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1 Work)\r\n",
                      reply)
        self.assertIn(b"[PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft "
                      b"$Label1 Work \\*)]", reply)
        self.assertEqual(c.cmd(b"f FETCH 1 FLAGS"),
                         b"* 1 FETCH (FLAGS ($Label1 Work))\r\nf OK FETCH completed\r\n")

    def test_append_with_keyword_and_bare_lf(self):
        c = self.client()
        c.login()
        c.cmd(b"a APPEND INBOX ($Draft \\Seen) {22}")
        self.assertEqual(c.send(b"Subject: x\n\nline\nend\r\n\r\n"),
                         b"a OK [APPENDUID 1795000000 1] APPEND completed\r\n")
        info = opened(self.store, ALICE).message(1)
        self.assertEqual(info.flags, {"$Draft", "\\Seen"})
        self.assertEqual(info.path.read_bytes(), b"Subject: x\r\n\r\nline\r\nend\r\n")
        self.assertEqual(info.size, 25)


class CondstoreTests(IMAPTestCase):
    """RFC 7162 CONDSTORE."""

    def test_select_fetch_and_store(self):
        c = self.selected(MESSAGE, MESSAGE, MESSAGE)
        reply = c.cmd(b"s SELECT INBOX (CONDSTORE)")
        self.assertIn(b"* OK [HIGHESTMODSEQ 3] Highest\r\n", reply)
        self.assertEqual(
            c.cmd(b"f FETCH 1:* (UID MODSEQ)"),
            b"* 1 FETCH (UID 1 MODSEQ (1))\r\n* 2 FETCH (UID 2 MODSEQ (2))\r\n"
            b"* 3 FETCH (UID 3 MODSEQ (3))\r\nf OK FETCH completed\r\n",
        )
        self.assertEqual(c.cmd(b"a STORE 2 +FLAGS.SILENT (\\Seen)"),
                         b"* 2 FETCH (MODSEQ (4))\r\na OK STORE completed\r\n")
        self.assertEqual(
            c.cmd(b"b UID FETCH 1:* (FLAGS) (CHANGEDSINCE 3)"),
            b"* 2 FETCH (FLAGS (\\Seen) MODSEQ (4) UID 2)\r\nb OK FETCH completed\r\n",
        )
        self.assertEqual(
            c.cmd(b"c STORE 1:3 (UNCHANGEDSINCE 3) +FLAGS (\\Flagged)"),
            b"* 1 FETCH (FLAGS (\\Flagged) MODSEQ (5))\r\n"
            b"* 3 FETCH (FLAGS (\\Flagged) MODSEQ (6))\r\n"
            b"c OK [MODIFIED 2] Conditional STORE failed\r\n",
        )
        self.assertEqual(
            c.cmd(b"d UID STORE 2 (UNCHANGEDSINCE 1) FLAGS ()"),
            b"d OK [MODIFIED 2] Conditional STORE failed\r\n",
        )
        self.assertEqual(opened(self.store, ALICE).message(2).flags, {"\\Seen"})
        self.assertEqual(c.cmd(b"e STORE 1 (FOO 1) FLAGS ()"),
                         b"e BAD Syntax error: Unknown STORE modifier\r\n")

    def test_search_modseq_and_status(self):
        c = self.selected(MESSAGE, MESSAGE, MESSAGE)
        c.cmd(b"a STORE 1 +FLAGS.SILENT (\\Seen)")
        # the first command using MODSEQ enables CONDSTORE (RFC 7162 3.1)
        self.assertEqual(c.cmd(b"s SEARCH MODSEQ 3"),
                         b"* OK [HIGHESTMODSEQ 4] Highest\r\n"
                         b"* SEARCH 1 3 (MODSEQ 4)\r\ns OK SEARCH completed\r\n")
        self.assertEqual(c.cmd(b'u UID SEARCH MODSEQ "/flags/\\\\draft" all 4'),
                         b"* SEARCH 1 (MODSEQ 4)\r\nu OK SEARCH completed\r\n")
        self.assertEqual(c.cmd(b"n SEARCH MODSEQ 5"), b"* SEARCH\r\nn OK SEARCH completed\r\n")
        self.assertEqual(c.cmd(b"t STATUS INBOX (HIGHESTMODSEQ MESSAGES)"),
                         b"* STATUS INBOX (HIGHESTMODSEQ 4 MESSAGES 3)\r\nt OK STATUS complete\r\n")

    def test_enabled_sessions_hear_modseq_of_others_changes(self):
        a = self.selected(MESSAGE)
        b = self.client()
        b.login()
        b.cmd(b"e ENABLE CONDSTORE")
        b.cmd(b"s SELECT INBOX")
        a.cmd(b"x STORE 1 +FLAGS.SILENT (\\Answered)")
        self.assertEqual(b.read(), b"* 1 FETCH (FLAGS (\\Answered) MODSEQ (2))\r\n")
        self.assertEqual(b.cmd(b"f FETCH 1 FLAGS"),
                         b"* 1 FETCH (FLAGS (\\Answered) MODSEQ (2))\r\nf OK FETCH completed\r\n")

    def test_without_condstore_no_modseq(self):
        c = self.selected(MESSAGE)
        self.assertEqual(c.cmd(b"a STORE 1 +FLAGS.SILENT (\\Seen)"), b"a OK STORE completed\r\n")
        self.assertEqual(c.cmd(b"f FETCH 1 FLAGS"),
                         b"* 1 FETCH (FLAGS (\\Seen))\r\nf OK FETCH completed\r\n")
        self.assertEqual(c.cmd(b"b SELECT INBOX (QRESYNC)"),
                         b"b BAD Unknown SELECT parameter\r\n")


class SyntaxTests(unittest.TestCase):
    def test_fetch_modifiers(self):
        table = [
            (b"(FLAGS)", (b"(FLAGS)", None)),
            (b"(FLAGS) (CHANGEDSINCE 12)", (b"(FLAGS)", 12)),
            (b"FLAGS (changedsince 7)", (b"FLAGS", 7)),
            (b"(BODY[HEADER.FIELDS (FROM)])", (b"(BODY[HEADER.FIELDS (FROM)])", None)),
        ]
        for line, expected in table:
            self.assertEqual(split_fetch_modifiers(line), expected, line)

    def test_modseq_item(self):
        table = [
            (b"(FLAGS MODSEQ)", (b"(FLAGS)", True)),
            (b"(MODSEQ UID FLAGS)", (b"(UID FLAGS)", True)),
            (b"MODSEQ", (None, True)),
            (b"(modseq)", (None, True)),
            (b"(FLAGS UID)", (b"(FLAGS UID)", False)),
            (b"(X-MODSEQS)", (b"(X-MODSEQS)", False)),
        ]
        for atts, expected in table:
            self.assertEqual(take_modseq_item(atts), expected, atts)

    def test_store_modifier(self):
        self.assertEqual(split_store_modifier(b"(UNCHANGEDSINCE 9) +FLAGS (x)"),
                         (9, b"+FLAGS (x)"))
        self.assertEqual(split_store_modifier(b"FLAGS x"), (None, b"FLAGS x"))
        self.assertRaises(imap4.IllegalClientResponse, split_store_modifier, b"(X 1) FLAGS")

    def test_sequence_set(self):
        self.assertEqual(sequence_set([1, 2, 3, 5, 7, 8]), b"1:3,5,7:8")
        self.assertEqual(sequence_set([4]), b"4")


class CapabilityCoverageTests(unittest.TestCase):
    """Every advertised extension has a test class here."""

    def test_each_extension_is_tested(self):
        from mailsrv.imap.server import EXTENSIONS

        tested = {
            b"LITERAL+": LiteralPlusTests, b"ID": IDTests, b"ENABLE": EnableTests,
            b"NAMESPACE": NamespaceTests, b"UIDPLUS": UIDPlusTests, b"MOVE": MoveTests,
            b"SPECIAL-USE": SpecialUseTests, b"CONDSTORE": CondstoreTests,
            b"ESEARCH": ESearchTests, b"SEARCHRES": SearchResTests, b"SORT": SortTests,
            b"SORT=DISPLAY": SortTests, b"THREAD=REFERENCES": ThreadTests,
            b"THREAD=ORDEREDSUBJECT": ThreadTests, b"ESORT": ESortTests,
            b"MULTIAPPEND": MultiAppendTests, b"BINARY": BinaryTests,
            b"CATENATE": CatenateTests,
        }
        self.assertEqual(set(EXTENSIONS) - {b"IDLE"}, set(tested))


class ESearchTests(IMAPTestCase):
    """RFC 4731: SEARCH RETURN (MIN MAX COUNT ALL), in ESEARCH responses."""

    def test_return_options(self):
        c = self.selected(MESSAGE, MESSAGE, MESSAGE, MESSAGE, MESSAGE)
        c.cmd(b"s STORE 2 +FLAGS.SILENT (\\Deleted)")
        c.cmd(b"e EXPUNGE")
        self.assertEqual(c.cmd(b"a SEARCH RETURN (MIN COUNT) ALL"),
                         b'* ESEARCH (TAG "a") MIN 1 COUNT 4\r\na OK SEARCH completed\r\n')
        self.assertEqual(c.cmd(b"b SEARCH RETURN () ALL"),
                         b'* ESEARCH (TAG "b") ALL 1:4\r\nb OK SEARCH completed\r\n')
        # UIDs as a set, never expanded: 1,3:5 (2 was expunged)
        self.assertEqual(c.cmd(b"c UID SEARCH RETURN (ALL MAX) ALL"),
                         b'* ESEARCH (TAG "c") UID MAX 5 ALL 1,3:5\r\nc OK SEARCH completed\r\n')
        # nothing found: only COUNT says so
        self.assertEqual(c.cmd(b"d SEARCH RETURN (MIN MAX ALL COUNT) 99"),
                         b'* ESEARCH (TAG "d") COUNT 0\r\nd OK SEARCH completed\r\n')
        self.assertEqual(c.cmd(b"f UID SEARCH RETURN (MIN) DELETED"),
                         b'* ESEARCH (TAG "f") UID\r\nf OK SEARCH completed\r\n')
        self.assertEqual(c.cmd(b"g SEARCH RETURN (FOO) ALL"),
                         b"g BAD Syntax error: Unknown RETURN option\r\n")
        # without RETURN: SEARCH as ever
        self.assertEqual(c.cmd(b"h SEARCH 2:3"), b"* SEARCH 2 3\r\nh OK SEARCH completed\r\n")

    def test_rfc_4731_example(self):
        """RFC 4731 3.1: UID SEARCH RETURN (MIN MAX) and (ALL), with MODSEQ (RFC 7162 3.1.5)."""
        c = self.selected(*[MESSAGE] * 6)
        c.cmd(b"s STORE 2,5 +FLAGS.SILENT (\\Seen)")  # MODSEQ 7 and 8
        self.assertEqual(c.cmd(b"A282 SEARCH RETURN (MIN COUNT) SEEN"),
                         b'* ESEARCH (TAG "A282") MIN 2 COUNT 2\r\nA282 OK SEARCH completed\r\n')
        self.assertEqual(c.cmd(b"A283 SEARCH RETURN () UNSEEN"),
                         b'* ESEARCH (TAG "A283") ALL 1,3:4,6\r\nA283 OK SEARCH completed\r\n')
        self.assertEqual(c.cmd(b"A284 SEARCH RETURN (MIN) MODSEQ 1 SEEN"),
                         b"* OK [HIGHESTMODSEQ 8] Highest\r\n"
                         b'* ESEARCH (TAG "A284") MIN 2 MODSEQ 7\r\nA284 OK SEARCH completed\r\n')
        self.assertEqual(c.cmd(b"A285 SEARCH RETURN (MIN MAX) MODSEQ 1"),
                         b'* ESEARCH (TAG "A285") MIN 1 MAX 6 MODSEQ 6\r\n'
                         b"A285 OK SEARCH completed\r\n")


def message(subject, sender="bob@example.org", date="Mon, 23 Nov 2026 09:00:00 +0000",
            extra=""):
    return (f"From: {sender}\r\nSubject: {subject}\r\nDate: {date}\r\n{extra}\r\nbody\r\n"
            .encode())


class ReturnOptionsPropertyTests(IMAPTestCase):
    """Whatever RETURN list and C{$} a client sends, it gets one tagged answer."""

    @examples(150)
    @given(st.lists(st.sampled_from([b"MIN", b"MAX", b"ALL", b"COUNT", b"SAVE", b"min", b"FOO",
                                     b"(", b")", b"PARTIAL 1:5", b'"x"', b"NIL"]), max_size=5),
           st.sampled_from([b"", b"UID "]),
           st.sampled_from([b"SEARCH ", b"SORT "]),
           st.sampled_from([b"ALL", b"$", b"1:*", b"UID $", b"SEEN $", b"$ 1"]))
    def test_answered(self, options, uid, command, criteria):
        if not hasattr(self, "session"):
            self.session = self.selected(MESSAGE, MESSAGE, MULTIPART)
        returns = b"RETURN (" + b" ".join(options) + b") "
        if command == b"SORT ":
            returns += b"(DATE) UTF-8 "
        reply = self.session.cmd(b"a " + uid + command + returns + criteria)
        self.assertRegex(reply, rb"(^|\r\n)a (OK|NO|BAD) [^\r\n]*\r\n$")
        self.assertEqual(self.session.cmd(b"n NOOP"), b"n OK NOOP completed\r\n")


class SearchResTests(IMAPTestCase):
    """RFC 5182: RETURN (SAVE) and $, from the RFC's examples."""

    def test_save_then_fetch_store_and_copy(self):
        """Examples 1 and 2: the saved result is used by later commands, UID or not."""
        c = self.selected(MESSAGE, MESSAGE, MESSAGE, MESSAGE)
        c.cmd(b"f STORE 2,4 +FLAGS.SILENT (\\Flagged)")
        self.assertEqual(c.cmd(b"A282 SEARCH RETURN (SAVE) FLAGGED SINCE 1-Feb-1994 "
                               b'NOT FROM "Smith"'), b"A282 OK SEARCH completed\r\n")
        self.assertEqual(c.cmd(b"A283 FETCH $ (UID)"),
                         b"* 2 FETCH (UID 2)\r\n* 4 FETCH (UID 4)\r\nA283 OK FETCH completed\r\n")
        self.assertEqual(c.cmd(b"A284 UID FETCH $ (FLAGS)"),
                         b"* 2 FETCH (FLAGS (\\Flagged) UID 2)\r\n"
                         b"* 4 FETCH (FLAGS (\\Flagged) UID 4)\r\nA284 OK FETCH completed\r\n")
        self.assertEqual(c.cmd(b"A285 UID COPY $ Trash"),
                         b"A285 OK [COPYUID 1795000001 2,4 1:2] COPY completed\r\n")
        self.assertEqual(c.cmd(b"A286 SEARCH $"), b"* SEARCH 2 4\r\nA286 OK SEARCH completed\r\n")
        # an expunged message leaves $; the others get their new numbers
        c.cmd(b"s STORE 1 +FLAGS.SILENT (\\Deleted)")
        c.cmd(b"e EXPUNGE")
        self.assertEqual(c.cmd(b"A287 STORE $ -FLAGS (\\Flagged)"),
                         b"* 1 FETCH (FLAGS ())\r\n* 3 FETCH (FLAGS ())\r\n"
                         b"A287 OK STORE completed\r\n")

    def test_refining_and_min_max(self):
        """Example 3, and SAVE with MIN or MAX (section 2.4): only those are saved."""
        c = self.selected(MESSAGE, MESSAGE, MULTIPART, MESSAGE)
        self.assertEqual(c.cmd(b"A301 UID SEARCH RETURN (SAVE) SINCE 1-Jan-2004 NOT FROM Smith"),
                         b"A301 OK SEARCH completed\r\n")
        self.assertEqual(c.cmd(b"A302 UID SEARCH RETURN (SAVE MIN ALL) UID $ SMALLER 200"),
                         b'* ESEARCH (TAG "A302") UID MIN 1 ALL 1:2,4\r\n'
                         b"A302 OK SEARCH completed\r\n")
        self.assertEqual(c.cmd(b"A303 SEARCH $"), b"* SEARCH 1 2 4\r\nA303 OK SEARCH completed\r\n")
        c.cmd(b"A304 SEARCH RETURN (MAX SAVE MIN) $")
        self.assertEqual(c.cmd(b"A305 UID SEARCH UID $"),
                         b"* SEARCH 1 4\r\nA305 OK SEARCH completed\r\n")

    def test_emptied(self):
        """A NO empties $ (example 5), a BAD leaves it, SELECT empties it."""
        c = self.selected(MESSAGE, MESSAGE)
        c.cmd(b"a SEARCH RETURN (SAVE) 2")
        self.assertEqual(c.cmd(b"b SEARCH RETURN (SAVE) FROOP"),
                         b"b BAD Invalid search: unknown search key FROOP\r\n")
        self.assertEqual(c.cmd(b"c SEARCH $"), b"* SEARCH 2\r\nc OK SEARCH completed\r\n")
        self.assertEqual(c.cmd(b"E282 SEARCH RETURN (SAVE) CHARSET KOI8-R TEXT x"),
                         b"E282 NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n")
        self.assertEqual(c.cmd(b"E283 COPY $ Trash"), b"E283 OK COPY completed\r\n")
        c.cmd(b"d SEARCH RETURN (SAVE) ALL")
        c.cmd(b"s SELECT INBOX")
        self.assertEqual(c.cmd(b"e FETCH $ UID"), b"e OK FETCH completed\r\n")

    def test_dollar_only_alone(self):
        c = self.selected(MESSAGE)
        self.assertEqual(c.cmd(b"a FETCH $,1 UID"),
                         b"a BAD Syntax error: Bad message number b'$'\r\n")
        self.assertEqual(c.cmd(b"b SEARCH 1,$"),
                         b"b BAD Invalid search: bad message set b'1,$'\r\n")


class SortTests(IMAPTestCase):
    """RFC 5256 SORT and RFC 5957 SORT=DISPLAY through the protocol."""

    def test_sort(self):
        c = self.selected(
            message("Re: b", "Zed <a@x.org>", "Mon, 23 Nov 2026 10:00:00 +0000"),
            message("a", "Amy <z@x.org>", "Mon, 23 Nov 2026 09:00:00 +0000"),
            message("[list] B", "c@x.org", "Mon, 23 Nov 2026 11:00:00 +0000"))
        self.assertEqual(c.cmd(b"a SORT (SUBJECT) UTF-8 ALL"),
                         b"* SORT 2 1 3\r\na OK SORT completed\r\n")
        self.assertEqual(c.cmd(b"b SORT (REVERSE DATE) US-ASCII ALL"),
                         b"* SORT 3 1 2\r\nb OK SORT completed\r\n")
        self.assertEqual(c.cmd(b"c UID SORT (FROM) UTF-8 2:3"),
                         b"* SORT 3 2\r\nc OK SORT completed\r\n")
        self.assertEqual(c.cmd(b"d SORT (DISPLAYFROM) UTF-8 ALL"),
                         b"* SORT 2 3 1\r\nd OK SORT completed\r\n")
        self.assertEqual(c.cmd(b"e SORT (SUBJECT) UTF-8 99"), b"* SORT\r\ne OK SORT completed\r\n")
        self.assertEqual(c.cmd(b"f SORT (REVERSE) UTF-8 ALL"),
                         b"f BAD Syntax error: missing sort key\r\n")
        self.assertEqual(c.cmd(b"g SORT (SIZE) KOI8-R ALL"),
                         b"g NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n")
        self.assertEqual(c.cmd(b"h SORT (SIZE) UTF-8 FROOP"),
                         b"h BAD Invalid search: unknown search key FROOP\r\n")
        self.assertEqual(c.cmd(b"i SORT (SIZE) UTF-8"),
                         b"i BAD Invalid search: missing search criteria\r\n")
        self.assertEqual(c.cmd(b"j SORT (ARRIVAL) UTF-8 MODSEQ 2"),
                         b"* OK [HIGHESTMODSEQ 3] Highest\r\n"
                         b"* SORT 2 3 (MODSEQ 3)\r\nj OK SORT completed\r\n")


class CollectorPauseTests(unittest.TestCase):
    """SORT and THREAD run with the cycle collector off, and leave it as they found it."""

    def test_paused_and_restored(self):
        seen = []
        work = _collector_paused(lambda: seen.append(gc.isenabled()) or 1 / 0)
        self.assertTrue(gc.isenabled())
        self.assertRaises(ZeroDivisionError, work)
        self.assertEqual(seen, [False])
        self.assertTrue(gc.isenabled())
        gc.disable()
        try:
            self.assertRaises(ZeroDivisionError, work)
            self.assertFalse(gc.isenabled())
        finally:
            gc.enable()


class ESortTests(IMAPTestCase):
    """RFC 5267 ESORT: MIN and MAX are the first and last in the sort order."""

    def test_return(self):
        c = self.selected(message("b"), message("c"), message("a"), message("d"))
        self.assertEqual(c.cmd(b"a SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) UTF-8 ALL"),
                         b'* ESEARCH (TAG "a") MIN 3 MAX 4 ALL 3,1:2,4 COUNT 4\r\n'
                         b"a OK SORT completed\r\n")
        self.assertEqual(c.cmd(b"b UID SORT RETURN () (REVERSE SUBJECT) UTF-8 1:3"),
                         b'* ESEARCH (TAG "b") UID ALL 2,1,3\r\nb OK SORT completed\r\n')
        c.cmd(b"c SORT RETURN (SAVE MIN) (SUBJECT) UTF-8 ALL")
        self.assertEqual(c.cmd(b"d SEARCH $"), b"* SEARCH 3\r\nd OK SEARCH completed\r\n")


class ThreadTests(IMAPTestCase):
    """RFC 5256 THREAD through the protocol (the algorithms: tests/test_imap_sort.py)."""

    def test_thread(self):
        c = self.selected(
            message("x", extra="Message-ID: <1@x>\r\n"),
            message("Re: x", date="Mon, 23 Nov 2026 10:00:00 +0000",
                    extra="Message-ID: <2@x>\r\nIn-Reply-To: <1@x>\r\n"),
            message("other", date="Mon, 23 Nov 2026 08:00:00 +0000"),
            message("Re: x", date="Mon, 23 Nov 2026 11:00:00 +0000",
                    extra="Message-ID: <3@x>\r\nReferences: <1@x>\r\n"))
        self.assertEqual(c.cmd(b"a THREAD REFERENCES UTF-8 ALL"),
                         b"* THREAD (3)(1 (2)(4))\r\na OK THREAD completed\r\n")
        self.assertEqual(c.cmd(b"b UID THREAD ORDEREDSUBJECT US-ASCII 1:3"),
                         b"* THREAD (3)(1 2)\r\nb OK THREAD completed\r\n")
        self.assertEqual(c.cmd(b"c THREAD REFERENCES UTF-8 DELETED"),
                         b"* THREAD\r\nc OK THREAD completed\r\n")
        self.assertEqual(c.cmd(b"d THREAD REFS UTF-8 ALL"),
                         b"d BAD Unknown threading algorithm\r\n")
        self.assertEqual(c.cmd(b"e THREAD REFERENCES KOI8-R ALL"),
                         b"e NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n")
        # the algorithm alone (found by tests/test_imap_fuzz.py: a server error)
        self.assertEqual(c.cmd(b"f THREAD REFERENCES"), b"f BAD Syntax error: Missing argument\r\n")
        self.assertEqual(c.cmd(b"g SORT (DATE)"), b"g BAD Syntax error: Missing argument\r\n")
