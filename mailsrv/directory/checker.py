"""
The cred checker every protocol shares: username/password against the users
file, verified off the reactor thread.
"""

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from zope.interface import implementer

from mailsrv.directory.passwords import verify_in_thread


@implementer(ICredentialsChecker)
class UserPasswordChecker:
    """
    @ivar directory: the L{Directory}; its login_name() maps what the user
        typed to an address.
    """

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, directory):
        self.directory = directory

    def requestAvatarId(self, creds):
        try:
            name = creds.username
            password = creds.password
            if isinstance(name, bytes):
                name = name.decode("utf-8")
            if isinstance(password, bytes):
                password = password.decode("utf-8")
        except UnicodeDecodeError:
            return _refused()
        address = self.directory.login_name(name)
        stored = self.directory.users.hash_for(address)
        d = verify_in_thread(stored, password)
        d.addCallback(lambda ok: address if ok else _refused_now())
        return d


def _refused_now():
    raise error.UnauthorizedLogin("bad username or password")


def _refused():
    from twisted.internet import defer

    return defer.fail(error.UnauthorizedLogin("bad username or password"))
