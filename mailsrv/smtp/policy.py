"""
Sender and recipient policy as stages (DESIGN.md, "one stage, one small
object"). A stage has one method, C{check(session, transaction, subject)},
returning a Deferred L{Verdict}; it never writes a reply. The server runs a
chain with L{first_refusal} and turns a refusal into the SMTP reply, so each
stage is tested without a transport.

To add a check (kill list, SPF, ...), write a stage and add it to
L{sender_stages} or L{recipient_stages}.
"""

from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger

from mailsrv.smtp.commands import is_mailbox

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
        return cls(True, reason=reason)

    @classmethod
    def refuse(cls, code, enhanced, text, reason=None):
        return cls(False, code, enhanced, text, text if reason is None else reason)


def first_refusal(stages, session, transaction, subject):
    """
    Run C{stages} in order.

    @return: a Deferred of the first refusing L{Verdict}, or of an accepting
        one whose reason joins every stage's reason. A stage that fails
        (a bug, a lookup error) refuses with 451 4.3.0: a temporary error
        never turns into a permanent refusal.
    """
    reasons = []

    def run(remaining):
        if not remaining:
            return Verdict.accept("; ".join(reasons))
        stage = remaining[0]
        d = defer.maybeDeferred(stage.check, session, transaction, subject)
        d.addCallbacks(judged, failed, callbackArgs=(remaining,), errbackArgs=(stage,))
        return d

    def judged(verdict, remaining):
        if not verdict.accepted:
            return verdict
        if verdict.reason:
            reasons.append(verdict.reason)
        return run(remaining[1:])

    def failed(failure, stage):
        log.failure("policy stage {stage} failed", failure, stage=type(stage).__name__)
        return Verdict.refuse(
            451, "4.3.0", "Temporary failure, try again later",
            f"{type(stage).__name__} failed: {failure.getErrorMessage()}",
        )

    return run(list(stages))


# Sender stages: subject is the MAIL FROM address ("" for the null sender).


class AuthRequired:
    """Submission (RFC 6409): only authenticated users may send."""

    def check(self, session, transaction, sender):
        if session.user is None:
            return defer.succeed(
                Verdict.refuse(530, "5.7.0", "Authentication required")
            )
        return defer.succeed(Verdict.accept())


class ValidSender:
    """[access] check_valid_sender: a sender is a full user@domain, or <>."""

    def check(self, session, transaction, sender):
        if sender == "" or is_mailbox(sender):
            return defer.succeed(Verdict.accept())
        return defer.succeed(
            Verdict.refuse(
                553, "5.1.7", f"<{sender}>: sender address must be a full user@domain"
            )
        )


# Recipient stages: subject is a mailsrv.smtp.state.Recipient.


class RecipientLimit:
    """[access] max_recipients; 452 makes the client send the rest later."""

    def __init__(self, max_recipients):
        self.max_recipients = max_recipients

    def check(self, session, transaction, recipient):
        if len(transaction.recipients) >= self.max_recipients:
            return defer.succeed(
                Verdict.refuse(
                    452, "4.5.3", "Too many recipients",
                    f"more than {self.max_recipients} recipients",
                )
            )
        return defer.succeed(Verdict.accept())


class LocalRecipient:
    """An address in our domains must be a user or an alias."""

    def check(self, session, transaction, recipient):
        if recipient.route is None:
            return defer.succeed(
                Verdict.refuse(
                    550, "5.1.1", f"<{recipient.address}>: user unknown",
                    f"unknown local user <{recipient.address}>",
                )
            )
        return defer.succeed(Verdict.accept())


class Standing:
    """
    Whether a client may act beyond mail to our own users: authenticated,
    a trusted IP ([relay] mode "trusted"), anyone (mode "anyone": an open
    relay), or an IP with an open POP-before-SMTP window. Mode "none" still
    counts the first and the last. Loopback is trusted only when listed.
    Relaying and local senders on port 25 ask the same question.
    """

    def __init__(self, mode, trusted, sessions, pop_before_smtp):
        self.mode = mode
        self.trusted = trusted
        self.sessions = sessions
        self.pop_before_smtp = pop_before_smtp

    def reason(self, session):
        """
        @return: a Deferred of why the client stands (for the log), or of
            L{None}; a POP-before-SMTP window is noted in C{session.pop_user}.
        """
        if session.user is not None:
            return defer.succeed(f"authenticated as {session.user}")
        if self.mode == "anyone":
            return defer.succeed("[relay] mode anyone (open relay)")
        if self.mode == "trusted" and self.trusted:
            return self.trusted.match(session.ip).addCallback(self._trusted, session)
        return self._window_reason(session)

    def _trusted(self, listed, session):
        if listed:
            return f"trusted IP {session.ip}"
        return self._window_reason(session)

    def _window_reason(self, session):
        if not self.pop_before_smtp:
            return defer.succeed(None)
        return self.sessions.window_user(session.ip).addCallback(self._window, session)

    def _window(self, user, session):
        if user is None:
            return None
        session.pop_user = user
        return f"POP-before-SMTP window of {user}"


class RelayPermission:
    """Mail for other domains is relayed only for a client in L{Standing}."""

    def __init__(self, standing):
        self.standing = standing

    def check(self, session, transaction, recipient):
        if recipient.route.is_local_domain:
            return defer.succeed(Verdict.accept())
        return self.standing.reason(session).addCallback(self._judge, session, recipient)

    def _judge(self, reason, session, recipient):
        if reason is None:
            return Verdict.refuse(
                550, "5.7.1",
                f"<{recipient.address}>: relaying denied for {session.ip}",
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
            return defer.succeed(Verdict.accept())
        return self.standing.reason(session).addCallback(self._judge, sender)

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
            return defer.succeed(Verdict.accept())
        return defer.succeed(
            Verdict.refuse(
                553, "5.7.1", f"<{sender}>: sender address not owned by user {user}",
            )
        )


def standing(server):
    settings = server.settings
    return Standing(settings.relay.mode, server.trusted, server.sessions,
                    settings.pop_before_smtp.enabled)


def sender_stages(server, listener):
    """The MAIL FROM checks of one listener, in order."""
    access = server.settings.access
    stages = []
    if listener.role == "submission":
        stages.append(AuthRequired())
    if access.check_valid_sender:
        stages.append(ValidSender())
    if access.sender_must_be_owned:
        stages.append(SenderOwnedByUser(server.directory))
    if listener.role == "mx" and access.local_sender_must_auth:
        stages.append(LocalSenderMustAuthenticate(server.directory, standing(server)))
    return stages


def recipient_stages(server, listener):
    """The RCPT TO checks of one listener, in order: cheapest first."""
    return [
        RecipientLimit(server.settings.access.max_recipients),
        LocalRecipient(),
        RelayPermission(standing(server)),
    ]
