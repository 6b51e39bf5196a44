"""
DKIM keys as an admin handles them (issue 21, docs/dkim.md): `mailsrv dkim
keygen DOMAIN SELECTOR` makes a key (RSA 2048 or Ed25519, RFC 8463) and the
TXT record to publish at SELECTOR._domainkey.DOMAIN; `mailsrv dkim check`
looks that record up and says whether it holds the key's public half.

A key file is PEM (PKCS#8), mode 0600, whatever its type: the same file
OpenSSL, OpenDKIM and rspamd's tools read.
"""

import base64
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

KEY_TYPES = ("rsa", "ed25519")
RSA_BITS = 2048


class DKIMKeyError(ValueError):
    """A key file that is no DKIM key we can use: says why."""


def record_name(domain, selector):
    return f"{selector}._domainkey.{domain.rstrip('.').lower()}"


def generate(kind):
    """A new private key of C{kind} (L{KEY_TYPES})."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return ed25519.Ed25519PrivateKey.generate()


def write_key(key, path):
    """Write C{key} as PEM to C{path}, mode 0600, never over an existing file."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())


def read_key(path):
    """
    The private key in C{path}.

    @raise DKIMKeyError: not a PEM RSA (1024 bits or more) or Ed25519 key.
    @raise OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise DKIMKeyError(f"{path}: not a PEM private key without a passphrase ({e})")
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:  # (RFC 8301: verifiers refuse smaller ones)
            raise DKIMKeyError(f"{path}: an RSA key of {key.key_size} bits; DKIM needs 1024 "
                            "or more (2048 recommended)")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise DKIMKeyError(f"{path}: a {type(key).__name__}; DKIM keys are RSA or Ed25519")


def public_value(key):
    """The C{p=} of C{key}'s record: base64 of the DER public key (RSA), of the raw 32 bytes
    (Ed25519, RFC 8463 4.2)."""
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(raw).decode("ascii")


def kind_of(key):
    return "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa"


def record(key):
    """The TXT record's text for C{key}."""
    return f"v=DKIM1; k={kind_of(key)}; p={public_value(key)}"


def zone_line(domain, selector, key):
    """C{record} as a zone-file line, split in strings of at most 255 bytes (RFC 1035)."""
    text = record(key)
    chunks = [text[i:i + 250] for i in range(0, len(text), 250)]
    quoted = " ".join(f'"{chunk}"' for chunk in chunks)
    return f"{record_name(domain, selector)}. IN TXT ( {quoted} )"


def tags(text):
    """The C{tag=value} pairs of a DKIM record (RFC 6376 3.6.1), white space removed."""
    found = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            found[name.strip()] = "".join(value.split())
    return found


def compare(key, texts):
    """
    What the published record(s) C{texts} say of C{key}: C{(ok, why)}.
    """
    if not texts:
        return False, "no TXT record"
    if len(texts) > 1:
        return False, f"{len(texts)} TXT records: verifiers take none of them (RFC 6376 3.6.2.2)"
    published = tags(texts[0])
    if published.get("v", "DKIM1") != "DKIM1":
        return False, f"v={published['v']}: not a DKIM record"
    if not published.get("p"):
        return False, "p= is empty: the key is revoked"
    kind = published.get("k", "rsa")
    if kind != kind_of(key):
        return False, f"k={kind}, but the key is {kind_of(key)}"
    if published["p"] != public_value(key):
        return False, "p= is another public key"
    return True, f"the record holds this {kind_of(key)} key's public half"
