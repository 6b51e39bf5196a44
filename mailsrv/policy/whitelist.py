"""
Whitelists ([antispam.spamskip], [antispam.whitelist]): mail from these
client IPs (spamskip.txt) or senders (whitelist.txt) skips the connection
filters, the content filters, or both, as the admin chose for each file.
Both files are re-read when they change.

A sender in one of our own domains benefits from no whitelist unless the
session stands (authenticated, trusted IP, POP-before-SMTP window): from
anyone else such a sender is forged, the spammer's favourite.
"""

from twisted.internet import defer
from twisted.logger import Logger

from mailsrv.dns import TemporaryDNSError
from mailsrv.policy.judgement import NOT_WHITELISTED, Whitelisting

log = Logger()


class ClientWhitelist:
    """
    spamskip.txt: client IPs (IP and netmask, CIDR, ranges, ...).

    @param clients: a L{mailsrv.netaddr.ListedClients}.
    @param settings: the L{mailsrv.config.WhitelistSettings}.
    """

    reason = "whitelist:spamskip"

    def __init__(self, clients, settings):
        self.clients = clients
        self.settings = settings

    def match(self, session, transaction):
        """A Deferred of whether the client is listed (not when DNS fails)."""
        d = self.clients.match(session.ip)
        return d.addErrback(lambda f: f.trap(TemporaryDNSError) and False)


class SenderWhitelist:
    """
    whitelist.txt: sender addresses and domains.

    @param senders: a L{mailsrv.directory.senderlist.SenderList}.
    @param settings: the L{mailsrv.config.WhitelistSettings}.
    """

    reason = "whitelist:sender"

    def __init__(self, senders, settings):
        self.senders = senders
        self.settings = settings

    def match(self, session, transaction):
        sender = transaction.sender
        return defer.succeed(bool(sender) and self.senders.entry_for(sender) is not None)


class Whitelists:
    """
    @param lists: L{ClientWhitelist}, L{SenderWhitelist}.
    @param directory: tells our own addresses.
    @param standing: the listener's L{mailsrv.policy.standing.Standing}.
    """

    def __init__(self, lists, directory, standing):
        self.lists = tuple(lists)
        self.directory = directory
        self.standing = standing

    @defer.inlineCallbacks
    def match(self, session, transaction):
        """A Deferred L{Whitelisting}."""
        matched = []
        for whitelist in self.lists:
            if (yield whitelist.match(session, transaction)):
                matched.append(whitelist)
        if not matched:
            return NOT_WHITELISTED
        sender = transaction.sender
        if (sender and self.directory.is_local_address(sender)
                and (yield self.standing.reason(session)) is None):
            log.info("whitelist ignored for {ip}: local sender <{sender}> without "
                     "authentication", ip=session.ip, sender=sender)
            return Whitelisting(("whitelist ignored: unauthenticated local sender",))
        return Whitelisting(
            tuple(w.reason for w in matched),
            connection=any(w.settings.connection for w in matched),
            content=any(w.settings.content for w in matched),
        )
