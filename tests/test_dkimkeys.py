"""
`mailsrv dkim keygen` and `dkim check` (mailsrv/dkimkeys.py): keys written
0600 and never over a file, the record as DNS must hold it, and the check
through the tests' DNS server; a key and its record that dkimpy, an
independent implementation, signs and verifies with.
"""

import os
import re
import stat

import dkim
from cryptography.hazmat.primitives import serialization
from twisted.trial import unittest

from mailsrv import dkimkeys
from tests.dnsserver import TinyDNSServer
from tests.test_admin import AdminTestCase

MESSAGE = (b"From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: signed\r\n"
           b"Date: Sun, 06 Dec 2026 09:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\n"
           b"hello\r\n")


def published(output):
    """The TXT record text printed by keygen (its quoted strings joined)."""
    line = [line for line in output.splitlines() if "IN TXT" in line][0]
    return "".join(re.findall(r'"([^"]*)"', line))


class KeyTests(unittest.TestCase):
    def test_record_and_compare(self):
        for kind in dkimkeys.KEY_TYPES:
            key = dkimkeys.generate(kind)
            text = dkimkeys.record(key)
            self.assertTrue(text.startswith(f"v=DKIM1; k={kind}; p="))
            self.assertEqual(dkimkeys.compare(key, [text])[0], True)
            self.assertEqual(dkimkeys.compare(key, [text.replace("; ", ";\t ")])[0], True)
            other = dkimkeys.record(dkimkeys.generate(kind))
            self.assertEqual(dkimkeys.compare(key, [other]),
                             (False, "p= is another public key"))
        key = dkimkeys.generate("rsa")
        self.assertEqual(dkimkeys.compare(key, []), (False, "no TXT record"))
        self.assertEqual(dkimkeys.compare(key, ["v=DKIM1; k=rsa; p="]),
                         (False, "p= is empty: the key is revoked"))
        self.assertEqual(dkimkeys.compare(key, ["v=DKIM1; k=ed25519; p=AAAA"]),
                         (False, "k=ed25519, but the key is rsa"))
        self.assertIn("2 TXT records", dkimkeys.compare(key, ["a", "b"])[1])

    def test_dkimpy_signs_and_verifies_with_them(self):
        # (RSA: dkimpy signs Ed25519 from a raw seed, not our PEM; tests/test_signing.py
        # signs with both kinds)
        key = dkimkeys.generate("rsa")
        pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        signature = dkim.sign(MESSAGE, b"s1", b"example.test", pem)
        text = dkimkeys.record(key).encode()
        self.assertTrue(dkim.verify(signature + MESSAGE, dnsfunc=lambda name, timeout=5: text))
        self.assertFalse(dkim.verify(signature + MESSAGE.replace(b"hello", b"hullo"),
                                     dnsfunc=lambda name, timeout=5: text))

    def test_refused_keys(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a key\n")
        self.assertRaises(dkimkeys.DKIMKeyError, dkimkeys.read_key, path)


class CommandTests(AdminTestCase):
    def setUp(self):
        super().setUp()
        self.dns = TinyDNSServer({})
        self.addCleanup(self.dns.close)
        self.config.write_text(self.config.read_text()
                               + f'[dns]\nservers = ["{self.dns.address}"]\ntimeout = 2\n')

    def test_keygen_then_check(self):
        status, out, err = self.run_command("dkim", "keygen", "example.test", "s2026",
                                            "--type", "ed25519")
        self.assertEqual(status, 0, err)
        path = self.root / "dkim" / "example.test.s2026.key"
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertIn("s2026._domainkey.example.test. IN TXT", out)
        status, out, err = self.run_command("dkim", "check", "example.test", "s2026")
        self.assertEqual(status, 1)
        self.assertIn("MISMATCH: no TXT record", out)
        self.dns.records[("s2026._domainkey.example.test", "TXT")] = [
            '"' + published(self.run_command("dkim", "check", "example.test", "s2026")[1]) + '"']
        status, out, _ = self.run_command("dkim", "check", "example.test", "s2026")
        self.assertEqual((status, out), (0, "s2026._domainkey.example.test: ok: the record "
                                            "holds this ed25519 key's public half\n"))

    def test_keygen_never_overwrites_and_wants_a_local_domain(self):
        self.run_command("dkim", "keygen", "example.test", "s1")
        status, _, err = self.run_command("dkim", "keygen", "example.test", "s1")
        self.assertEqual(status, 1)
        self.assertIn("exists already", err)
        status, _, err = self.run_command("dkim", "keygen", "elsewhere.test", "s1")
        self.assertIn("elsewhere.test is not in [domains] local", err)
