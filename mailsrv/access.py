"""
The connection stage: who may connect to one listener ([[listen]] allow,
deny, safe, block_own_ips; docs/config.md "Listener access"). It knows no
protocol: the service asks it before a connection is handed to one, and the
SMTP sender stage asks it whether a client is on the safe list.
"""

from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger

from mailsrv.dns import TemporaryDNSError
from mailsrv.netaddr import ListedClients, normalise_ip

log = Logger()


@dataclass(frozen=True)
class Decision:
    """
    @ivar allowed: whether the client is served.
    @ivar safe: whether it is on the safe list (every restriction waived).
    @ivar temporary: a refusal for a failed lookup: try again later.
    @ivar reason: for the log.
    """

    allowed: bool
    reason: str
    safe: bool = False
    temporary: bool = False


class ListenerAccess:
    """
    The order: the safe list first (it overrides everything), then the
    server's own address, the deny list, the allow list.
    """

    def __init__(self, settings, resolver, clock=None):
        self.settings = settings
        self.safe = ListedClients(settings.safe, None, resolver)
        self.deny = ListedClients(settings.deny, settings.deny_file, resolver, clock)
        self.allow = ListedClients(settings.allow, settings.allow_file, resolver, clock)

    def is_safe(self, ip):
        """A Deferred of whether C{ip} is on the safe list."""
        if not self.safe:
            return defer.succeed(False)
        return self.safe.match(ip).addErrback(lambda f: f.trap(TemporaryDNSError) and False)

    def check(self, peer_ip, local_ip):
        """@return: a Deferred of a L{Decision} for a client at C{peer_ip}."""
        d = self._check(peer_ip, local_ip)
        d.addErrback(self._lookup_failed)
        return d

    @defer.inlineCallbacks
    def _check(self, peer_ip, local_ip):
        if (yield self.is_safe(peer_ip)):
            return Decision(True, "safe list", safe=True)
        if self.settings.block_own_ips and _same(peer_ip, local_ip):
            return Decision(False, "client uses the server's own address")
        if self.deny and (yield self.deny.match(peer_ip)):
            return Decision(False, "deny list")
        if self.allow and not (yield self.allow.match(peer_ip)):
            return Decision(False, "not on the allow list")
        return Decision(True, "")

    def _lookup_failed(self, failure):
        failure.trap(TemporaryDNSError)
        return Decision(False, f"lookup failed: {failure.getErrorMessage()}", temporary=True)


def _same(a, b):
    try:
        return normalise_ip(a) == normalise_ip(b)
    except ValueError:
        return False
