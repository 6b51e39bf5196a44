"""
A POP3 session's view of a user's INBOX: the cred realm that builds it at
login and the L{pop3.IMailbox} adapter over the store's L{Folder}.

The message list is a snapshot taken at login, as RFC 1939 wants (message
numbers do not change during a session). Deletions are marked here and
carried out only by L{FolderMailbox.sync}, which the server calls at QUIT,
so a dropped connection deletes nothing.
"""

import hashlib

from twisted.internet import defer
from twisted.mail import pop3
from zope.interface import implementer


def uidl_for(key):
    """
    The POP3 unique-id of a message with Maildir base name C{key}: the name
    itself (stable across restarts and renames), or a digest of it when it
    does not fit RFC 1939 (1 to 70 characters from 0x21 to 0x7E), e.g. for
    a long host name.
    """
    if 0 < len(key) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in key):
        return key
    return "x" + hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()


@implementer(pop3.IMailbox)
class FolderMailbox:
    """
    @ivar user: the user's address (the cred avatar id).
    @ivar folder: the store's L{Folder} for the user's INBOX.
    """

    loginDelay = 0
    messageExpiration = None

    def __init__(self, user, folder):
        self.user = user
        self.folder = folder
        self._messages = list(folder.messages())
        self._deleted = set()

    def _info(self, index):
        if not 0 <= index < len(self._messages):
            raise ValueError(f"no message {index + 1}")
        return self._messages[index]

    def count(self):
        """How many messages the session sees, deleted ones included."""
        return len(self._messages)

    def isDeleted(self, index):
        """Whether message C{index} (0-based) is marked for deletion."""
        self._info(index)
        return index in self._deleted

    def listMessages(self, index=None):
        if index is None:
            return [
                0 if i in self._deleted else m.size
                for i, m in enumerate(self._messages)
            ]
        return 0 if index in self._deleted else self._info(index).size

    def getMessage(self, index):
        """A binary file of the message's exact bytes."""
        return self.folder.open(self._info(index).uid)

    def getUidl(self, index):
        return uidl_for(self._info(index).key)

    def deleteMessage(self, index):
        self._info(index)
        self._deleted.add(index)

    def undeleteMessages(self):
        self._deleted.clear()

    def sync(self):
        """
        Remove the messages marked for deletion (QUIT in the TRANSACTION
        state, RFC 1939's UPDATE state).

        @return: a Deferred that fires when they are gone.
        """
        uids = [self._messages[i].uid for i in sorted(self._deleted)]
        if not uids:
            return defer.succeed(None)
        d = defer.maybeDeferred(self.folder.delete, uids)
        d.addCallback(lambda _: self._deleted.clear())
        return d
