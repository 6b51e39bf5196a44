"""
The trace headers we put on top of every message we accept (RFC 5321
section 4.4): Return-Path with the envelope sender, and a Received line
with the client's HELO name and IP literal, so that a reader of the mailbox
can tell where the message came from.
"""

from email.utils import formatdate

from mailsrv.netaddr import normalise_ip


# Per-message work that repeats: a client sends many messages from one IP,
# and many arrive in the same second. Both caches are small and bounded.
_literals = {}
_MAX_LITERALS = 4096
_date = (None, "")  # (second, formatted date) of the last Received line


def ip_literal(ip):
    """C{"192.0.2.1"} -> C{"[192.0.2.1]"}; IPv6 as C{"[IPv6:2001:db8::1]"}."""
    literal = _literals.get(ip)
    if literal is None:
        if len(_literals) >= _MAX_LITERALS:
            _literals.clear()
        literal = _literals[ip] = _ip_literal(ip)
    return literal


def _received_date(when):
    """The RFC 5322 date of C{when} (local time), formatted once a second."""
    global _date
    second = int(when)
    if _date[0] != second:
        _date = (second, formatdate(second, localtime=True))
    return _date[1]


def _ip_literal(ip):
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
    received += f";\r\n\t{_received_date(when)}"
    text = f"Return-Path: <{transaction.sender}>\r\n{received}\r\n"
    return text.encode("ascii")
