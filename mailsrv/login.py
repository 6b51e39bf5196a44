"""
What a login's outcome means, said once for SMTP AUTH, POP3 and IMAP: how a
password check's failure is classed, its one log line, and the recording of
a success (which opens the POP-before-SMTP window). Each protocol keeps
only a small table from outcome to its own reply.
"""

from twisted.cred.error import LoginFailed
from twisted.internet import defer
from twisted.logger import Logger

from mailsrv import errorlog, metrics
from mailsrv.directory.checker import LoginThrottled, SourceUnavailable
from mailsrv.logtext import literal, printable

log = Logger()

# Outcomes of a failed login, the keys of each protocol's reply table.
THROTTLED = "throttled"  # too many failures from this address or for this user
FAILED = "failed"  # wrong name or password
IN_USE = "in use"  # POP3: the maildrop is locked by another session
BROKEN = "broken"  # the check itself failed (a bug, an unreadable file, the
# password source away: SourceUnavailable): try later


class MaildropInUse(Exception):
    """Another POP3 session holds the maildrop (RFC 2449 [IN-USE])."""


def failed(failure, name, ip, protocol, transport):
    """
    Class a login's failure, write its one log line, and count it.

    @param name: the login name the client sent (str or bytes).
    @return: L{THROTTLED}, L{FAILED}, L{IN_USE} or L{BROKEN}.
    """
    outcome = _classed(failure, name, ip, protocol, transport)
    metrics.LOGINS.labels(protocol, outcome).inc()
    return outcome


def _classed(failure, name, ip, protocol, transport):
    name = printable(name)
    if failure.check(LoginThrottled):
        log.info("login refused (throttled): key={key} protocol={protocol}",
                 key=failure.value.key, protocol=protocol)
        return THROTTLED
    if failure.check(MaildropInUse):
        log.info("login refused (maildrop in use): user={user} ip={ip} protocol={protocol}",
                 user=name, ip=ip, protocol=protocol)
        return IN_USE
    if failure.check(SourceUnavailable):  # (no traceback: the source's own words)
        log.warn("login unavailable: user={user} ip={ip} protocol={protocol}: {error}",
                 user=name, ip=ip, protocol=protocol, error=failure.getErrorMessage())
        return BROKEN
    if failure.check(LoginFailed):
        log.info("login failed: user={user} ip={ip} protocol={protocol}",
                 user=name, ip=ip, protocol=protocol)
        return FAILED
    errorlog.client_error(log, failure, f"{protocol.upper()} login of {name}",
                          protocol, transport)
    return BROKEN


def succeeded(server, user, ip, protocol):
    """
    Log a login and record it in the session store (POP3 and IMAP logins
    open a POP-before-SMTP window).

    @return: a Deferred that fires when it is recorded; it does not fail
        (a session store that cannot record it is logged, the login stands).
    """
    log.info(literal(f"login ok: user={user} ip={ip} protocol={protocol}"),
             user=user, ip=ip, protocol=protocol)
    metrics.LOGINS.labels(protocol, "ok").inc()
    d = defer.maybeDeferred(server.sessions.record_login, user, ip, protocol)
    d.addErrback(lambda f: log.failure("recording the {protocol} login of {user}", f,
                                       protocol=protocol, user=user))
    return d
