"""
The policy chain through the real server, as clients and admins meet it:
what smtplib and swaks are told, what the log says, list files edited while
the server runs, and an open-relay tester's tricks. DNS answers come from a
tiny server on 127.0.0.1.
"""

import subprocess
import time

from twisted.trial import unittest

from tests.dnsserver import TinyDNSServer
from tests.integration.harness import PASSWORD, MailServerProcess, SinkServer, require_tool

DNS_RECORDS = {
    ("mail.test", "MX"): ["10 mx.mail.test."],
    ("mx.mail.test", "A"): ["127.0.0.25"],
    ("3.0.0.127.in-addr.arpa", "PTR"): ["relay.trusted.test."],
    ("relay.trusted.test", "A"): ["127.0.0.3"],
}
ALIASES = "team@example.test: alice@example.test, bob@example.test\n"


class PolicyChainTests(unittest.TestCase):
    def setUp(self):
        self.dns = TinyDNSServer(DNS_RECORDS, silent={"slow.test"})
        self.addCleanup(self.dns.close)
        self.sink = SinkServer()
        self.addCleanup(self.sink.close)
        self.server = MailServerProcess(extra={
            "dns": {"servers": [self.dns.address], "timeout": 1},
            "access": {"kill_file": "kill.lst", "verify_sender_domain": True},
            "relay": {"mode": "trusted", "trusted": ["127.0.0.2", ".trusted.test"],
                      "refusal_text": "unknown local host %s, not a gateway"},
            "lists": {"accept_remote": False, "expn": True},
            "delivery.transports": {'"internal.test"': f"127.0.0.1:{self.sink.port}"},
        })
        (self.server.dir / "kill.lst").write_text("# banned\nspam@mail.test, @worse.test\n")
        (self.server.dir / "aliases").write_text(ALIASES)
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def mail(self, sender, source="127.0.0.1"):
        with self.server.smtp(source=source) as client:
            client.ehlo("client.test")
            return client.mail(sender)

    def rcpt(self, recipient, sender="someone@mail.test", source="127.0.0.1"):
        with self.server.smtp(source=source) as client:
            client.ehlo("client.test")
            self.assertEqual(client.mail(sender)[0], 250)
            return client.rcpt(recipient)

    def test_kill_list(self):
        self.assertEqual(self.mail("spam@mail.test"),
                         (501, b"5.1.8 <spam@mail.test>: unacceptable mail address"))
        self.assertEqual(self.mail("anyone@worse.test")[0], 501)
        self.assertEqual(self.mail("other@mail.test")[0], 250)
        self.server.wait_for_log("refused MAIL FROM:<spam@mail.test> from 127.0.0.1: "
                                 "sender <spam@mail.test> is in the kill list as spam@mail.test")

    def test_kill_list_edited_while_running(self):
        self.assertEqual(self.mail("other@mail.test")[0], 250)
        with open(self.server.dir / "kill.lst", "a") as f:
            f.write("other@mail.test\n")
        time.sleep(2)
        self.assertEqual(self.mail("other@mail.test")[0], 501)
        self.server.wait_for_log("is in the kill list as other@mail.test")

    def test_sender_domain(self):
        self.assertEqual(self.mail("a@nowhere.test"),
                         (553, b"5.1.8 <a@nowhere.test>: sender domain nowhere.test "
                               b"does not accept mail"))
        self.assertEqual(self.mail("a@slow.test"),
                         (451, b"4.4.3 <a@slow.test>: cannot check the sender domain now, "
                               b"try again later"))
        self.server.wait_for_log("sender domain nowhere.test has no MX or address record")
        self.server.wait_for_log("sender domain slow.test: MX slow.test: timeout")

    def test_lists_refuse_remote_senders_and_expn_shows_members(self):
        self.assertEqual(self.rcpt("team@example.test"),
                         (550, b"5.7.1 <team@example.test>: this list takes mail from "
                               b"local senders only"))
        self.server.wait_for_log("list <team@example.test> refuses remote sender "
                                 "<someone@mail.test>")
        with self.server.smtp() as client:
            client.ehlo("client.test")
            self.assertEqual(client.expn("team"),
                             (250, b"2.1.5 <alice@example.test>\n2.1.5 <bob@example.test>"))

    def test_relay_refusal_text_and_who_may_relay(self):
        self.assertEqual(self.rcpt("carol@remote.test"),
                         (550, b"5.7.1 <carol@remote.test>: unknown local host 127.0.0.1, "
                               b"not a gateway"))
        self.server.wait_for_log("relaying denied: <carol@remote.test> from 127.0.0.1")
        self.assertEqual(self.rcpt("carol@remote.test", source="127.0.0.2")[0], 250)
        # 127.0.0.3 is relay.trusted.test by forward-confirmed reverse DNS
        self.assertEqual(self.rcpt("carol@remote.test", source="127.0.0.3")[0], 250)

    def test_relay_domain_is_accepted_from_anyone_and_handed_on(self):
        with self.server.smtp() as client:
            refused = client.sendmail("someone@mail.test", ["x@internal.test"],
                                      b"Subject: in\r\n\r\nfor the internal host\r\n")
        self.assertEqual(refused, {})
        (sender, recipients, _data), = self.sink.wait_for(1)
        self.assertEqual(recipients, ["<x@internal.test>"])

    def test_lists_check(self):
        out = self.server.admin("lists", "check").stdout
        self.assertIn(f"kill list: {self.server.dir / 'kill.lst'}: 2 entries\n", out)
        self.assertIn(f"aliases: {self.server.dir / 'aliases'}: 1 entries\n", out)
        (self.server.dir / "kill.lst").write_text("ok@mail.test\n\nnot-an-address\n")
        result = self.server.admin("lists", "check", check=False)
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"kill list: {self.server.dir / 'kill.lst'}:3: 'not-an-address': "
                      "not userid@host or @host\n", result.stdout)
        self.assertEqual(result.stderr, "mailsrv: 1 list file(s) with errors\n")

    def test_swaks_sees_the_refusals(self):
        require_tool(self, "swaks")
        for sender, recipient, expected in [
            ("spam@mail.test", "alice@example.test", "<** 501 5.1.8 <spam@mail.test>: "
                                                     "unacceptable mail address"),
            ("a@mail.test", "carol@remote.test", "<** 550 5.7.1 <carol@remote.test>: "
                                                 "unknown local host 127.0.0.1, not a gateway"),
        ]:
            result = subprocess.run(
                ["swaks", "--server", "127.0.0.1", "--port", str(self.server.ports["smtp"]),
                 "--from", sender, "--to", recipient, "--quit-after", "RCPT"],
                capture_output=True, text=True, timeout=60)
            self.assertIn(expected, result.stdout)


# What an open-relay tester sends, from a client that may not relay.
RELAY_TRICKS = [
    "user%remote.test@example.test",
    "user%remote.test@[127.0.0.1]",
    "@example.test:user@remote.test",
    "@mail.example.test,@example.test:user@remote.test",
    '"user@remote.test"@example.test',
    '"user%remote.test"@example.test',
    "user@remote.test@example.test",
    "remote.test!user@example.test",
    "remote.test!user",
    "user@remote.test",
    "user@[192.0.2.1]",
]


class OpenRelayTests(unittest.TestCase):
    mode = "none"

    def setUp(self):
        self.server = MailServerProcess(extra={
            "relay": {"mode": self.mode, "trusted": ["127.0.0.2"]},
            "access": {"refuse_null_sender": self.mode == "none"},
        })
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def test_every_trick_is_refused(self):
        for address in RELAY_TRICKS:  # a connection each: errors add up to a 421
            with self.server.smtp() as client:
                client.ehlo("relaytest.test")
                self.assertEqual(client.mail("tester@remote.test")[0], 250)
                code, text = client.docmd(f"RCPT TO:<{address}>")
                client.docmd("DATA")
            self.assertIn(code, (550, 553, 501), (address, code, text))
            if code == 550:
                self.assertTrue(text.startswith(b"5.7.1"), (address, text))
        log = self.server.log_text()
        self.assertIn("routing trick in <user%remote.test@example.test> from 127.0.0.1", log)
        self.assertIn("relaying denied: <user@remote.test> from 127.0.0.1", log)
        self.assertEqual(self.server.admin("queue", "list").stdout, "0 queued\n")
        self.assertEqual(list((self.server.data_dir / "mail").rglob("new/*")), [])

    def test_null_sender(self):
        with self.server.smtp() as client:
            client.ehlo("relaytest.test")
            code, text = client.mail("")
        if self.mode == "none":
            self.assertEqual((code, text), (550, b"5.7.1 <>: null sender not accepted here"))
            self.server.wait_for_log("null sender refused ([access] refuse_null_sender)")
        else:
            self.assertEqual(code, 250)


class OpenRelayTrustedModeTests(OpenRelayTests):
    mode = "trusted"


class JournalTests(unittest.TestCase):
    def setUp(self):
        self.server = MailServerProcess(
            extra={"journal": {"inbound": "archive@example.test"}},
            users=("alice@example.test", "bob@example.test", "archive@example.test"),
        ).start()
        self.addCleanup(self.server.cleanup)

    def test_one_copy_with_the_whole_envelope_and_untouched_originals(self):
        with self.server.smtp() as client:
            client.ehlo("client.remote.test")
            refused = client.sendmail("sender@remote.test",
                                      ["alice@example.test", "bob@example.test"],
                                      b"To: alice@example.test\r\nSubject: j\r\n\r\nhi\r\n")
            self.assertEqual(refused, {})
        (alice,) = self.server.maildir_files("alice@example.test")
        (bob,) = self.server.maildir_files("bob@example.test")
        (copy,) = self.server.maildir_files("archive@example.test")
        original = alice.read_bytes()
        self.assertEqual(bob.read_bytes(), original)
        self.assertNotIn(b"X-Mailsrv-Journal", original)
        header, _, rest = copy.read_bytes().partition(b"\r\nReturn-Path: ")
        self.assertEqual(b"Return-Path: " + rest, original)
        self.assertIn(b"X-Mailsrv-Journal: sender=<sender@remote.test>;", header)
        self.assertIn(b"<alice@example.test>", header)
        self.assertIn(b"<bob@example.test>", header)  # Bcc: only in the envelope

    def test_mail_between_local_users_is_journaled_too(self):
        """IMail's "every message": local to local is copied to the inbound archive (issue 18)."""
        with self.server.smtp(port="submission") as client:
            client.ehlo("laptop.example.test")
            client.login("alice@example.test", PASSWORD)
            client.sendmail("alice@example.test", ["bob@example.test"],
                            b"Subject: a\r\n\r\nb\r\n")
        self.assertEqual(len(self.server.maildir_files("bob@example.test")), 1)
        (copy,) = self.server.maildir_files("archive@example.test")
        self.assertTrue(copy.read_bytes().startswith(
            b"X-Mailsrv-Journal: sender=<alice@example.test>;\r\n\trecipients=<bob@example.test>"
            b"\r\nReturn-Path: <alice@example.test>\r\n"))


class TrustedFileTests(unittest.TestCase):
    def test_trusted_file_edited_while_running(self):
        from pathlib import Path

        trusted = Path(self.mktemp()).absolute()
        trusted.parent.mkdir(parents=True, exist_ok=True)
        trusted.write_text("# nobody yet\n")
        server = MailServerProcess(extra={"relay": {"trusted_file": str(trusted)}}).start()
        self.addCleanup(server.cleanup)

        def relay():
            with server.smtp(source="127.0.0.2") as client:
                client.ehlo("office.example.test")
                client.mail("someone@remote.test")
                return client.rcpt("friend@elsewhere.test")[0]

        self.assertEqual(relay(), 550)
        trusted.write_text("127.0.0.2\n")
        time.sleep(2)
        self.assertEqual(relay(), 250)
