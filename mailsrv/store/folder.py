"""
The mail store: users' Maildir++ folders with persistent IMAP UIDs and flags.
See docs/store.md.
"""

from pathlib import Path

from mailsrv.store.layout import folder_maildir, user_maildir


class MailStore:
    def __init__(self, mail_root, clock=None):
        self.mail_root = Path(mail_root)
        self.clock = clock

    def maildir(self, user, folder="INBOX"):
        """Where mail for C{user}'s C{folder} is delivered (no I/O)."""
        return folder_maildir(user_maildir(self.mail_root, user), folder)
