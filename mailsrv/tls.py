"""
Server certificates and the TLS contexts built from them: load them (or make
a self-signed one at first start so that every listener can offer TLS from
the first run), serve the [domain] tables' own certificates to clients that
ask for their names (SNI), verify client certificates against [tls]
client_ca, reload everything on SIGHUP, and warn before a certificate
expires.
"""

import datetime
import functools
import os
import signal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.application import service
from twisted.internet import ssl, task
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from mailsrv import metrics
from mailsrv.config import ConfigError
from mailsrv.netaddr import peer_ip

log = Logger()

# A certificate that expires sooner than this is logged at every check.
EXPIRY_WARNING = datetime.timedelta(days=14)
CHECK_INTERVAL = 86400  # seconds between expiry checks

# OpenSSL verify results a client certificate usually fails with, worded
# for the audit log (X509_V_ERR_*).
VERIFY_ERRORS = {
    2: "issuer certificate not found",
    7: "bad signature",
    9: "not yet valid",
    10: "expired",
    18: "self-signed",
    19: "self-signed certificate in chain",
    20: "not issued by client_ca",
    21: "not issued by client_ca",
    24: "issuer is not a CA",
    26: "not for client authentication",
}

# TLS alerts a server sends when a required certificate is missing:
# handshake_failure (TLS 1.2) and certificate_required (TLS 1.3).
_NO_CERTIFICATE_ALERTS = (40, 116)
_FATAL = 2  # (an alert's level, RFC 8446 6)


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


class ServerTLS:
    """
    The [tls] files and the [domain] tables' certificates of one process,
    and one context factory per client_cert mode, all sharing them.
    L{reload} swaps new files in for new connections; connections already
    open keep the context they started with.

    @ivar certificate: the global leaf certificate in use (a C{cryptography}
        object).
    """

    def __init__(self, settings):
        """
        @raise ConfigError: for an unreadable or mismatched certificate or
            key, or an unusable client_ca.
        """
        self.settings = settings
        self._contexts = {}
        generate_if_missing(settings)
        self._material = load_files(settings)

    @property
    def certificate(self):
        return self._material.certificate.leaf

    def context(self, mode="none"):
        """The context factory for listeners whose effective client_cert is C{mode}."""
        if mode not in self._contexts:
            self._contexts[mode] = ListenerContext(mode, self._material)
        return self._contexts[mode]

    def reload(self):
        """
        Read the files again; on any problem log it and keep serving the old
        ones, every domain's too (a typo must not take TLS down).

        @return: whether the new files are in use.
        """
        try:
            material = load_files(self.settings)
        except ConfigError as e:
            log.error("TLS reload failed, still using the previous certificate: {error}",
                      error=str(e))
            return False
        self._material = material
        for context in self._contexts.values():
            context.use(material)
        for certificate in material.all():
            log.info(_named(certificate, "reloaded: {path} (SHA-256 {fingerprint})"),
                     domain=certificate.domain, path=str(certificate.path),
                     fingerprint=fingerprint(certificate.leaf))
        self.check_expiry()
        return True

    def check_expiry(self, now=None):
        """Log loudly each expired certificate, and each that expires within 14 days."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        for certificate in self._material.all():
            leaf = certificate.leaf
            not_after = leaf.not_valid_after_utc
            fields = dict(domain=certificate.domain, path=str(certificate.path),
                          subject=leaf.subject.rfc4514_string(),
                          not_after=not_after.isoformat())
            if not_after <= now:
                log.critical(_named(
                    certificate, "EXPIRED: {path} subject={subject} notAfter={not_after}; "
                    "clients that verify refuse it: install a new one and send SIGHUP"),
                    **fields)
            elif not_after - now < EXPIRY_WARNING:
                log.warn(_named(
                    certificate, "expires in {days} days: {path} subject={subject} "
                    "notAfter={not_after}; install a new one and send SIGHUP"),
                    days=(not_after - now).days, **fields)


def _named(certificate, text):
    """A log format about C{certificate}: the domain's is named as such."""
    return ("TLS certificate of {domain} " if certificate.domain else "TLS certificate ") + text


class CertificateWatch(service.Service):
    """
    Checks the certificate's expiry at start and then daily, and reloads
    on SIGHUP (twistd itself uses SIGUSR1 and leaves SIGHUP alone; a
    handler found installed is still called after ours).

    @ivar reactor: runs the daily check, and the reload the signal handler
        schedules (a Clock in tests that send no signal).
    @ivar on_hangup: what SIGHUP reloads: the [tls] files by default, the
        whole config in the server (mailsrv/reload.py).
    """

    def __init__(self, tls, reactor, on_hangup=None):
        self.tls = tls
        self.reactor = reactor
        self.on_hangup = on_hangup or tls.reload
        self._loop = None
        self._previous = None

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.tls.check_expiry)
        self._loop.clock = self.reactor
        self._loop.start(CHECK_INTERVAL, now=True)
        self._previous = signal.signal(signal.SIGHUP, self._sighup)

    def _sighup(self, signum, frame):
        # A signal handler may run in the middle of any reactor code: only
        # schedule the reload.
        self.reactor.callFromThread(self.on_hangup)
        if callable(self._previous):
            self._previous(signum, frame)

    def stopService(self):
        super().stopService()
        self._loop.stop()
        signal.signal(signal.SIGHUP, self._previous)


class _Certificate:
    """
    A certificate chain and its key.

    @ivar domain: the [domain] table that names it; "" for [tls]'s.
    @ivar names: the server names that select it: the domain and its
        subjectAltName DNS names (C{*.example.org} too), lower-case.
    """

    def __init__(self, key, chain, path, domain=""):
        self.key = key
        self.chain = chain  # crypto.X509, leaf first
        self.path = path
        self.domain = domain
        self.leaf = chain[0].to_cryptography()
        try:
            alt_names = self.leaf.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            alt_names = []
        self.names = [domain] + [name.lower().rstrip(".") for name in alt_names]


class _Material:
    """What one reading of the [tls] files and the domains' certificates gave."""

    def __init__(self, certificate, domains, client_cas):
        self.certificate = certificate  # the global _Certificate
        self.domains = domains  # the domains' _Certificates, in config order
        self.client_cas = client_cas  # crypto.X509

    def all(self):
        return [self.certificate, *self.domains]


@implementer(IOpenSSLServerConnectionCreator)
class ListenerContext:
    """
    A server TLS context factory (TLS 1.2 minimum, Twisted's default
    ciphers) asking for client certificates per C{mode}: C{none},
    C{request} (optional, but one that is sent must be valid) or
    C{require}. Refusals are logged as C{tls_invalid_client_certificate}.
    A client whose ClientHello names a domain's certificate (SNI) gets that
    one, in a context alike in all else.
    """

    def __init__(self, mode, material):
        self.mode = mode
        self.use(material)

    def use(self, material):
        """Build the contexts new connections get from now on."""
        context = self._build(material.certificate, material.client_cas)
        by_name = {}
        for certificate in material.domains:
            domain_context = self._build(certificate, material.client_cas)
            for name in certificate.names:
                # a domain's own name first, then the first certificate to list it
                if name == certificate.domain or name not in by_name:
                    by_name[name] = domain_context
        if by_name:
            context.set_tlsext_servername_callback(functools.partial(_select, by_name))
        self._context = context

    def _build(self, certificate, client_cas):
        options = ssl.CertificateOptions(
            privateKey=certificate.key,
            certificate=certificate.chain[0],
            extraCertChain=certificate.chain[1:] or None,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
        context = options.getContext()
        if self.mode != "none":
            store = context.get_cert_store()
            for ca in client_cas:
                store.add_cert(ca)
            context.set_client_ca_list([ca.get_subject() for ca in client_cas])
            flags = SSL.VERIFY_PEER
            if self.mode == "require":
                flags |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            context.set_verify(flags, _verify_client)
        context.set_info_callback(_watch_handshake)
        return context

    def getContext(self):
        return self._context

    def serverConnectionForTLS(self, protocol):
        return _Connection(self._context, None)


def _select(by_name, connection):
    """
    The SNI callback: switch C{connection} to the context of the
    certificate that lists the name it asks for (a C{*.} name covers one
    label), else leave it on the global one.
    """
    name = connection.get_servername()
    if name is None:
        return
    name = name.decode("ascii", "replace").lower().rstrip(".")
    context = by_name.get(name) or by_name.get("*." + name.partition(".")[2])
    if context is not None:
        connection.set_context(context)


class _Connection(SSL.Connection):
    """An SSL connection remembering what the client-certificate callbacks saw."""

    certificate_requested = False
    certificate_seen = False


def _verify_client(connection, certificate, errno, depth, ok):
    """
    OpenSSL's verdict on each certificate of the client's chain, kept (an
    invalid certificate fails the handshake in both modes, so that
    getPeerCertificate() only ever returns a verified one) and logged.
    """
    connection.certificate_seen = True
    subject = certificate.to_cryptography().subject.rfc4514_string()
    if not ok:
        _audit_refusal(connection, VERIFY_ERRORS.get(errno, f"verify error {errno}"), subject)
        return False
    if depth == 0:
        log.info("client certificate: subject={subject} ip={ip}",
                 subject=subject, ip=_connection_ip(connection))
    return True


def _watch_handshake(connection, where, ret):
    """
    Count handshakes done and refused (a fatal alert we send). A client
    that sends no certificate where one is required never reaches the
    verify callback: spot the alert OpenSSL sends it.
    """
    if where & SSL.SSL_CB_HANDSHAKE_DONE:
        metrics.TLS_HANDSHAKES.labels("ok").inc()
    elif where & SSL.SSL_CB_WRITE_ALERT == SSL.SSL_CB_WRITE_ALERT and ret >> 8 == _FATAL:
        metrics.TLS_HANDSHAKES.labels("failed").inc()
    if where & SSL.SSL_CB_LOOP and b"certificate request" in connection.get_state_string():
        connection.certificate_requested = True
    elif (where & SSL.SSL_CB_WRITE_ALERT == SSL.SSL_CB_WRITE_ALERT
          and connection.certificate_requested
          and not connection.certificate_seen
          and ret & 0xFF in _NO_CERTIFICATE_ALERTS):
        _audit_refusal(connection, "no certificate", "(none)")


def _audit_refusal(connection, reason, subject):
    log.warn("tls_invalid_client_certificate: ip={ip} reason={reason} subject={subject}",
             ip=_connection_ip(connection), reason=reason, subject=subject,
             audit="tls_invalid_client_certificate")


def _connection_ip(connection):
    """
    The client's IP. The app data is Twisted's TLSMemoryBIOProtocol: for
    implicit TLS its transport is the listener's outermost wrapper; after
    STARTTLS its transport is the TCP connection itself, and the wrappers
    are above it. Either way the protocol it wraps (mailsrv.service's
    connection limit) asks the wrapper that knows the client's address,
    which a PROXY header may have given (L{mailsrv.proxyprotocol}).
    """
    protocol = connection.get_app_data()
    above = getattr(protocol.wrappedProtocol, "getPeer", None)
    return peer_ip(above() if above is not None else protocol.transport.getPeer())


def pair_missing(settings):
    """
    Whether neither the certificate nor the key exists (start-up makes them).

    @raise ConfigError: when only one of them exists.
    """
    tls = settings.tls
    cert_exists, key_exists = tls.cert.exists(), tls.key.exists()
    if cert_exists != key_exists:
        missing, key = (tls.cert, "cert") if not cert_exists else (tls.key, "key")
        raise ConfigError(settings.path, f"[tls] {key}", f"{missing} does not exist",
                          "give both cert and key, or neither to generate them")
    return not cert_exists


def generate_if_missing(settings):
    """Make a self-signed pair when neither [tls] file exists; whether it did."""
    if pair_missing(settings):
        tls = settings.tls
        digest = generate_self_signed(str(tls.cert), str(tls.key), settings.hostname)
        log.warn(
            "generated a self-signed certificate for {hostname}: {path} "
            "(SHA-256 {fingerprint}); replace it with one from a CA for clients "
            "that verify",
            hostname=settings.hostname, path=str(tls.cert), fingerprint=digest,
        )
        return True
    return False


def load_files(settings):
    """
    Read and check the [tls] files and the domains' certificates.
    @raise ConfigError: on any problem.
    """
    tls = settings.tls
    certificate = _load_pair(settings, "[tls] cert", tls.cert, "[tls] key", tls.key)
    return _Material(certificate, load_domain_certificates(settings),
                     load_client_cas(settings))


def load_domain_certificates(settings):
    """The L{_Certificate}s of the [domain] tables that give one. @raise ConfigError."""
    return [_load_pair(settings, domain.key("tls_cert"), domain.tls_cert,
                       domain.key("tls_key"), domain.tls_key, domain.name)
            for domain in settings.per_domain if domain.tls_cert is not None]


def _load_pair(settings, cert_key, cert_path, key_key, key_path, domain=""):
    """A certificate chain and its key from their files. @raise ConfigError."""
    cert_pem = _read(settings, cert_key, cert_path)
    key_pem = _read(settings, key_key, key_path)
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
        chain = _pem_certificates(cert_pem)
        if not chain:
            raise ValueError(f"{cert_path} holds no PEM certificate")
        context = SSL.Context(SSL.TLS_METHOD)
        context.use_certificate(chain[0])
        context.use_privatekey(key)
        context.check_privatekey()
    except Exception as e:
        raise ConfigError(settings.path, cert_key,
                          f"cannot use {cert_path} with {key_path}: {e}",
                          "is the key the certificate's own?")
    return _Certificate(key, chain, cert_path, domain)


def load_client_cas(settings):
    """The [tls] client_ca certificates ([] when unset). @raise ConfigError."""
    tls = settings.tls
    if tls.client_ca is None:
        return []
    ca_pem = _read(settings, "[tls] client_ca", tls.client_ca)
    try:
        client_cas = _pem_certificates(ca_pem)
    except ValueError as e:
        raise ConfigError(settings.path, "[tls] client_ca", f"{tls.client_ca}: {e}")
    if not client_cas:
        raise ConfigError(settings.path, "[tls] client_ca",
                          f"{tls.client_ca} holds no PEM certificate",
                          "give the CA certificates that issue client certificates, in PEM")
    return client_cas


def trust_root(ca_file):
    """
    The CAs that "verify" delivery hops (or Redis) must chain to:
    C{ca_file}'s (the [delivery] tls_ca_file, [sessions] redis_ca), or the
    system's when it is L{None}.
    @raise ValueError: saying why the file cannot serve.
    """
    if ca_file is None:
        return ssl.platformTrust()
    try:
        pem = ca_file.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {ca_file}: {e.strerror}")
    certificates = _pem_certificates(pem)
    if not certificates:
        raise ValueError(f"{ca_file} holds no PEM certificate")
    return ssl.trustRootFromCertificates([ssl.Certificate(c) for c in certificates])


def redis_client_tls(settings):
    """
    How connections to Redis over TLS (rediss://, rediss+sentinel://) are
    made, read once at start-up: a function of the host name Redis's
    certificate must name (as the URL or a sentinel gives it) to the client
    TLS options, trusting [sessions] redis_ca (or the system's CAs) and
    showing redis_cert; L{None} without TLS.

    @raise ConfigError: naming the [sessions] key whose file cannot serve.
    """
    sessions = settings.sessions
    if not sessions.redis_url.tls:
        return None
    try:
        trust = trust_root(sessions.redis_ca)
    except ValueError as e:
        raise ConfigError(settings.path, "[sessions] redis_ca", str(e),
                          "give the CA certificates (PEM) that issue Redis's certificate")
    pair = None
    if sessions.redis_cert is not None:
        pair = _load_pair(settings, "[sessions] redis_cert", sessions.redis_cert,
                          "[sessions] redis_key", sessions.redis_key)
    return functools.partial(_redis_options, trust, pair)


def _redis_options(trust, pair, host):
    if pair is None:
        return ssl.optionsForClientTLS(host, trustRoot=trust)
    return ssl.optionsForClientTLS(
        host, trustRoot=trust,
        clientCertificate=ssl.PrivateCertificate.fromCertificateAndKeyPair(
            ssl.Certificate(pair.chain[0]), ssl.KeyPair(pair.key)),
        extraCertificateOptions={"extraCertChain": pair.chain[1:]})


def _read(settings, key, path):
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(settings.path, key, f"cannot read {path}: {e.strerror}")


def _pem_certificates(pem):
    """Every certificate of a PEM bundle, in order (a chain: the leaf first)."""
    marker = b"-----END CERTIFICATE-----"
    try:
        return [
            crypto.load_certificate(crypto.FILETYPE_PEM, block + marker)
            for block in pem.split(marker)
            if b"-----BEGIN CERTIFICATE-----" in block
        ]
    except crypto.Error as e:
        raise ValueError(f"bad PEM certificate: {e}")
