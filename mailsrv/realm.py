"""
The cred realm every mail-reading protocol logs in through: it turns the
avatar id the checker returns (the user's address) into that protocol's view
of the user's mail in the store.
"""

from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.mail import imap4, pop3
from zope.interface import implementer

from mailsrv.deadline import Unloaded
from mailsrv.directory.certificate import CertificateChecker
from mailsrv.imap.mailbox import Account
from mailsrv.login import MaildropInUse
from mailsrv.pop3.mailbox import FolderMailbox

log = Logger()


@implementer(IRealm)
class MailRealm:
    """
    @ivar store: the L{mailsrv.store.mailstore.MailStore}.
    @ivar sessions: the L{mailsrv.sessions.ISessionStore}, which holds the
        POP3 maildrop locks (shared by every node with [sessions] backend =
        "redis").
    """

    def __init__(self, store, sessions):
        self.store = store
        self.sessions = sessions

    def requestAvatar(self, avatarId, mind, *interfaces):
        if isinstance(avatarId, bytes):
            avatarId = avatarId.decode("utf-8")
        for interface in interfaces:
            if interface is imap4.IAccount:
                self._special_folders(avatarId)
                return interface, Account(self.store, avatarId), _nothing
            if interface is pop3.IMailbox:
                return self._pop3_mailbox(avatarId)
        raise NotImplementedError("no avatar for " + ", ".join(map(str, interfaces)))

    def _special_folders(self, user):
        """
        Make the user's missing special folders; a login must not fail
        because they cannot be made (a full disk): the next login tries
        again.
        """
        try:
            self.store.create_special_folders(user)
        except OSError as e:
            log.error("cannot create the special folders of {user}: {error}",
                      user=user, error=e)

    def _pop3_mailbox(self, user):
        """
        The INBOX, synced first so that mail waiting in C{new/} is listed,
        and locked for this POP3 session until it logs out (RFC 1939: one
        POP3 session per maildrop; IMAP sessions may share it).

        @return: a Deferred of the avatar, failing with L{MaildropInUse}
            when another POP3 session holds the lock; any other failure
            releases the lock.
        """
        def open_inbox():
            folder = self.store.folder(user, "INBOX")
            return folder.sync().addCallback(lambda _: (
                pop3.IMailbox, FolderMailbox(user, folder),
                lambda: self.sessions.unlock_maildrop(user)))

        def locked(free):
            if not free:
                raise MaildropInUse(user)
            d = defer.maybeDeferred(open_inbox)
            d.addErrback(lambda failure: (self.sessions.unlock_maildrop(user), failure)[1])
            return d

        return self.sessions.lock_maildrop(user).addCallback(locked)


def _nothing():
    """Logging out needs no clean-up: sessions release their folders."""


class MailboxFactory(protocol.ServerFactory):
    """
    The factory of one POP3 or IMAP listener: its connections log in
    through the shared password checker (or a certificate, SASL EXTERNAL)
    and a L{MailRealm} over the store.

    @ivar protocol_class: the server protocol, built with C{(server,
        listener, portal)}.
    @ivar load: the listener's load (L{mailsrv.service.ConnectionLimits}
        sets it): whether it is under stress.
    """

    protocol_class = None
    load = Unloaded()

    def __init__(self, server, listener):
        self.server = server
        self.listener = listener
        self.portal = Portal(MailRealm(server.store, server.sessions), [
            server.checker, CertificateChecker(server.directory, server.sessions)])

    def buildProtocol(self, addr):
        built = self.protocol_class(self.server, self.listener, self.portal)
        built.factory = self
        return built
