"""
DNS blacklists and SPF through the real server: clients on 127.0.0.1, .2,
.3 and .4 (listed nowhere, in a standard list, refused by a list, in a
trusted list), a list that never answers, senders whose domains give each
SPF result, clients whose HELO and reverse DNS do or do not hold up, and
what they are told, where their mail lands and what the
log says.
"""

import mailbox
import subprocess
import time

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
    ("8.0.0.127.std.test", "A"): ["127.0.0.2"],
    ("9.113.0.203.std.test", "A"): ["127.0.0.2"],
    ("spam-sender.test.dbl.test", "A"): ["127.0.1.2"],
    ("bad.helo.test.hbl.test", "A"): ["127.0.0.2"],
    ("ns.std.test", "A"): ["127.0.0.1"],
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
    EXTRA = {}
    FILES = {}  # list files beside the config

    def setUp(self):
        self.dns = TinyDNSServer(DNS_RECORDS, silent=self.SILENT)
        self.addCleanup(self.dns.close)
        self.server = MailServerProcess(extra={
            "dns": {"servers": [self.dns.address], "timeout": 1}, **self.EXTRA,
        })
        with open(self.server.config, "a") as config:
            config.write(self.ANTISPAM)
        for name, text in self.FILES.items():
            (self.server.dir / name).write_text(text)
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def send(self, source="127.0.0.1", sender="x@remote.test", helo="client.test",
             message=MESSAGE):
        """One message to alice; the reply to the end of DATA."""
        return self.server.send(message, sender, helo, source)

    def delivered(self, folder=""):
        """The one message in alice's INBOX (or C{folder})."""
        [path] = self.server.maildir_files(folder=folder)
        return path.read_text()

    def swaks(self, source, sender="x@remote.test", *args):
        """swaks from C{source} to alice; the CompletedProcess."""
        require_tool(self, "swaks")
        return subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", str(self.server.ports["smtp"]),
             "--local-interface", source, "--from", sender, "--to", "alice@example.test",
             *args],
            capture_output=True, text=True, timeout=60)

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

    def test_trusted_list_hit_is_refused_at_mail(self):
        result = self.swaks("127.0.0.4")
        self.assertIn(" -> MAIL FROM:<x@remote.test>\n<** 550 5.7.1 Refused as spam: "
                      "dnsbl tr.test 127.0.0.4\n", result.stdout)
        self.assertNotIn("RCPT TO", result.stdout)
        self.assertEqual(self.server.maildir_files(), [])
        self.server.wait_for_log("refused MAIL FROM:<x@remote.test> from 127.0.0.4: "
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

    def test_fail_is_refused_at_mail(self):
        with self.server.smtp() as client:
            client.ehlo("client.test")
            self.assertEqual(client.mail("x@fail.test"),
                             (550, b"5.7.1 Refused as spam: spf fail"))
        self.server.wait_for_log("refused MAIL FROM:<x@fail.test> from 127.0.0.1: "
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


WHITELISTS = """
[antispam.dnsbl]
lists = ["std.test"]
action = "move:Junk"
received_headers = true

[antispam.validation]
helo_fqdn = "subject"
helo_not_ours = "reject"
reverse_dns = false
forward_confirmed = false

[antispam.spamskip]

[antispam.whitelist]
applies_to = "connection"
"""

RELAYED = ("Received: from relay.test (relay.test [127.0.0.6])\r\n"
           "\tby gw.example.test with ESMTP; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           "Received: from sender.test ([{ip}] helo=sender.test)\r\n"
           "\tby relay.test with esmtp; Mon, 1 Jan 2024 00:00:00 +0000\r\n" + MESSAGE)


class WhitelistTests(FilterServerCase):
    """
    127.0.0.2 and .8 are listed in std.test; .8 is in spamskip.txt; .6 is
    a trusted host that passes on mail from 203.0.113.9 (listed) or
    192.0.2.1 (not); partner.test is a whitelisted sender domain, and so,
    by the admin's mistake, is our own example.test.
    """

    ANTISPAM = WHITELISTS
    EXTRA = {"relay": {"trusted": ["127.0.0.6"]},
             "access": {"local_sender_must_auth": False}}
    FILES = {"spamskip.txt": "# IP and netmask, as IMail writes them\n"
                             "127.0.0.8 255.255.255.248\n",
             "whitelist.txt": "partner.test\nexample.test\n"}

    def test_spamskip_client_skips_the_dnsbl(self):
        self.assertEqual(self.send("127.0.0.8")[0], 250)
        message = self.delivered()
        self.assertIn("X-Mailsrv-Spam: no; reasons=whitelist:spamskip\n", message)
        self.assertNotIn("X-Mailsrv-DNSBL", message)
        self.server.wait_for_log("from 127.0.0.8: X-Mailsrv-Spam: no; "
                                 "reasons=whitelist:spamskip action=none")

    def test_whitelisted_sender_domain_skips_the_dnsbl(self):
        self.assertEqual(self.send("127.0.0.2", sender="news@partner.test")[0], 250)
        self.assertIn("X-Mailsrv-Spam: no; reasons=whitelist:sender\n", self.delivered())

    def test_forged_local_sender_does_not_benefit(self):
        self.assertEqual(self.send("127.0.0.2", sender="alice@example.test")[0], 250)
        self.assertEqual(self.server.maildir_files(), [])
        self.assertIn("X-Mailsrv-Spam: yes; reasons=whitelist ignored: unauthenticated local "
                      "sender, dnsbl std.test 127.0.0.2\n", self.delivered(".Junk"))
        self.server.wait_for_log("whitelist ignored for 127.0.0.2: local sender "
                                 "<alice@example.test> without authentication")

    def test_helo_test_with_its_own_subject_action(self):
        self.assertEqual(self.send(helo="client")[0], 250)
        message = self.delivered()
        self.assertIn("X-Mailsrv-Validation: HELO client is not a fully qualified domain name\n"
                      "X-Mailsrv-Spam: yes; reasons=validation helo-fqdn\n", message)
        self.assertIn("\nSubject: [SPAM] offer\n", message)

    def test_helo_test_with_reject_refuses_at_mail(self):
        result = self.swaks("127.0.0.1", "x@remote.test", "--helo", "mail.example.test")
        self.assertIn(" -> MAIL FROM:<x@remote.test>\n<** 550 5.7.1 Refused as spam: "
                      "validation helo-ours\n", result.stdout)
        self.assertNotEqual(result.returncode, 0)
        self.server.wait_for_log("refused MAIL FROM:<x@remote.test> from 127.0.0.1: "
                                 "X-Mailsrv-Spam: yes; reasons=validation helo-ours")

    def test_whitelisted_sender_is_never_refused_at_mail(self):
        result = self.swaks("127.0.0.1", "x@partner.test", "--helo", "mail.example.test")
        self.assertIn("<-  250 2.1.0 Ok", result.stdout)
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertIn("X-Mailsrv-Spam: no; reasons=whitelist:sender\n", self.delivered())

    def test_received_ip_from_a_trusted_host_is_checked(self):
        self.assertEqual(self.send("127.0.0.6", message=RELAYED.format(ip="203.0.113.9"))[0],
                         250)
        message = self.delivered(".Junk")
        self.assertIn("X-Mailsrv-DNSBL: 203.0.113.9 listed in std.test (127.0.0.2), from a "
                      "Received header\nX-Mailsrv-Spam: yes; reasons=dnsbl std.test 127.0.0.2 "
                      "received 203.0.113.9\nReceived: from relay.test", message)
        self.server.wait_for_log("from 127.0.0.6: X-Mailsrv-Spam: yes; reasons=dnsbl std.test "
                                 "127.0.0.2 received 203.0.113.9 action=move:Junk")

    def test_clean_received_ip(self):
        self.assertEqual(self.send("127.0.0.6", message=RELAYED.format(ip="192.0.2.1"))[0], 250)
        self.assertIn("X-Mailsrv-Spam: no; reasons=-\nReceived: from relay.test",
                      self.delivered())

    def test_lists_check_warns_about_our_own_domain(self):
        out = self.server.admin("lists", "check").stdout
        self.assertIn(f"spamskip: {self.server.dir / 'spamskip.txt'}: 1 entries\n", out)
        self.assertIn(f"sender whitelist: {self.server.dir / 'whitelist.txt'}: 2 entries\n"
                      "sender whitelist: warning: example.test is in our own domain "
                      "example.test: spammers forge such senders, so only clients that log "
                      "in, are trusted or have a POP-before-SMTP window benefit; remove it\n",
                      out)
        self.assertNotIn("partner.test", out)


CONTENT = DNSBL + """
[antispam.phrases]
action = "subject"

[antispam.html]
features = ["script_tag", "image_tag"]
action = "move:Junk"
"""

HTML_MESSAGE = ("From: x@remote.test\r\nSubject: offer\r\nContent-Type: text/html\r\n\r\n"
                "<p>buy cheap pills</p><script>1</script><img src=x>\r\n")


class ContentAndExplainTests(FilterServerCase):
    """
    The content filters through the real server, and `mailsrv explain` on
    the same message saying what the server did, DNS lookups included.
    """

    ANTISPAM = CONTENT
    FILES = {"phrase-list.txt": "cheap pills\n"}

    def test_explain_says_what_the_server_did(self):
        self.assertEqual(self.send(source="127.0.0.2", message=HTML_MESSAGE)[0], 250)
        stored = self.delivered(folder=".Junk")
        [spam_header] = [line for line in stored.splitlines()
                         if line.startswith("X-Mailsrv-Spam: ")]
        message = self.server.dir / "message.eml"
        message.write_bytes(HTML_MESSAGE.encode())
        out = self.server.admin("explain", str(message), "--ip", "127.0.0.2",
                                "--helo", "client.test", "--to", "alice@example.test").stdout
        lines = out.splitlines()
        self.assertIn(spam_header, lines)
        self.assertIn("body PhraseFilter: spam, action subject: phrase cheap pills", lines)
        self.assertIn("sender DNSBLFilter: counts, action none: dnsbl std.test 127.0.0.2",
                      lines)
        self.assertEqual(lines[-1], "result: delivered, action move:Junk")
        self.assertIn("Subject: offer", stored)  # (the subject action lost to move:Junk)


SPAM_TEXT = ("From: x@remote.test\r\nSubject: winner\r\n\r\n"
             "Cheap pills, casino winner, buy now\r\n")
GOOD_TEXT = ("From: y@remote.test\r\nSubject: lunch\r\n\r\n"
             "The meeting agenda for tomorrow, and the report\r\n")


class RetrainingTests(FilterServerCase):
    """
    `mailsrv filter train` on the running server's table: the next
    messages are judged by what it learned, without a restart.
    """

    ANTISPAM = """
[antispam.statistical]
action = "move:Junk"
subject_prefix = "[BAYES] "
"""

    def test_training_sends_that_kind_of_message_to_junk(self):
        self.assertEqual(self.send(message=SPAM_TEXT)[0], 250)  # an empty table knows nothing
        self.assertIn("X-Mailsrv-Spam: no; reasons=-", self.delivered())
        for name, text in (("Spam", SPAM_TEXT), ("Good", GOOD_TEXT)):
            folder = mailbox.Maildir(self.server.dir / name)
            for _ in range(3):
                folder.add(text)
        self.server.admin("filter", "train", "--spam", str(self.server.dir / "Spam"),
                          "--ham", str(self.server.dir / "Good"))
        deadline = time.monotonic() + 5  # (the table is re-read within a second of a change)
        while not self.server.maildir_files(folder=".Junk"):
            self.assertLess(time.monotonic(), deadline, "still not in Junk")
            self.assertEqual(self.send(message=SPAM_TEXT)[0], 250)
            time.sleep(0.2)
        stored = self.delivered(folder=".Junk")
        self.assertIn("X-Mailsrv-Spam: yes; reasons=statistical ", stored)
        self.assertIn("Subject: [BAYES] winner", stored)
        self.assertEqual(self.send(message=GOOD_TEXT)[0], 250)
        self.assertEqual(len(self.server.maildir_files(folder=".Junk")), 1)


class RHSBLTests(FilterServerCase):
    """Lists that look up the sender's domain and the HELO name, beside the IP lists."""

    ANTISPAM = """
[antispam.dnsbl]
lists = [{ zone = "dbl.test", lookup = "sender" },
         { zone = "hbl.test", lookup = "helo", kind = "trusted", action = "reject" }]
action = "move:Junk"
timeout = 1
"""

    def test_listed_sender_domain_lands_in_junk(self):
        self.assertEqual(self.send(sender="x@spam-sender.test")[0], 250)
        stored = self.delivered(folder=".Junk")
        self.assertIn("X-Mailsrv-Spam: yes; reasons=dnsbl dbl.test 127.0.1.2 sender "
                      "spam-sender.test", stored)
        self.assertIn("X-Mailsrv-DNSBL: spam-sender.test listed in dbl.test (127.0.1.2), "
                      "the sender name", stored)

    def test_listed_helo_is_refused_at_mail(self):
        done = self.swaks("127.0.0.1", "x@remote.test", "--helo", "bad.helo.test")
        self.assertIn("550 5.7.1", done.stdout)
        self.assertIn("dnsbl hbl.test 127.0.0.2 helo bad.helo.test", done.stdout)
        self.assertEqual(self.server.maildir_files(), [])

    def test_clean_sender_and_helo(self):
        self.assertEqual(self.send(sender="x@remote.test", helo="client.test")[0], 250)
        self.assertIn("X-Mailsrv-Spam: no; reasons=-", self.delivered())


class ListServerByNameTests(FilterServerCase):
    """Regression: a list's own server given by name ("ns.std.test:PORT") is looked up."""

    def setUp(self):
        self.ANTISPAM = f"""
[antispam.dnsbl]
lists = [{{ zone = "std.test", server = "ns.std.test:{self.list_dns_port()}" }}]
action = "move:Junk"
timeout = 2
"""
        super().setUp()

    def list_dns_port(self):
        self.list_dns = TinyDNSServer({("2.0.0.127.std.test", "A"): ["127.0.0.2"]})
        self.addCleanup(self.list_dns.close)
        return self.list_dns.port

    def test_listed_client_lands_in_junk(self):
        self.assertEqual(self.send(source="127.0.0.2")[0], 250)
        self.assertIn("X-Mailsrv-Spam: yes; reasons=dnsbl std.test 127.0.0.2",
                      self.delivered(folder=".Junk"))
        self.assertIn(("2.0.0.127.std.test", "A"), self.list_dns.queries)  # (its own server)
