"""
`mailsrv import` beside the running server: a Dovecot Maildir keeps its
UIDVALIDITY, UIDs, flags and keywords over IMAP, a session sees what an
import adds, and mbsync, which synced the old mailbox, fetches nothing again.
"""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from twisted.trial import unittest

from mailsrv.store.uidlist import UidList
from tests.integration.harness import PASSWORD, MailServerProcess, require_tool
from tests.integration.test_real_clients import messages

ALICE = "alice@example.test"


def write(path, data, mtime=1_600_000_000):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def maildir(path):
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def fetch_flags(imap):
    """{UID: set of flags} of the selected folder (but \\Recent: all that came are)."""
    typ, data = imap.uid("FETCH", "1:*", "(FLAGS)")
    found = {}
    for line in data:
        match = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\) UID (\d+)", line)
        uid = int(match.group(1) or match.group(4))
        flags = (match.group(2) if match.group(1) else match.group(3)).decode()
        found[uid] = set(flags.split()) - {"\\Recent"}
    return found


class ImportTests(unittest.TestCase):
    def setUp(self):
        self.server = MailServerProcess().start()
        self.addCleanup(self.server.cleanup)
        self.home = Path(tempfile.mkdtemp(prefix="mailsrv-import-"))
        self.addCleanup(shutil.rmtree, self.home, True)

    def imap(self):
        imap = self.server.imap()
        self.addCleanup(lambda: imap.state == "LOGOUT" or imap.logout())
        imap.login(ALICE, PASSWORD)
        return imap

    def dovecot_maildir(self):
        """What Dovecot leaves: a uidlist and keywords per folder, a subfolder."""
        old = maildir(self.home / "old")
        write(old / "cur" / "1600000001.M1P1.old,S=30,W=33:2,Sa",
              b"Subject: one\nFrom: a@b.test\n\nx\n")
        write(old / "cur" / "1600000002.M2P1.old,S=30:2,FRb",
              b"Subject: two\nFrom: a@b.test\n\nx\n")
        write(old / "new" / "1600000003.M3P1.old", b"Subject: three\nFrom: a@b.test\n\nx\n")
        (old / "dovecot-uidlist").write_text(
            "3 V1234567 N31 G3085f01b7f11094c501100008c4a11c1\n"
            "7 W33 :1600000001.M1P1.old,S=30,W=33\n30 :1600000002.M2P1.old,S=30\n")
        (old / "dovecot-keywords").write_text("0 $Label1\n1 Work\n")
        sub = maildir(old / ".Archive.2023")
        write(sub / "cur" / "1500000000.M1P1.old:2,S", b"Subject: old\n\nx\n")
        (sub / "dovecot-uidlist").write_text("1 2222 6\n5 1500000000.M1P1.old:2,S\n")
        return old

    def test_dovecot_maildir_while_the_server_runs(self):
        old = self.dovecot_maildir()
        out = self.server.admin("import", "maildir", str(old), "--user", ALICE).stdout
        self.assertEqual(out, "INBOX: 3 imported, 0 already there\n"
                              "Archive/2023: 1 imported, 0 already there\n")
        imap = self.imap()
        typ, data = imap.select("INBOX")
        self.assertEqual(imap.untagged_responses.get("UIDVALIDITY"), [b"1234567"])
        self.assertEqual(fetch_flags(imap), {
            7: {"\\Seen", "$Label1"},
            30: {"\\Flagged", "\\Answered", "Work"},
            31: set(),
        })
        typ, data = imap.uid("FETCH", "7", "(INTERNALDATE BODY.PEEK[])")
        self.assertIn(b"Subject: one\r\nFrom: a@b.test\r\n\r\nx\r\n", data[0][1])
        imap.select("Archive/2023")
        self.assertEqual(imap.untagged_responses.get("UIDVALIDITY"), [b"2222"])
        self.assertEqual(fetch_flags(imap), {5: {"\\Seen"}})

        again = self.server.admin("import", "maildir", str(old), "--user", ALICE).stdout
        self.assertIn("INBOX: 0 imported, 3 already there\n", again)
        self.assertIn("Archive/2023: 0 imported, 1 already there\n", again)

    def test_a_session_sees_what_an_mbox_import_adds(self):
        self.server.send("Subject: here\r\n\r\nx\r\n")
        imap = self.imap()
        imap.select("INBOX")
        mbox = self.home / "old.mbox"
        mbox.write_bytes(b"From a@b.test Tue Jan  2 03:04:05 2024\nSubject: from mbox\n"
                         b"Status: RO\n\n>From quoted\n\n")
        out = self.server.admin("import", "mbox", str(mbox), "--user", ALICE).stdout
        self.assertIn("INBOX: 1 imported, 0 already there\n", out)
        imap.noop()
        self.assertIn(b"2", imap.untagged_responses.get("EXISTS", []))
        typ, data = imap.fetch("2", "(FLAGS INTERNALDATE BODY.PEEK[])")
        self.assertIn(b"\\Seen", data[0][0])
        self.assertIn(b'"02-Jan-2024 03:04:05 +0000"', data[0][0])
        self.assertEqual(data[0][1], b"Subject: from mbox\r\n\r\nFrom quoted\r\n")

    def test_errors_name_the_file_and_exit_non_zero(self):
        old = maildir(self.home / "old")
        write(old / "cur" / "1.good", b"Subject: good\n\nx\n")
        write(old / "cur" / "2.bad", b"")
        result = self.server.admin("import", "maildir", str(old), "--user", ALICE,
                                   check=False)
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"{old}/cur/2.bad: empty (skipped)\n", result.stdout)
        self.assertIn("INBOX: 1 imported, 0 already there\n", result.stdout)
        missing = self.server.admin("import", "mbox", str(self.home / "none"), "--user",
                                    ALICE, check=False)
        self.assertEqual(missing.returncode, 1)
        self.assertIn(f"{self.home}/none: No such file or directory", missing.stdout)
        nobody = self.server.admin("import", "mbox", str(self.home / "none"), "--user",
                                   "nobody@example.test", check=False)
        self.assertEqual(nobody.returncode, 1)
        self.assertIn("no such user", nobody.stderr)

    def test_while_the_server_is_stopped(self):
        """No server: the command imports itself, holding the data_dir lock."""
        self.server.stop()
        out = self.server.admin("import", "maildir", str(self.dovecot_maildir()), "--user",
                                ALICE).stdout
        self.assertIn("INBOX: 3 imported, 0 already there\n", out)
        self.server.start()
        imap = self.imap()
        imap.select("INBOX")
        self.assertEqual(imap.untagged_responses.get("UIDVALIDITY"), [b"1234567"])
        self.assertEqual(sorted(fetch_flags(imap)), [7, 30, 31])


class MbsyncAfterMoveTests(unittest.TestCase):
    """
    A user's mbsync synced the old server; the mailbox moves here (as a
    Dovecot Maildir with the old UIDVALIDITY and UIDs); mbsync, pointed at
    the new server, fetches nothing again. The old server is this one
    before its mailbox is wiped: its folder becomes the Dovecot Maildir.
    """

    def setUp(self):
        self.server = MailServerProcess().start()
        self.addCleanup(self.server.cleanup)
        self.home = Path(tempfile.mkdtemp(prefix="mailsrv-import-"))
        self.addCleanup(shutil.rmtree, self.home, True)

    def send(self, subject):
        self.server.send(f"From: s@remote.test\r\nSubject: {subject}\r\n\r\ntext\r\n")

    def mbsync(self):
        (self.home / "mail").mkdir(exist_ok=True)
        rc = self.home / "mbsyncrc"
        rc.write_text(
            f"IMAPAccount test\nHost 127.0.0.1\nPort {self.server.ports['imaps']}\n"
            f'User {ALICE}\nPass "{PASSWORD}"\nSSLType IMAPS\n'
            f"CertificateFile {self.server.dir / 'tls' / 'cert.pem'}\n\n"
            "IMAPStore remote\nAccount test\n\n"
            f"MaildirStore local\nPath {self.home}/mail/\nInbox {self.home}/mail/INBOX\n\n"
            "Channel sync\nFar :remote:\nNear :local:\nPatterns INBOX\nCreate Near\n"
            "SyncState *\n")
        env = {**os.environ, "HOME": str(self.home)}
        env.pop("PYTHONPATH", None)
        run = subprocess.run(["mbsync", "-c", str(rc), "-a"], capture_output=True, text=True,
                             timeout=120, env=env, cwd=self.home)
        self.assertEqual(run.returncode, 0, f"mbsync:\n{run.stdout}\n{run.stderr}")
        return run

    def as_dovecot_maildir(self, inbox, target):
        """The server's INBOX as Dovecot would have it: files, uidlist, keywords."""
        index = UidList(inbox / UidList.FILENAME)
        entries = index.load()
        maildir(target)
        lines = [f"3 V{index.uidvalidity} N{index.uidnext} G0\n"]
        for name in os.listdir(inbox / "cur"):
            shutil.copy2(inbox / "cur" / name, target / "cur" / name)
        for key, (uid, *_rest) in sorted(entries.items(), key=lambda item: item[1][0]):
            lines.append(f"{uid} :{key}\n")
        (target / "dovecot-uidlist").write_text("".join(lines))
        return index.uidvalidity

    def test_mbsync_does_not_download_again(self):
        require_tool(self, "mbsync")
        for subject in ("one", "two", "three"):
            self.send(subject)
        imap = self.server.imap()
        imap.login(ALICE, PASSWORD)
        imap.select("INBOX")
        imap.store("2", "+FLAGS", "(\\Seen \\Flagged)")
        imap.logout()
        self.mbsync()
        local = self.home / "mail" / "INBOX"
        before = sorted(p.name for sub in ("cur", "new") for p in (local / sub).iterdir())
        self.assertEqual(len(before), 3)

        inbox = self.server.data_dir / "mail" / "example.test" / "alice"
        uidvalidity = self.as_dovecot_maildir(inbox, self.home / "old")
        self.server.stop()
        shutil.rmtree(inbox)  # the new server: an empty mailbox
        self.server.start()
        out = self.server.admin("import", "maildir", str(self.home / "old"), "--user",
                                ALICE).stdout
        self.assertIn("INBOX: 3 imported, 0 already there\n", out)

        run = self.mbsync()
        after = sorted(p.name for sub in ("cur", "new") for p in (local / sub).iterdir())
        self.assertEqual(after, before, run.stdout + run.stderr)  # nothing fetched again
        state = (local / ".mbsyncstate").read_text()
        self.assertIn(f"FarUidValidity {uidvalidity}", state)

        self.send("four")  # and new mail comes as usual
        self.mbsync()
        self.assertEqual(set(messages(local)), {"one", "two", "three", "four"})
