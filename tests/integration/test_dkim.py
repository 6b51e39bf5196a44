"""
[antispam.dkim] and [antispam.dmarc] through the real server, with the
tests' DNS server serving the keys, SPF and DMARC records: mail signed by
dkimpy (an independent signer) passes and keeps verifying as delivered; a
tampered copy fails; a forged From: of a p=reject domain is refused after
DATA (swaks, as a sender would see it); an Authentication-Results header
forged in our name never reaches the mailbox.
"""

import subprocess

import dkim
from cryptography.hazmat.primitives import serialization
from twisted.trial import unittest

from mailsrv import dkimkeys
from tests.dnsserver import TinyDNSServer
from tests.integration.harness import MailServerProcess, require_tool

KEY = dkimkeys.generate("rsa")


def txt(text):
    """A TXT record's zone text: quoted strings of at most 255 characters."""
    return " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))


RECORDS = {
    ("s1._domainkey.signed.test", "TXT"): [txt(dkimkeys.record(KEY))],
    ("_dmarc.signed.test", "TXT"): [txt("v=DMARC1; p=reject")],
    ("signed.test", "TXT"): [txt("v=spf1 -all")],
    ("_dmarc.forged.test", "TXT"): [txt("v=DMARC1; p=reject; rua=mailto:d@forged.test")],
    ("forged.test", "TXT"): [txt("v=spf1 -all")],
    ("_dmarc.spfonly.test", "TXT"): [txt("v=DMARC1; p=quarantine")],
    ("spfonly.test", "TXT"): [txt("v=spf1 ip4:127.0.0.0/8 -all")],
}

CONFIG = """
[antispam.dkim]
[antispam.dmarc]
"""

BODY = ("To: alice@example.test\r\nSubject: quarterly figures\r\n"
        "Date: Sun, 06 Dec 2026 09:00:00 +0000\r\nMessage-ID: <q4@signed.test>\r\n\r\n"
        "The figures are attached.\r\n")


def signed(message):
    pem = KEY.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    data = message.encode()
    return (dkim.sign(data, b"s1", b"signed.test", pem) + data).decode()


class DKIMServerTests(unittest.TestCase):
    def setUp(self):
        self.dns = TinyDNSServer(RECORDS)
        self.addCleanup(self.dns.close)
        self.server = MailServerProcess(extra={
            "dns": {"servers": [self.dns.address], "timeout": 1}})
        with open(self.server.config, "a") as config:
            config.write(CONFIG)
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def delivered(self, folder=""):
        [path] = self.server.maildir_files(folder=folder)
        return path.read_bytes()

    def test_signed_mail_passes_and_still_verifies_as_delivered(self):
        forged = "Authentication-Results: mail.example.test; dmarc=pass\r\n"
        message = signed("From: Boss <boss@signed.test>\r\n" + BODY)
        self.assertEqual(self.server.send(forged + message, "boss@signed.test")[0], 250)
        delivered = self.delivered()
        header = delivered.split(b"\r\n\r\n", 1)[0].decode()
        self.assertEqual(header.count("Authentication-Results:"), 1)
        self.assertIn("Authentication-Results: mail.example.test;\r\n\tspf=fail "
                      'smtp.mailfrom="boss@signed.test";\r\n\tdkim=pass header.d=signed.test '
                      "header.s=s1 header.b=", header)
        self.assertIn("dmarc=pass (p=reject) header.from=signed.test", header)
        self.assertIn("X-Mailsrv-Spam: no; reasons=dkim pass signed.test, dmarc pass", header)
        record = dkimkeys.record(KEY).encode()
        self.assertTrue(dkim.verify(delivered, dnsfunc=lambda name, timeout=5: record))

    def test_tampered_mail_fails_and_is_refused(self):
        message = signed("From: boss@signed.test\r\n" + BODY).replace("attached", "wired")
        code, text = self.server.send(message, "boss@signed.test")
        self.assertEqual((code, text), (550, b"5.7.1 Message refused as spam"))
        self.server.wait_for_log("X-Mailsrv-Spam: yes; reasons=dkim fail signed.test, "
                                 "dmarc fail p=reject")
        self.assertEqual(self.server.maildir_files(), [])

    def test_forged_from_of_a_reject_domain_is_refused(self):
        require_tool(self, "swaks")
        result = subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", str(self.server.ports["smtp"]),
             "--from", "x@remote.test", "--to", "alice@example.test",
             "--header", "From: ceo@forged.test", "--header", "Subject: pay this invoice"],
            capture_output=True, text=True, timeout=60)
        self.assertIn("<** 550 5.7.1 Message refused as spam", result.stdout)
        self.assertEqual(self.server.maildir_files(), [])

    def test_aligned_spf_alone_passes(self):
        message = "From: clerk@spfonly.test\r\n" + BODY
        self.assertEqual(self.server.send(message, "clerk@spfonly.test")[0], 250)
        header = self.delivered().split(b"\r\n\r\n", 1)[0].decode()
        self.assertIn('spf=pass smtp.mailfrom="clerk@spfonly.test"', header)
        self.assertIn("dkim=none", header)
        self.assertIn("dmarc=pass (p=quarantine) header.from=spfonly.test", header)

    def test_unaligned_spf_pass_is_quarantined(self):
        message = "From: clerk@spfonly.test\r\n" + BODY
        self.assertEqual(self.server.send(message, "bounce@remote.test")[0], 250)
        header = self.delivered(folder=".Junk").split(b"\r\n\r\n", 1)[0].decode()
        self.assertIn("dmarc=fail (p=quarantine no aligned pass) header.from=spfonly.test",
                      header)
