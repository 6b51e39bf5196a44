"""
A client's standing: whether it may act beyond mail to our own users. The
relay check, the local-sender check and the anti-spam filters all ask it,
so it is one object given to each, not a check of its own.
"""

from twisted.internet import defer


class Standing:
    """
    Whether a client may act beyond mail to our own users: authenticated,
    a trusted IP ([relay] mode "trusted"), anyone (mode "anyone": an open
    relay), an IP with an open POP-before-SMTP window, or a client on the
    listener's safe list. Mode "none" still counts all but the trusted IPs.
    Loopback is trusted only when listed.
    Relaying and local senders on port 25 ask the same question.
    """

    def __init__(self, mode, trusted, sessions, pop_before_smtp, bypass_antispam=True,
                 access=None):
        self.access = access
        self.mode = mode
        self.trusted = trusted
        self.sessions = sessions
        self.pop_before_smtp = pop_before_smtp
        self.bypass_antispam = bypass_antispam

    def skips_antispam(self, session):
        """
        [relay] trusted_bypass_antispam: a Deferred of whether the anti-spam
        filters should let this client's mail through unchecked: it
        stands, and not merely because of mode "anyone".
        """
        if not self.bypass_antispam or (self.mode == "anyone" and session.user is None):
            return defer.succeed(False)
        return self.reason(session).addCallback(lambda reason: reason is not None)

    def reason(self, session):
        """
        @return: a Deferred of why the client stands (for the log), or of
            L{None}; a POP-before-SMTP window is noted in C{session.pop_user}.
        """
        reason = self.reason_now(session)
        return reason if isinstance(reason, defer.Deferred) else defer.succeed(reason)

    def reason_now(self, session):
        """
        L{reason}: the answer itself when it needs no lookup (a logged-in
        user, mode "anyone"), else a Deferred of it.
        """
        if session.user is not None:
            return f"authenticated as {session.user}"
        if self.mode == "anyone":
            return "[relay] mode anyone (open relay)"
        return self._looked_up(session)

    @defer.inlineCallbacks
    def _looked_up(self, session):
        if self.access is not None and (yield self.access.is_safe(session.ip)):
            return f"safe list of this port: {session.ip}"
        if self.mode == "trusted" and self.trusted and (yield self.trusted.match(session.ip)):
            return f"trusted IP {session.ip}"
        if self.pop_before_smtp:
            user = yield self.sessions.window_user(session.ip)
            if user is not None:
                session.pop_user = user
                return f"POP-before-SMTP window of {user}"
        return None
