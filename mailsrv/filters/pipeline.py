"""
Running the filters of one listener: the connection filters at MAIL FROM
(everything they judge is known then, so a reject is said before the
message is sent), the message filters once the header section has arrived,
and carrying out the combined action when the message is stored.
"""

from twisted.internet import defer

from mailsrv import dns
from mailsrv.config import DNSSettings
from mailsrv.directory.senderlist import SenderList, parse_whitelist
from mailsrv.filters import spf, validation
from mailsrv.filters.actions import NOT_WHITELISTED, SKIPPED, Judgement, parse_action
from mailsrv.filters.dnsbl import DNSBL, DNSBLFilter
from mailsrv.filters.received import ReceivedIPs
from mailsrv.filters.whitelist import ClientWhitelist, SenderWhitelist, Whitelists
from mailsrv.netaddr import ListedClients


class Filters:
    """
    @param filters: objects with C{check(session, transaction)} returning a
        Deferred L{mailsrv.filters.actions.FilterResult}, run in parallel
        at MAIL FROM.
    @param standing: the listener's L{mailsrv.policy.standing.Standing}:
        authenticated and trusted clients skip the filters.
    @param subject_prefix: [antispam] subject_prefix, for the subject action.
    @param threshold: the count of counted findings that makes a message spam.
    @param whitelists: the L{mailsrv.filters.whitelist.Whitelists}.
    @param message_filters: objects with C{check_message(session,
        transaction, header)} returning a Deferred C{FilterResult} or
        L{None}, run on the message's header section; they judge the
        message even when its client skips the other filters.
    """

    def __init__(self, filters, standing, subject_prefix, threshold=1, whitelists=None,
                 message_filters=()):
        self.filters = tuple(filters)
        self.standing = standing
        self.subject_prefix = subject_prefix
        self.threshold = threshold
        self.whitelists = whitelists
        self.message_filters = tuple(message_filters)

    @defer.inlineCallbacks
    def judge(self, session, transaction):
        """
        At MAIL FROM: a Deferred L{Judgement} (L{SKIPPED} when nothing is
        to be checked).
        """
        if not (self.filters or self.message_filters):
            return SKIPPED
        skipped = yield self.standing.skips_antispam(session)
        if skipped and not self.message_filters:
            return SKIPPED
        whitelist = NOT_WHITELISTED
        if self.whitelists is not None:
            whitelist = yield self.whitelists.match(session, transaction)
        judgement = Judgement(checked=not skipped, threshold=self.threshold, whitelist=whitelist)
        if skipped or whitelist.connection:
            return judgement
        results = yield defer.gatherResults(
            [defer.maybeDeferred(f.check, session, transaction) for f in self.filters])
        return judgement.adding(results)

    def reads_message(self, judgement):
        """Whether L{judge_message} must see the header section first."""
        return bool(self.message_filters) and not judgement.whitelist.connection

    @defer.inlineCallbacks
    def judge_message(self, judgement, session, transaction, header):
        """
        @param judgement: what L{judge} said.
        @param header: the message's header section (bytes).
        @return: a Deferred of the L{Judgement} with the message filters' results.
        """
        results = yield defer.gatherResults([
            defer.maybeDeferred(f.check_message, session, transaction, header)
            for f in self.message_filters])
        results = [r for r in results if r is not None]
        return judgement.adding(results) if results else judgement


def build(server, standing, clock):
    """
    The L{Filters} of [antispam] for one listener; the actions, written as
    text in the config, are parsed here (preflight refused bad ones).
    """
    settings = server.settings.antispam
    timeout = server.settings.dns.timeout
    filters, message_filters = [], []
    threshold = 1
    if settings.dnsbl is not None:
        lists = [DNSBL(bl.zone, bl.name, bl.server, bl.kind, bl.codes, parse_action(bl.action))
                 for bl in settings.dnsbl.lists]
        dnsbl = DNSBLFilter(lists, _resolvers(server.settings.dns), settings.dnsbl.timeout,
                            clock)
        filters.append(dnsbl)
        threshold, timeout = settings.dnsbl.threshold, settings.dnsbl.timeout
        if settings.dnsbl.received_headers:
            message_filters.append(ReceivedIPs(server.trusted, dnsbl.check_received))
    if settings.validation is not None:
        filters.append(validation.ValidationFilter(
            _validation_tests(server, settings.validation), timeout, clock))
    if settings.spf is not None:
        spf.install_lookup(server.settings.dns, settings.spf.max_lookups,
                           settings.spf.max_void_lookups)
        actions = {result: parse_action(text) for result, text in settings.spf.actions}
        filters.append(spf.SPFFilter(actions.__getitem__, server.settings.hostname,
                                     settings.spf.timeout))
    return Filters(filters, standing, settings.subject_prefix, threshold,
                   _whitelists(server, standing, clock), message_filters)


def _whitelists(server, standing, clock):
    """The whitelists (preflight refused bad files before start-up builds them)."""
    settings = server.settings.antispam
    lists = []
    if settings.spamskip is not None:
        resolver = dns.resolver_for(server.settings.dns)
        lists.append(ClientWhitelist(ListedClients((), settings.spamskip.file, resolver, clock),
                                     settings.spamskip))
    if settings.whitelist is not None:
        lists.append(SenderWhitelist(SenderList(settings.whitelist.file, parse_whitelist, clock),
                                     settings.whitelist))
    return Whitelists(lists, server.directory, standing) if lists else None


def _validation_tests(server, settings):
    resolver = dns.resolver_for(server.settings.dns)
    tests = {
        "helo-fqdn": lambda action: validation.HeloIsFQDN(action),
        "helo-ours": lambda action: validation.HeloNotOurs(
            server.settings.hostname, server.settings.local_domains, resolver, action),
        "reverse-dns": lambda action: validation.ReverseDNS(resolver, action),
        "fcrdns": lambda action: validation.ForwardConfirmed(resolver, action),
    }
    return tuple(tests[name](parse_action(action)) for name, action in settings.tests)


def _resolvers(dns_settings):
    def resolver(bl):
        if bl.server is None:
            return dns.resolver_for(dns_settings)
        return dns.resolver_for(DNSSettings((bl.server,), dns_settings.timeout))
    return resolver
