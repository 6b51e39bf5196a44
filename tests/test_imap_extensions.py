"""
The IMAP extensions mailsrv advertises, one test class each, through the
protocol: exact bytes in, exact replies out. (tests/integration/
test_imap_clients.py drives the same extensions with imaplib against the
real server.)
"""

import dataclasses
import gc

from hypothesis import given
from hypothesis import strategies as st
from twisted.mail import imap4
from twisted.trial import unittest

from mailsrv.imap import listing, thread
from mailsrv.imap.mailbox import _collector_paused
from mailsrv.imap.syntax import (
    sequence_set,
    split_fetch_modifiers,
    split_store_modifier,
    take_modseq_item,
)
from mailsrv.store.delivery import deliver_file
from mailsrv.store.mailstore import MailStore
from tests.fuzzing import examples
from tests.helpers import opened
from tests.test_imap import ALICE, MESSAGE, MULTIPART, IMAPTestCase, deliver
from tests.test_imap_append import BinaryTests, CatenateTests, MultiAppendTests


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
        self.assertEqual(c.cmd(b"a ENABLE X-UNKNOWN CONDSTORE"),
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
            b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'
            b'* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"\r\n'
            b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"\r\n'
            b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n'
            b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"\r\nl OK LIST completed\r\n',
        )
        self.assertEqual(self.store.subscriptions(ALICE),
                         ["INBOX", "Drafts", "Sent", "Trash", "Junk"])
        # deleted, it comes back at the next login; others are left alone
        c.cmd(b"d DELETE Trash")
        c.cmd(b"u UNSUBSCRIBE Sent")
        self.client().login()
        self.assertEqual(self.store.subscriptions(ALICE),
                         ["INBOX", "Drafts", "Trash", "Junk"])


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
        self.store = MailStore(self.root / "mail", self.clock)  # restart
        self.server = dataclasses.replace(self.server, store=self.store)
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
                         b'* STATUS "INBOX" (HIGHESTMODSEQ 4 MESSAGES 3)\r\nt OK STATUS complete\r\n')

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
        self.assertEqual(c.cmd(b"b SELECT INBOX (X-UNKNOWN)"),
                         b"b BAD Unknown SELECT parameter\r\n")


def rfc5258_folders(store):
    """
    RFC 5258 section 5's mailboxes: Fruit, Fruit/Apple, Fruit/Banana, Tofu,
    Vegetable, Vegetable/Broccoli, Vegetable/Corn; subscribed Fruit/Banana,
    Fruit/Peach (which does not exist), Vegetable, Vegetable/Broccoli.
    """
    for name in ("Fruit/Apple", "Fruit/Banana", "Tofu", "Vegetable/Broccoli", "Vegetable/Corn"):
        store.create_folder(ALICE, name)
    for name in ("Fruit/Banana", "Fruit/Peach", "Vegetable", "Vegetable/Broccoli"):
        store.subscribe(ALICE, name)


class ListExtendedTests(IMAPTestCase):
    """RFC 5258 (section 5's examples), with RFC 6154's SPECIAL-USE options."""

    def setUp(self):
        super().setUp()
        self.c = self.client()
        self.c.login()
        rfc5258_folders(self.store)

    def test_plain_list(self):
        self.assertEqual(
            self.c.cmd(b'A01 LIST "" "*"'),
            b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'
            b'* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"\r\n'
            b'* LIST (\\HasChildren) "/" "Fruit"\r\n'
            b'* LIST (\\HasNoChildren) "/" "Fruit/Apple"\r\n'
            b'* LIST (\\HasNoChildren) "/" "Fruit/Banana"\r\n'
            b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"\r\n'
            b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n'
            b'* LIST (\\HasNoChildren) "/" "Tofu"\r\n'
            b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"\r\n'
            b'* LIST (\\HasChildren) "/" "Vegetable"\r\n'
            b'* LIST (\\HasNoChildren) "/" "Vegetable/Broccoli"\r\n'
            b'* LIST (\\HasNoChildren) "/" "Vegetable/Corn"\r\n'
            b'A01 OK LIST completed\r\n')

    def test_subscribed_lists_names_that_do_not_exist(self):
        self.assertEqual(
            self.c.cmd(b'A02 LIST (SUBSCRIBED) "" "*"'),
            b'* LIST (\\Subscribed \\HasNoChildren) "/" "INBOX"\r\n'
            b'* LIST (\\Subscribed \\HasNoChildren \\Drafts) "/" "Drafts"\r\n'
            b'* LIST (\\Subscribed \\HasNoChildren) "/" "Fruit/Banana"\r\n'
            b'* LIST (\\NonExistent \\Subscribed \\HasNoChildren) "/" "Fruit/Peach"\r\n'
            b'* LIST (\\Subscribed \\HasNoChildren \\Junk) "/" "Junk"\r\n'
            b'* LIST (\\Subscribed \\HasNoChildren \\Sent) "/" "Sent"\r\n'
            b'* LIST (\\Subscribed \\HasNoChildren \\Trash) "/" "Trash"\r\n'
            b'* LIST (\\Subscribed \\HasChildren) "/" "Vegetable"\r\n'
            b'* LIST (\\Subscribed \\HasNoChildren) "/" "Vegetable/Broccoli"\r\n'
            b'A02 OK LIST completed\r\n')

    def test_children_and_subscribed_return_options(self):
        self.assertEqual(
            self.c.cmd(b'A03 LIST () "" "%" RETURN (CHILDREN subscribed)'),
            b'* LIST (\\Subscribed \\HasNoChildren) "/" "INBOX"\r\n'
            b'* LIST (\\Subscribed \\HasNoChildren \\Drafts) "/" "Drafts"\r\n'
            b'* LIST (\\HasChildren) "/" "Fruit"\r\n'
            b'* LIST (\\Subscribed \\HasNoChildren \\Junk) "/" "Junk"\r\n'
            b'* LIST (\\Subscribed \\HasNoChildren \\Sent) "/" "Sent"\r\n'
            b'* LIST (\\HasNoChildren) "/" "Tofu"\r\n'
            b'* LIST (\\Subscribed \\HasNoChildren \\Trash) "/" "Trash"\r\n'
            b'* LIST (\\Subscribed \\HasChildren) "/" "Vegetable"\r\n'
            b'A03 OK LIST completed\r\n')

    def test_recursivematch_childinfo(self):
        """A parent is listed for a subscribed child no pattern matches."""
        self.assertEqual(
            self.c.cmd(b'A04 LIST (SUBSCRIBED RECURSIVEMATCH) "" ("Fruit" "Tofu" "Vegetable")'),
            b'* LIST (\\HasChildren) "/" "Fruit" ("CHILDINFO" ("SUBSCRIBED"))\r\n'
            b'* LIST (\\Subscribed \\HasChildren) "/" "Vegetable" ("CHILDINFO" ("SUBSCRIBED"))\r\n'
            b'A04 OK LIST completed\r\n')
        # a child the patterns match is listed itself: no CHILDINFO
        self.assertEqual(
            self.c.cmd(b'A05 LIST (SUBSCRIBED RECURSIVEMATCH) "" "Fruit*"'),
            b'* LIST (\\Subscribed \\HasNoChildren) "/" "Fruit/Banana"\r\n'
            b'* LIST (\\NonExistent \\Subscribed \\HasNoChildren) "/" "Fruit/Peach"\r\n'
            b'A05 OK LIST completed\r\n')

    def test_several_patterns_each_name_once(self):
        self.assertEqual(
            self.c.cmd(b'A06 LIST "" ("INBOX" "Fruit/*" "*/Banana" Tofu)'),
            b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'
            b'* LIST (\\HasNoChildren) "/" "Fruit/Apple"\r\n'
            b'* LIST (\\HasNoChildren) "/" "Fruit/Banana"\r\n'
            b'* LIST (\\HasNoChildren) "/" "Tofu"\r\n'
            b'A06 OK LIST completed\r\n')

    def test_special_use_options(self):
        """RFC 6154 section 3."""
        self.assertEqual(
            self.c.cmd(b'A07 LIST (SPECIAL-USE) "" "*"'),
            b'* LIST (\\HasNoChildren \\Drafts) "/" "Drafts"\r\n'
            b'* LIST (\\HasNoChildren \\Junk) "/" "Junk"\r\n'
            b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n'
            b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"\r\n'
            b'A07 OK LIST completed\r\n')
        self.assertEqual(
            self.c.cmd(b'A08 LIST "" "S%" RETURN (SPECIAL-USE)'),
            b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\nA08 OK LIST completed\r\n')

    def test_empty_pattern(self):
        """Only a plain LIST asks for the delimiter with "" (RFC 5258 3)."""
        self.assertEqual(self.c.cmd(b'A09 LIST "" ""'),
                         b'* LIST (\\Noselect) "/" ""\r\nA09 OK LIST completed\r\n')
        self.assertEqual(self.c.cmd(b'A10 LIST () "" ""'), b"A10 OK LIST completed\r\n")
        self.assertEqual(self.c.cmd(b'A11 LIST "" ("")'), b"A11 OK LIST completed\r\n")

    def test_parent_made_by_another_program(self):
        """A folder whose parent does not exist: the parent where % stops."""
        (self.store.maildir(ALICE) / ".Lost.Found" / "cur").mkdir(parents=True)
        self.assertEqual(self.c.cmd(b'B1 LIST "" "L%"'),
                         b'* LIST (\\Noselect \\HasChildren) "/" "Lost"\r\n'
                         b'B1 OK LIST completed\r\n')
        self.assertEqual(self.c.cmd(b'B2 LIST "" "L*" RETURN (CHILDREN)'),
                         b'* LIST (\\HasNoChildren) "/" "Lost/Found"\r\n'
                         b'B2 OK LIST completed\r\n')
        self.assertEqual(self.c.cmd(b'B3 LIST () "" "Lost"'),
                         b'* LIST (\\NonExistent \\HasChildren) "/" "Lost"\r\n'
                         b'B3 OK LIST completed\r\n')

    def test_bad_options(self):
        for line, why in [
            (b'LIST (RECURSIVEMATCH) "" "%"', b"RECURSIVEMATCH needs another selection "
                                              b"option than REMOTE"),
            (b'LIST (REMOTE RECURSIVEMATCH) "" "%"', b"RECURSIVEMATCH needs another "
                                                     b"selection option than REMOTE"),
            (b'LIST (imaptest) "" ""', b"Unknown LIST selection option IMAPTEST"),
            (b'LIST "" "" RETURN (imaptest)', b"Unknown LIST return option IMAPTEST"),
            (b'LIST "" % RETURN (STATUS)', b"Expected STATUS (items)"),
            (b'LIST "" % RETURN (STATUS (MESSAGES FOO))', b"Unknown STATUS item FOO"),
            (b'LIST "" % RETURN (STATUS ())', b"Expected STATUS items"),
            (b'LIST "" % RETURN CHILDREN', b"Expected RETURN (options)"),
            (b'LIST "" % FOO (CHILDREN)', b"Expected RETURN (options)"),
            (b'LIST ((SUBSCRIBED)) "" %', b"Unexpected list in selection options"),
            (b'LIST "" ("a" (b))', b"Expected mailbox patterns"),
            (b'LIST "" ()', b"Expected mailbox patterns"),
            (b'LIST "" ("a"', b"Mismatched parenthesis"),
        ]:
            self.assertEqual(self.c.cmd(b"x " + line), b"x BAD Syntax error: " + why + b"\r\n",
                             line)

    def test_remote_and_repeated_options_are_harmless(self):
        self.assertEqual(
            self.c.cmd(b'A12 LIST (REMOTE subscribed SUBSCRIBED) "" "Veg*" '
                       b'RETURN (CHILDREN CHILDREN)'),
            b'* LIST (\\Subscribed \\HasChildren) "/" "Vegetable"\r\n'
            b'* LIST (\\Subscribed \\HasNoChildren) "/" "Vegetable/Broccoli"\r\n'
            b'A12 OK LIST completed\r\n')


class ChildrenTests(IMAPTestCase):
    """RFC 3348: \\HasChildren and \\HasNoChildren in every LIST response."""

    def test_plain_list(self):
        c = self.client()
        c.login()
        self.store.create_folder(ALICE, "Fruit/Apple")
        self.assertEqual(c.cmd(b'ABC LIST "" "F%"'),
                         b'* LIST (\\HasChildren) "/" "Fruit"\r\nABC OK LIST completed\r\n')
        c.cmd(b"d DELETE Fruit/Apple")
        self.assertEqual(c.cmd(b'ABD LIST "" "F%"'),
                         b'* LIST (\\HasNoChildren) "/" "Fruit"\r\nABD OK LIST completed\r\n')


class ListStatusTests(IMAPTestCase):
    """RFC 5819: STATUS of each listed mailbox in one LIST."""

    def setUp(self):
        super().setUp()
        self.store.create_folder(ALICE, "foo")
        (self.store.maildir(ALICE) / ".bar.baz" / "cur").mkdir(parents=True)
        for _ in range(3):
            deliver(self.store, MESSAGE)
        deliver(self.store, MESSAGE, folder="foo")
        self.c = self.client()
        self.c.login()
        self.c.cmd(b"s SELECT foo")
        self.c.cmd(b"f STORE 1 +FLAGS (\\Seen)")

    def test_rfc_example(self):
        self.assertEqual(
            self.c.cmd(b'A01 LIST "" ("INBOX" foo bar) RETURN (STATUS (MESSAGES UNSEEN))'),
            b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'
            b'* STATUS "INBOX" (MESSAGES 3 UNSEEN 3)\r\n'
            b'* LIST (\\NonExistent \\HasChildren) "/" "bar"\r\n'
            b'* LIST (\\HasNoChildren) "/" "foo"\r\n'
            b'* STATUS "foo" (MESSAGES 1 UNSEEN 0)\r\n'
            b'A01 OK LIST completed\r\n')

    def test_every_item(self):
        size = len(MESSAGE)
        self.assertEqual(
            self.c.cmd(b'A02 LIST "" "INBOX" RETURN (STATUS (MESSAGES RECENT UIDNEXT '
                       b'UIDVALIDITY UNSEEN HIGHESTMODSEQ SIZE APPENDLIMIT))'),
            b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'
            b'* STATUS "INBOX" (MESSAGES 3 RECENT 3 UIDNEXT 4 UIDVALIDITY 1795000001 '
            b'UNSEEN 3 HIGHESTMODSEQ 3 SIZE %d APPENDLIMIT 36700160)\r\n'
            b'A02 OK LIST completed\r\n' % (3 * size))

    def test_failed_status_still_listed(self):
        """A folder whose STATUS fails is listed without it, and the LIST is OK."""
        original = self.store.folder

        def folder(user, name="INBOX"):
            if name == "foo":
                raise OSError(5, "Input/output error")
            return original(user, name)
        self.patch(self.store, "folder", folder)
        self.assertEqual(
            self.c.cmd(b'A03 LIST "" "fo%" RETURN (STATUS (MESSAGES))'),
            b'* LIST (\\HasNoChildren) "/" "foo"\r\nA03 OK LIST completed\r\n')
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class StatusSizeTests(IMAPTestCase):
    """RFC 8438: STATUS SIZE, the sum of the messages' RFC822.SIZE."""

    def test_size(self):
        c = self.selected(MESSAGE, MULTIPART)
        self.assertEqual(c.cmd(b"A042 STATUS INBOX (UIDNEXT MESSAGES SIZE)"),
                         b'* STATUS "INBOX" (UIDNEXT 3 MESSAGES 2 SIZE %d)\r\n'
                         b"A042 OK STATUS complete\r\n" % (len(MESSAGE) + len(MULTIPART)))

    def test_size_of_bare_lf_files_counts_crlf(self):
        """A file copied from another server is counted as sent, once read (in a thread)."""
        cur = self.store.maildir(ALICE, "Trash") / "cur"
        c = self.client()
        c.login()
        (cur / "1700000000.foreign:2,S").write_bytes(b"Subject: x\n\nline\n")
        self.assertEqual(c.cmd(b"s STATUS Trash (SIZE)"),
                         b'* STATUS "Trash" (SIZE 20)\r\ns OK STATUS complete\r\n')
        c.cmd(b"e EXAMINE Trash")
        self.assertEqual(c.cmd(b"f FETCH 1 RFC822.SIZE"),
                         b"* 1 FETCH (RFC822.SIZE 20)\r\nf OK FETCH completed\r\n")

    def test_unknown_item_and_missing_mailbox(self):
        c = self.client()
        c.login()
        self.assertEqual(c.cmd(b"s STATUS INBOX (SIZE BIGNESS)"),
                         b"s BAD Syntax error: Unknown STATUS item BIGNESS\r\n")
        self.assertEqual(c.cmd(b"t STATUS Nope (SIZE)"),
                         b"t NO [NONEXISTENT] No such mailbox\r\n")


class AppendLimitTests(IMAPTestCase):
    """RFC 7889: the largest APPEND, [access] max_message_size."""

    def test_capability_status_and_toobig(self):
        c = self.client()
        self.assertIn(b" APPENDLIMIT=36700160", c.cmd(b"a CAPABILITY"))
        c.login()
        self.assertEqual(c.cmd(b"b STATUS INBOX (APPENDLIMIT)"),
                         b'* STATUS "INBOX" (APPENDLIMIT 36700160)\r\nb OK STATUS complete\r\n')
        self.assertEqual(c.cmd(b"c APPEND INBOX {36700161}"),
                         b"c NO [TOOBIG] Message larger than 36700160 bytes\r\n")


class UnselectTests(IMAPTestCase):
    """RFC 3691: leave the mailbox without expunging."""

    def test_unselect_keeps_deleted_messages(self):
        c = self.selected(MESSAGE, MESSAGE)
        c.cmd(b"s STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(c.cmd(b"u UNSELECT"), b"u OK UNSELECT completed\r\n")
        self.assertEqual(opened(self.store, ALICE).uids(), [1, 2])
        self.assertEqual(c.cmd(b"f FETCH 1 FLAGS"), b"f BAD Command not valid in this state\r\n")
        self.assertEqual(c.cmd(b"v UNSELECT"), b"v BAD Command not valid in this state\r\n")

    def test_other_sessions_changes_are_not_sent_after(self):
        a = self.selected(MESSAGE, MESSAGE)
        b = self.selected()
        a.cmd(b"s STORE 1 +FLAGS.SILENT (\\Deleted)")
        a.cmd(b"x EXPUNGE")
        self.assertEqual(b.read(), b"* 1 FETCH (FLAGS (\\Deleted))\r\n")
        # the EXPUNGE waits for b's next command, which leaves the mailbox
        self.assertEqual(b.cmd(b"u UNSELECT"), b"u OK UNSELECT completed\r\n")
        a.cmd(b"t STORE 1 +FLAGS.SILENT (\\Flagged)")
        self.assertEqual(b.cmd(b"n NOOP"), b"n OK NOOP completed\r\n")


_levels = st.sampled_from(["A", "B", "Sent", "x"])
_names = st.lists(_levels, min_size=1, max_size=3).map("/".join)


class ListingPropertyTests(unittest.TestCase):
    """L{listing.select} over random folder trees, subscriptions and options."""

    @examples(300)
    @given(st.sets(_names, max_size=8), st.sets(_names, max_size=5),
           st.lists(st.sampled_from(["*", "%", "A/%", "A*", "%/B", "x", "Sent"]),
                    min_size=1, max_size=3),
           st.booleans(), st.booleans(), st.booleans())
    def test_what_is_listed(self, folders, subscribed, patterns, by_subscription,
                            special_use, recursive):
        options = listing.ListOptions(
            subscribed=by_subscription, special_use=special_use,
            recursive=recursive and (by_subscription or special_use),
            show_subscribed=True, extended=True)
        compiled = [imap4.wildcardToRegexp(p, "/") for p in patterns]
        existing = {"INBOX"} | folders
        listed = listing.select(compiled, sorted(existing), sorted(subscribed), options)
        names = [found.name for found in listed]
        self.assertEqual(len(names), len(set(names)))
        for found in listed:
            self.assertTrue(any(p.fullmatch(found.name) for p in compiled), found)
            has_children = any(n.startswith(found.name + "/") for n in existing)
            self.assertIn("\\HasChildren" if has_children else "\\HasNoChildren",
                          found.attributes)
            self.assertEqual("\\NonExistent" in found.attributes, found.name not in existing)
            self.assertEqual("\\Subscribed" in found.attributes, found.name in subscribed)
            if found.childinfo:
                self.assertTrue(options.recursive)
                continue
            if by_subscription:
                self.assertIn(found.name, subscribed)
            if special_use:
                self.assertEqual(found.name, "Sent")
        if not (by_subscription or special_use):
            # every folder a pattern matches is listed
            self.assertLessEqual({n for n in existing
                                  if any(p.fullmatch(n) for p in compiled)}, set(names))


CLOSED = b"* OK [CLOSED] Previous mailbox closed\r\n"


class QResyncTests(IMAPTestCase):
    """RFC 7162 QRESYNC: the examples of sections 3.2.5 to 3.2.11."""

    def qresync_client(self):
        c = self.client()
        c.login()
        self.assertEqual(c.cmd(b"e ENABLE QRESYNC"),
                         b"* ENABLED QRESYNC\r\ne OK ENABLE completed\r\n")
        return c

    def folder_of(self, count):
        """INBOX with UIDs 1 to C{count}, none \\Recent."""
        source = self.root / "source"
        source.write_bytes(MESSAGE)
        deliver_file(source, [self.store.maildir(ALICE)] * count)
        folder = opened(self.store, ALICE)
        folder.claim_recent()
        return folder

    def test_enable_implies_condstore(self):
        c = self.qresync_client()
        self.assertEqual(c.cmd(b"a ENABLE CONDSTORE QRESYNC"),
                         b"* ENABLED\r\na OK ENABLE completed\r\n")
        deliver(self.store, MESSAGE)
        c.cmd(b"s SELECT INBOX")
        self.assertEqual(c.cmd(b"f FETCH 1 (FLAGS)"),
                         b"* 1 FETCH (FLAGS (\\Recent) MODSEQ (1))\r\nf OK FETCH completed\r\n")

    def test_select_resync_rfc_example(self):
        """3.2.5.1: the client's known UIDs, expunged and changed since its MODSEQ."""
        folder = self.folder_of(541)
        seen = folder.highestmodseq
        folder.delete(list(range(1, 42)) + list(range(43, 117)) + [118]
                      + list(range(120, 212)) + list(range(214, 541)))
        folder.set_flags(117, {"\\Seen", "\\Answered"})
        folder.set_flags(119, {"\\Draft", "$MDNSent"})
        folder.set_flags(541, {"\\Seen", "$Forwarded"})
        folder.set_flags(42, {"\\Seen"})  # not among the known UIDs
        c = self.qresync_client()
        reply = c.cmd(b"s SELECT INBOX (QRESYNC (%d %d 41,43:211,214:541))"
                      % (folder.uidvalidity, seen))
        self.assertTrue(reply.endswith(
            b"* OK [HIGHESTMODSEQ 546] Highest\r\n"
            b"* VANISHED (EARLIER) 41,43:116,118,120:211,214:540\r\n"
            b"* 2 FETCH (UID 117 FLAGS (\\Answered \\Seen) MODSEQ (543))\r\n"
            b"* 3 FETCH (UID 119 FLAGS ($MDNSent \\Draft) MODSEQ (544))\r\n"
            b"* 6 FETCH (UID 541 FLAGS ($Forwarded \\Seen) MODSEQ (545))\r\n"
            b"s OK [READ-WRITE] SELECT completed\r\n"), reply)
        # without known UIDs: all of 1 to UIDNEXT - 1
        reply = c.cmd(b"x EXAMINE INBOX (QRESYNC (%d %d))" % (folder.uidvalidity, seen))
        self.assertTrue(reply.startswith(CLOSED), reply)
        self.assertIn(b"* VANISHED (EARLIER) 1:41,43:116,118,120:211,214:540\r\n"
                      b"* 1 FETCH (UID 42 FLAGS (\\Seen) MODSEQ (546))\r\n", reply)
        # nothing changed since
        reply = c.cmd(b"y SELECT INBOX (QRESYNC (%d 546 1:541))" % folder.uidvalidity)
        self.assertTrue(reply.endswith(b"* OK [HIGHESTMODSEQ 546] Highest\r\n"
                                       b"y OK [READ-WRITE] SELECT completed\r\n"), reply)

    def test_other_uidvalidity_gets_a_plain_select(self):
        folder = self.folder_of(3)
        folder.delete([1])
        c = self.qresync_client()
        reply = c.cmd(b"s SELECT INBOX (QRESYNC (%d 1 1:3))" % (folder.uidvalidity + 1))
        self.assertNotIn(b"VANISHED", reply)
        self.assertNotIn(b"FETCH", reply)
        self.assertTrue(reply.endswith(b"s OK [READ-WRITE] SELECT completed\r\n"))

    def test_seq_match_data_narrows_vanished(self):
        """
        3.2.5.2: message 4 is still UID 8, message 12 was UID 24 and is now
        25: the client knows every expunge up to UID 8, so the VANISHED
        (EARLIER) starts above it, even where the history is too short.
        """
        folder = self.folder_of(30)
        folder.delete([1, 2, 3, 4] + list(range(9, 17)))
        seen = folder.highestmodseq  # the client: 5:8,17:30
        folder.delete([24])
        c = self.qresync_client()
        match = b"(4,12 8,24)"
        reply = c.cmd(b"s SELECT INBOX (QRESYNC (%d %d 1:30 %s))"
                      % (folder.uidvalidity, seen, match))
        self.assertIn(b"* VANISHED (EARLIER) 24\r\n", reply)
        # the history does not reach back: every known UID that is gone ...
        reply = c.cmd(b"t SELECT INBOX (QRESYNC (%d 0 1:30))" % folder.uidvalidity)
        self.assertIn(b"* VANISHED (EARLIER) 1:4,9:16,24\r\n", reply)
        folder._index.expunges.known_since = seen
        reply = c.cmd(b"u SELECT INBOX (QRESYNC (%d 1 1:30))" % folder.uidvalidity)
        self.assertIn(b"* VANISHED (EARLIER) 1:4,9:16,24\r\n", reply)
        # ... but those up to the last matching pair
        reply = c.cmd(b"v SELECT INBOX (QRESYNC (%d 1 1:30 %s))"
                      % (folder.uidvalidity, match))
        self.assertIn(b"* VANISHED (EARLIER) 9:16,24\r\n", reply)
        # ranges pair up one by one: 1:4 is 5:8, all still there
        reply = c.cmd(b"w SELECT INBOX (QRESYNC (%d 1 1:30 (1:4,12 5:8,24)))"
                      % folder.uidvalidity)
        self.assertIn(b"* VANISHED (EARLIER) 9:16,24\r\n", reply)
        # a first pair that no longer holds narrows nothing
        reply = c.cmd(b"x SELECT INBOX (QRESYNC (%d 1 1:30 (1 1)))" % folder.uidvalidity)
        self.assertIn(b"* VANISHED (EARLIER) 1:4,9:16,24\r\n", reply)

    def test_bad_parameters(self):
        self.folder_of(2)
        c = self.client()
        c.login()
        self.assertEqual(c.cmd(b"s SELECT INBOX (QRESYNC (1 1))"),
                         b"s BAD QRESYNC is not enabled\r\n")
        c.cmd(b"e ENABLE QRESYNC")
        for params, error in [
            (b"(QRESYNC)", b"QRESYNC needs (uidvalidity modseq ...)"),
            (b"(QRESYNC (1))", b"QRESYNC needs (uidvalidity modseq ...)"),
            (b"(QRESYNC (0 1))", b"QRESYNC UIDVALIDITY out of range"),
            (b"(QRESYNC (1 99999999999999999999))", b"MODSEQ out of range"),
            (b"(QRESYNC (1 1 1:*))", b"QRESYNC sets may not hold *"),
            (b"(QRESYNC (1 1 1:x))", b"Bad message number b'1:x'"),
            (b"(QRESYNC (1 1 1:5 (1:2 3)))",
             b"QRESYNC sequence match data: the two sets differ in size"),
            (b"(QRESYNC (1 1 1:5 (1:2)))",
             b"QRESYNC sequence match data is (sequence-set uid-set)"),
            (b"(QRESYNC (1 1 1:5 (1 1) x))", b"QRESYNC has too many arguments"),
            (b"(QRESYNC (1 1) QRESYNC (1 1))", b"Unknown SELECT parameter"),
        ]:
            self.assertEqual(c.cmd(b"s SELECT INBOX " + params),
                             b"s BAD " + error + b"\r\n", params)
        self.assertTrue(c.cmd(b"s SELECT INBOX (QRESYNC (1 1 (1 1)) CONDSTORE)").endswith(
            b"\r\ns OK [READ-WRITE] SELECT completed\r\n"))

    def test_uid_fetch_vanished(self):
        """3.2.6: UID FETCH ... (CHANGEDSINCE m VANISHED)."""
        folder = self.folder_of(12)
        c = self.qresync_client()
        c.cmd(b"s SELECT INBOX")
        folder.delete([3, 4, 5, 10])  # 13
        folder.set_flags(6, {"\\Seen"})  # 14
        c.cmd(b"n NOOP")
        self.assertEqual(
            c.cmd(b"f UID FETCH 4:* (FLAGS) (CHANGEDSINCE 12 VANISHED)"),
            b"* VANISHED (EARLIER) 4:5,10\r\n"
            b"* 3 FETCH (FLAGS (\\Seen) MODSEQ (14) UID 6)\r\nf OK FETCH completed\r\n")
        self.assertEqual(c.cmd(b"g UID FETCH 1:* (FLAGS) (CHANGEDSINCE 14 VANISHED)"),
                         b"g OK FETCH completed\r\n")
        self.assertEqual(c.cmd(b"h FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)"),
                         b"h BAD VANISHED is for UID FETCH\r\n")
        self.assertEqual(c.cmd(b"i UID FETCH 1:* (FLAGS) (VANISHED)"),
                         b"i BAD Syntax error: VANISHED needs CHANGEDSINCE\r\n")
        other = self.selected()
        self.assertEqual(other.cmd(b"j UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)"),
                         b"j BAD QRESYNC is not enabled\r\n")

    def test_expunge_and_move_answer_vanished(self):
        """3.2.7 and 3.2.10: VANISHED with UID ranges, HIGHESTMODSEQ in the OK."""
        self.folder_of(6)
        c = self.qresync_client()
        c.cmd(b"s SELECT INBOX")
        c.cmd(b"d STORE 1:3,5 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(c.cmd(b"u UID EXPUNGE 3:6"),
                         b"* VANISHED 3,5\r\nu OK [HIGHESTMODSEQ 11] EXPUNGE completed\r\n")
        self.assertEqual(c.cmd(b"x EXPUNGE"),
                         b"* VANISHED 1:2\r\nx OK [HIGHESTMODSEQ 12] EXPUNGE completed\r\n")
        self.assertEqual(
            c.cmd(b"m MOVE 1:2 Trash"),
            b"* OK [COPYUID 1795000001 4,6 1:2] Moved\r\n"
            b"* VANISHED 4,6\r\nm OK [HIGHESTMODSEQ 13] MOVE completed\r\n")

    def test_other_sessions_expunges_are_vanished(self):
        """A concurrent expunge reaches a QRESYNC session as one VANISHED, in IDLE too."""
        a = self.selected(MESSAGE, MESSAGE, MESSAGE, MESSAGE)
        b = self.qresync_client()
        b.cmd(b"s SELECT INBOX")
        a.cmd(b"d STORE 1:3 +FLAGS.SILENT (\\Deleted)")
        b.read()
        a.cmd(b"x EXPUNGE")
        self.assertEqual(b.cmd(b"n NOOP"), b"* VANISHED 1:3\r\nn OK NOOP completed\r\n")
        b.cmd(b"i IDLE")
        a.cmd(b"d STORE 1 +FLAGS.SILENT (\\Deleted)")
        a.cmd(b"x EXPUNGE")
        self.assertEqual(b.read(), b"* 1 FETCH (FLAGS (\\Deleted) UID 4 MODSEQ (9))\r\n"
                                   b"* VANISHED 4\r\n")

    def test_every_fetch_a_change_causes_has_the_uid(self):
        """
        3.2.4 (imaptest's stress mode found it): STORE, other sessions'
        changes and a FETCH that sets \\Seen answer with UID and MODSEQ.
        """
        a = self.selected(MESSAGE, MESSAGE)
        b = self.qresync_client()
        b.cmd(b"s SELECT INBOX")
        self.assertEqual(b.cmd(b"x STORE 1 +FLAGS.SILENT (\\Answered)"),
                         b"* 1 FETCH (UID 1 MODSEQ (3))\r\nx OK STORE completed\r\n")
        a.cmd(b"y STORE 2 +FLAGS.SILENT (\\Flagged)")
        self.assertEqual(b.read(), b"* 2 FETCH (FLAGS (\\Flagged) UID 2 MODSEQ (4))\r\n")
        self.assertEqual(b.cmd(b"f FETCH 2 (BODY[HEADER.FIELDS (SUBJECT)])"),
                         b"* 2 FETCH (FLAGS (\\Flagged \\Seen) BODY[HEADER.FIELDS (Subject)] "
                         b"{24}\r\nSubject: Hello there\r\n\r\n UID 2 MODSEQ (5))\r\n"
                         b"f OK FETCH completed\r\n")

    def test_held_back_expunges_lower_highestmodseq(self):
        """
        3.2: an expunge held back during FETCH while the FETCH shows a later
        MODSEQ: the client hears of a HIGHESTMODSEQ before the expunge.
        """
        a = self.selected(MESSAGE, MESSAGE)
        b = self.qresync_client()
        b.cmd(b"s SELECT INBOX")
        a.cmd(b"d STORE 1 +FLAGS.SILENT (\\Deleted)")  # 3
        a.cmd(b"x EXPUNGE")  # 4
        a.cmd(b"f STORE 1 +FLAGS.SILENT (\\Flagged)")  # UID 2: 5
        b.transport.clear()
        self.assertEqual(
            b.cmd(b"f FETCH 2 (FLAGS)"),
            b"* 2 FETCH (FLAGS (\\Flagged) MODSEQ (5))\r\n"
            b"* OK [HIGHESTMODSEQ 3] Expunges pending\r\nf OK FETCH completed\r\n")
        self.assertEqual(b.cmd(b"n NOOP"), b"* VANISHED 1\r\nn OK NOOP completed\r\n")

    def test_closed_when_a_select_replaces_a_mailbox(self):
        """3.2.11: OK [CLOSED] before what belongs to the new mailbox."""
        c = self.selected(MESSAGE)
        reply = c.cmd(b"e EXAMINE Trash")
        self.assertTrue(reply.startswith(CLOSED + b"* FLAGS"), reply)
        self.assertEqual(c.cmd(b"c CLOSE"), b"c OK CLOSE completed\r\n")
        self.assertTrue(c.cmd(b"s SELECT INBOX").startswith(b"* FLAGS"))


class SyntaxTests(unittest.TestCase):
    def test_fetch_modifiers(self):
        table = [
            (b"(FLAGS)", (b"(FLAGS)", None, False)),
            (b"(FLAGS) (CHANGEDSINCE 12)", (b"(FLAGS)", 12, False)),
            (b"FLAGS (changedsince 7)", (b"FLAGS", 7, False)),
            (b"(BODY[HEADER.FIELDS (FROM)])", (b"(BODY[HEADER.FIELDS (FROM)])", None, False)),
            (b"(FLAGS) (CHANGEDSINCE 3 VANISHED)", (b"(FLAGS)", 3, True)),
            (b"(FLAGS)(vanished changedsince 3)", (b"(FLAGS)", 3, True)),
            (b"(BODY[HEADER.FIELDS (VANISHED)])", (b"(BODY[HEADER.FIELDS (VANISHED)])", None,
                                                   False)),
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
            b"QRESYNC": QResyncTests,
            b"ESEARCH": ESearchTests, b"SEARCHRES": SearchResTests, b"SORT": SortTests,
            b"SORT=DISPLAY": SortTests, b"THREAD=REFERENCES": ThreadTests,
            b"THREAD=ORDEREDSUBJECT": ThreadTests, b"ESORT": ESortTests,
            b"MULTIAPPEND": MultiAppendTests, b"BINARY": BinaryTests,
            b"CATENATE": CatenateTests,
            b"UNSELECT": UnselectTests, b"CHILDREN": ChildrenTests,
            b"LIST-EXTENDED": ListExtendedTests, b"LIST-STATUS": ListStatusTests,
            b"STATUS=SIZE": StatusSizeTests,
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


    def test_dates_read_once(self):
        """
        Once a SORT by date has read the messages' dates, the next reads
        no header field, even after new mail (its date is learned when
        the header cache records it), nor does a SORT by arrival or size.
        """
        c = self.selected(message("a", date="Mon, 23 Nov 2026 10:00:00 +0000"),
                          message("b", date="Mon, 23 Nov 2026 08:00:00 +0000"))
        self.assertEqual(c.cmd(b"a SORT (DATE) UTF-8 ALL"),
                         b"* SORT 2 1\r\na OK SORT completed\r\n")
        folder = opened(self.store, ALICE)
        self.patch(folder, "fields", lambda *args: self.fail("header fields read"))
        deliver(self.store, message("c", date="Mon, 23 Nov 2026 09:00:00 +0000"))
        deliver(self.store, b"Subject: no date\r\n\r\nbody\r\n")  # sent: INTERNALDATE
        c.cmd(b"n NOOP")
        self.assertEqual(c.cmd(b"b SORT (REVERSE DATE) UTF-8 ALL"),
                         b"* SORT 4 1 3 2\r\nb OK SORT completed\r\n")
        self.assertEqual(c.cmd(b"c SORT (SIZE ARRIVAL) UTF-8 ALL"),
                         b"* SORT 4 1 2 3\r\nc OK SORT completed\r\n")


class ThreadAnswerTests(IMAPTestCase):
    """A folder keeps its last THREAD answer, for exactly the same messages only."""

    def test_kept_for_the_same_messages(self):
        threaded = []

        def counted(algorithm, records):
            threaded.append(algorithm)
            return algorithms(algorithm, records)

        algorithms = thread.thread
        self.patch(thread, "thread", counted)
        c = self.selected(message("x", extra="Message-ID: <1@x>\r\n"),
                          message("Re: x", extra="Message-ID: <2@x>\r\nReferences: <1@x>\r\n"))
        first = b"* THREAD (1 2)\r\na OK THREAD completed\r\n"
        self.assertEqual(c.cmd(b"a THREAD REFERENCES UTF-8 ALL"), first)
        self.assertEqual(c.cmd(b"a THREAD REFERENCES UTF-8 ALL"), first)
        c.cmd(b"s STORE 1 +FLAGS (\\Seen)")  # the same messages
        self.assertEqual(c.cmd(b"a THREAD REFERENCES UTF-8 ALL"), first)
        self.assertEqual(len(threaded), 1)
        self.assertEqual(c.cmd(b"u UID THREAD REFERENCES UTF-8 ALL"),
                         b"* THREAD (1 2)\r\nu OK THREAD completed\r\n")
        self.assertEqual(c.cmd(b"o THREAD ORDEREDSUBJECT UTF-8 ALL"),
                         b"* THREAD (1 2)\r\no OK THREAD completed\r\n")
        self.assertEqual(len(threaded), 3)
        deliver(self.store, message("Re: x", extra="Message-ID: <3@x>\r\nReferences: <2@x>\r\n"))
        c.cmd(b"n NOOP")
        self.assertEqual(c.cmd(b"a THREAD REFERENCES UTF-8 ALL"),
                         b"* THREAD (1 2 3)\r\na OK THREAD completed\r\n")
        c.cmd(b"s STORE 1 +FLAGS (\\Deleted)")
        c.cmd(b"e EXPUNGE")
        self.assertEqual(c.cmd(b"a THREAD REFERENCES UTF-8 ALL"),
                         b"* THREAD (1 2)\r\na OK THREAD completed\r\n")
        self.assertEqual(c.cmd(b"u UID THREAD REFERENCES UTF-8 ALL"),
                         b"* THREAD (2 3)\r\nu OK THREAD completed\r\n")
        self.assertEqual(len(threaded), 6)


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
