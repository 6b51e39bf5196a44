"""
Submission as users meet it: AUTH over TLS, sending anywhere through the
queue, and the sender checks that stop forgery on both SMTP roles.
"""

import base64
import smtplib
import ssl
import subprocess

from twisted.trial import unittest

from tests.integration.harness import PASSWORD, MailServerProcess, SinkServer, require_tool

ALICE = "alice@example.test"


def tls_context():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class SubmissionTests(unittest.TestCase):
    def setUp(self):
        self.sink = SinkServer()
        self.addCleanup(self.sink.close)
        self.server = MailServerProcess(extra={
            "delivery": {"smart_host": f"127.0.0.1:{self.sink.port}", "retry": [1]},
        })
        (self.server.dir / "aliases").write_text("sales@example.test: alice@example.test\n")
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def submission(self):
        client = smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=30)
        client.ehlo("laptop.example.test")
        return client

    def test_auth_only_after_starttls_then_send_anywhere(self):
        with self.submission() as client:
            self.assertTrue(client.has_extn("STARTTLS"))  # MAIL before AUTH: 530
            self.assertEqual(client.mail(ALICE)[:1], (530,))
            client.rset()
            client.starttls(context=tls_context())
            client.ehlo("laptop.example.test")
            self.assertIn("PLAIN", client.esmtp_features["auth"])
            with self.assertRaises(smtplib.SMTPAuthenticationError) as caught:
                client.login(ALICE, "wrong")
            self.assertEqual(caught.exception.smtp_code, 535)
            self.assertIn(b"5.7.8", caught.exception.smtp_error)
            client.login(ALICE, PASSWORD)
            refused = client.sendmail(ALICE, ["friend@elsewhere.test"],
                                      b"Subject: out\r\n\r\nto the world\r\n")
            self.assertEqual(refused, {})
        (sender, recipients, data), = self.sink.wait_for(1)
        self.assertEqual((sender, recipients), (f"<{ALICE}>", ["<friend@elsewhere.test>"]))
        self.assertIn(b"with ESMTPSA", data)

    def test_sender_must_be_owned(self):
        with self.submission() as client:
            client.starttls(context=tls_context())
            client.ehlo("laptop.example.test")
            client.login(ALICE, PASSWORD)
            code, text = client.mail("bob@example.test")
            self.assertEqual((code, text), (553, b"5.7.1 <bob@example.test>: sender address "
                                                 b"not owned by user alice@example.test"))
            self.server.wait_for_log("refused MAIL FROM:<bob@example.test> from 127.0.0.1: "
                                     "<bob@example.test>: sender address not owned")
            client.rset()
            self.assertEqual(client.mail("sales@example.test")[0], 250)  # her alias

    def test_implicit_tls_port(self):
        with smtplib.SMTP_SSL("127.0.0.1", self.server.ports["smtps"], timeout=30,
                              context=tls_context()) as client:
            client.login(ALICE, PASSWORD)
            self.assertEqual(client.sendmail(ALICE, [ALICE], b"Subject: 465\r\n\r\nx\r\n"), {})
        self.assertEqual(len(self.server.maildir_files()), 1)

    def test_swaks_tls_auth_plain(self):
        require_tool(self, "swaks")
        result = subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", str(self.server.ports["submission"]),
             "--tls", "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", PASSWORD,
             "--from", ALICE, "--to", "friend@elsewhere.test"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertIn("<~  235 2.7.0", result.stdout)
        self.assertEqual(len(self.sink.wait_for(1)), 1)

    def test_curl_smtp_ssl_reqd(self):
        require_tool(self, "curl")
        message = self.server.dir / "message.eml"
        message.write_bytes(b"Subject: from curl\r\n\r\nsent with curl\r\n")
        result = subprocess.run(
            ["curl", "-s", "-k", "--ssl-reqd",
             f"smtp://127.0.0.1:{self.server.ports['submission']}",
             "-u", f"{ALICE}:{PASSWORD}", "--mail-from", ALICE,
             "--mail-rcpt", ALICE, "-T", str(message)],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        (delivered,) = self.server.maildir_files()
        self.assertIn(b"sent with curl", delivered.read_bytes())


class PlaintextTests(unittest.TestCase):
    """Without the loopback exception, no password crosses before TLS."""

    def setUp(self):
        self.server = MailServerProcess(extra={
            "auth": {"allow_plaintext_on_loopback": False}}).start()
        self.addCleanup(self.server.cleanup)

    def test_smtp_auth_needs_tls(self):
        with smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=30) as client:
            client.ehlo("laptop.example.test")
            self.assertNotIn("auth", client.esmtp_features)
            blob = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
            code, _ = client.docmd("AUTH", f"PLAIN {blob}")
            self.assertEqual(code // 100, 5)
            client.starttls(context=tls_context())
            client.ehlo("laptop.example.test")
            self.assertIn("PLAIN", client.esmtp_features["auth"])
            client.login(ALICE, PASSWORD)

    def test_pop3_and_imap_logins_need_tls(self):
        import imaplib
        import poplib

        pop3 = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=30)
        self.assertRaises(poplib.error_proto, pop3.user, ALICE)
        pop3.stls(context=tls_context())
        pop3.user(ALICE)
        pop3.pass_(PASSWORD)
        pop3.quit()

        imap = imaplib.IMAP4("127.0.0.1", self.server.ports["imap"], timeout=30)
        self.assertIn("LOGINDISABLED", imap.capabilities)
        self.assertRaises(imaplib.IMAP4.error, imap.login, ALICE, PASSWORD)
        imap.starttls(ssl_context=tls_context())
        self.assertNotIn("LOGINDISABLED", imap.capabilities)
        imap.login(ALICE, PASSWORD)
        imap.logout()

    def test_fetchmail_over_implicit_tls(self):
        require_tool(self, "fetchmail")
        import os
        import tempfile
        from pathlib import Path

        with self.server.smtp() as client:
            client.sendmail("sender@remote.test", [ALICE], b"Subject: s\r\n\r\nover pop3s\r\n")
        home = Path(tempfile.mkdtemp(prefix="fetchmail-"))
        rc = home / "fetchmailrc"
        rc.write_text(
            f'poll 127.0.0.1 service {self.server.ports["pop3s"]} protocol pop3 '
            f'user "{ALICE}" password "{PASSWORD}" ssl '
            f'sslcertfile "{self.server.dir / "tls" / "cert.pem"}" '
            f'sslcommonname "mail.example.test" mda "cat >> {home / "mbox"}"\n')
        rc.chmod(0o600)
        run = subprocess.run(["fetchmail", "-f", str(rc), "-N", "--nosyslog"],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "HOME": str(home)})
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn("over pop3s", (home / "mbox").read_text())


class LocalSenderTests(unittest.TestCase):
    def setUp(self):
        self.server = MailServerProcess().start()
        self.addCleanup(self.server.cleanup)

    def test_forged_local_sender_on_port_25(self):
        with self.server.smtp() as client:
            client.ehlo("spammer.test")
            code, text = client.mail(ALICE)
        self.assertEqual(code, 553)
        self.assertIn(b"authentication required for local senders", text)
        self.server.wait_for_log("refused MAIL FROM:<alice@example.test> from 127.0.0.1: "
                                 "local sender <alice@example.test> without authentication")

    def test_can_be_turned_off(self):
        self.server.stop()
        config = self.server.config
        config.write_text(config.read_text() +
                          "\n[access]\nlocal_sender_must_auth = false\n")
        self.server.start()
        with self.server.smtp() as client:
            self.assertEqual(client.sendmail(ALICE, [ALICE], b"Subject: x\r\n\r\ny\r\n"), {})


class RequiredTLSTests(unittest.TestCase):
    """tls = "required": before TLS only the commands that lead to it."""

    def setUp(self):
        required = {"tls": "required"}
        self.server = MailServerProcess(
            listeners={"submission": required, "pop3": required, "imap": required}).start()
        self.addCleanup(self.server.cleanup)

    def test_smtp(self):
        with smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=30) as client:
            client.ehlo("laptop.example.test")
            self.assertNotIn("auth", client.esmtp_features)  # not even on loopback
            self.assertEqual(client.noop()[0], 250)
            code, text = client.mail(ALICE)
            self.assertEqual((code, text[:5]), (530, b"5.7.0"))
            client.starttls(context=tls_context())
            client.ehlo("laptop.example.test")
            client.login(ALICE, PASSWORD)
            self.assertEqual(client.mail(ALICE)[0], 250)

    def test_pop3(self):
        import poplib

        pop3 = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=30)
        self.assertNotIn("USER", pop3.capa())
        self.assertIn("STLS", pop3.capa())
        self.assertRaises(poplib.error_proto, pop3.user, ALICE)
        self.assertRaises(poplib.error_proto, pop3.stat)
        pop3.stls(context=tls_context())
        pop3.user(ALICE)
        pop3.pass_(PASSWORD)
        self.assertEqual(pop3.stat(), (0, 0))
        pop3.quit()

    def test_imap(self):
        import imaplib

        imap = imaplib.IMAP4("127.0.0.1", self.server.ports["imap"], timeout=30)
        self.assertIn("LOGINDISABLED", imap.capabilities)
        self.assertRaises(imaplib.IMAP4.error, imap.login, ALICE, PASSWORD)
        imap.starttls(ssl_context=tls_context())
        imap.login(ALICE, PASSWORD)
        self.assertEqual(imap.select("INBOX")[0], "OK")
        imap.logout()


class PopBeforeSMTPSubmissionTests(unittest.TestCase):
    """[pop_before_smtp] counts_as_auth: fetchmail-era clients submit after a POP3 login."""

    def setUp(self):
        self.sink = SinkServer()
        self.addCleanup(self.sink.close)
        self.server = MailServerProcess(extra={
            "delivery": {"smart_host": f"127.0.0.1:{self.sink.port}", "retry": [1]},
            "pop_before_smtp": {"counts_as_auth": True},
        })
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def test_a_pop3_login_lets_that_address_submit(self):
        with smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=30) as client:
            client.ehlo("laptop.example.test")
            self.assertEqual(client.mail(ALICE)[:1], (530,))  # no window yet
        pop = self.server.pop3()
        pop.user(ALICE)
        pop.pass_(PASSWORD)
        pop.quit()
        with smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=30) as client:
            client.ehlo("laptop.example.test")
            client.starttls(context=tls_context())
            client.ehlo("laptop.example.test")
            refused = client.sendmail(ALICE, ["friend@elsewhere.test"],
                                      b"Subject: out\r\n\r\nafter POP\r\n")
            self.assertEqual(refused, {})
        (sender, recipients, _), = self.sink.wait_for(1)
        self.assertEqual((sender, recipients), (f"<{ALICE}>", ["<friend@elsewhere.test>"]))
