"""
The check of the connect hook: who may connect to one listener ([[listen]]
allow, deny, safe, block_own_ips; docs/config.md "Listener access"). It
knows no protocol: the service runs it before a connection is handed to
one (each protocol has its own "denied" and "later" lines), and the sender
check L{mailsrv.policy.checks.sender.AuthRequired} is given it to ask
whether a client is on the safe list.
"""

from twisted.internet import defer

from mailsrv.dns import TemporaryDNSError
from mailsrv.netaddr import ListedClients, normalise_ip, own_addresses
from mailsrv.policy.verdict import Verdict

# The reason of a client on the safe list (every restriction waived).
SAFE = "safe list"


class ListenerAccess:
    """
    The order: the safe list first (it overrides everything), then the
    server's own address, the deny list, the allow list.
    """

    def __init__(self, settings, resolver, clock):
        self.settings = settings
        self.safe = ListedClients(settings.safe, None, resolver, clock)
        self.deny = ListedClients(settings.deny, settings.deny_file, resolver, clock)
        self.allow = ListedClients(settings.allow, settings.allow_file, resolver, clock)

    def is_safe(self, ip):
        """A Deferred of whether C{ip} is on the safe list."""
        if not self.safe:
            return defer.succeed(False)
        return self.safe.match(ip).addErrback(lambda f: f.trap(TemporaryDNSError) and False)

    def check(self, peer, transaction, subject):
        """
        @param peer: the L{mailsrv.policy.hooks.Peer}.
        @return: a Deferred of a L{Verdict} for the client: a refusal says
            why in its reason; a temporary one (a failed lookup) means "try
            again later".
        """
        d = self._check(peer.ip, peer.local_ip)
        d.addErrback(self._lookup_failed)
        return d

    @defer.inlineCallbacks
    def _check(self, peer_ip, local_ip):
        if (yield self.is_safe(peer_ip)):
            return Verdict.accept(SAFE)
        if self.settings.block_own_ips and _own(peer_ip, local_ip):
            return _denied("client uses the server's own address")
        if self.deny and (yield self.deny.match(peer_ip)):
            return _denied("deny list")
        if self.allow and not (yield self.allow.match(peer_ip)):
            return _denied("not on the allow list")
        return Verdict.accept()

    def _lookup_failed(self, failure):
        failure.trap(TemporaryDNSError)
        return Verdict.refuse(421, "4.7.0", "Try again later",
                              f"lookup failed: {failure.getErrorMessage()}")


def _denied(reason):
    return Verdict.refuse(554, "5.7.1", "Access denied", reason)


def _own(peer_ip, local_ip):
    """Whether a client comes from one of this machine's addresses (the one it reached, or any)."""
    try:
        peer = normalise_ip(peer_ip)
    except ValueError:
        return False  # (a UNIX socket)
    return peer in own_addresses() or peer == _address_or_none(local_ip)


def _address_or_none(ip):
    try:
        return normalise_ip(ip)
    except ValueError:
        return None
