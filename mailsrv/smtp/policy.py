"""
Sender and recipient policy as stages (DESIGN.md, "one stage, one small
object"). A stage has one method, C{check(session, transaction, subject)},
returning a Deferred L{Verdict}; it never writes a reply. The server runs a
chain with L{first_refusal} and turns a refusal into the SMTP reply, so each
stage is tested without a transport.

To add a check (SPF, DNSBL, ...), write a stage and add it to
L{sender_stages} or L{recipient_stages}.
"""

from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailsrv import dns, errorlog
from mailsrv.address import domain_of, is_address, local_part_of
from mailsrv.directory.senderlist import SenderList, parse_kill_list

log = Logger()


@dataclass(frozen=True)
class Verdict:
    """
    @ivar accepted: whether the stage lets the command through.
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
            return _ACCEPTED  # frozen: one instance serves every plain accept
        return cls(True, reason=reason)

    @classmethod
    def refuse(cls, code, enhanced, text, reason=None):
        return cls(False, code, enhanced, text, text if reason is None else reason)


_ACCEPTED = Verdict(True)


def run_stages(stages, session, transaction, subject):
    """
    Run C{stages} in order: synchronously while each stage answers with a
    L{Verdict}, through Deferreds only from the first stage that returns
    one (a lookup). Most stages answer at once, and a Deferred per stage
    cost more than the checks themselves.

    @return: the first refusing L{Verdict}, or an accepting one whose
        reason joins every stage's reason; or a Deferred of it when a stage
        went asynchronous. A stage that fails (a bug, a lookup error)
        refuses with 451 4.3.0: a temporary error never turns into a
        permanent refusal.
    """
    reasons = []
    for index, stage in enumerate(stages):
        try:
            verdict = stage.check(session, transaction, subject)
        except Exception:
            return _stage_failed(Failure(), stage, session)
        if isinstance(verdict, defer.Deferred):
            return _run_async(verdict, stage, stages[index + 1:], session, transaction,
                              subject, reasons)
        if not verdict.accepted:
            return verdict
        if verdict.reason:
            reasons.append(verdict.reason)
    return Verdict.accept("; ".join(reasons))


def _run_async(pending, stage, remaining, session, transaction, subject, reasons):
    """The rest of L{run_stages} once C{stage} has returned a Deferred."""

    def judged(verdict):
        if not verdict.accepted:
            return verdict
        if verdict.reason:
            reasons.append(verdict.reason)
        rest = run_stages(remaining, session, transaction, subject)
        if isinstance(rest, defer.Deferred):
            return rest.addCallback(joined)
        return joined(rest)

    def joined(verdict):
        if not verdict.accepted or not reasons:
            return verdict
        return Verdict.accept("; ".join([*reasons, verdict.reason] if verdict.reason
                                        else reasons))

    return pending.addCallbacks(judged, _stage_failed, errbackArgs=(stage, session))


def _stage_failed(failure, stage, session):
    errorlog.client_errors.failed(log, failure, f"policy stage {type(stage).__name__}",
                                  f"smtp {getattr(session, 'ip', '?')}")
    return Verdict.refuse(
        451, "4.3.0", "Temporary failure, try again later",
        f"{type(stage).__name__} failed: {failure.getErrorMessage()}",
    )


def first_refusal(stages, session, transaction, subject):
    """
    L{run_stages}, always as a Deferred (for callers that chain on it).
    """
    verdict = run_stages(list(stages), session, transaction, subject)
    if isinstance(verdict, defer.Deferred):
        return verdict
    return defer.succeed(verdict)


# Sender stages: subject is the MAIL FROM address ("" for the null sender).


class AuthRequired:
    """
    Submission (RFC 6409) and [[listen]] require_auth: only logged-in users
    may send, or only one named account. Clients on the listener's safe
    list are exempt: they are scripts that cannot log in.

    @ivar account: "any", or the one address that may send here.
    @ivar access: the listener's L{mailsrv.access.ListenerAccess}, or L{None}.
    """

    def __init__(self, account="any", access=None):
        self.account = account
        self.access = access

    def check(self, session, transaction, sender):
        if self.access is not None and getattr(self.access, "safe", True):
            return self.access.is_safe(session.ip).addCallback(self._judge, session)
        return self._judge(False, session)  # no safe list: no lookup to wait for

    def _judge(self, safe, session):
        if safe:
            return Verdict.accept(f"safe list: {session.ip}")
        if session.user is None:
            return Verdict.refuse(530, "5.7.0", "Authentication required")
        if self.account != "any" and session.user != self.account:
            return Verdict.refuse(
                530, "5.7.0", f"This port takes mail only from {self.account}",
                f"{session.user} is not {self.account}, the only account of this port",
            )
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


# Recipient stages: subject is a mailsrv.smtp.state.Recipient.

class RoutingTricksRefused:
    """
    Local parts that ask us to route onwards (C{user%other@our.domain},
    C{host!user@our.domain}, C{"user@other"@our.domain}) are refused
    outright, whatever the domain: old relays honoured them.
    """

    def check(self, session, transaction, recipient):
        local = local_part_of(recipient.address)
        if not ("%" in local or "!" in local or (local.startswith('"') and "@" in local)):
            return Verdict.accept()
        return Verdict.refuse(
            550, "5.7.1", f"<{recipient.address}>: routing through this server is not allowed",
            f"routing trick in <{recipient.address}> from {session.ip}",
        )


class RecipientLimit:
    """[access] max_recipients; 452 makes the client send the rest later."""

    def __init__(self, max_recipients):
        self.max_recipients = max_recipients

    def check(self, session, transaction, recipient):
        if len(transaction.recipients) >= self.max_recipients:
            return Verdict.refuse(
                452, "4.5.3", "Too many recipients",
                f"more than {self.max_recipients} recipients",
            )
        return Verdict.accept()


class LocalRecipient:
    """
    An address in our domains must reach a mailbox (or a remote address):
    a user, or an alias with at least one live member. Dead members of an
    alias that has live ones are logged, so the admin hears of them.
    """

    def check(self, session, transaction, recipient):
        route = recipient.route
        if route is None:
            return Verdict.refuse(
                550, "5.1.1", f"<{recipient.address}>: user unknown",
                f"<{recipient.address}> reaches no local user or remote address",
            )
        if route.dead:
            log.warn("<{address}> reaches no mailbox through {dead} (see mailsrv lists "
                     "check); delivering to the other members",
                     address=recipient.address, dead=", ".join(route.dead))
        return Verdict.accept()


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


class ListPosting:
    """
    [lists] accept_remote = false: a local list (an alias with several
    members) takes mail only from senders in our own domains, whose
    standing L{LocalSenderMustAuthenticate} checks at MAIL.
    """

    def __init__(self, directory):
        self.directory = directory

    def check(self, session, transaction, recipient):
        sender = transaction.sender
        if (not recipient.route.is_local_domain
                or self.directory.list_members(recipient.address) is None
                or (sender and self.directory.is_local_address(sender))):
            return Verdict.accept()
        return Verdict.refuse(
            550, "5.7.1", f"<{recipient.address}>: this list takes mail from local senders only",
            f"list <{recipient.address}> refuses remote sender <{sender}>",
        )


class RelayPermission:
    """
    Mail for other domains is relayed only for a client in L{Standing}, or
    when the domain is one of ours to pass on ([delivery.transports]).

    @param refusal_text: [relay] refusal_text, C{%s} standing for the IP.
    """

    def __init__(self, standing, relay_domains=(), refusal_text="relaying denied for %s"):
        self.standing = standing
        self.relay_domains = frozenset(relay_domains)
        self.refusal_text = refusal_text

    def check(self, session, transaction, recipient):
        if recipient.route.is_local_domain:
            return Verdict.accept()
        domain = domain_of(recipient.address)
        if domain in self.relay_domains:
            return Verdict.accept(f"relay domain {domain}")
        reason = self.standing.reason_now(session)
        if isinstance(reason, defer.Deferred):
            return reason.addCallback(self._judge, session, recipient)
        return self._judge(reason, session, recipient)

    def _judge(self, reason, session, recipient):
        if reason is None:
            return Verdict.refuse(
                550, "5.7.1",
                f"<{recipient.address}>: " + self.refusal_text.replace("%s", session.ip),
                f"relaying denied: <{recipient.address}> from {session.ip}",
            )
        if self.standing.mode == "anyone" and session.user is None:
            log.warn(
                "OPEN RELAY: relaying to <{address}> for {ip} because [relay] "
                "mode = \"anyone\"",
                address=recipient.address, ip=session.ip,
            )
        return Verdict.accept(f"relay: {reason}")


class LocalSenderMustAuthenticate:
    """
    [access] local_sender_must_auth, on mx listeners: a MAIL FROM in one of
    our own domains comes from a client in L{Standing}; from anyone else it
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

    def __init__(self, directory):
        self.directory = directory

    def check(self, session, transaction, sender):
        user = session.user
        if user is None or sender == "" or self.directory.owns(user, sender):
            return Verdict.accept()
        return Verdict.refuse(
            553, "5.7.1", f"<{sender}>: sender address not owned by user {user}",
        )


def standing(server, listener):
    settings = server.settings
    return Standing(settings.relay.mode, server.trusted, server.sessions,
                    settings.pop_before_smtp.enabled, settings.relay.trusted_bypass_antispam,
                    server.access_for(listener))


def kill_list(server):
    """The kill list of [access] kill_file (preflight refused a bad one before start-up)."""
    return SenderList(server.settings.access.kill_file, parse_kill_list, server.clock)


def sender_stages(server, listener):
    """The MAIL FROM checks of one listener, in order: DNS last."""
    access = server.settings.access
    stages = []
    require_auth = listener.access.require_auth or (
        "any" if listener.role == "submission" else "")
    if require_auth:
        stages.append(AuthRequired(require_auth, server.access_for(listener)))
    if access.check_valid_sender:
        stages.append(ValidSender())
    if access.refuse_null_sender:
        stages.append(NullSenderRefused())
    if access.kill_file is not None:
        stages.append(KilledSender(kill_list(server)))
    if access.sender_must_be_owned:
        stages.append(SenderOwnedByUser(server.directory))
    if listener.role == "mx" and access.local_sender_must_auth:
        stages.append(LocalSenderMustAuthenticate(server.directory, standing(server, listener)))
    if access.verify_sender_domain:
        stages.append(SenderDomainExists(server.directory,
                                         dns.resolver_for(server.settings.dns)))
    return stages


def recipient_stages(server, listener):
    """The RCPT TO checks of one listener, in order: cheapest first."""
    settings = server.settings
    stages = [
        RecipientLimit(settings.access.max_recipients),
        RoutingTricksRefused(),
        LocalRecipient(),
    ]
    if not settings.lists.accept_remote:
        stages.append(ListPosting(server.directory))
    stages.append(RelayPermission(
        standing(server, listener), (domain for domain, _ in settings.delivery.transports),
        settings.relay.refusal_text,
    ))
    return stages
