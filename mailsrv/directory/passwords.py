"""
Password hashing with argon2id. Hashing is slow on purpose: callers on the
reactor thread go through L{verify_in_thread}.
"""

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from twisted.internet import threads

_hasher = PasswordHasher()

# Verified against when the user does not exist, so that a login for an
# unknown address costs the same time as one for a known address.
_DUMMY_HASH = _hasher.hash("mailsrv: no such user")


def hash_password(password):
    return _hasher.hash(password)


def verify(stored_hash, password):
    """
    @param stored_hash: the user's hash, or L{None} for an unknown user.
    @return: whether C{password} matches.
    """
    try:
        _hasher.verify(stored_hash or _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return stored_hash is not None


def verify_in_thread(stored_hash, password):
    """L{verify} off the reactor thread; a Deferred of a bool."""
    return threads.deferToThread(verify, stored_hash, password)
