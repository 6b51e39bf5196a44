"""
The cred realm every mail-reading protocol logs in through: it turns the
avatar id the checker returns (the user's address) into that protocol's view
of the user's mail in the store.
"""

from twisted.cred.portal import IRealm
from twisted.mail import imap4
from zope.interface import implementer

from mailsrv.imap.mailbox import Account


@implementer(IRealm)
class MailRealm:
    """
    @ivar store: the L{mailsrv.store.folder.MailStore}.
    """

    def __init__(self, store):
        self.store = store

    def requestAvatar(self, avatarId, mind, *interfaces):
        for interface in interfaces:
            if interface is imap4.IAccount:
                return interface, Account(self.store, avatarId), _nothing
        raise NotImplementedError("no avatar for " + ", ".join(map(str, interfaces)))


def _nothing():
    """Logging out needs no clean-up: sessions release their folders."""
