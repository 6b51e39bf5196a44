"""
IMAP4rev1 over the mail store (twisted.mail.imap4 with its gaps closed; see
server.py for which, and why).
"""
