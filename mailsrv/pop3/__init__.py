"""
POP3 (RFC 1939, CAPA RFC 2449, STLS RFC 2595) over the users' INBOX
Maildirs: L{mailsrv.pop3.server.build_factory} makes a listener's factory.
"""
