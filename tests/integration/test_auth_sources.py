"""
[auth] source = "ldap" and "smtp" through the real server: users of a
real slapd (Debian's) log in over IMAP, POP3 and SMTP AUTH with their LDAP
passwords, their directory addresses and aliases take mail, and a
directory that is down or hangs gives a temporary refusal in each
protocol's words, never a success or a wrong-password answer; a second
mailsrv checks the passwords for the first by AUTH PLAIN over STARTTLS.
"""

import imaplib
import os
import poplib
import shutil
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path

from twisted.trial import unittest

from tests import certs
from tests.integration.harness import PASSWORD, MailServerProcess, require_tool
from tests.slapdserver import (
    BASE,
    SEARCH_DN,
    SEARCH_PASSWORD,
    SlapdServer,
    person,
    slapd_missing,
)

ALICE_PASSWORD = "alice in ldap"


def imap_login(server, user, password):
    """The tagged answer's status (OK), or the error text of a refused LOGIN."""
    with server.imap() as client:
        try:
            return client.login(user, password)[0]
        except imaplib.IMAP4.error as e:
            return str(e)


class LDAPSourceTests(unittest.TestCase):
    def setUp(self):
        missing = slapd_missing()
        if missing:
            raise unittest.SkipTest(missing)
        self.slapd = SlapdServer([
            person("alice", ALICE_PASSWORD, "alice@example.test", "ali@example.test"),
            person("dup1", "x", "dup@example.test"), person("dup2", "x", "dup@example.test"),
        ])
        self.addCleanup(self.slapd.cleanup)
        self.slapd.start()
        self.server = MailServerProcess(users=("bob@example.test",), extra={"auth": {
            "source": "ldap", "cache_ttl": 0,
            "ldap": {"url": self.slapd.tls_url, "ca_file": str(self.slapd.ca), "base": BASE,
                     "bind_dn": SEARCH_DN, "bind_password_file": "ldap-password",
                     "timeout": 1, "refresh": 1}}})
        (self.server.dir / "ldap-password").write_text(SEARCH_PASSWORD + "\n")
        self.server.start()
        self.addCleanup(self.server.cleanup)
        self.server.wait_for_log("ldap: 2 addresses read")

    def imap_login(self, user, password):
        return imap_login(self.server, user, password)

    def test_logins_with_the_directory_password(self):
        self.assertEqual(self.imap_login("alice@example.test", ALICE_PASSWORD), "OK")
        self.assertIn("[AUTHENTICATIONFAILED]", self.imap_login("alice@example.test", "nope"))
        self.assertIn("[AUTHENTICATIONFAILED]", self.imap_login("dup@example.test", "x"))
        self.assertIn("[AUTHENTICATIONFAILED]", self.imap_login("alice@example.test", ""))
        pop = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=30)
        pop.user("alice@example.test")
        self.assertTrue(pop.pass_(ALICE_PASSWORD).startswith(b"+OK"))
        pop.quit()
        with smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=30) as client:
            client.starttls()
            self.assertEqual(client.login("alice@example.test", ALICE_PASSWORD)[0], 235)
        self.assertIn("ldap: 2 entries match (mail=dup@example.test): refused",
                      self.server.log_text())

    def test_real_clients(self):
        """swaks submits as the directory's user; curl and fetchmail read (POP3, IMAP)."""
        require_tool(self, "curl")
        require_tool(self, "swaks")
        sent = subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", str(self.server.ports["submission"]),
             "--tls", "--auth", "PLAIN", "--auth-user", "alice@example.test",
             "--auth-password", ALICE_PASSWORD, "--from", "alice@example.test",
             "--to", "ali@example.test", "--header", "Subject: from swaks"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(sent.returncode, 0, sent.stdout)
        self.server.wait_for_log("delivered=alice@example.test")
        for url in (f"pop3://127.0.0.1:{self.server.ports['pop3']}/1",
                    f"imap://127.0.0.1:{self.server.ports['imap']}/INBOX;UID=1"):
            got = subprocess.run(["curl", "-s", "-u", f"alice@example.test:{ALICE_PASSWORD}",
                                  url], capture_output=True, text=True, timeout=60)
            self.assertIn("Subject: from swaks", got.stdout, url)
        require_tool(self, "fetchmail")
        home = Path(tempfile.mkdtemp(prefix="fetchmail-"))
        self.addCleanup(shutil.rmtree, home, True)
        rc = home / "fetchmailrc"
        rc.write_text(
            f'poll 127.0.0.1 service {self.server.ports["pop3"]} protocol pop3 '
            f'auth password user "alice@example.test" password "{ALICE_PASSWORD}" '
            f'keep mda "cat >> {home / "mbox"}" sslcertfile '
            f'"{self.server.dir / "tls" / "cert.pem"}" sslcommonname "mail.example.test"\n')
        rc.chmod(0o600)
        fetched = subprocess.run(["fetchmail", "-f", str(rc), "-N", "--nosyslog"],
                                 capture_output=True, text=True, timeout=60,
                                 env={**os.environ, "HOME": str(home),
                                      "FETCHMAILHOME": str(home)})
        self.assertEqual(fetched.returncode, 0, fetched.stdout + fetched.stderr)
        self.assertIn("Subject: from swaks", (home / "mbox").read_text())
        wrong = subprocess.run(["curl", "-s", "-u", "alice@example.test:nope",
                                f"imap://127.0.0.1:{self.server.ports['imap']}/INBOX;UID=1"],
                               capture_output=True, text=True, timeout=60)
        self.assertEqual(wrong.returncode, 67, "curl: login denied")

    def test_directory_addresses_and_aliases_take_mail(self):
        with self.server.smtp() as client:
            client.ehlo("client.test")
            self.assertEqual(client.sendmail("x@remote.test", ["ali@example.test"],
                                             b"Subject: via alias\r\n\r\nhi\r\n"), {})
            client.mail("x@remote.test")
            self.assertEqual(client.rcpt("nobody@example.test")[0], 550)
        [path] = self.server.maildir_files("alice@example.test")
        self.assertIn(b"Subject: via alias", path.read_bytes())

    def test_directory_down_or_hanging_is_a_temporary_refusal(self):
        self.slapd.pause()  # (accepts, answers nothing: the timeout)
        started = time.monotonic()
        self.assertIn("[UNAVAILABLE]", self.imap_login("alice@example.test", ALICE_PASSWORD))
        self.assertLess(time.monotonic() - started, 10)
        self.slapd.resume()
        self.slapd.stop()
        self.assertIn("[UNAVAILABLE]", self.imap_login("alice@example.test", ALICE_PASSWORD))
        pop = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=30)
        pop.user("alice@example.test")
        with self.assertRaises(poplib.error_proto) as caught:
            pop.pass_(ALICE_PASSWORD)
        self.assertIn(b"[SYS/TEMP]", caught.exception.args[0])
        with smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=30) as client:
            client.starttls()
            with self.assertRaises(smtplib.SMTPAuthenticationError) as caught:
                client.login("alice@example.test", ALICE_PASSWORD)
            self.assertEqual(caught.exception.smtp_code, 454)
        self.server.wait_for_log("login unavailable: user=alice@example.test")
        # A known address still takes mail while the directory is away.
        with self.server.smtp() as client:
            self.assertEqual(client.sendmail("x@remote.test", ["ali@example.test"],
                                             b"Subject: still\r\n\r\nhi\r\n"), {})
        # Back: logins work again without a restart.
        self.slapd.start()
        self.assertEqual(self.imap_login("alice@example.test", ALICE_PASSWORD), "OK")


class SMTPSourceTests(unittest.TestCase):
    """A second mailsrv (the "other server") checks the first one's passwords."""

    def setUp(self):
        self.other = MailServerProcess(users=("carol@example.test",))
        tls = self.other.dir / "tls"
        tls.mkdir()
        issued = certs.make("localhost", names=("localhost",))
        self.other_cert, _ = issued.write(tls, "cert")
        (tls / "cert.key").rename(tls / "key.pem")
        self.other_cert = self.other_cert.rename(tls / "cert.pem")
        self.other.start()
        self.addCleanup(self.other.cleanup)
        self.server = self.start("starttls", "submission")

    def start(self, tls, port):
        server = MailServerProcess(users=(), extra={"auth": {
            "source": "smtp", "cache_ttl": 0,
            "smtp": {"host": f"localhost:{self.other.ports[port]}",
                     "tls": tls, "ca_file": str(self.other_cert), "timeout": 2}}})
        server.start()
        self.addCleanup(server.cleanup)
        return server

    def imap_login(self, user, password):
        return imap_login(self.server, user, password)

    def test_the_other_server_says_yes_and_no(self):
        self.assertEqual(self.imap_login("carol@example.test", PASSWORD), "OK")
        self.assertIn("[AUTHENTICATIONFAILED]", self.imap_login("carol@example.test", "nope"))
        self.assertIn("login ok: user=carol@example.test", self.other.log_text())

    def test_implicit_tls(self):
        self.server.cleanup()
        self.server = self.start("implicit", "smtps")
        self.assertEqual(self.imap_login("carol@example.test", PASSWORD), "OK")

    def test_the_other_server_away_is_a_temporary_refusal(self):
        self.other.stop()
        self.assertIn("[UNAVAILABLE]", self.imap_login("carol@example.test", PASSWORD))
        self.server.wait_for_log("login unavailable: user=carol@example.test")
