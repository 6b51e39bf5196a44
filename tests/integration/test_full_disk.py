"""
The real server with its mail on a tiny tmpfs that fills up (issue 13,
finding 4): logins, SELECT and FETCH keep working, writes answer
NO [OVERQUOTA], and after a kill -9 the folder keeps its UIDVALIDITY and
every flag change that was acknowledged.

Mounting needs root and a kernel that lets us (CI runs as root, but maybe
in a container that may not mount): otherwise the test is skipped.
"""

import errno
import os
import re
import signal
import subprocess
import time

from twisted.trial import unittest

from tests.integration.harness import PASSWORD, MailServerProcess

ALICE = "alice@example.test"
BOB = "bob@example.test"


def mount_tmpfs(testcase, path, size):
    """Mount a tmpfs of C{size} at C{path}, unmounted at cleanup; skip if we may not."""
    if os.geteuid() != 0:
        raise unittest.SkipTest("mounting a small tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700",
                             "tmpfs", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise unittest.SkipTest(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    testcase.addCleanup(subprocess.run, ["umount", "-l", str(path)])


def fill(directory):
    """Write a file in C{directory} until the file system is full."""
    chunk = b"\0" * 4096
    with open(directory / "filler", "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                return


class FullDiskTests(unittest.TestCase):
    def setUp(self):
        self.server = MailServerProcess()
        self.mail = self.server.data_dir / "mail"
        mount_tmpfs(self, self.mail, "1m")
        self.addCleanup(self.server.cleanup)
        self.server.start()

    def imap(self, user=ALICE):
        imap = self.server.imap()
        self.addCleanup(lambda: imap.state == "LOGOUT" or imap.shutdown())
        self.assertEqual(imap.login(user, PASSWORD)[0], "OK")
        return imap

    def deliver(self, count):
        with self.server.smtp() as smtp:
            for n in range(count):
                smtp.sendmail("sender@remote.test", [ALICE], f"Subject: {n}\r\n\r\n{n}\r\n")
        deadline = time.monotonic() + 10
        while len(self.server.maildir_files()) < count:
            self.assertLess(time.monotonic(), deadline, "the mail never arrived")
            time.sleep(0.05)

    def test_reads_work_and_writes_answer_no_overquota(self):
        self.deliver(2)
        imap = self.imap()
        status, data = imap.select("INBOX")
        self.assertEqual((status, data), ("OK", [b"2"]))
        uidvalidity = imap.response("UIDVALIDITY")[1]
        fill(self.mail)

        bob = self.imap(BOB)  # his first login: it makes his special folders
        self.assertEqual(bob.select("INBOX")[0], "OK")
        self.assertEqual(imap.select("INBOX")[0], "OK")
        status, data = imap.fetch("1", "(BODY.PEEK[])")
        self.assertEqual(status, "OK")
        self.assertTrue(data[0][1].endswith(b"Subject: 0\r\n\r\n0\r\n"), data)

        # the index's last page has room for a few lines: store until it is full
        acked = []
        for n in range(1000):
            status, data = imap.store("1", "+FLAGS", f"$K{n}")
            if status != "OK":
                break
            acked.append(f"$K{n}")
        else:
            self.fail("the disk never filled up")
        self.assertEqual(data, [b"[OVERQUOTA] STORE failed: disk full"])
        status, data = imap.append("INBOX", None, None, b"Subject: big\r\n\r\n" + b"x" * 8192)
        self.assertEqual((status, data), ("NO", [b"[OVERQUOTA] APPEND failed: disk full"]))
        # (CREATE still works here: tmpfs counts pages, and directories take none)
        pop3 = self.server.pop3()
        pop3.user(ALICE)
        pop3.pass_(PASSWORD)
        self.assertEqual(pop3.stat()[0], 2)
        pop3.quit()

        self.server.stop(signal.SIGKILL)
        (self.mail / "filler").unlink()
        self.server.start()
        imap = self.imap()
        imap.select("INBOX")
        self.assertEqual(imap.response("UIDVALIDITY")[1], uidvalidity)
        flags = imap.fetch("1", "(FLAGS)")[1][0].decode()
        self.assertEqual(set(re.findall(r"\$K\d+", flags)), set(acked))
        self.assertNotIn("Traceback", self.server.log_text())
