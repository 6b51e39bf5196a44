"""
Password hashes. We write argon2id; we also verify the hashes admins bring
from Dovecot or OpenLDAP, with their C{{SCHEME}} prefix (Dovecot's
passwd-file, OpenLDAP's userPassword) or bare as crypt(3) writes them:

    {ARGON2ID} {ARGON2I} $argon2id$ $argon2i$   argon2-cffi
    {BLF-CRYPT} {BCRYPT} $2a$ $2b$ $2y$         bcrypt
    {SHA512-CRYPT} {SHA256-CRYPT} $6$ $5$       libpass (the maintained passlib fork)
    {SSHA512} {SSHA}                            hashlib: base64 of digest + salt

Schemes that a stolen file gives away in minutes ({PLAIN}, {MD5}, DES
{CRYPT}, ...) and any we do not know never verify: L{hash_problem} names
them for check-config and the log. A correct password for any hash but
argon2id with our parameters is rehashed (L{needs_rehash}).

Hashing is slow on purpose: callers on the reactor thread go through
L{verify_in_thread}.
"""

import base64
import binascii
import hashlib
import hmac
import re

import bcrypt
from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from passlib.hash import sha256_crypt, sha512_crypt
from twisted.internet import threads

_hasher = PasswordHasher()

# Verified against when the user does not exist, or their hash is refused,
# so that such a login costs the same time as one for a known address.
_DUMMY_HASH = _hasher.hash("mailsrv: no such user")

# Imported hashes whose cost is above these would hold a hashing slot for
# seconds (or gigabytes) on every login: doveadm allows bcrypt 2^31 and
# sha-crypt 999999999 rounds (its defaults: 2^5, 5000). Refused like an
# unsafe scheme.
MAX_BCRYPT_COST = 15
MAX_SHA_CRYPT_ROUNDS = 1_000_000
MAX_ARGON2_MEMORY = 1 << 20  # KiB (ours: 64 MiB)

# bcrypt uses the first 72 bytes of a password; bcrypt 5 raises instead of
# cutting, so we cut as the libc and Dovecot that made the hash did.
_BCRYPT_MAX_BYTES = 72

_BCRYPT_FORMAT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}\Z")


class _TooCostly(ValueError):
    """A well-formed hash whose cost is over our limits."""


class _Argon2:
    def check(self, text):
        parameters = extract_parameters(text)
        if parameters.type is Type.D:
            raise ValueError("argon2d is not meant for passwords")
        if parameters.memory_cost > MAX_ARGON2_MEMORY:
            raise _TooCostly(f"{parameters.memory_cost} KiB of memory is over "
                             f"{MAX_ARGON2_MEMORY}")

    def verify(self, text, password):
        try:
            return _hasher.verify(text, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


class _Bcrypt:
    def check(self, text):
        match = _BCRYPT_FORMAT.match(text)
        if match is None:
            raise ValueError("not $2y$NN$ and 53 characters")
        if int(match.group(1)) > MAX_BCRYPT_COST:
            raise _TooCostly(f"cost 2^{match.group(1)} is over 2^{MAX_BCRYPT_COST}")

    def verify(self, text, password):
        return bcrypt.checkpw(password.encode("utf-8")[:_BCRYPT_MAX_BYTES], text.encode("ascii"))


class _ShaCrypt:
    def __init__(self, handler):
        self.handler = handler

    def check(self, text):
        parsed = self.handler.from_string(text)
        if parsed.checksum is None:  # (libpass takes a bare salt: a config string)
            raise ValueError("no checksum")
        if parsed.rounds > MAX_SHA_CRYPT_ROUNDS:
            raise _TooCostly(f"{parsed.rounds} rounds are over {MAX_SHA_CRYPT_ROUNDS}")

    def verify(self, text, password):
        return self.handler.verify(password, text)


class _SaltedSha:
    """OpenLDAP's and Dovecot's {SSHA}/{SSHA512}: base64 of H(password + salt) + salt."""

    def __init__(self, digest):
        self.digest = digest
        self.size = digest().digest_size

    def _split(self, text):
        raw = base64.b64decode(text, validate=True)
        if len(raw) <= self.size:
            raise ValueError("no salt after the digest")
        return raw[:self.size], raw[self.size:]

    def check(self, text):
        try:
            self._split(text)
        except binascii.Error:
            raise ValueError("not base64")

    def verify(self, text, password):
        expected, salt = self._split(text)
        return hmac.compare_digest(self.digest(password.encode("utf-8") + salt).digest(),
                                   expected)


_ARGON2 = _Argon2()
_BCRYPT = _Bcrypt()

# {SCHEME} prefixes (compared in upper case, as Dovecot does) and their verifiers.
SCHEMES = {
    "ARGON2ID": _ARGON2,
    "ARGON2I": _ARGON2,
    "BLF-CRYPT": _BCRYPT,
    "BCRYPT": _BCRYPT,
    "SHA512-CRYPT": _ShaCrypt(sha512_crypt),
    "SHA256-CRYPT": _ShaCrypt(sha256_crypt),
    "SSHA512": _SaltedSha(hashlib.sha512),
    "SSHA": _SaltedSha(hashlib.sha1),
}

# Bare crypt(3)-style hashes by their leading id.
_BARE = (("$argon2", _ARGON2), ("$2a$", _BCRYPT), ("$2b$", _BCRYPT), ("$2y$", _BCRYPT),
         ("$6$", SCHEMES["SHA512-CRYPT"]), ("$5$", SCHEMES["SHA256-CRYPT"]))

# Schemes we know and refuse: a stolen file gives their passwords away
# (clear text, unsalted or fast digests, DES crypt's 8 characters, MD5 crypt).
UNSAFE = frozenset({"PLAIN", "CLEARTEXT", "MD5", "PLAIN-MD5", "LDAP-MD5", "SMD5", "SHA",
                    "SHA256", "SHA512", "CRYPT", "MD5-CRYPT"})

_SCHEME_PREFIX = re.compile(r"\{([^{}]*)\}")


def _parse(stored_hash):
    """
    @return: C{(verifier, text)} for an accepted hash, or C{(None, problem)}
        where problem says why it is refused.
    """
    match = _SCHEME_PREFIX.match(stored_hash)
    if match is not None:
        scheme, text = match.group(1).upper(), stored_hash[match.end():]
        verifier = SCHEMES.get(scheme)
        if verifier is None:
            if scheme in UNSAFE:
                return None, f"{{{scheme}}} is not accepted (unsafe)"
            return None, f"{{{scheme}}} is not a scheme mailsrv knows"
        name = f"{{{scheme}}}"
    else:
        name, text = "the hash", stored_hash
        verifier = next((v for prefix, v in _BARE if text.startswith(prefix)), None)
        if verifier is None:
            if text.startswith("$1$"):
                return None, "$1$ (MD5 crypt) is not accepted (unsafe)"
            return None, "the hash is in no format mailsrv knows"
    try:
        verifier.check(text)
    except _TooCostly as e:
        return None, f"{name} costs too much to verify at every login ({e})"
    except ValueError as e:
        return None, f"{name} is malformed" + (f" ({e})" if str(e) else "")
    return verifier, text


def scheme_problem(stored_hash):
    """Why C{stored_hash} never verifies ("{MD5} is not accepted (unsafe)"), or L{None}."""
    verifier, problem = _parse(stored_hash)
    return None if verifier is not None else problem


def hash_problem(address, stored_hash):
    """
    Why C{address} cannot log in with C{stored_hash}, in words for
    check-config and the log, or L{None} for an accepted hash.
    """
    problem = scheme_problem(stored_hash)
    if problem is None:
        return None
    return f"user {address}: {problem}; set a new password with `mailsrv user passwd`"


def hash_password(password):
    return _hasher.hash(password)


def verify(stored_hash, password):
    """
    Never raises: a hash or password the scheme cannot take is a mismatch.

    @param stored_hash: the user's hash, or L{None} for an unknown user.
    @return: whether C{password} matches.
    """
    verifier, text = _parse(stored_hash) if stored_hash is not None else (None, None)
    if verifier is None:
        _ARGON2.verify(_DUMMY_HASH, password)
        return False
    try:
        return verifier.verify(text, password)
    except ValueError:  # (a password with NUL or lone surrogates, a malformed hash)
        return False


def needs_rehash(stored_hash):
    """Whether a correct password for C{stored_hash} should be hashed again as argon2id."""
    verifier, text = _parse(stored_hash)
    if verifier is None:
        return False  # (it never verifies)
    return verifier is not _ARGON2 or _hasher.check_needs_rehash(text)


def verify_in_thread(stored_hash, password):
    """L{verify} off the reactor thread; a Deferred of a bool."""
    return threads.deferToThread(verify, stored_hash, password)
