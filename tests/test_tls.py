import os
import stat
from pathlib import Path

from OpenSSL import SSL
from twisted.trial import unittest

from mailsrv import tls
from mailsrv.config import ConfigError
from tests.helpers import make_settings


class CertificateTests(unittest.TestCase):
    def setUp(self):
        self.dir = Path(self.mktemp())
        self.settings = make_settings(self.dir, tls={"cert": "tls/cert.pem",
                                                     "key": "tls/key.pem"})

    def test_self_signed_certificate_is_generated_once(self):
        options = tls.server_context(self.settings)
        self.assertIsInstance(options.getContext(), SSL.Context)
        cert, key = self.dir / "tls" / "cert.pem", self.dir / "tls" / "key.pem"
        self.assertEqual(stat.S_IMODE(os.stat(key).st_mode), 0o600)
        from cryptography import x509

        loaded = x509.load_pem_x509_certificate(cert.read_bytes())
        san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(san.value.get_values_for_type(x509.DNSName), ["mail.example.test"])
        before = cert.read_bytes()
        tls.server_context(self.settings)
        self.assertEqual(cert.read_bytes(), before)

    def test_tls_1_2_is_the_minimum(self):
        options = tls.server_context(self.settings)
        self.assertEqual(options._options & SSL.OP_NO_TLSv1_1, SSL.OP_NO_TLSv1_1)
        self.assertEqual(options._options & SSL.OP_NO_TLSv1, SSL.OP_NO_TLSv1)

    def test_key_that_does_not_match(self):
        tls.server_context(self.settings)
        other = Path(self.mktemp())
        other.mkdir()
        tls.generate_self_signed(str(other / "c"), str(other / "k"), "x.test")
        (self.dir / "tls" / "key.pem").write_bytes((other / "k").read_bytes())
        with self.assertRaises(ConfigError) as caught:
            tls.server_context(self.settings)
        self.assertIn("[tls] cert: cannot use", str(caught.exception))

    def test_only_one_of_the_pair(self):
        tls.server_context(self.settings)
        (self.dir / "tls" / "key.pem").unlink()
        with self.assertRaises(ConfigError) as caught:
            tls.server_context(self.settings)
        self.assertIn("[tls] key", str(caught.exception))
        self.assertIn("does not exist", str(caught.exception))
