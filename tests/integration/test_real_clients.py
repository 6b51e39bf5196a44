"""
Real mail clients against the real server: mbsync (isync), offlineimap3,
getmail6 and mutt, as a user would run them. Each test is skipped, saying
so, when its program is not installed (.ci/run installs them).
curl sends LIST-STATUS; its mail download, and fetchmail, are in
test_mail_flow.py.
"""

import hashlib
import os
import pty
import select
import shutil
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

from twisted.trial import unittest

from tests.integration.harness import PASSWORD, MailServerProcess, require_tool

ALICE = "alice@example.test"


def flags_of(path):
    """The Maildir flag letters of a message file."""
    return path.name.rpartition(":2,")[2]


def run_in_terminal(argv, env, timeout=60):
    """Run a full-screen program on a pseudo-terminal; its exit status."""
    master, slave = pty.openpty()
    process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                               cwd=env["HOME"], start_new_session=True)
    os.close(slave)
    deadline = time.monotonic() + timeout
    screen = b""
    try:
        while time.monotonic() < deadline:  # keep the terminal drained
            if select.select([master], [], [], 1)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the program closed the terminal
                    break
                if not data:
                    break
                screen = (screen + data)[-4000:]
        else:
            raise AssertionError(f"{argv[0]} did not finish; the screen:\n{screen!r}")
        return process.wait(timeout)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()


def add_flag(path, letter):
    """Set a flag as a Maildir client does: rename the file into cur/."""
    name = path.name if ":2," in path.name else path.name + ":2,"
    os.rename(path, path.parent.parent / "cur" / (name + letter))


def messages(maildir):
    """{Subject: path} of the messages in a Maildir."""
    found = {}
    for sub in ("cur", "new"):
        for path in (Path(maildir) / sub).glob("*"):
            for line in path.read_bytes().splitlines():  # clients may store LF
                if line.lower().startswith(b"subject: "):
                    found[line[9:].decode()] = path
                    break
    return found


class RealClientTests(unittest.TestCase):
    def setUp(self):
        self.server = MailServerProcess().start()
        self.addCleanup(self.server.cleanup)
        self.home = Path(tempfile.mkdtemp(prefix="mailsrv-client-"))
        self.addCleanup(shutil.rmtree, self.home, True)
        self.cert = self.server.dir / "tls" / "cert.pem"

    def send(self, subject, to=ALICE):
        with self.server.smtp() as client:
            client.sendmail("sender@remote.test", [to],
                            f"From: sender@remote.test\r\nSubject: {subject}\r\n\r\n"
                            f"text of {subject}\r\n")

    def imap(self):
        imap = self.server.imap()
        self.addCleanup(lambda: imap.state == "LOGOUT" or imap.logout())
        imap.login(ALICE, PASSWORD)
        return imap

    def server_messages(self, folder="INBOX"):
        """{Subject: flags} of a server folder, through imaplib."""
        imap = self.imap()
        imap.select(folder, readonly=True)
        typ, data = imap.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        found = {}
        for item in data:
            if isinstance(item, tuple):
                flags = item[0].split(b"FLAGS (")[1].split(b")")[0].decode()
                subject = item[1].decode().split(":", 1)[1].strip()
                found[subject] = set(flags.split())
        imap.logout()
        return found

    def run_client(self, argv, **kw):
        # no PYTHONPATH: `trial -j` sets it to our interpreter's path, whose
        # compiled modules break the Debian Python of offlineimap and getmail
        env = {**os.environ, "HOME": str(self.home)}
        env.pop("PYTHONPATH", None)
        run = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                             env=env, cwd=self.home, **kw)
        self.assertEqual(run.returncode, 0, f"{argv[0]}:\n{run.stdout}\n{run.stderr}")
        return run

    def test_mbsync_two_way_sync_with_flags_and_moves(self):
        require_tool(self, "mbsync")
        self.send("one")
        self.send("two")
        local = self.home / "mail"
        local.mkdir()
        rc = self.home / "mbsyncrc"
        rc.write_text(
            f"IMAPAccount test\nHost 127.0.0.1\nPort {self.server.ports['imaps']}\n"
            f'User {ALICE}\nPass "{PASSWORD}"\nSSLType IMAPS\nCertificateFile {self.cert}\n\n'
            "IMAPStore remote\nAccount test\n\n"
            f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
            "Channel sync\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\n"
            "Expunge Both\nSyncState *\n"
        )
        sync = ["mbsync", "-c", str(rc), "-a"]
        self.run_client(sync)
        inbox = messages(local / "INBOX")
        self.assertEqual(set(inbox), {"one", "two"})
        self.assertTrue((local / "Trash").is_dir())  # the special-use folders came too

        # the user reads "one" locally and writes a draft
        add_flag(inbox["one"], "S")
        draft = local / "Drafts" / "cur" / "1700000000.M1P1.draft:2,D"
        draft.write_bytes(b"Subject: draft\r\n\r\nnot yet\r\n")
        # meanwhile another client flags "two" and moves "one" away
        imap = self.imap()
        imap.create("Archive")
        imap.select("INBOX")
        imap.store("2", "+FLAGS", r"(\Flagged)")
        self.run_client(sync)
        self.assertEqual(self.server_messages()["one"], {"\\Seen"})
        self.assertEqual(self.server_messages("Drafts"), {"draft": {"\\Draft"}})
        imap.uid("MOVE", "1", "Archive")
        imap.logout()
        self.run_client(sync)
        inbox = messages(local / "INBOX")
        self.assertEqual(set(inbox), {"two"})
        self.assertEqual(flags_of(inbox["two"]), "F")
        archive = messages(local / "Archive")
        self.assertEqual(set(archive), {"one"})
        self.assertEqual(flags_of(archive["one"]), "S")
        # and a local deletion reaches the server
        add_flag(archive["one"], "T")
        self.run_client(sync)
        self.assertEqual(self.server_messages("Archive"), {})

    def test_curl_lists_folders_with_their_status(self):
        """RFC 5819 as a client sends it: one LIST, every folder's counts."""
        require_tool(self, "curl")
        self.send("first")
        self.send("second")
        imap = self.imap()
        imap.create("Projects/Alpha")
        imap.append("Projects/Alpha", r"(\Seen)", None, b"Subject: alpha\r\n\r\nx\r\n")
        imap.logout()
        # curl prints only the LIST responses; its trace (-v) shows them all
        run = subprocess.run(
            ["curl", "-v", "-s", "-u", f"{ALICE}:{PASSWORD}",
             "--url", f"imap://127.0.0.1:{self.server.ports['imap']}/",
             "-X", 'LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN SIZE))'],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn('* LIST (\\HasChildren) "/" "Projects"\n', run.stdout)
        replies = [line[2:] for line in run.stderr.splitlines() if line.startswith("< * ")]
        listed = replies[replies.index('* LIST (\\HasNoChildren) "/" "INBOX"'):]
        self.assertRegex(listed[1], r'^\* STATUS "INBOX" \(MESSAGES 2 UNSEEN 2 SIZE \d+\)$')
        alpha = listed.index('* LIST (\\HasNoChildren) "/" "Projects/Alpha"')
        self.assertEqual(listed[alpha + 1],
                         '* STATUS "Projects/Alpha" (MESSAGES 1 UNSEEN 0 SIZE 21)')
        # each of the 7 folders (INBOX, 4 special, Projects, Projects/Alpha) has its STATUS
        self.assertEqual([line.split()[1] for line in listed], ["LIST", "STATUS"] * 7)

    def test_offlineimap_one_run(self):
        require_tool(self, "offlineimap")
        self.send("for offlineimap")
        imap = self.imap()  # a folder in a folder: LIST with CHILDREN attributes
        imap.create("Projects/Alpha")
        imap.append("Projects/Alpha", None, None, b"Subject: alpha\r\n\r\nx\r\n")
        imap.logout()
        der = ssl.PEM_cert_to_DER_cert(self.cert.read_text())
        rc = self.home / "offlineimaprc"
        rc.write_text(
            "[general]\naccounts = test\nmetadata = " + str(self.home / "meta") + "\n\n"
            "[Account test]\nlocalrepository = local\nremoterepository = remote\n\n"
            f"[Repository local]\ntype = Maildir\nlocalfolders = {self.home / 'mail'}\n\n"
            f"[Repository remote]\ntype = IMAP\nremotehost = 127.0.0.1\n"
            f"remoteport = {self.server.ports['imaps']}\nremoteuser = {ALICE}\n"
            f"remotepass = {PASSWORD}\nssl = yes\n"
            # the certificate names mail.example.test, not 127.0.0.1: pin it
            f"cert_fingerprint = {hashlib.sha256(der).hexdigest()}\n"
        )
        self.run_client(["offlineimap", "-o", "-u", "quiet", "-c", str(rc)])
        self.assertEqual(set(messages(self.home / "mail" / "INBOX")), {"for offlineimap"})
        self.assertEqual(set(messages(self.home / "mail" / "Projects.Alpha")), {"alpha"})

    def test_getmail_pop3_and_imap(self):
        require_tool(self, "getmail")
        self.send("for getmail")
        for kind, port in (("SimplePOP3SSLRetriever", "pop3s"),
                           ("SimpleIMAPSSLRetriever", "imaps")):
            out = self.home / f"{kind}.mbox"
            rc = self.home / f"{kind}.rc"
            rc.write_text(
                f"[retriever]\ntype = {kind}\nserver = 127.0.0.1\n"
                f"port = {self.server.ports[port]}\nusername = {ALICE}\n"
                f"password = {PASSWORD}\nca_certs = {self.cert}\n"
                "ssl_cert_hostname = mail.example.test\n\n"
                # (getmail's Maildir delivery refuses to run as root, as CI does)
                f'[destination]\ntype = MDA_external\npath = /bin/sh\n'
                f'arguments = ("-c", "cat >> {out}")\nallow_root_commands = true\n\n'
                "[options]\nread_all = true\ndelete = false\n"
            )
            self.run_client(["getmail", "--getmaildir", str(self.home), "--rcfile", str(rc)])
            self.assertIn("text of for getmail", out.read_text(), kind)
        self.assertEqual(len(self.server.maildir_files()), 1)  # kept

    def test_mutt_reads_the_inbox(self):
        require_tool(self, "mutt")
        self.send("for mutt")
        muttrc = self.home / "muttrc"
        muttrc.write_text(
            f'set folder="imaps://{ALICE}@127.0.0.1:{self.server.ports["imaps"]}/"\n'
            f'set imap_pass="{PASSWORD}"\nset spoolfile="+INBOX"\n'
            f"set certificate_file={self.cert}\nset ssl_verify_host=no\n"
            "set header_cache=\nset message_cachedir=\nset quit=yes\nset wait_key=no\n"
        )
        out = self.home / "piped"
        # mutt wants a terminal: open the INBOX, pipe every message to a
        # file, quit
        status = run_in_terminal([
            "mutt", "-F", str(muttrc), "-e",
            f"push '<tag-pattern>~A<enter><tag-prefix><pipe-message>cat >> {out}<enter>"
            "<quit>'",
        ], {**os.environ, "HOME": str(self.home), "TERM": "xterm"})
        self.assertEqual(status, 0)
        self.assertIn("text of for mutt", out.read_text())
