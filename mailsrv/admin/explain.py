"""
`mailsrv explain MESSAGE.eml`: the policy pipeline of the first mx
listener, offline, on one message as if a client at C{--ip} (saying
C{--helo}) sent it from C{--from} to each C{--to}: every check's verdict
and reason, hook by hook, then what the server itself would do (the same
ListenerPolicy calls the SMTP server makes: the same X-Mailsrv-Spam text,
action and reply). DNS goes through the configured resolvers, as the
server's would.
"""

from io import BytesIO
from types import SimpleNamespace

from twisted.internet import defer

from mailsrv.policy.hooks import BODY, HEADER, RECIPIENT, SENDER, Message, header_section
from mailsrv.policy.listener import DomainPolicies, build as build_policy
from mailsrv.policy.judgement import SKIPPED
from mailsrv.service import build_mail_server


def policy_listener(settings):
    """The listener whose policy is explained: the first mx one, else the first SMTP one."""
    smtp = [listener for listener in settings.listeners if listener.protocol == "smtp"]
    mx = [listener for listener in smtp if listener.role == "mx"]
    return (mx or smtp or [None])[0]


@defer.inlineCallbacks
def explain(settings, reactor, data, ip, helo, sender, recipients, write):
    """
    Write the lines of the explanation with C{write}; a Deferred that
    fires when done.

    @param data: the message (bytes, as the client sends it).
    """
    listener = policy_listener(settings)
    if listener is None:
        write("no SMTP listener in the config: nothing to explain")
        return
    server = build_mail_server(settings, reactor)
    policy = build_policy(server, listener, reactor)
    session = SimpleNamespace(ip=ip, helo=helo, esmtp=True, tls=False, user=None, pop_user=None)
    write(f"listener {listener.name}, client {ip} ({helo}), from <{sender}>")
    copies = _copies(policy, recipients)
    for name, (each, addresses) in copies.items():
        if len(copies) > 1:  # (as the server splits the message: docs/filters.md)
            write(f"copy for {', '.join(f'<{a}>' for a in addresses)}: {name}")
        yield _explain_copy(write, server, each, session, data, sender, addresses)


def _copies(policy, recipients):
    """
    Which settings judge which recipients: C{{name: (ListenerPolicy,
    addresses)}}, one entry without per-domain sections.
    """
    if not isinstance(policy, DomainPolicies):
        return {"the [antispam] sections": (policy, recipients)}
    names = {policy.everywhere: "the [antispam] sections"}
    for domain, each in policy.by_domain.items():
        names.setdefault(each, f'the sections of [domain."{domain}"]')
    copies = {}
    for address in recipients or [""]:
        each = policy.policy_of(address)
        copies.setdefault(names[each], (each, []))[1].extend([address] if address else [])
    return copies


@defer.inlineCallbacks
def _explain_copy(write, server, policy, session, data, sender, recipients):
    """The explanation of one L{ListenerPolicy} on the message to C{recipients}."""
    transaction = SimpleNamespace(sender=sender, recipients=[], judgement=SKIPPED)
    header = header_section(data)  # (as the SMTP server holds it for the header hook)
    message = Message(len(data), lambda: BytesIO(data))

    # Each check alone, as it answers (gates in order, until one refuses)
    yield _gates(write, "sender", policy.gates[SENDER], session, transaction, sender)
    for check in policy.filters[SENDER]:
        yield _show(write, "sender", check, session, transaction, sender)
    routed = []
    for address in recipients:
        recipient = SimpleNamespace(address=address, route=server.directory.route(address))
        routed.append(recipient)
        yield _gates(write, f"recipient <{address}>", policy.gates[RECIPIENT], session,
                     transaction, recipient)
    for check in policy.filters[HEADER]:
        yield _show(write, "header", check, session, transaction, header)
    for check in policy.filters[BODY]:
        yield _show(write, "body", check, session, transaction, message)

    # What the server does: the hooks as the SMTP server calls them
    verdict = yield defer.maybeDeferred(policy.sender, session, transaction)
    if not verdict.accepted:
        write(f"result: MAIL FROM refused: {verdict.code} {verdict.enhanced} {verdict.text}")
        return
    for recipient in routed:
        verdict = yield defer.maybeDeferred(policy.recipient, session, transaction, recipient)
        if not verdict.accepted:
            write(f"result: RCPT TO:<{recipient.address}> refused: {verdict.code} "
                  f"{verdict.enhanced} {verdict.text}")
            return
        transaction.recipients.append(recipient)
    judgement = transaction.judgement
    if policy.reads_header(judgement):
        judgement = yield policy.header(judgement, session, transaction, header)
    if policy.reads_body(judgement, transaction):
        judgement = yield policy.body(judgement, session, transaction, message)
    if judgement.checked:
        write(f"X-Mailsrv-Spam: {judgement.summary}")
    end = policy.end(judgement, session, transaction, "(explain)")
    if end is not None and not end.accepted:
        write(f"result: refused after the final dot: {end.code} {end.enhanced} {end.text}")
    elif end is not None:
        write(f"result: accepted and dropped ({end.reason})")
    else:
        prefix = judgement.subject_prefix(policy.subject_prefix)
        write(f"result: delivered, action {judgement.action}"
              + (f", Subject prefixed with {prefix!r}" if prefix else ""))


@defer.inlineCallbacks
def _gates(write, hook, checks, session, transaction, subject):
    """The lines of a hook's gates, in order, until one refuses (the later are not asked)."""
    for check in checks:
        verdict = yield _show(write, hook, check, session, transaction, subject)
        if verdict is None or not verdict.accepted:
            return


@defer.inlineCallbacks
def _show(write, hook, check, session, transaction, subject):
    """
    One check's line: refused, spam or not (with its action), and its
    reasons; a Deferred of its L{Verdict} (L{None}: it failed).
    """
    name = type(check).__name__
    try:
        verdict = yield defer.maybeDeferred(check.check, session, transaction, subject)
    except Exception as e:  # the server answers 451 for a failing check
        write(f"{hook} {name}: failed ({e.__class__.__name__}: {e}): 451 4.3.0")
        return None
    finding = verdict.finding
    if not verdict.accepted:
        write(f"{hook} {name}: refused {verdict.code} {verdict.enhanced} {verdict.text} "
              f"({verdict.reason})")
    elif finding is None:
        write(f"{hook} {name}: accepted" + (f" ({verdict.reason})" if verdict.reason else ""))
    else:
        found = "spam" if finding.spam else ("counts" if finding.counted else "not spam")
        reasons = ", ".join(finding.reasons) or "-"
        write(f"{hook} {name}: {found}, action {finding.action}: {reasons}")
    return verdict
