"""
The cred checker every protocol shares: username/password against the users
file, verified off the reactor thread, and the one place where failed logins
are counted and throttled (the session store keeps the counts, so SMTP,
POP3 and IMAP share them).

A password hash (argon2id, 64 MiB, ~0.3 s of CPU) is the most expensive
thing a session does, so: at most one hash per CPU runs at once (more only
queue for the cores and add 64 MiB each), and a correct password is
remembered for a few minutes (like Dovecot's auth_cache), so that a client
that opens a connection per message or polls every minute pays it once.
"""

import hashlib
import hmac
import os

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from mailsrv.config import AuthSettings
from mailsrv.directory.passwords import needs_rehash, verify_in_thread

log = Logger()


class ClientCredentials(credentials.UsernamePassword):
    """
    A user name and password with the client's IP, which throttling keys on.

    @ivar ip: the peer's address as the transport gives it.
    """

    def __init__(self, username, password, ip):
        super().__init__(username, password)
        self.ip = ip


class SourceUnavailable(Exception):
    """
    The password source ([auth] source: an LDAP directory, another SMTP
    server) could not answer: down, slow, or its TLS did not verify. A
    temporary refusal (never a success, never a wrong password), and not
    counted as a failed login.
    """


class LoginThrottled(error.UnauthorizedLogin):
    """
    Refused without checking the password: too many recent failures for
    C{key} (an IP, or C{ip/user}). Each protocol answers with its
    "temporary" reply; an unaware caller still sees a failed login.
    """

    def __init__(self, key):
        super().__init__(f"too many failed logins for {key}")
        self.key = key


@implementer(ICredentialsChecker)
class UserPasswordChecker:
    """
    @ivar directory: the L{Directory}; its login_name() maps what the user
        typed to an address.
    @ivar sessions: the L{mailsrv.sessions.ISessionStore} that counts
        failures for credentials that carry an C{ip}.
    """

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, directory, sessions, clock, cache_ttl=AuthSettings.cache_ttl,
                 max_hashes=None, source=None):
        """
        @param clock: for the login cache's expiry.
        @param cache_ttl: seconds a correct password is remembered ([auth]
            cache_ttl); 0 turns the cache off.
        @param max_hashes: password hashes run at once; the CPU count by default.
        @param source: where passwords are checked when not against the
            users file ([auth] source): C{name}, and C{check(address,
            password)}, a Deferred of a bool that fails with
            L{SourceUnavailable}; L{None}: the users file.
        """
        self.directory = directory
        self.sessions = sessions
        self.source = source
        # Wrong passwords are remembered only as HMACs under this key, so
        # not even a memory dump of the store gives them away.
        self._key = os.urandom(32)
        self._clock = clock
        self._hashing = defer.DeferredSemaphore(max_hashes or os.cpu_count() or 1)
        self._cache = LoginCache(cache_ttl)

    def requestAvatarId(self, creds):
        try:
            name = creds.username
            password = creds.password
            if isinstance(name, bytes):
                name = name.decode("utf-8")
            if isinstance(password, bytes):
                password = password.decode("utf-8")
        except UnicodeDecodeError:
            return defer.fail(_bad_password())
        if not name.isprintable():  # no address has control characters
            return defer.fail(_bad_password())
        address = self.directory.login_name(name)
        ip = getattr(creds, "ip", None)
        if ip is None:  # no client address (a caller outside the protocols)
            return self._verify(address, password)
        return self._throttled_check(ip, address, password)

    def _verify(self, address, password):
        if self.source is not None:
            return self._ask_source(address, password)
        stored = self.directory.users.hash_for(address)
        if stored is not None and self._cache.ttl:
            if self._cache.holds(address, password, stored, self._clock.seconds()):
                return defer.succeed(address)
        d = self._hashing.run(verify_in_thread, stored, password)
        d.addCallback(self._verified, address, password, stored)
        return d

    def _ask_source(self, address, password):
        """The source's answer; a success is remembered as one of the users file is."""
        name = self.source.name
        if self._cache.ttl and self._cache.holds(address, password, name, self._clock.seconds()):
            return defer.succeed(address)
        d = self.source.check(address, password)
        return d.addCallback(self._verified, address, password, name)

    def _verified(self, ok, address, password, stored):
        if not ok:
            raise _bad_password()  # failures are never remembered
        if self.source is None and needs_rehash(stored):  # (an imported hash, older parameters)
            return self._rehash(address, password, stored)
        return self._remember(address, password, stored)

    def _remember(self, address, password, stored):
        if self._cache.ttl:
            self._cache.add(address, password, stored, self._clock.seconds())
        return address

    def _rehash(self, address, password, stored):
        """
        Store the argon2id hash of a password just found right for an
        older hash (L{UserDB.rehash}, in a thread: an argon2 hash, so in a
        hashing slot). The login succeeds whatever the write does; after a
        failed write the old hash is cached, so the next try (and its
        hash) waits for the entry to expire.
        """
        d = self._hashing.run(threads.deferToThread, self.directory.users.rehash,
                              address, password, stored)

        def rehashed(new):
            if new is None:
                log.info("users file: {address} changed while logging in; their hash is "
                         "left as it is", address=address)
                return address
            log.info("users file: rehashed the password of {address} with argon2id",
                     address=address)
            return self._remember(address, password, new)

        def not_rehashed(failure):
            log.error("users file: could not store the argon2id hash of {address} "
                      "({error}); the old hash stays", address=address, error=failure.value)
            return self._remember(address, password, stored)

        d.addCallbacks(rehashed, not_rehashed)
        return d

    def _throttled_check(self, ip, address, password):
        """
        A locked-out key is refused before hashing: the answer does not
        depend on the password, so there is no timing to hide, and a
        guesser then costs no CPU.
        """
        return throttled(self.sessions, ip, address, self._fingerprint(address, password),
                         lambda: self._verify(address, password))

    def _fingerprint(self, address, password):
        """Tells repeats of one wrong password apart from new ones, and nothing more."""
        message = address.encode("utf-8") + b"\0" + password.encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).digest()


@defer.inlineCallbacks
def throttled(sessions, ip, address, fingerprint, verify):
    """
    Run C{verify()} (a Deferred of the avatar id, failing with
    C{UnauthorizedLogin}) unless C{(ip, address)} is locked out, and count
    its failure once per distinct C{fingerprint}. The lockout is asked
    again after a success, in case parallel guesses locked the key
    meanwhile.
    """
    yield _refuse_if_locked(sessions, ip, address)
    try:
        ok = yield verify()
    except error.UnauthorizedLogin:
        locked = yield sessions.record_failure(ip, address, fingerprint)
        for key in locked:
            log.warn("login lockout started: key={key}", key=key)
        raise
    yield _refuse_if_locked(sessions, ip, address)
    yield sessions.clear_failures(ip, address)
    return ok


def _refuse_if_locked(sessions, ip, address):
    d = sessions.login_refused(ip, address)
    d.addCallback(lambda key: None if key is None else _fail(LoginThrottled(key)))
    return d


class LoginCache:
    """
    Correct passwords checked in the last C{ttl} seconds, as
    C{(address, HMAC of the password)} under a key made at start: nothing
    in memory gives a password away, and a wrong password never matches.

    Each entry keeps the stored hash it was checked against and holds only
    while the users file still has that hash: a new password, or the user's
    deletion, ends it as soon as the server has re-read the file (within a
    second of the change).

    @ivar ttl: seconds an entry lives; 0: nothing is remembered.
    """

    MAX_ENTRIES = 10000

    def __init__(self, ttl):
        self.ttl = ttl
        self._key = os.urandom(32)
        self._entries = {}  # (address, hmac) -> (stored hash, expiry)

    def _digest(self, password):
        return hmac.new(self._key, password.encode("utf-8"), hashlib.sha256).digest()

    def holds(self, address, password, stored, now):
        """Whether C{password} was found right for C{address}'s C{stored} hash lately."""
        key = (address, self._digest(password))
        entry = self._entries.get(key)
        if entry is None:
            return False
        if entry[0] != stored or now >= entry[1]:
            del self._entries[key]
            return False
        return True

    def add(self, address, password, stored, now):
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
        self._entries[(address, self._digest(password))] = (stored, now + self.ttl)

    def __len__(self):
        return len(self._entries)


def _bad_password():
    return error.UnauthorizedLogin("bad username or password")


def _fail(exception):
    raise exception
