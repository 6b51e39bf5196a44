"""
A message's judgement: the findings of every filter check (at the sender
and header hooks, later the body hook), combined into one action, one
summary header and one log line.
"""

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Optional

from mailsrv.policy.actions import NONE, Action, combine
from mailsrv.policy.authentication import header_value


@dataclass(frozen=True)
class Whitelisting:
    """
    Which whitelists let a message skip which filters.

    @ivar reasons: for the summary header and the log
        (C{whitelist:spamskip}, ...).
    @ivar connection: whether the connection filters (DNS blacklists,
        validation, SPF, Received IPs) are skipped.
    @ivar content: whether the content filters are skipped.
    """

    reasons: tuple = ()
    connection: bool = False
    content: bool = False


NOT_WHITELISTED = Whitelisting()


@dataclass(frozen=True)
class Judgement:
    """
    The combined findings of every filter check for one message.

    @ivar checked: whether filters ran (not for skipped, trusted senders).
    @ivar findings: the L{mailsrv.policy.verdict.Finding}s.
    @ivar threshold: the count of counted findings that makes a message spam.
    @ivar whitelist: the L{Whitelisting}.
    @ivar content: whether the body hook's checks judge the message: not
        for clients that skip the filters, nor for content whitelisted.
    @ivar outbound_action: for a client that skips the filters but whose
        mail to remote domains is judged ([antispam] outbound): the
        L{mailsrv.policy.actions.Action} for such mail found spam, which
        replaces the filters' own; else L{None}.
    """

    checked: bool
    findings: tuple = ()
    threshold: int = 1
    whitelist: Whitelisting = NOT_WHITELISTED
    content: bool = False
    outbound_action: Optional[Action] = None

    def adding(self, verdicts):
        """This judgement with the findings of more verdicts (of a later hook), checked."""
        found = tuple(v.finding for v in verdicts if v.finding is not None)
        return replace(self, checked=True, findings=self.findings + found)

    # Derived once per judgement (frozen: its findings never change): the
    # action is asked at the start and at the end of every message.

    @cached_property
    def _counted(self):
        return [action for f in self.findings for action in f.counted]

    @cached_property
    def _reached(self):
        counted = self._counted
        return bool(counted) and len(counted) >= self.threshold

    @property
    def spam(self):
        return self._reached or any(f.spam for f in self.findings)

    @cached_property
    def action(self):
        if self.outbound_action is not None:
            return self.outbound_action if self.spam else NONE
        actions = [f.action for f in self.findings]
        return combine(actions + self._counted if self._reached else actions)

    @property
    def reasons(self):
        reasons = [*self.whitelist.reasons, *(x for f in self.findings for x in f.reasons)]
        counted = self._counted
        if counted and not self._reached:
            reasons.append(f"count below threshold {len(counted)}/{self.threshold}")
        return tuple(reasons)

    def subject_prefix(self, default):
        """
        What goes before the message's Subject, or L{None}: the own
        prefixes of the checks that found it spam (whatever the action
        that delivers it: a message moved to Junk may be marked too), in
        order, each once; else C{default} ([antispam] subject_prefix) for
        the C{subject} action.
        """
        if self.outbound_action is not None:
            return None  # (our user's mail leaves as written)
        own = []
        for finding in self.findings:
            prefix = finding.subject_prefix
            if finding.spam and prefix and prefix not in own:
                own.append(prefix)
        if own:
            return "".join(own)
        return default if self.action.kind == "subject" else None

    @property
    def headers(self):
        return tuple(header for f in self.findings for header in f.headers)

    @property
    def results(self):
        """The authentication checks' L{mailsrv.policy.authentication.AuthResult}s."""
        return tuple(result for f in self.findings for result in f.results)

    @property
    def summary(self):
        """The value of X-Mailsrv-Spam (and of the log line)."""
        reasons = ", ".join(self.reasons) or "-"
        return f"{'yes' if self.spam else 'no'}; reasons={reasons}"

    def header_block(self, authserv_id):
        """
        The headers to write on top of the message (bytes, CRLF ends): the
        findings' own, one Authentication-Results (RFC 8601) with our host
        name C{authserv_id} when an authentication check ran, the summary.
        """
        if not self.checked:
            return b""
        lines = [f"{name}: {value}\r\n" for name, value in self.headers]
        results = self.results
        if results:
            lines.append(f"Authentication-Results: {header_value(authserv_id, results)}\r\n")
        lines.append(f"X-Mailsrv-Spam: {self.summary}\r\n")
        return "".join(lines).encode("ascii", "replace")


SKIPPED = Judgement(checked=False)
