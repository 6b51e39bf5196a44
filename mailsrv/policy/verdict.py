"""
The one result type of every check (STYLE.md 1 and 7): whether the command
goes through, the reply the client gets (code, enhanced code, text) and the
reason the log gets, which may say more than the client is told.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """
    @ivar accepted: whether the check lets the command through.
    @ivar code: the SMTP reply code of a refusal.
    @ivar enhanced: its RFC 3463 enhanced code.
    @ivar text: what the client is told.
    @ivar reason: what the log says (may be more precise than C{text}).
    """

    accepted: bool
    code: int = 250
    enhanced: str = "2.0.0"
    text: str = "Ok"
    reason: str = ""

    @classmethod
    def accept(cls, reason=""):
        if not reason:
            return ACCEPTED  # frozen: one instance serves every plain accept
        return cls(True, reason=reason)

    @classmethod
    def refuse(cls, code, enhanced, text, reason=None):
        return cls(False, code, enhanced, text, text if reason is None else reason)

    @property
    def temporary(self):
        """A refusal the client should try again later (a 4xx code)."""
        return not self.accepted and 400 <= self.code < 500


ACCEPTED = Verdict(True)
