"""
Server certificates: load them, or make a self-signed one at first start so
that every listener can offer TLS from the first run.
"""

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.logger import Logger

from mailsrv.config import ConfigError

log = Logger()


def generate_self_signed(cert_path, key_path, hostname, days=3650):
    """
    Write a self-signed certificate for C{hostname} (as subject CN and DNS
    SAN) and its key (mode 0600).

    @return: the certificate's SHA-256 fingerprint, as hex pairs.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    for path in (cert_path, key_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return fingerprint(cert)


def fingerprint(cert):
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def server_context(settings):
    """
    The TLS context factory for every listener (implicit TLS and STARTTLS
    alike), creating a self-signed certificate first when neither the
    certificate nor the key exists.

    @raise ConfigError: for an unreadable or mismatched certificate or key.
    """
    tls = settings.tls
    cert_exists, key_exists = tls.cert.exists(), tls.key.exists()
    if not cert_exists and not key_exists:
        digest = generate_self_signed(str(tls.cert), str(tls.key), settings.hostname)
        log.warn(
            "generated a self-signed certificate for {hostname}: {path} "
            "(SHA-256 {fingerprint}); replace it with one from a CA for clients "
            "that verify",
            hostname=settings.hostname, path=str(tls.cert), fingerprint=digest,
        )
    elif not cert_exists or not key_exists:
        missing, key = (tls.cert, "cert") if not cert_exists else (tls.key, "key")
        raise ConfigError(settings.path, f"[tls] {key}", f"{missing} does not exist",
                          "give both cert and key, or neither to generate them")
    try:
        cert_pem = tls.cert.read_bytes()
        key_pem = tls.key.read_bytes()
    except OSError as e:
        raise ConfigError(settings.path, "[tls]", f"cannot read {e.filename}: {e.strerror}")
    try:
        certificate = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
        chain = [
            c.original
            for c in _chain_certificates(cert_pem)[1:]
        ]
        options = ssl.CertificateOptions(
            privateKey=certificate.privateKey.original,
            certificate=certificate.original,
            extraCertChain=chain or None,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
        options.getContext()  # checks that the key matches the certificate
    except Exception as e:
        raise ConfigError(settings.path, "[tls] cert",
                          f"cannot use {tls.cert} with {tls.key}: {e}",
                          "is the key the certificate's own?")
    return options


def _chain_certificates(pem):
    marker = b"-----END CERTIFICATE-----"
    return [
        ssl.Certificate.loadPEM(block + marker)
        for block in pem.split(marker)
        if b"-----BEGIN CERTIFICATE-----" in block
    ]
