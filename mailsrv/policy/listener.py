"""
Which checks each hook of one listener runs, built from the config: the
one place that knows every check (the checks know none of each other).
"""

from mailsrv import dns
from mailsrv.directory.senderlist import SenderList, parse_kill_list
from mailsrv.policy.checks.recipient import (
    ListPosting,
    LocalRecipient,
    RecipientLimit,
    RelayPermission,
    RoutingTricksRefused,
)
from mailsrv.policy.checks.sender import (
    AuthRequired,
    KilledSender,
    LocalSenderMustAuthenticate,
    NullSenderRefused,
    SenderDomainExists,
    SenderOwnedByUser,
    ValidSender,
)
from mailsrv.policy.standing import Standing


def standing(server, listener):
    settings = server.settings
    return Standing(settings.relay.mode, server.trusted, server.sessions,
                    settings.pop_before_smtp.enabled, settings.relay.trusted_bypass_antispam,
                    server.access_for(listener))


def kill_list(server):
    """The kill list of [access] kill_file (preflight refused a bad one before start-up)."""
    return SenderList(server.settings.access.kill_file, parse_kill_list, server.clock)


def sender_checks(server, listener):
    """The MAIL FROM checks of one listener, in order: DNS last."""
    access = server.settings.access
    checks = []
    require_auth = listener.access.require_auth or (
        "any" if listener.role == "submission" else "")
    if require_auth:
        checks.append(AuthRequired(require_auth, server.access_for(listener)))
    if access.check_valid_sender:
        checks.append(ValidSender())
    if access.refuse_null_sender:
        checks.append(NullSenderRefused())
    if access.kill_file is not None:
        checks.append(KilledSender(kill_list(server)))
    if access.sender_must_be_owned:
        checks.append(SenderOwnedByUser(server.directory))
    if listener.role == "mx" and access.local_sender_must_auth:
        checks.append(LocalSenderMustAuthenticate(server.directory, standing(server, listener)))
    if access.verify_sender_domain:
        checks.append(SenderDomainExists(server.directory,
                                         dns.resolver_for(server.settings.dns)))
    return checks


def recipient_checks(server, listener):
    """The RCPT TO checks of one listener, in order: cheapest first."""
    settings = server.settings
    checks = [
        RecipientLimit(settings.access.max_recipients),
        RoutingTricksRefused(),
        LocalRecipient(),
    ]
    if not settings.lists.accept_remote:
        checks.append(ListPosting(server.directory))
    checks.append(RelayPermission(
        standing(server, listener), (domain for domain, _ in settings.delivery.transports),
        settings.relay.refusal_text,
    ))
    return checks
