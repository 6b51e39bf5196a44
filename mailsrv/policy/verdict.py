"""
The one result type of every check (STYLE.md 1 and 7): whether the command
goes through, the reply the client gets (code, enhanced code, text) and the
reason the log gets, which may say more than the client is told. A filter
check (DNSBL, SPF, ...) accepts with a L{Finding}: what it found and the
action the admin configured for that, for the framework to combine and
apply.
"""

from dataclasses import dataclass
from typing import Optional

from mailsrv.policy.actions import NONE, Action


@dataclass(frozen=True)
class Finding:
    """
    What one filter check found.

    @ivar spam: whether the check alone counts the message as spam.
    @ivar action: what the admin wants done whatever the count (L{NONE}
        when nothing).
    @ivar reasons: short texts for the summary header and the log.
    @ivar headers: C{(name, value)} pairs to add to the message.
    @ivar counted: the actions of findings that count toward the shared
        threshold (standard DNS blacklist hits, failed validation tests):
        the message is spam when the findings of all checks reach it, and
        only then do these actions apply.
    @ivar subject_prefix: the check's own [antispam.NAME] subject_prefix,
        or L{None}: see L{mailsrv.policy.judgement.Judgement.subject_prefix}.
    @ivar refusal: for a check that names what in the message it refuses
        (an attachment): what the client is told when its C{reject}
        refuses the message after the final dot (L{mailsrv.policy.apply}
        gives the code); "" for the plain spam refusal.
    @ivar results: the L{mailsrv.policy.authentication.AuthResult}s of an
        authentication check (SPF, DKIM, DMARC), for the one
        Authentication-Results header.
    """

    spam: bool
    action: Action = NONE
    reasons: tuple = ()
    headers: tuple = ()
    counted: tuple = ()
    subject_prefix: Optional[str] = None
    refusal: str = ""
    results: tuple = ()


@dataclass(frozen=True)
class Verdict:
    """
    @ivar accepted: whether the check lets the command through.
    @ivar code: the SMTP reply code of a refusal.
    @ivar enhanced: its RFC 3463 enhanced code.
    @ivar text: what the client is told.
    @ivar reason: what the log says (may be more precise than C{text}).
    @ivar finding: a filter check's L{Finding}, else L{None}.
    """

    accepted: bool
    code: int = 250
    enhanced: str = "2.0.0"
    text: str = "Ok"
    reason: str = ""
    finding: Optional[Finding] = None

    @classmethod
    def accept(cls, reason=""):
        if not reason:
            return ACCEPTED  # frozen: one instance serves every plain accept
        return cls(True, reason=reason)

    @classmethod
    def refuse(cls, code, enhanced, text, reason=None):
        return cls(False, code, enhanced, text, text if reason is None else reason)

    @classmethod
    def found(cls, spam, action=NONE, reasons=(), headers=(), counted=(), subject_prefix=None,
              refusal="", results=()):
        """A filter check's answer: accepted, with what it found."""
        return cls(True, reason=", ".join(reasons),
                   finding=Finding(spam, action, tuple(reasons), tuple(headers), tuple(counted),
                                   subject_prefix, refusal, tuple(results)))

    @property
    def temporary(self):
        """A refusal the client should try again later (a 4xx code)."""
        return not self.accepted and 400 <= self.code < 500


ACCEPTED = Verdict(True)
