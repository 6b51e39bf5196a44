"""
The trace headers we put on top of every message we accept (RFC 5321
section 4.4): Return-Path with the envelope sender, and a Received line
with the client's HELO name and IP literal, so that a reader of the mailbox
can tell where the message came from.
"""

from email.utils import formatdate

from mailsrv.netaddr import normalise_ip


def ip_literal(ip):
    """C{"192.0.2.1"} -> C{"[192.0.2.1]"}; IPv6 as C{"[IPv6:2001:db8::1]"}."""
    try:
        address = normalise_ip(ip)
    except ValueError:
        return f"[{ip}]"
    if address.version == 6:
        return f"[IPv6:{address.compressed}]"
    return f"[{address}]"


def trace_headers(session, transaction, queue_id, hostname, when):
    """
    @param when: seconds since the epoch, for the Received date.
    @return: the header block (bytes, CRLF line ends), folded so that no
        line grows long. C{for <address>} names the recipient only when
        there is one, so that recipients of one copy do not see the others.
    """
    received = (
        f"Received: from {session.helo} ({ip_literal(session.ip)})\r\n"
        f"\tby {hostname} (mailsrv) with {session.protocol} id {queue_id}"
    )
    if len(transaction.recipients) == 1:
        received += f"\r\n\tfor <{transaction.recipients[0].address}>"
    received += f";\r\n\t{formatdate(when, localtime=True)}"
    text = f"Return-Path: <{transaction.sender}>\r\n{received}\r\n"
    return text.encode("ascii")
