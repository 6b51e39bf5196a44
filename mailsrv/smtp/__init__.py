"""
The SMTP server (port 25 "mx" and submission): our own protocol on Twisted's
primitives, not twisted.mail.smtp.ESMTP (see docs/smtp.md for why). Its
checks are the policy package's (mailsrv/policy/).

    commands.py  pure parsing of command lines and their parameters
    data.py      the DATA reader: end of data, dot-unstuffing, bare CR/LF
    state.py     Session (connection) and Transaction (one message), Limits
    trace.py     our Return-Path and Received headers
    reception.py one message from DATA to its reply
    server.py    the protocol and its factory: build_factory(server, listener)
"""
