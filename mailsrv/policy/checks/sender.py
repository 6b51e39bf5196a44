"""
The checks of the sender hook (MAIL FROM): the subject is the sender
address ("" for the null sender). Each refuses with its own reply; none
knows another.
"""

from twisted.internet import defer

from mailsrv import dns
from mailsrv.address import domain_of, is_address
from mailsrv.policy.verdict import Verdict


class AuthRequired:
    """
    Submission (RFC 6409) and [[listen]] require_auth: only logged-in users
    may send, or only one named account. Clients on the listener's safe
    list are exempt: they are scripts that cannot log in. With
    C{windows}, an open POP-before-SMTP window counts as a login of its
    user ([pop_before_smtp] counts_as_auth), noted in C{session.pop_user}.

    @ivar account: "any", or the one address that may send here.
    @ivar access: the listener's L{mailsrv.policy.checks.connect.ListenerAccess}, or L{None}.
    @ivar windows: the session store whose windows count, or L{None}.
    """

    def __init__(self, account="any", access=None, windows=None):
        self.account = account
        self.access = access
        self.windows = windows

    def check(self, session, transaction, sender):
        if self.access is not None and getattr(self.access, "safe", True):
            return self.access.is_safe(session.ip).addCallback(self._unless_safe, session)
        return self._unless_safe(False, session)  # no safe list: no lookup to wait for

    def _unless_safe(self, safe, session):
        if safe:
            return Verdict.accept(f"safe list: {session.ip}")
        if session.user is None and self.windows is not None:
            return self.windows.window_user(session.ip).addCallback(self._judge, session)
        return self._judge(None, session)

    def _judge(self, window_user, session):
        user = session.user or window_user
        if user is None:
            return Verdict.refuse(530, "5.7.0", "Authentication required")
        if self.account != "any" and user != self.account:
            return Verdict.refuse(
                530, "5.7.0", f"This port takes mail only from {self.account}",
                f"{user} is not {self.account}, the only account of this port",
            )
        if session.user is None:
            session.pop_user = window_user
            return Verdict.accept(f"POP-before-SMTP window of {window_user}")
        return Verdict.accept()


class ValidSender:
    """[access] check_valid_sender: a sender is a full user@domain, or <>."""

    def check(self, session, transaction, sender):
        if sender == "" or is_address(sender):
            return Verdict.accept()
        return Verdict.refuse(
            553, "5.1.7", f"<{sender}>: sender address must be a full user@domain"
        )


class KilledSender:
    """[access] kill_file: senders the admin has banned (kill.lst)."""

    def __init__(self, kill_list):
        self.kill_list = kill_list

    def check(self, session, transaction, sender):
        entry = self.kill_list.entry_for(sender) if sender else None
        if entry is None:
            return Verdict.accept()
        return Verdict.refuse(501, "5.1.8", f"<{sender}>: unacceptable mail address",
                              f"sender <{sender}> is in the kill list as {entry}")


class NullSenderRefused:
    """
    [access] refuse_null_sender. Off by default: bounces, delivery and read
    receipts (and Exchange's postmaster mail) come from <>. 550 5.7.1, as
    it is policy, not a bad address.
    """

    def check(self, session, transaction, sender):
        if sender:
            return Verdict.accept()
        return Verdict.refuse(550, "5.7.1", "<>: null sender not accepted here",
                              "null sender refused ([access] refuse_null_sender)")


class SenderDomainExists:
    """
    [access] verify_sender_domain: a remote sender's domain must be able to
    take replies (MX, or A/AAAA); a DNS failure is temporary (451 4.4.3).
    """

    def __init__(self, directory, resolver):
        self.directory = directory
        self.resolver = resolver

    def check(self, session, transaction, sender):
        if not sender or self.directory.is_local_address(sender):
            return Verdict.accept()
        domain = domain_of(sender)
        d = self.resolver.accepts_mail(domain)
        return d.addCallbacks(self._judge, self._failed, (sender, domain), None, (sender, domain))

    def _judge(self, accepts, sender, domain):
        if accepts:
            return Verdict.accept()
        return Verdict.refuse(
            553, "5.1.8", f"<{sender}>: sender domain {domain} does not accept mail",
            f"sender domain {domain} has no MX or address record",
        )

    def _failed(self, failure, sender, domain):
        failure.trap(dns.TemporaryDNSError)
        return Verdict.refuse(
            451, "4.4.3", f"<{sender}>: cannot check the sender domain now, try again later",
            f"sender domain {domain}: {failure.getErrorMessage()}",
        )


class LocalSenderMustAuthenticate:
    """
    [access] local_sender_must_auth, on mx listeners: a MAIL FROM in one of
    our own domains comes from a client in
    L{mailsrv.policy.standing.Standing}; from anyone else it
    is forged (a spam classic), so it is refused.
    """

    def __init__(self, directory, standing):
        self.directory = directory
        self.standing = standing

    def check(self, session, transaction, sender):
        if sender == "" or not self.directory.is_local_address(sender):
            return Verdict.accept()
        reason = self.standing.reason_now(session)
        if isinstance(reason, defer.Deferred):
            return reason.addCallback(self._judge, sender)
        return self._judge(reason, sender)

    def _judge(self, reason, sender):
        if reason is None:
            return Verdict.refuse(
                553, "5.7.1", f"<{sender}>: authentication required for local senders",
                f"local sender <{sender}> without authentication",
            )
        return Verdict.accept(f"local sender: {reason}")


class SenderOwnedByUser:
    """
    [access] sender_must_be_owned: an authenticated user sends as their own
    address or an alias that points to them, not as someone else.
    """

    def __init__(self, directory, windows_count=False):
        """@param windows_count: whether a POP-before-SMTP window's user counts as logged in."""
        self.directory = directory
        self.windows_count = windows_count

    def check(self, session, transaction, sender):
        user = session.user or (session.pop_user if self.windows_count else None)
        if user is None or sender == "" or self.directory.owns(user, sender):
            return Verdict.accept()
        return Verdict.refuse(
            553, "5.7.1", f"<{sender}>: sender address not owned by user {user}",
        )
