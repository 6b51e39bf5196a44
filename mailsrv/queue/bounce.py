"""
Bounces: delivery status notifications (RFC 3464) for recipients that
failed for good, sent from the null sender to the envelope sender.

Who gets one (L{bounce_target}):
  - a message with a sender: the sender gets a DSN;
  - a DSN that could not be delivered: the postmaster gets one, once (it is
    marked L{POSTMASTER} and a failure of that is only logged);
  - any other null-sender message: nobody (RFC 5321 6.2), so bounces never
    loop.
"""

import email.utils
import re
import secrets

DSN = "dsn"
POSTMASTER = "postmaster"

# RFC 3463 enhanced status code at the start of the reply text
_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
MAX_HEADER_BYTES = 64 * 1024


def bounce_target(envelope, postmaster):
    """
    @param envelope: the failed message's L{Envelope}.
    @param postmaster: the postmaster's address.
    @return: C{(address, kind)} of the DSN to send, or L{None}.
    """
    if envelope.sender:
        return envelope.sender, DSN
    if envelope.bounce == DSN:
        return postmaster, POSTMASTER
    return None


def read_headers(path):
    """
    The header section of a spooled message (at most L{MAX_HEADER_BYTES}),
    CRLF line ends, without the blank line.
    """
    lines, size = [], 0
    with open(path, "rb") as f:
        for line in f:
            if line in (b"\r\n", b"\n") or size > MAX_HEADER_BYTES:
                break
            lines.append(line.rstrip(b"\r\n") + b"\r\n")
            size += len(line)
    return b"".join(lines)


def count_received(headers):
    """How many C{Received:} header fields a header section has."""
    return sum(1 for line in headers.split(b"\r\n") if line[:9].lower() == b"received:")


def _reply(last_error):
    """
    The host's reply (or our reason) in a C{last_error}: what follows
    C{"relay: "}, after C{"gave up after N s: "} for an expired one.
    """
    if last_error.startswith("gave up"):
        return last_error.split(": ", 2)[-1]
    return last_error.partition(": ")[2]


def status_of(recipient, delayed=False):
    """
    The RFC 3463 status of a failed recipient: the code in its last error,
    else 4.4.7 (delivery time expired) for a recipient given up on, else
    5.0.0. For a C{delayed} one: its temporary code, else 4.0.0.
    """
    text = re.sub(r"^-?\d{3} ", "", _reply(recipient.last_error))
    match = _STATUS.match(text)
    if delayed:
        return match.group(0) if match and match.group(1) == "4" else "4.0.0"
    if recipient.last_error.startswith("gave up"):
        return match.group(0) if match and match.group(1) == "5" else "4.4.7"
    return match.group(0) if match and match.group(1) != "2" else "5.0.0"


def dsn_message(envelope, failed, headers, hostname, to, now, retry_until=None):
    """
    A DSN for C{failed} recipients of C{envelope}, as bytes with CRLF.

    @param failed: the L{RecipientState}s that failed (or are delayed).
    @param headers: the original message's header section (L{read_headers}).
    @param hostname: our name (Reporting-MTA, From, Message-ID).
    @param to: who the DSN goes to.
    @param retry_until: for a "delayed" DSN (the recipients are still
        being tried), when we give up; L{None} for a failure report.
    """
    delayed = retry_until is not None
    boundary = f"{envelope.id}.{secrets.token_hex(8)}/{hostname}"
    date = email.utils.formatdate(now, localtime=False)
    if delayed:
        until = email.utils.formatdate(retry_until, localtime=False)
        subject = "Delayed Mail (still being retried)"
        summary = [
            "Your message could not be delivered yet to one or more recipients.",
            f"The mail system will keep trying until {until}.",
            "You do not need to send it again. Its headers are attached below.",
        ]
    else:
        subject = "Undelivered Mail Returned to Sender"
        summary = [
            "Your message could not be delivered to one or more recipients.",
            "It is attached below (headers only).",
        ]
    explanation = [f"This is the mail system at {hostname}.", "", *summary, ""] + \
        [f"<{r.address}>: {r.last_error}" for r in failed]
    per_message = [
        f"Reporting-MTA: dns; {hostname}",
        f"X-Mailsrv-Queue-ID: {envelope.id}",
        f"Arrival-Date: {email.utils.formatdate(envelope.created, localtime=False)}",
    ]
    per_recipient = []
    for r in failed:
        per_recipient += [
            "",
            f"Final-Recipient: rfc822; {r.address}",
            f"Action: {'delayed' if delayed else 'failed'}",
            f"Status: {status_of(r, delayed)}",
            f"Diagnostic-Code: {_diagnostic(r.last_error)}",
            f"Last-Attempt-Date: {date}",
        ] + ([f"Will-Retry-Until: {until}"] if delayed else [])
    parts = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: <{envelope.id}.{secrets.token_hex(4)}.bounce@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n'
        f' boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "",
        *explanation,
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        *per_message,
        *per_recipient,
        "",
        f"--{boundary}",
        "Content-Description: Undelivered message headers",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    return ("\r\n".join(parts) + "\r\n").encode("utf-8") + headers + \
        f"\r\n--{boundary}--\r\n".encode("utf-8")


def _diagnostic(last_error):
    """C{smtp; 550 5.1.1 ...} for a host's reply, else C{X-Mailsrv; text}."""
    reply = " ".join(_reply(last_error).split())
    if re.match(r"^\d{3} ", reply):
        return f"smtp; {reply}"
    return f"X-Mailsrv; {' '.join(last_error.split())}"
