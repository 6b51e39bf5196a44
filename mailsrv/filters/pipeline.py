"""
Running the filters of one listener before the message is read, and
carrying out the combined action when the message is stored.
"""

from twisted.internet import defer

from mailsrv import dns
from mailsrv.config import DNSBLSettings, DNSSettings
from mailsrv.filters import spf, validation
from mailsrv.filters.actions import SKIPPED, Judgement
from mailsrv.filters.dnsbl import DNSBLFilter
from mailsrv.store.folder import FolderExists


class Filters:
    """
    @param filters: objects with C{check(session, transaction)} returning a
        Deferred L{mailsrv.filters.actions.FilterResult}, run in parallel.
    @param standing: the listener's L{mailsrv.smtp.policy.Standing}:
        authenticated and trusted clients skip the filters.
    @param subject_prefix: [antispam] subject_prefix, for the subject action.
    """

    def __init__(self, filters, standing, subject_prefix):
        self.filters = tuple(filters)
        self.standing = standing
        self.subject_prefix = subject_prefix

    @defer.inlineCallbacks
    def judge(self, session, transaction):
        """A Deferred L{Judgement} (L{SKIPPED} when nothing is to be checked)."""
        if not self.filters or (yield self.standing.skips_antispam(session)):
            return SKIPPED
        results = yield defer.gatherResults(
            [defer.maybeDeferred(f.check, session, transaction) for f in self.filters])
        return Judgement.of(results)


def ensure_folder(store, user, folder):
    """move:FOLDER delivers into a folder that the user may not have yet."""
    try:
        store.create_folder(user, folder)
    except FolderExists:
        pass


def build(server, standing, clock):
    """The L{Filters} of [antispam] for one listener."""
    settings = server.settings.antispam
    filters = []
    if settings.dnsbl is not None or settings.validation is not None:
        dnsbl = settings.dnsbl or DNSBLSettings((), 1, server.settings.dns.timeout)
        filters.append(DNSBLFilter(
            dnsbl.lists, dnsbl.threshold, _resolvers(server.settings.dns), dnsbl.timeout,
            clock, _validation_tests(server, settings.validation),
        ))
    if settings.spf is not None:
        spf.install_lookup(server.settings.dns, settings.spf.max_lookups,
                           settings.spf.max_void_lookups)
        filters.append(spf.SPFFilter(settings.spf.action_for, server.settings.hostname,
                                     settings.spf.timeout))
    return Filters(filters, standing, settings.subject_prefix)


def _validation_tests(server, settings):
    if settings is None:
        return ()
    resolver = dns.resolver_for(server.settings.dns)
    action = settings.action
    tests = {
        "helo-fqdn": lambda: validation.HeloIsFQDN(action),
        "helo-ours": lambda: validation.HeloNotOurs(
            server.settings.hostname, server.settings.local_domains, resolver, action),
        "reverse-dns": lambda: validation.ReverseDNS(resolver, action),
        "fcrdns": lambda: validation.ForwardConfirmed(resolver, action),
    }
    return tuple(tests[name]() for name in settings.tests)


def _resolvers(dns_settings):
    def resolver(bl):
        if bl.server is None:
            return dns.resolver_for(dns_settings)
        return dns.resolver_for(DNSSettings((bl.server,), dns_settings.timeout))
    return resolver
