"""
`mailsrv import`: another server's Maildir (Dovecot's, with its uidlist and
keywords) or mbox into a user's folders (mailsrv/store/importer.py).
"""

import calendar
import os
import stat
from io import BytesIO
from pathlib import Path

from hypothesis import given, strategies as st
from twisted.internet import task
from twisted.trial import unittest

from mailsrv.store import foreign, importer
from mailsrv.store.mailstore import MailStore
from tests.fulldisk import FullDisk
from tests.fuzzing import examples
from tests.helpers import opened
from tests.test_smtp.support import run_threads_inline
from tests.test_store import Recorder

ALICE = "alice@example.test"


def message(subject, body=b"body\n"):
    return b"Subject: " + subject.encode() + b"\nFrom: x@example.org\n\n" + body


def write(path, data, mtime=1_600_000_000):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def make_maildir(root):
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return root


class ImportTestCase(unittest.TestCase):
    def setUp(self):
        self.root = Path(self.mktemp()).absolute()
        self.root.mkdir()
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.store = MailStore(self.root / "mail", self.clock)
        run_threads_inline(self)
        self.lines = []
        self.report = importer.ImportReport(self.lines.append)

    def import_maildir(self, source):
        self.successResultOf(importer.import_maildir(self.store, ALICE, str(source), self.report))

    def import_mbox(self, source, folder="INBOX"):
        self.successResultOf(
            importer.import_mbox(self.store, ALICE, str(source), folder, self.report))

    def folder(self, name="INBOX"):
        return opened(self.store, ALICE, name)

    def contents(self, name="INBOX"):
        """{subject: (uid, flags, date, bytes)} of a folder."""
        found = {}
        folder = self.folder(name)
        for info in folder.messages():
            with folder.open(info.uid) as f:
                data = f.read()
            subject = data.split(b"\r\n", 1)[0].decode().removeprefix("Subject: ")
            found[subject] = (info.uid, set(info.flags), info.internaldate, data)
        return found

    def dovecot_maildir(self):
        """A Dovecot Maildir++: INBOX with a uidlist (v3) and keywords, one subfolder."""
        source = make_maildir(self.root / "old")
        write(source / "cur" / "1600000001.M1P1.old,S=40,W=42:2,Sa", message("one"), 1_600_000_001)
        write(source / "cur" / "1600000002.M2P1.old,S=40:2,FRc", message("two"), 1_600_000_002)
        write(source / "new" / "1600000003.M3P1.old", message("three"), 1_600_000_003)
        (source / "dovecot-uidlist").write_text(
            "3 V1234567 N40 G3085f01b7f11094c501100008c4a11c1\n"
            "7 W42 :1600000001.M1P1.old,S=40,W=42\n"
            "30 G0123 :1600000002.M2P1.old,S=40\n")
        (source / "dovecot-keywords").write_text("0 $Label1\n2 Work\n")
        sub = make_maildir(source / ".Lists.Caf&AOk-")
        write(sub / "cur" / "1600000004.M4P1.old:2,T", message("four"))
        return source

    def test_dovecot_maildir(self):
        """UIDs and UIDVALIDITY from the uidlist, flags, keywords, dates, CRLF."""
        self.import_maildir(self.dovecot_maildir())
        inbox = self.contents()
        self.assertEqual(self.folder().uidvalidity, 1234567)
        self.assertEqual(inbox["one"][:3], (7, {"\\Seen", "$Label1"}, 1_600_000_001))
        self.assertEqual(inbox["two"][:3], (30, {"\\Flagged", "\\Answered", "Work"},
                                            1_600_000_002))
        # (not 31: UIDs up to N40 may have been seen, for messages since expunged)
        self.assertEqual(inbox["three"][:3], (40, set(), 1_600_000_003))
        self.assertEqual(inbox["one"][3], b"Subject: one\r\nFrom: x@example.org\r\n\r\nbody\r\n")
        self.assertEqual(self.store.folders(ALICE), ["INBOX", "Lists", "Lists/Caf\u00e9"])
        self.assertEqual({s: v[1] for s, v in self.contents("Lists/Caf\u00e9").items()},
                         {"four": {"\\Deleted"}})
        self.assertEqual(self.lines, ["INBOX: 3 imported, 0 already there",
                                      "Lists/Caf\u00e9: 1 imported, 0 already there"])
        self.assertFalse(self.report.failed)

    def test_second_run_adds_nothing(self):
        source = self.dovecot_maildir()
        self.import_maildir(source)
        write(source / "new" / "1600000009.M9P1.old", message("later"))
        del self.lines[:]
        self.import_maildir(source)
        self.assertEqual(self.lines, ["INBOX: 1 imported, 3 already there",
                                      "Lists/Caf\u00e9: 0 imported, 1 already there"])
        self.assertEqual(sorted(self.contents()), ["later", "one", "three", "two"])
        self.assertEqual(self.contents()["later"][0], 41)  # the same UIDVALIDITY: UIDs go on

    def test_uidlist_version_1(self):
        source = make_maildir(self.root / "old")
        write(source / "cur" / "100.a:2,S", message("one"))
        write(source / "cur" / "200.b", message("two"))
        (source / "dovecot-uidlist").write_text("1 555 90\n40 100.a:2,S\n50 200.b\n")
        self.import_maildir(source)
        self.assertEqual(self.folder().uidvalidity, 555)
        self.assertEqual({s: v[:2] for s, v in self.contents().items()},
                         {"one": (40, {"\\Seen"}), "two": (50, set())})
        # the old server may have given 51 to 89 to messages it expunged since
        self.assertEqual(self.folder().uidnext, 90)
        self.store = MailStore(self.root / "mail", self.clock)  # and after a restart
        self.assertEqual(self.folder().uidnext, 90)

    def test_uids_not_kept_in_a_folder_with_messages(self):
        folder = self.folder()
        self.successResultOf(folder.add(b"Subject: mine\r\n\r\nx\r\n"))
        self.import_maildir(self.dovecot_maildir())
        self.assertNotEqual(folder.uidvalidity, 1234567)
        self.assertEqual(sorted(v[0] for v in self.contents().values()), [1, 2, 3, 4])
        self.assertIn("INBOX: has messages or is open; the old UIDs are not kept, new ones "
                      "go on from 2", self.lines)

    def test_uids_not_kept_in_an_open_folder(self):
        """A session has the empty folder open: its UIDVALIDITY must not change under it."""
        folder = self.folder()
        folder.add_listener(Recorder())
        before = folder.uidvalidity
        self.import_maildir(self.dovecot_maildir())
        self.assertEqual(folder.uidvalidity, before)
        self.assertEqual(sorted(v[0] for v in self.contents().values()), [1, 2, 3])

    def test_malformed_file_is_reported_and_skipped(self):
        source = make_maildir(self.root / "old")
        write(source / "cur" / "1.good", message("good"))
        write(source / "cur" / "2.empty", b"")
        write(source / "cur" / "3.junk", b"\x00\x01 not a message\n")
        self.import_maildir(source)
        self.assertEqual(list(self.contents()), ["good"])
        self.assertTrue(self.report.failed)
        self.assertEqual(sorted(self.lines), sorted([
            f"{source}/cur/2.empty: empty (skipped)",
            f"{source}/cur/3.junk: no header field on its first line (skipped)",
            "INBOX: 1 imported, 0 already there"]))

    def test_not_a_maildir(self):
        self.import_maildir(self.root)
        self.assertTrue(self.report.failed)
        self.assertEqual(self.lines, [f"{self.root}: not a Maildir (no cur/ and new/)"])

    def mbox(self, data):
        path = self.root / "old.mbox"
        path.write_bytes(data)
        return path

    def test_mbox(self):
        """From_ dates, >From unquoting, Status headers to flags and removed, CRLF."""
        path = self.mbox(
            b"From alice@example.org Tue Jan  2 03:04:05 2024\n"
            b"Subject: one\nStatus: RO\nX-Status: AF\nX-Keywords: $Label1 Work\n"
            b"Content-Length: 40\n\n"
            b"body\n>From here\n>>From there\nFrom inside a line\n\n"
            b"From bob@example.org Wed Feb  3 04:05:06 2021\n"
            b"Subject: two\nX-Status: DT\n\nsecond\n\n")
        self.import_mbox(path, "Old")
        found = self.contents("Old")
        self.assertEqual(found["one"][1:], (
            {"\\Seen", "\\Answered", "\\Flagged", "$Label1", "Work"},
            calendar.timegm((2024, 1, 2, 3, 4, 5)),
            b"Subject: one\r\n\r\nbody\r\nFrom here\r\n>From there\r\nFrom inside a line\r\n"))
        self.assertEqual(found["two"][1:], ({"\\Deleted", "\\Draft"},
                                            calendar.timegm((2021, 2, 3, 4, 5, 6)),
                                            b"Subject: two\r\n\r\nsecond\r\n"))
        self.assertEqual(self.lines, ["Old: 2 imported, 0 already there"])
        del self.lines[:]
        self.import_mbox(path, "Old")
        self.assertEqual(self.lines, ["Old: 0 imported, 2 already there"])

    def test_mbox_folder_data_message_is_no_message(self):
        """UW-IMAP's first message holds its folder state: left out, no error."""
        path = self.mbox(
            b"From MAILER-DAEMON Tue Jan  2 03:04:05 2024\nSubject: DON'T DELETE THIS MESSAGE"
            b" -- FOLDER INTERNAL DATA\nX-IMAP: 1234 0000000002\n\nThis text is part of "
            b"the internal format of your mail folder, and is not\na real message.\n\n"
            b"From a Tue Jan  2 03:04:05 2024\nSubject: real\nX-UID: 1\n\nx\n")
        self.import_mbox(path)
        self.assertEqual({s: v[3] for s, v in self.contents().items()},
                         {"real": b"Subject: real\r\n\r\nx\r\n"})
        self.assertFalse(self.report.failed)

    def test_mbox_same_message_twice(self):
        """Two copies of one message are two messages, the second run adds neither again."""
        one = b"From a Tue Jan  2 03:04:05 2024\nSubject: same\n\nx\n\n"
        path = self.mbox(one * 2)
        self.import_mbox(path)
        self.assertEqual(len(self.folder()), 2)
        self.import_mbox(path)
        self.assertEqual(len(self.folder()), 2)

    def test_mbox_is_read_in_batches(self):
        """Never whole: each batch is stored before the next is read."""
        self.patch(importer, "BATCH_MESSAGES", 2)
        path = self.mbox(b"".join(b"From a Tue Jan  2 03:04:05 2024\nSubject: %d\n\nx\n\n" % i
                                  for i in range(5)))
        self.import_mbox(path)
        self.assertEqual(self.folder().uids(), [1, 2, 3, 4, 5])
        self.assertEqual(len((self.folder().path / importer.STATE).read_text().splitlines()), 5)

    def test_not_an_mbox(self):
        self.import_mbox(self.mbox(b"Subject: no From line\n\nx\n"))
        self.assertTrue(self.report.failed)
        self.assertEqual(self.lines, [
            f"{self.root}/old.mbox: line 1: not an mbox (no From line first)"])

    def test_full_disk_stops_the_folder_and_a_second_run_adds_the_rest(self):
        path = self.mbox(b"From a Tue Jan  2 03:04:05 2024\nSubject: one\n\nx\n\n")
        self.folder()  # INBOX exists: only the message write fails
        disk = FullDisk(self)
        disk.fill()
        self.import_mbox(path)
        self.assertTrue(self.report.failed)
        self.assertEqual(self.lines, [
            "INBOX: cannot write the folder (No space left on device); 0 imported before it "
            "stopped"])
        disk.free()
        del self.lines[:]
        self.import_mbox(path)
        self.assertEqual(self.lines, ["INBOX: 1 imported, 0 already there"])

    def test_torn_state_line(self):
        """A crash cut the state file's last line: it counts for nothing, the next starts anew."""
        path = self.mbox(b"From a Tue Jan  2 03:04:05 2024\nSubject: one\n\nx\n\n")
        self.import_mbox(path)
        state = self.folder().path / importer.STATE
        state.write_bytes(state.read_bytes() + b"abc")
        self.import_mbox(path)
        self.assertEqual(importer._read_state(state), set(state.read_text().split("\n")[:1]))


class ParserTests(unittest.TestCase):
    def test_uidlist_v3(self):
        parsed = foreign.parse_uidlist(
            "3 V99 N12 Gabc\n5 :a.b,S=3\n7 W10 S9 :c.d\nbad line\n8\n")
        self.assertEqual(parsed, foreign.UidListFile(99, 12, {"a.b,S=3": 5, "c.d": 7}))

    def test_uidlist_bad_header(self):
        for text in ("", "2 1 2", "3 N5", "1 0 5", "1 x 5"):
            self.assertRaises(foreign.ForeignError, foreign.parse_uidlist, text)

    def test_keywords(self):
        self.assertEqual(foreign.parse_keywords("0 $Junk\n1 bad(word\n25 Last\n26 Over\nx y\n"),
                         {"a": "$Junk", "z": "Last"})

    def test_mutf7(self):
        self.assertEqual(foreign.decode_mutf7("Caf&AOk-/&ZeVnLIqe-&-x"), "Caf\u00e9/\u65e5\u672c\u8a9e&x")
        self.assertEqual(foreign.decode_mutf7("bad&AB-"), "bad&AB-")

    def test_from_line_without_a_date(self):
        self.assertIsNone(foreign.from_line_date(b"From someone\n"))

    @given(st.text())
    @examples(300)
    def test_uidlist_parser_never_raises_but_foreign_error(self, text):
        try:
            parsed = foreign.parse_uidlist(text)
        except foreign.ForeignError:
            return
        self.assertTrue(all(0 < uid < 2**32 for uid in parsed.uids.values()))

    @given(st.lists(st.sampled_from(["3", "1", "V7", "N9", "G1", ":", " ", "\n", "x", "12",
                                     "0", ":a.b", "W5"])).map("".join))
    @examples(300)
    def test_uidlist_parser_on_near_misses(self, text):
        try:
            foreign.parse_uidlist(text)
        except foreign.ForeignError:
            pass

    @given(st.text())
    @examples(300)
    def test_keywords_parser_never_raises(self, text):
        for letter, keyword in foreign.parse_keywords(text).items():
            self.assertIn(letter, foreign.KEYWORD_LETTERS)
            self.assertTrue(keyword and " " not in keyword)

    @given(st.binary())
    @examples(300)
    def test_mbox_reader_never_raises_but_foreign_error(self, data):
        try:
            for found in foreign.mbox_messages(BytesIO(b"From x\n" + data), "f"):
                self.assertIsInstance(found.data, bytes)
        except foreign.ForeignError:
            self.fail("a file that starts with From is an mbox")


class ImportRequestTests(unittest.TestCase):
    """The running server's side of `mailsrv import` (L{importer.ImportRequests})."""

    def setUp(self):
        self.root = Path(self.mktemp()).absolute()
        self.root.mkdir()
        self.clock = task.Clock()
        self.store = MailStore(self.root / "mail", self.clock)
        run_threads_inline(self)
        self.requests = self.root / "import"
        self.service = importer.ImportRequests(self.requests, self.store, self.clock)

    def test_request_is_taken_done_and_reported(self):
        mbox = self.root / "old.mbox"
        mbox.write_bytes(b"From a Tue Jan  2 03:04:05 2024\nSubject: one\n\nx\n\n")
        self.service.startService()  # makes the directory
        self.addCleanup(self.service.stopService)
        name = importer.request_import(self.requests, "mbox", str(mbox), ALICE, "Old")
        self.assertEqual(stat.S_IMODE(os.stat(self.requests / f"{name}.json").st_mode) & 0o444,
                         0o444)  # (the command may be root, the server not)
        self.assertTrue((self.requests / f"{name}.json").exists())
        self.clock.advance(importer.CHECK_INTERVAL)
        self.assertEqual(sorted(p.name for p in self.requests.iterdir()),
                         [f"{name}.done", f"{name}.out"])
        self.assertEqual((self.requests / f"{name}.done").read_bytes(), b"ok")
        self.assertEqual((self.requests / f"{name}.out").read_text(),
                         "Old: 1 imported, 0 already there\n")
        self.assertEqual(len(opened(self.store, ALICE, "Old")), 1)

    def test_unreadable_request(self):
        self.requests.mkdir()
        (self.requests / "1-1.json").write_text('{"kind": 1}')
        self.successResultOf(self.service.check())
        self.assertEqual((self.requests / "1-1.done").read_bytes(), b"failed")
        self.assertEqual((self.requests / "1-1.out").read_text(),
                         "1-1: unreadable request, dropped\n")

    def test_a_folder_name_we_cannot_keep(self):
        lines = []
        report = importer.ImportReport(lines.append)
        self.successResultOf(importer.import_folder(self.store, ALICE, "a\x01b", iter(()), None,
                                                    report))
        self.assertEqual(lines, ["a\x01b: cannot be a folder here (Folder names may not contain "
                                 "control characters); not imported"])
        self.assertTrue(report.failed)

    def test_what_the_last_run_left_is_removed(self):
        self.requests.mkdir()
        for name in ("1-1.run", "1-1.out", "2-2.done", "2-2.out"):
            (self.requests / name).write_text("")
        (self.requests / "3-3.json").write_text("{}")  # a command waits for this one
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.assertEqual([p.name for p in self.requests.iterdir()], ["3-3.json"])
