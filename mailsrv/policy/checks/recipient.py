"""
The checks of the recipient hook (RCPT TO): the subject is a
L{mailsrv.smtp.state.Recipient}, the address and its route. Cheapest
first; none knows another.
"""

from twisted.internet import defer
from twisted.logger import Logger

from mailsrv.address import domain_of, local_part_of
from mailsrv.policy.verdict import Verdict

log = Logger()


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
    alias that has live ones are logged, so the admin hears of them. While
    the directory is incomplete (its LDAP addresses not read yet), an
    unknown address is refused for now, not for good.
    """

    def __init__(self, directory):
        self.directory = directory

    def check(self, session, transaction, recipient):
        route = recipient.route
        if route is None and not self.directory.complete:  # (the LDAP book not read yet)
            return Verdict.refuse(
                451, "4.3.0", "Directory unavailable, try again later",
                f"<{recipient.address}>: unknown, and the directory is not read yet")
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


class ListPosting:
    """
    [lists] accept_remote = false: a local list (an alias with several
    members) takes mail only from senders in our own domains, whose
    standing
    L{mailsrv.policy.checks.sender.LocalSenderMustAuthenticate} checks at MAIL.
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
    Mail for other domains is relayed only for a client in
    L{mailsrv.policy.standing.Standing}, or
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
