"""
Users imported from Dovecot log in with their old password, and the server
stores argon2id for them at that first login.
"""

import imaplib

from twisted.trial import unittest

from mailsrv.directory.passwords import verify
from tests.integration.harness import MailServerProcess

# `doveadm pw -s SHA512-crypt -p onetestandone`
SHA512_CRYPT = ("{SHA512-CRYPT}$6$dEqUVsCirHzV8kHw$hgC0x0ufah.N0PzUVvhLEMnoww5lo.JBmeLSsRNDkgWV"
                "ylC55Gk6zA1KWsn.SiIAAIDEqHxtugGZWHl1qMex..")


class ImportedHashTests(unittest.TestCase):
    def setUp(self):
        self.server = MailServerProcess(users=())
        self.addCleanup(self.server.cleanup)
        self.users = self.server.dir / "users"

    def hash_of(self, address):
        lines = dict(line.split(":", 1) for line in self.users.read_text().splitlines())
        return lines[address]

    def test_a_dovecot_user_logs_in_over_imap_and_gets_argon2id(self):
        s = self.server
        passwd = s.dir / "dovecot-users"
        passwd.write_text(f"# Dovecot passwd-file\nbob:{SHA512_CRYPT}:5000:5000::/home/bob::\n")
        out = s.admin("import", "users", str(passwd), "--domain", "example.test").stdout
        self.assertEqual(out, "1 added, 0 kept, 0 skipped\n")
        self.assertEqual(self.hash_of("bob@example.test"), SHA512_CRYPT)
        with self.users.open("a") as f:  # by hand: start-up warns, other users still work
            f.write("old@example.test:{MD5}$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0\n")
        s.start()
        s.wait_for_log("user old@example.test: {MD5} is not accepted (unsafe)")

        with s.imap() as client:
            client.login("bob@example.test", "onetestandone")
            client.logout()
        stored = self.hash_of("bob@example.test")
        self.assertTrue(stored.startswith("$argon2id$"), stored)
        self.assertTrue(verify(stored, "onetestandone"))
        s.wait_for_log("rehashed the password of bob@example.test with argon2id")

        with s.imap() as client:  # (from the login cache, which holds the new hash)
            client.login("bob", "onetestandone")
            client.logout()
        self.assertEqual(self.hash_of("bob@example.test"), stored)
        with s.imap() as client:
            self.assertRaises(imaplib.IMAP4.error, client.login, "old@example.test", "pw")
