"""
Filters fail open: a DNS lookup that times out or fails skips the list or
test that needed it (logged), rather than holding the message up or
counting against the sender.
"""

from twisted.internet import defer
from twisted.logger import Logger

from mailsrv import dns

log = Logger()


def skip_on_failure(d, timeout, clock, kind, name, subject):
    """
    @param d: the Deferred of a check.
    @param timeout: seconds it may take.
    @param kind: C{dnsbl}, C{validation}: with C{name} and C{subject} (what
        was looked up), for the log line.
    @return: C{d}, which gives L{None} for a timeout or a temporary DNS error.
    """
    d.addTimeout(timeout, clock)

    def failed(failure):
        failure.trap(dns.TemporaryDNSError, defer.TimeoutError)
        if failure.check(defer.TimeoutError):
            error = f"no answer in {timeout:g}s"
        else:
            error = failure.getErrorMessage()
        log.info("{kind} {name} skipped: {subject}: {error}",
                 kind=kind, name=name, subject=subject, error=error)
        return None

    return d.addErrback(failed)
