"""
ARC through the real server (RFC 8617, docs/dkim.md "ARC sealing",
docs/filters.md "DKIM and DMARC"): a mailing list's alias at mailsrv
forwards a signed message from a p=reject domain to a member elsewhere
(a sink standing for the member's MX), and the copy that arrives carries
our ARC set, which an independent verifier (dkimpy) finds good against the
record `mailsrv dkim keygen` printed; and mail that a trusted list changed
and sealed passes our DMARC where an untrusted sealer's is refused.
"""

import re

import dkim
from cryptography.hazmat.primitives import serialization
from twisted.trial import unittest

from mailsrv import dkimkeys
from tests.dnsserver import TinyDNSServer
from tests.integration.harness import MailServerProcess, SinkServer

AUTHOR_KEY = dkimkeys.generate("rsa")
LIST_KEY = dkimkeys.generate("rsa")


def txt(text):
    """A TXT record's zone text: quoted strings of at most 255 characters."""
    return " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))


def pem(key):
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


MESSAGE = (b"From: Ceo <ceo@origin.test>\r\nTo: list@example.test\r\n"
           b"Subject: board meeting\r\nDate: Sun, 06 Dec 2026 09:00:00 +0000\r\n"
           b"Message-ID: <b1@origin.test>\r\n\r\nAt ten, in room 4.\r\n")


def signed(message):
    return dkim.sign(message, b"s1", b"origin.test", pem(AUTHOR_KEY)) + message


def through_list(message, sealer):
    """What a mailing list at C{sealer} makes of C{message}: a Subject tag, then its seal."""
    tagged = message.replace(b"Subject: board", b"Subject: [board] board")
    tagged = f"Authentication-Results: {sealer}; dkim=pass header.d=origin.test\r\n".encode() \
        + tagged
    return b"".join(dkim.arc_sign(tagged, b"s1", sealer.encode(), pem(LIST_KEY),
                                  sealer.encode())) + tagged


class ARCTests(unittest.TestCase):
    def setUp(self):
        self.sink = SinkServer()
        self.addCleanup(self.sink.close)
        self.records = {
            ("s1._domainkey.origin.test", "TXT"): [txt(dkimkeys.record(AUTHOR_KEY))],
            ("_dmarc.origin.test", "TXT"): [txt("v=DMARC1; p=reject")],
            ("s1._domainkey.lists.test", "TXT"): [txt(dkimkeys.record(LIST_KEY))],
            ("s1._domainkey.rogue.test", "TXT"): [txt(dkimkeys.record(LIST_KEY))],
        }
        self.dns = None
        self.server = MailServerProcess(extra={
            "delivery": {"smart_host": f"127.0.0.1:{self.sink.port}", "retry": [1]},
            "dkim": {"sign": [{"domain": "example.test", "selector": "arc2026"}]},
        })
        out = self.server.admin("dkim", "keygen", "example.test", "arc2026").stdout
        line = [line for line in out.splitlines() if "IN TXT" in line][0]
        self.ours = "".join(re.findall(r'"([^"]*)"', line))
        self.dns = TinyDNSServer(self.records)
        self.addCleanup(self.dns.close)
        with open(self.server.config, "a") as config:
            config.write(f'\n[dns]\nservers = ["{self.dns.address}"]\ntimeout = 1\n'
                         "\n[antispam.dkim]\n\n[antispam.dmarc]\n"
                         'trusted_sealers = ["lists.test"]\n')
        (self.server.dir / "aliases").write_text("list@example.test: member@far.test\n")
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def send(self, message, sender):
        """C{message} to the list's alias; the reply to the end of DATA."""
        with self.server.smtp() as client:
            client.ehlo("client.test")
            client.mail(sender)
            client.rcpt("list@example.test")
            return client.data(message)

    def arc_verify(self, data):
        records = {"arc2026._domainkey.example.test": self.ours.encode(),
                   "s1._domainkey.lists.test": dkimkeys.record(LIST_KEY).encode()}
        return dkim.arc_verify(data, dnsfunc=lambda name, timeout=5:
                               records.get(name.decode().rstrip(".")))

    def test_a_forwarded_message_carries_our_seal(self):
        reply = self.send(signed(MESSAGE), "ceo@origin.test")
        self.assertEqual(reply[0], 250)
        (sender, recipients, data), = self.sink.wait_for(1)
        self.assertEqual(recipients, ["<member@far.test>"])
        self.assertTrue(data.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; "
                                        b"d=example.test; s=arc2026;"), data[:120])
        self.assertIn(b"ARC-Authentication-Results: i=1; mail.example.test;", data)
        cv, _, why = self.arc_verify(data)
        self.assertEqual((cv, why), (dkim.CV_Pass, "success"))
        # The next hop changes nothing; if anyone did, the seal would say so.
        cv, _, _ = self.arc_verify(data.replace(b"room 4", b"room 5"))
        self.assertEqual(cv, dkim.CV_Fail)

    def test_a_trusted_list_keeps_its_mail_passing_and_we_seal_on_top(self):
        reply = self.send(through_list(signed(MESSAGE), "lists.test"),
                                 "bounces@lists.test")
        self.assertEqual(reply[0], 250)
        (_, _, data), = self.sink.wait_for(1)
        header = data.split(b"\r\n\r\n", 1)[0].decode()
        self.assertIn("arc=pass (i=1 d=lists.test)", header)
        self.assertIn("dmarc=fail (p=reject overridden: ARC sealed by lists.test)", header)
        self.assertTrue(data.startswith(b"ARC-Seal: i=2; cv=pass;"), data[:80])
        cv, sets, why = self.arc_verify(data)
        self.assertEqual((cv, why, len(sets)), (dkim.CV_Pass, "success", 2))

    def test_an_untrusted_sealer_does_not_save_a_dmarc_failure(self):
        code, text = self.send(through_list(signed(MESSAGE), "rogue.test"),
                                      "bounces@rogue.test")
        self.assertEqual((code, text), (550, b"5.7.1 Message refused as spam"))
        self.server.wait_for_log("reasons=dkim fail origin.test, dmarc fail p=reject")
