"""
DKIM ([antispam.dkim], RFC 6376): does each signature of the message
verify? The verification is L{mailsrv.policy.dkimverify}'s, done once per
message (DMARC reads the same); this check reports it, as one result with
its action and one Authentication-Results entry per signature, and one
for the ARC chain (RFC 8617) when the message has one.

No result counts as spam by itself: a mailing list that edits the Subject
breaks a signature of honest mail, and RFC 6376 6.1 says a broken
signature is to be treated as no signature. DMARC is what turns a missing
aligned pass into a verdict.
"""

from mailsrv.policy.authentication import AuthResult
from mailsrv.policy.verdict import Verdict

# The message's result, from its signatures': the first of these any has.
PRECEDENCE = ("pass", "temperror", "fail", "permerror", "neutral")


def overall(verified):
    """The one DKIM result of a L{mailsrv.policy.dkimverify.Verified}."""
    if verified.error:
        return "permerror"
    found = {signature.result for signature in verified.signatures}
    return next((result for result in PRECEDENCE if result in found), "none")


class DKIMFilter:
    """
    @param verifier: the shared L{mailsrv.policy.dkimverify.Verifier}.
    @param actions: a function from a DKIM result to its
        L{mailsrv.policy.actions.Action}.
    """

    def __init__(self, verifier, actions):
        self.verifier = verifier
        self.actions = actions

    def check(self, session, transaction, message):
        return self.verifier.verify(message).addCallback(self._judge)

    def _judge(self, verified):
        result = overall(verified)
        results = verified.results()
        if not verified.signatures:
            results = (AuthResult("dkim", result, (), verified.error),) + results
        domains = sorted({s.domain for s in verified.signatures if s.result == result})
        reason = f"dkim {result}" + (f" {','.join(domains)}" if domains else "")
        return Verdict.found(False, self.actions(result), (reason,), results=results)
