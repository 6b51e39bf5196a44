"""
The cred checker every protocol shares: username/password against the users
file, verified off the reactor thread, and the one place where failed logins
are counted and throttled (the session store keeps the counts, so SMTP,
POP3 and IMAP share them).
"""

import hashlib
import hmac
import os

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from mailsrv.directory.passwords import verify_in_thread

log = Logger()


class ClientCredentials(credentials.UsernamePassword):
    """
    A user name and password with the client's IP, which throttling keys on.

    @ivar ip: the peer's address as the transport gives it.
    """

    def __init__(self, username, password, ip):
        super().__init__(username, password)
        self.ip = ip


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

    def __init__(self, directory, sessions):
        self.directory = directory
        self.sessions = sessions
        # Wrong passwords are remembered only as HMACs under this key, so
        # not even a memory dump of the store gives them away.
        self._key = os.urandom(32)

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
        stored = self.directory.users.hash_for(address)
        d = verify_in_thread(stored, password)
        d.addCallback(lambda ok: address if ok else _fail(_bad_password()))
        return d

    @defer.inlineCallbacks
    def _throttled_check(self, ip, address, password):
        """
        A locked-out key is refused before hashing: the answer does not
        depend on the password, so there is no timing to hide, and a
        guesser then costs no CPU. The lockout is asked again after a
        correct password, in case parallel guesses locked the key while
        this one was being hashed.
        """
        yield self._refuse_if_locked(ip, address)
        try:
            ok = yield self._verify(address, password)
        except error.UnauthorizedLogin:
            locked = yield self.sessions.record_failure(
                ip, address, self._fingerprint(address, password)
            )
            for key in locked:
                log.warn("login lockout started: key={key}", key=key)
            raise
        yield self._refuse_if_locked(ip, address)
        yield self.sessions.clear_failures(ip, address)
        return ok

    def _refuse_if_locked(self, ip, address):
        d = self.sessions.login_refused(ip, address)
        d.addCallback(lambda key: None if key is None else _fail(LoginThrottled(key)))
        return d

    def _fingerprint(self, address, password):
        """Tells repeats of one wrong password apart from new ones, and nothing more."""
        message = address.encode("utf-8") + b"\0" + password.encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).digest()


def _bad_password():
    return error.UnauthorizedLogin("bad username or password")


def _fail(exception):
    raise exception
