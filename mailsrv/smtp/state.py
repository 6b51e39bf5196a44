"""
The two kinds of SMTP state, kept apart (as aiosmtpd does): a L{Session} lives
as long as the connection (or until STARTTLS), a L{Transaction} from MAIL to
the end of DATA (or RSET). Policy checks get both, never the transport.
"""

from dataclasses import dataclass, field
from typing import Optional

from mailsrv.directory import Route
from mailsrv.policy.judgement import SKIPPED, Judgement
from mailsrv.smtp.commands import MailParams


@dataclass(frozen=True)
class Limits:
    """
    One listener's limits: EHLO advertises the same values the server
    enforces.

    @ivar max_line: the longest command line, CRLF included (RFC 5321
        section 4.5.3.1.4).
    @ivar max_errors: error replies before the server gives up (421).
    @ivar max_buffer: unprocessed input held before reading is paused.
    """

    max_message_size: int
    max_recipients: int
    max_line: int = 512
    max_errors: int = 10
    max_buffer: int = 65536

    @classmethod
    def from_settings(cls, settings):
        return cls(
            max_message_size=settings.access.max_message_size,
            max_recipients=settings.access.max_recipients,
        )


@dataclass
class Session:
    """
    What we know about the client.

    @ivar ip: the peer's address as the transport gives it.
    @ivar helo: the EHLO/HELO name, L{None} before it.
    @ivar esmtp: whether it said EHLO (not HELO).
    @ivar tls: whether the connection is encrypted.
    @ivar user: the address it authenticated as (SMTP AUTH).
    @ivar pop_user: the user whose POP-before-SMTP window let it relay.
    """

    ip: str
    tls: bool = False
    helo: Optional[str] = None
    esmtp: bool = False
    user: Optional[str] = None
    pop_user: Optional[str] = None

    @property
    def protocol(self):
        """The RFC 3848 "with" keyword of our Received header."""
        if not self.esmtp:
            return "SMTP"
        return "ESMTP" + ("S" if self.tls else "") + ("A" if self.user else "")


@dataclass(frozen=True)
class Recipient:
    """
    @ivar address: as the client wrote it in RCPT TO.
    @ivar route: where the directory sends it (L{None}: unknown local user).
    """

    address: str
    route: Optional[Route]


@dataclass
class Transaction:
    """
    One message: MAIL FROM, the accepted recipients, and what the
    anti-spam filters made of it at MAIL FROM.

    @ivar judgements: with per-domain [antispam] sections
        (L{mailsrv.policy.listener.DomainPolicies}), each set's judgement
        at MAIL FROM; C{judgement} is the global one's.
    @ivar signable: why the client's mail may carry our DKIM signature
        (it stands: L{mailsrv.policy.standing.Standing}), asked at MAIL
        FROM when [[dkim.sign]] has keys; L{None}: it may not.
    """

    sender: str
    params: MailParams = field(default_factory=MailParams)
    recipients: list = field(default_factory=list)
    judgement: Judgement = SKIPPED
    judgements: dict = field(default_factory=dict)
    signable: Optional[str] = None

    def local_users(self):
        """Local mailboxes to deliver to, each once, in RCPT order."""
        return _unique(user for r in self.recipients for user in r.route.local)

    def remote_addresses(self):
        """Addresses for the queue, each once, in RCPT order."""
        return _unique(address for r in self.recipients for address in r.route.remote)


def _unique(items):
    return list(dict.fromkeys(items))
