"""
SPF ([antispam.spf], RFC 7208): may the client send for the MAIL FROM
domain (or, for the null sender, for its HELO name)? The evaluation
(pyspf in a thread, our DNS, RFC 7208's limits) is
L{mailsrv.policy.spfeval}'s.
"""

from mailsrv.policy import spfeval
from mailsrv.policy.authentication import AuthResult
from mailsrv.policy.verdict import Verdict

SPAM_RESULTS = frozenset({"fail", "softfail"})


class SPFFilter:
    """
    @param actions: a function from an SPF result to its
        L{mailsrv.policy.actions.Action}.
    @param receiver: our host name, for the Received-SPF header.
    @param timeout: seconds for the whole check (RFC 7208 4.6.4 says 20).
    """

    def __init__(self, actions, receiver, timeout):
        self.actions = actions
        self.receiver = receiver
        self.timeout = timeout

    def check(self, session, transaction, sender):
        helo = session.helo or ""
        d = spfeval.evaluate(session.ip, transaction.sender, helo, self.receiver, self.timeout)
        return d.addCallback(self._judge, spfeval.identity(transaction.sender, helo))

    def _judge(self, outcome, checked):
        result, header = outcome
        return Verdict.found(result in SPAM_RESULTS, self.actions(result), (f"spf {result}",),
                             (("Received-SPF", header),),
                             results=(AuthResult("spf", result, (checked,)),))
