"""
DKIM signatures (RFC 6376; Ed25519, RFC 8463) on the mail our own clients
send and on our bounces (issue 21, docs/dkim.md).

dkimpy reads the message as its verifier does (the header fields, the
relaxed canonical forms, the fields RFC 6376 recommends signing, the hash
of the header fields), and OpenSSL, through C{cryptography}, makes the
signature of that hash. Not C{dkim.sign} itself: its RSA is pure Python,
12 ms a signature here against OpenSSL's 1 (docs/performance.md, "DKIM
signing"), and issue 21 gives signing 15% of a submission's cost.

The keys of C{[[dkim.sign]]} are read once, at start and on reload, into a
L{Signer}; L{Signer.signature} is plain CPU work on a whole message, which
its callers run inline for a small message and in a thread for a big one.
It imports nothing of Twisted: the callers choose the thread.
"""

import base64
import hashlib
import re
import time
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, utils
from dkim.canonicalization import CanonicalizationPolicy

from mailsrv import dkimkeys
from mailsrv.addresslist import addresses
from mailsrv.headerblock import FIELD

# Both relaxed: the forms that survive the re-folding and white space
# changes of the relays between us and the reader (RFC 6376 3.4).
RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_ALGORITHMS = {"rsa": b"rsa-sha256", "ed25519": b"ed25519-sha256"}
_TRAILING_WSP = re.compile(rb"[\t ]+(?=\r\n)")
_WSP_TO_COMPRESS = re.compile(rb"\t[\t ]*| [\t ]+")  # (a single space stays as it is)
_WIDTH = 76  # a folded DKIM-Signature line's length, at most (but a long word)


class SigningError(Exception):
    """A message we do not sign, and why (for the one log line it gets)."""


@dataclass(frozen=True, repr=False)
class SigningKey:
    """
    One C{[[dkim.sign]]} key.

    @ivar private: its C{cryptography} private key, RSA or Ed25519
        (L{dkimkeys.read_key}).
    """

    domain: str
    selector: str
    private: object

    def __repr__(self):  # (never the key itself in a log or traceback)
        return f"SigningKey({self.domain!r}, {self.selector!r}, {self.algorithm!r})"

    @property
    def algorithm(self):
        return _ALGORITHMS[dkimkeys.kind_of(self.private)]

    def sign(self, digest):
        """
        The signature of a SHA-256 C{digest}: RSASSA-PKCS1-v1_5, or
        PureEdDSA of the digest itself (RFC 8463 3).
        """
        if self.algorithm == b"ed25519-sha256":
            return self.private.sign(digest)
        return self.private.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


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
        @raise dkim.DKIMException: dkimpy cannot read the message.
        """
        header, body = _sections(message)
        keys = self.keys_for(from_domain(header))
        if not keys:
            return b""
        parsed = dkim.DKIM(header)  # (the header fields only: the body is CRLF text already)
        names = [name.lower() for name in parsed.default_sign_headers()]
        headers = RELAXED.canonicalize_headers(parsed.headers)
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
        now = int(time.time())
        return b"".join(_signature_field(key, headers, names, body_hash, now) for key in keys)


    def sealing_key(self, hostname):
        """
        The key that seals forwarded mail as our host (ARC: RSA only, RFC
        8617 says rsa-sha256), the hostname's domain's or its parent's; or
        L{None}.
        """
        return next((key for key in self.keys_for(hostname)
                     if key.algorithm == b"rsa-sha256"), None)

    def seal(self, message, hostname):
        """
        The ARC set (RFC 8617: ARC-Seal, ARC-Message-Signature,
        ARC-Authentication-Results) to put on top of a message we forward,
        made by dkimpy from our own Authentication-Results field in it
        (authserv-id C{hostname}; its C{arc=} result is the chain's state);
        C{b""} when we have no sealing key or the message carries no result
        of ours (nothing to vouch for). Plain CPU work: dkimpy's RSA, about
        25 ms, so callers run it in a thread.

        @raise dkim.DKIMException: dkimpy cannot read or seal the message.
        """
        key = self.sealing_key(hostname)
        if key is None:
            return b""
        pem = key.private.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
        return b"".join(dkim.arc_sign(message, key.selector.encode("ascii"),
                                      key.domain.encode("ascii"), pem,
                                      hostname.lower().encode("ascii")))


def _sections(message):
    """C{(header section, its last CRLF included; body)} of a message of CRLF lines."""
    if message.startswith(b"\r\n"):
        return b"", message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message, b""
    return message[:end + 2], message[end + 4:]


def relaxed_body(body):
    """
    The relaxed canonical form of a body of CRLF lines (RFC 6376 3.4.4),
    as dkimpy's C{Relaxed.canonicalize_body} makes it, but its regular
    expressions run only when the body has something for them: most text
    has no tab, no double space and no space at a line's end, and dkimpy's
    replacement of every single space took a third of a signature's time.
    """
    if b" \r\n" in body or b"\t\r\n" in body:
        body = _TRAILING_WSP.sub(b"", body)
    if b"\t" in body or b"  " in body:
        body = _WSP_TO_COMPRESS.sub(b" ", body)
    body = body.rstrip(b"\r\n")  # (no bare CR or LF: DATA refuses them)
    return body + b"\r\n" if body else b""


def _signature_field(key, headers, names, body_hash, now):
    """
    One key's DKIM-Signature field: its tags, b= empty, hashed after the
    signed header fields as a verifier hashes them (dkimpy's
    C{hash_headers}, which its verifier calls), then b= filled in.
    """
    tags = [b"v=1", b"a=" + key.algorithm, b"c=relaxed/relaxed",
            b"d=" + key.domain.encode("ascii"), b"s=" + key.selector.encode("ascii"),
            b"t=%d" % now, b"h=" + b" : ".join(names), b"bh=" + body_hash]
    field = _folded(b"DKIM-Signature: " + b"; ".join(tags)) + b";\r\n\tb="
    value = field[len(b"DKIM-Signature:"):]
    digest = hashlib.sha256()
    dkim.hash_headers(digest, RELAXED, headers, names, (b"DKIM-Signature", value), None)
    signature = base64.b64encode(key.sign(digest.digest()))
    width = _WIDTH - 1
    lines = [signature[i:i + width] for i in range(0, len(signature), width)]
    return field + b"\r\n\t".join(lines) + b"\r\n"


def _folded(text):
    """C{text} folded at its spaces into lines of at most L{_WIDTH} (a long word alone)."""
    lines, line = [], b""
    for word in text.split(b" "):
        if line and len(line) + 1 + len(word) > _WIDTH:
            lines.append(line)
            line = word
        else:
            line = line + b" " + word if line else word
    lines.append(line)
    return b"\r\n\t".join(lines)
