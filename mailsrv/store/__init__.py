"""
Mailboxes on disk: one Maildir++ per user (see docs/store.md).
"""
