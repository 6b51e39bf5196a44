"""
The cred realm every mail-reading protocol logs in through: it turns the
avatar id the checker returns (the user's address) into that protocol's view
of the user's mail in the store.
"""

from twisted.cred.portal import IRealm
from twisted.internet import defer
from twisted.mail import imap4, pop3
from zope.interface import implementer

from mailsrv.imap.mailbox import Account
from mailsrv.pop3.mailbox import FolderMailbox


@implementer(IRealm)
class MailRealm:
    """
    @ivar store: the L{mailsrv.store.folder.MailStore}.
    """

    def __init__(self, store):
        self.store = store

    def requestAvatar(self, avatarId, mind, *interfaces):
        if isinstance(avatarId, bytes):
            avatarId = avatarId.decode("utf-8")
        for interface in interfaces:
            if interface is imap4.IAccount:
                self.store.create_special_folders(avatarId)
                return interface, Account(self.store, avatarId), _nothing
            if interface is pop3.IMailbox:
                return self._pop3_mailbox(avatarId)
        raise NotImplementedError("no avatar for " + ", ".join(map(str, interfaces)))


    def _pop3_mailbox(self, user):
        """The INBOX, synced first so that mail waiting in C{new/} is listed."""
        folder = self.store.folder(user, "INBOX")
        d = defer.maybeDeferred(folder.sync)
        d.addCallback(lambda _: (pop3.IMailbox, FolderMailbox(user, folder), _nothing))
        return d


def _nothing():
    """Logging out needs no clean-up: sessions release their folders."""
