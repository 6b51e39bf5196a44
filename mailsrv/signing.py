"""
DKIM signatures (RFC 6376; Ed25519, RFC 8463) on the mail our own clients
send and on our bounces (issue 21, docs/dkim.md), made by dkimpy.

The keys of C{[[dkim.sign]]} are read once, at start and on reload, into a
L{Signer}; L{Signer.signature} is plain CPU work on a whole message, which
its callers run inline for a small message and in a thread for a big one.
It imports nothing of Twisted: the callers choose the thread.
"""

import base64
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import serialization

from mailsrv import dkimkeys
from mailsrv.addresslist import addresses
from mailsrv.headerblock import FIELD

# Both relaxed: the forms that survive the re-folding and white space
# changes of the relays between us and the reader (RFC 6376 3.4).
CANONICALIZATION = (b"relaxed", b"relaxed")
_ALGORITHMS = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}


class SigningError(Exception):
    """A message we do not sign, and why (for the one log line it gets)."""


@dataclass(frozen=True)
class SigningKey:
    """
    One C{[[dkim.sign]]} key as dkimpy takes it.

    @ivar private: RSA: the PKCS#1 PEM; Ed25519: the base64 of the 32-byte
        seed (dkimpy reads no PEM Ed25519 key).
    """

    domain: str
    selector: str
    algorithm: bytes
    private: bytes = b""

    def __repr__(self):  # (never the key itself in a log or traceback)
        return f"SigningKey({self.domain!r}, {self.selector!r}, {self.algorithm!r})"


def signing_key(domain, selector, key):
    """The L{SigningKey} of a C{cryptography} private key (L{dkimkeys.read_key})."""
    kind = dkimkeys.kind_of(key)
    if kind == "ed25519":
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        private = base64.b64encode(seed)
    else:
        private = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
    return SigningKey(domain, selector, _ALGORITHMS[kind], private)


def from_domain(header):
    """
    The domain of the one address in a header section's one From: field
    (lower case), which names the keys that sign.

    @raise SigningError: no From:, several, or not one address with a domain.
    """
    values = [value for name, value in FIELD.findall(header) if name.lower() == b"from"]
    if len(values) != 1:
        raise SigningError(f"{len(values)} From: fields" if values else "no From: field")
    found = [entry for entry in addresses(b" ".join(values[0].split())) if entry[3]]
    if len(found) != 1:
        raise SigningError("From: does not hold one address" if found else
                           "From: holds no address with a domain")
    return found[0][3].decode("ascii", "replace").lower().rstrip(".")


class Signer:
    """
    The keys of every domain that signs.

    @param keys: the L{SigningKey}s; several of one domain each sign.
    """

    def __init__(self, keys):
        self._by_domain = {}
        for key in keys:
            self._by_domain.setdefault(key.domain, []).append(key)

    def keys_for(self, domain):
        """
        The keys that sign mail from C{domain}: its own, else those of its
        nearest parent domain that has keys (a bounce From:
        MAILER-DAEMON@mail.example.org is signed by example.org's, which
        DMARC's relaxed alignment accepts).
        """
        labels = domain.split(".")
        for start in range(len(labels) - 1):
            keys = self._by_domain.get(".".join(labels[start:]))
            if keys:
                return keys
        return []

    def signature(self, message):
        """
        The DKIM-Signature fields to put on top of C{message} (bytes, CRLF
        line ends), one per key of its From: domain: relaxed/relaxed, over
        the header fields RFC 6376 5.4.1 recommends that the message has,
        From: once more than it appears so that none can be added (5.4.2).
        C{b""} when the domain has no key.

        @raise SigningError: the From: names no one domain.
        @raise dkim.DKIMException: dkimpy refused the message or a key.
        """
        end = -2 if message.startswith(b"\r\n") else message.find(b"\r\n\r\n")
        header = message if end == -1 else message[:end + 2]
        keys = self.keys_for(from_domain(header))
        return b"".join(
            dkim.sign(message, key.selector.encode("ascii"), key.domain.encode("ascii"),
                      key.private, canonicalize=CANONICALIZATION,
                      signature_algorithm=key.algorithm)
            for key in keys)
