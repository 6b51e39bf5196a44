"""
Login protection as an attacker and the users beside them meet it: failed
logins counted across POP3, IMAP and SMTP by (IP, user) and by IP, in the
real server, with real clients bound to different loopback addresses.
"""

import base64
import imaplib
import poplib
import time

from twisted.trial import unittest

from tests.integration.harness import PASSWORD, MailServerProcess

ALICE = "alice@example.test"
BOB = "bob@example.test"
LOCKOUT = 5  # seconds: short, so the test can watch a lockout end


def plain(user, password):
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")


class LoginProtectionTests(unittest.TestCase):
    def setUp(self):
        self.server = MailServerProcess(extra={"auth": {"lockout": LOCKOUT}})
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def pop3_fails(self, source, user, password):
        client = self.server.pop3(source)
        try:
            client.user(user)
            with self.assertRaises(poplib.error_proto) as caught:
                client.pass_(password)
            return caught.exception.args[0]
        finally:
            client.quit()

    def imap_login(self, source, user, password):
        """C{"OK"}, or the server's reason for refusing."""
        client = self.server.imap(source)
        try:
            client.login(user, password)
        except imaplib.IMAP4.error as e:
            return str(e)
        finally:
            client.shutdown()
        return "OK"

    def smtp_auth(self, source, user, password):
        with self.server.smtp("submission", source) as client:
            client.ehlo("laptop.example.test")
            return client.docmd("AUTH", "PLAIN " + plain(user, password))

    def test_five_wrong_passwords_lock_out_one_user_from_one_ip(self):
        for n in range(5):
            self.assertEqual(self.pop3_fails("127.0.0.2", ALICE, f"guess {n}"),
                             b"-ERR [AUTH] Invalid user name or password")
        locked_at = time.monotonic()
        # the right password, from the same IP, by any protocol: refused
        self.assertIn("[UNAVAILABLE] Too many failed logins",
                      self.imap_login("127.0.0.2", ALICE, PASSWORD))
        self.assertEqual(self.smtp_auth("127.0.0.2", ALICE, PASSWORD),
                         (454, b"4.7.0 Too many failed logins, try again later"))
        client = self.server.pop3("127.0.0.2")
        client.user(ALICE)
        with self.assertRaises(poplib.error_proto) as caught:
            client.pass_(PASSWORD)
        self.assertEqual(caught.exception.args[0],
                         b"-ERR [SYS/TEMP] Too many failed logins, try again later")
        client.quit()
        # another user from that IP, and the same user from elsewhere: fine
        self.assertEqual(self.imap_login("127.0.0.2", BOB, PASSWORD), "OK")
        self.assertEqual(self.imap_login("127.0.0.3", ALICE, PASSWORD), "OK")
        self.assertEqual(self.smtp_auth("127.0.0.3", ALICE, PASSWORD)[0], 235)
        self.assertLess(time.monotonic() - locked_at, LOCKOUT, "the test ran too slowly")
        self.server.wait_for_log(
            "login refused (throttled): key=127.0.0.2/alice@example.test protocol=imap")
        self.server.wait_for_log(
            "login refused (throttled): key=127.0.0.2/alice@example.test protocol=smtp")
        self.server.wait_for_log(
            "login refused (throttled): key=127.0.0.2/alice@example.test protocol=pop3")
        # the lockout ends
        time.sleep(max(0, locked_at + LOCKOUT + 0.5 - time.monotonic()))
        self.assertEqual(self.imap_login("127.0.0.2", ALICE, PASSWORD), "OK")
        log = self.server.log_text()
        self.assertNotIn(PASSWORD, log)
        self.assertNotIn("guess", log)

    def test_the_same_wrong_password_twenty_times_counts_once(self):
        """A phone still holding an old password, retrying over POP3 and IMAP."""
        for n in range(10):
            self.assertEqual(self.pop3_fails("127.0.0.4", ALICE, "old password"),
                             b"-ERR [AUTH] Invalid user name or password")
            self.assertIn("[AUTHENTICATIONFAILED]",
                          self.imap_login("127.0.0.4", ALICE, "old password"))
        self.assertEqual(self.imap_login("127.0.0.4", ALICE, PASSWORD), "OK")

    def test_imap_authenticate_plain_and_pop3_auth_plain(self):
        client = self.server.imap("127.0.0.5")
        self.assertIn("AUTH=PLAIN", client.capabilities)
        typ, _ = client.authenticate("PLAIN", lambda _: f"\0{ALICE}\0{PASSWORD}".encode())
        self.assertEqual(typ, "OK")
        client.logout()
        client = self.server.pop3("127.0.0.5")
        self.assertIn("PLAIN", client.capa()["SASL"])
        # poplib has no AUTH method: send the RFC 5034 command as it is
        self.assertTrue(client._shortcmd("AUTH PLAIN " + plain(BOB, PASSWORD))
                        .startswith(b"+OK"))
        self.assertEqual(client.stat(), (0, 0))
        client.quit()


class AdminUnlockTests(unittest.TestCase):
    """`mailsrv auth locked` and `auth unlock` against the running server's control socket."""

    def setUp(self):
        self.server = MailServerProcess(extra={"auth": {"lockout": 900}})
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def imap_login(self, password, source="127.0.0.4"):
        with self.server.imap(source) as client:
            try:
                return client.login(ALICE, password)[0]
            except imaplib.IMAP4.error as e:
                return str(e)

    def test_an_admin_ends_a_lockout(self):
        for n in range(5):
            self.imap_login(f"wrong {n}")
        self.assertIn("[UNAVAILABLE]", self.imap_login(PASSWORD))
        locked = self.server.admin("auth", "locked").stdout
        self.assertRegex(locked, rf"^127\.0\.0\.4/{ALICE}  locked for 1[45]m more\n1 locked out\n$")
        self.assertEqual(self.server.admin("auth", "unlock", ALICE).stdout,
                         f"unlocked: 127.0.0.4/{ALICE}\n")
        self.assertEqual(self.imap_login(PASSWORD), "OK")
        again = self.server.admin("auth", "unlock", ALICE, check=False)
        self.assertEqual(again.returncode, 1)
        self.assertIn("nothing locked out matches", again.stderr)
        self.server.wait_for_log(f"login lockout ended by an admin: 127.0.0.4/{ALICE}")
