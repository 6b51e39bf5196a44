"""
The SMTP server (port 25 "mx" and submission): our own protocol on Twisted's
primitives, not twisted.mail.smtp.ESMTP (see docs/smtp.md for why).

    commands.py  pure parsing of command lines and their parameters
    auth.py      SASL PLAIN and LOGIN exchanges (pure)
    data.py      the DATA reader: end of data, dot-unstuffing, bare CR/LF
    state.py     Session (connection) and Transaction (one message), Limits
    policy.py    Verdict and the sender/recipient stages
    trace.py     our Return-Path and Received headers
    server.py    the protocol and its factory: build_factory(server, listener)
"""
