"""
SASL EXTERNAL's login (RFC 4422 appendix A): the user a verified TLS client
certificate names, with no password to check, counted and throttled by
the same rules as the password checker (L{throttled}).
"""

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from zope.interface import implementer

from mailsrv.address import is_address
from mailsrv.directory.checker import throttled


def certificate_addresses(certificate):
    """
    The mail addresses a verified client certificate names, which SASL
    EXTERNAL may log in as: its subjectAltName email (rfc822Name) entries;
    else its subject's emailAddress; else its subject's CN when that is an
    address. What is no address is left out.

    @param certificate: a C{cryptography} certificate.
    """
    try:
        alt_names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.RFC822Name)
    except x509.ExtensionNotFound:
        alt_names = []
    except ValueError:  # an extension cryptography cannot parse: trust none
        return []
    subject = certificate.subject
    for names in (alt_names,
                  [a.value for a in subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)],
                  [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]):
        addresses = [name for name in names if isinstance(name, str) and is_address(name)]
        if addresses:
            return addresses
    return []


class ICertificateUser(credentials.ICredentials):
    """A login vouched for by a verified TLS client certificate (SASL EXTERNAL)."""


@implementer(ICertificateUser)
class CertificateCredentials:
    """
    @ivar addresses: the addresses the certificate names
        (L{certificate_addresses}), in order.
    @ivar authzid: the identity the client asks to act as (bytes; empty:
        the certificate's user).
    @ivar fingerprint: the certificate's SHA-256, which tells repeated
        attempts apart for throttling.
    @ivar ip: the peer's address, which throttling keys on.
    """

    def __init__(self, certificate, authzid, ip):
        """
        @param certificate: the verified client certificate
            (C{cryptography}), or L{None}, which names nobody.
        """
        if certificate is None:
            self.addresses, self.fingerprint = [], b""
        else:
            self.addresses = certificate_addresses(certificate)
            self.fingerprint = certificate.fingerprint(hashes.SHA256())
        self.authzid = authzid
        self.ip = ip

    @property
    def name(self):
        """Who is logging in, for the log: the authzid, else the certificate's first address."""
        authzid = self.authzid.decode("utf-8", "replace")
        return authzid or (self.addresses[0] if self.addresses else "(no address)")


@implementer(ICredentialsChecker)
class CertificateChecker:
    """
    SASL EXTERNAL: the user is the first address of the certificate that
    names a user, or the authzid when it is one of them. There is no
    password to check; failures are counted and throttled all the same.
    """

    credentialInterfaces = (ICertificateUser,)

    def __init__(self, directory, sessions):
        self.directory = directory
        self.sessions = sessions

    def requestAvatarId(self, creds):
        names = [self.directory.login_name(a) for a in creds.addresses]
        users = [name for name in names if self.directory.is_user(name)]
        if creds.authzid:
            address = self.directory.login_name(creds.authzid.decode("utf-8", "replace"))
            user = address if address in users else None
        else:
            user = users[0] if users else None
            address = user or creds.name
        fingerprint = creds.fingerprint + b"\0" + creds.authzid

        def verify():
            if user is None:
                return defer.fail(error.UnauthorizedLogin("the certificate names no such user"))
            return defer.succeed(user)

        return throttled(self.sessions, creds.ip, address, fingerprint, verify)
