"""
Certificates for TLS tests, made with C{cryptography}: a CA, client
certificates it issues (valid or expired), self-signed ones.
"""

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from zope.interface import alsoProvides


class Issued:
    """A certificate and its key, writable as PEM files."""

    def __init__(self, cert, key):
        self.cert = cert
        self.key = key

    @property
    def cert_pem(self):
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self):
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write(self, directory, name):
        """Write NAME.pem and NAME.key under C{directory}; their paths."""
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        return cert, key


def present(transport, issued):
    """
    Make a fake transport look like a TLS connection whose client sent
    C{issued}'s certificate (verified, as the handshake does), or none
    when C{issued} is L{None}.
    """
    alsoProvides(transport, ISSLTransport)
    certificate = None if issued is None else crypto.X509.from_cryptography(issued.cert)
    transport.getPeerCertificate = lambda: certificate
    return transport


def tls_transport(issued, **kwargs):
    """A StringTransport over TLS with C{issued}'s client certificate (L{present})."""
    return present(StringTransport(**kwargs), issued)


def _name(common_name, email=None):
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if email is not None:
        attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return x509.Name(attributes)


def make(common_name, issuer=None, ca=False, days=30, expired=False, names=(), emails=(),
         subject_email=None, ips=()):
    """
    A certificate for C{common_name}, signed by C{issuer} (an L{Issued}) or
    self-signed; C{expired} puts its validity in the past; C{names} are its
    subjectAltName DNS names, C{emails} its subjectAltName email
    (rfc822Name) entries, C{ips} its IP addresses; C{subject_email} adds an
    emailAddress to its subject.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(days=60 if expired else 1)
    end = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=days)
    signer = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, subject_email))
        .issuer_name(issuer.cert.subject if issuer else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    )
    if names or emails or ips:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(name) for name in names]
            + [x509.RFC822Name(email) for email in emails]
            + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]), False)
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), True)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH,
                                   ExtendedKeyUsageOID.SERVER_AUTH]), False)
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def client_set(directory):
    """
    Write a CA and client certificates under C{directory}: C{ca}, C{valid}
    (issued by ca), C{expired} (issued by ca, expired), C{selfsigned}.

    @return: a dict of name to (cert path, key path).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = make("Test Client CA", ca=True, days=365)
    issued = {
        "ca": ca,
        "valid": make("alice@example.test", issuer=ca),
        "expired": make("old@example.test", issuer=ca, expired=True),
        "selfsigned": make("mallory@example.test"),
    }
    return {name: cert.write(directory, name) for name, cert in issued.items()}
