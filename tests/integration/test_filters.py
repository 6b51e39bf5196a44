"""
DNS blacklists and SPF through the real server: clients on 127.0.0.1, .2,
.3 and .4 (listed nowhere, in a standard list, refused by a list, in a
trusted list), a list that never answers, senders whose domains give each
SPF result, clients whose HELO and reverse DNS do or do not hold up, and
what they are told, where their mail lands and what the
log says.
"""

import subprocess

from twisted.trial import unittest

from tests.dnsserver import TinyDNSServer
from tests.integration.harness import PASSWORD, MailServerProcess, require_tool

DNS_RECORDS = {
    ("2.0.0.127.std.test", "A"): ["127.0.0.2"],
    ("4.0.0.127.tr.test", "A"): ["127.0.0.4"],
    ("3.0.0.127.std.test", "A"): ["127.255.255.254"],  # the list refuses to answer
    ("pass.test", "TXT"): ['"v=spf1 ip4:127.0.0.0/8 -all"'],
    ("fail.test", "TXT"): ['"v=spf1 -all"'],
    ("softfail.test", "TXT"): ['"v=spf1 ~all"'],
    ("5.0.0.127.in-addr.arpa", "PTR"): ["good.client.test."],
    ("good.client.test", "A"): ["127.0.0.5"],
}
SLOW = {f"{n}.0.0.127.slow.test" for n in (1, 2, 3, 4)}

DNSBL = """
[antispam]
subject_prefix = "*** SPAM *** "

[antispam.dnsbl]
lists = ["std.test", { zone = "tr.test", kind = "trusted", action = "reject" },
         { zone = "slow.test", name = "Slow" }]
action = "move:Junk"
timeout = 1
"""

MESSAGE = "From: x@remote.test\r\nSubject: offer\r\n\r\nbuy now\r\n"


class FilterServerCase(unittest.TestCase):
    """
    The real server with the test DNS server and the C{ANTISPAM} config.
    (Not collected: it has no tests.)
    """

    ANTISPAM = ""
    SILENT = ()

    def setUp(self):
        self.dns = TinyDNSServer(DNS_RECORDS, silent=self.SILENT)
        self.addCleanup(self.dns.close)
        self.server = MailServerProcess(extra={
            "dns": {"servers": [self.dns.address], "timeout": 1},
        })
        with open(self.server.config, "a") as config:
            config.write(self.ANTISPAM)
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def send(self, source="127.0.0.1", sender="x@remote.test", helo="client.test"):
        """One message to alice; the reply to the end of DATA."""
        with self.server.smtp(source=source) as client:
            client.ehlo(helo)
            client.mail(sender)
            client.rcpt("alice@example.test")
            return client.data(MESSAGE)

    def send_authenticated(self, source="127.0.0.1"):
        with self.server.smtp(port="submission", source=source) as client:
            client.ehlo("client.test")
            client.login("alice@example.test", PASSWORD)
            client.sendmail("alice@example.test", ["alice@example.test"], MESSAGE)


class DNSBLTests(FilterServerCase):
    ANTISPAM = DNSBL
    SILENT = SLOW

    def test_unlisted_client_gets_inbox_and_no(self):
        self.assertEqual(self.send("127.0.0.1")[0], 250)
        [path] = self.server.maildir_files()
        message = path.read_text()
        self.assertIn("X-Mailsrv-Spam: no; reasons=-\n", message)
        self.assertIn("Subject: offer\n", message)
        self.server.wait_for_log("dnsbl Slow skipped: 1.0.0.127.slow.test: ")
        self.server.wait_for_log("from 127.0.0.1: X-Mailsrv-Spam: no; reasons=- action=none")

    def test_listed_client_lands_in_junk(self):
        code, text = self.send("127.0.0.2")
        self.assertEqual(code, 250)
        self.assertEqual(self.server.maildir_files(), [])
        [path] = self.server.maildir_files(folder=".Junk")
        message = path.read_text()
        self.assertIn("X-Mailsrv-DNSBL: 127.0.0.2 listed in std.test (127.0.0.2)\n"
                      "X-Mailsrv-Spam: yes; reasons=dnsbl std.test 127.0.0.2\n", message)
        queue_id = text.decode().rpartition(" ")[2]
        self.server.wait_for_log(f"antispam {queue_id} from 127.0.0.2: X-Mailsrv-Spam: yes; "
                                 "reasons=dnsbl std.test 127.0.0.2 action=move:Junk")
        with self.server.imap() as imap:
            imap.login("alice@example.test", PASSWORD)
            self.assertEqual(imap.select("Junk"), ("OK", [b"1"]))

    def test_refused_query_is_no_hit(self):
        self.assertEqual(self.send("127.0.0.3")[0], 250)
        self.assertEqual(len(self.server.maildir_files()), 1)
        self.server.wait_for_log("dnsbl std.test refused the query for 127.0.0.3 "
                                 "with 127.255.255.254")

    def test_trusted_list_hit_is_refused(self):
        require_tool(self, "swaks")
        result = subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", str(self.server.ports["smtp"]),
             "--local-interface", "127.0.0.4", "--from", "x@remote.test",
             "--to", "alice@example.test"],
            capture_output=True, text=True, timeout=60)
        self.assertIn("<** 550 5.7.1 Message refused as spam", result.stdout)
        self.assertEqual(self.server.maildir_files(), [])
        self.server.wait_for_log("refused message from 127.0.0.4 sender=<x@remote.test>: "
                                 "X-Mailsrv-Spam: yes; reasons=dnsbl tr.test 127.0.0.4")

    def test_authenticated_client_is_not_checked(self):
        self.send_authenticated(source="127.0.0.2")
        [path] = self.server.maildir_files()
        self.assertNotIn("X-Mailsrv-", path.read_text())


SPF = """
[antispam.spf]
action = "header"
fail = "reject"
softfail = "subject"

[antispam.dnsbl]
lists = ["std.test"]
action = "move:Junk"
"""


class SPFTests(FilterServerCase):
    ANTISPAM = SPF

    def test_pass_gets_the_header(self):
        self.assertEqual(self.send(sender="x@pass.test")[0], 250)
        [path] = self.server.maildir_files()
        message = path.read_text()
        self.assertIn("Received-SPF: Pass (mail.example.test: domain of pass.test "
                      "designates 127.0.0.1 as permitted sender) client-ip=127.0.0.1; "
                      'envelope-from="x@pass.test"; helo=client.test;', message)
        self.assertIn("X-Mailsrv-Spam: no; reasons=spf pass\n", message)

    def test_softfail_prefixes_the_subject(self):
        self.assertEqual(self.send(sender="x@softfail.test")[0], 250)
        [path] = self.server.maildir_files()
        message = path.read_text()
        self.assertIn("Received-SPF: SoftFail (mail.example.test: ", message)
        self.assertIn("\nSubject: [SPAM] offer\n", message)

    def test_fail_is_refused(self):
        with self.server.smtp() as client:
            client.ehlo("client.test")
            client.mail("x@fail.test")
            client.rcpt("alice@example.test")
            self.assertEqual(client.docmd("DATA"), (550, b"5.7.1 Message refused as spam"))
        self.server.wait_for_log("refused message from 127.0.0.1 sender=<x@fail.test>: "
                                 "X-Mailsrv-Spam: yes; reasons=spf fail")

    def test_strongest_action_wins(self):
        self.assertEqual(self.send("127.0.0.2", sender="x@softfail.test")[0], 250)
        [path] = self.server.maildir_files(folder=".Junk")
        message = path.read_text()
        self.assertIn("\nSubject: offer\n", message)
        self.assertIn("X-Mailsrv-Spam: yes; reasons=dnsbl std.test 127.0.0.2, spf softfail",
                      message)

    def test_authenticated_sender_gets_no_spf_header(self):
        self.send_authenticated()
        [path] = self.server.maildir_files()
        self.assertNotIn("Received-SPF", path.read_text())


VALIDATION = """
[antispam.validation]
action = "subject"
"""


class ValidationTests(FilterServerCase):
    ANTISPAM = VALIDATION

    def test_client_that_holds_up(self):
        self.assertEqual(self.send("127.0.0.5", helo="good.client.test")[0], 250)
        [path] = self.server.maildir_files()
        message = path.read_text()
        self.assertIn("X-Mailsrv-Spam: no; reasons=-\n", message)
        self.assertIn("\nSubject: offer\n", message)

    def test_client_that_does_not(self):
        self.assertEqual(self.send(helo="mail.example.test")[0], 250)
        [path] = self.server.maildir_files()
        message = path.read_text()
        self.assertIn("X-Mailsrv-Validation: HELO mail.example.test claims to be this server\n"
                      "X-Mailsrv-Validation: 127.0.0.1 has no reverse DNS\n", message)
        self.assertIn("X-Mailsrv-Spam: yes; reasons=validation helo-ours, validation "
                      "reverse-dns, validation fcrdns\n", message)
        self.assertIn("\nSubject: [SPAM] offer\n", message)
        self.server.wait_for_log("from 127.0.0.1: X-Mailsrv-Spam: yes; reasons=validation "
                                 "helo-ours, validation reverse-dns, validation fcrdns "
                                 "action=subject")
