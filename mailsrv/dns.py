"""
The project's DNS resolver: every lookup returns a Deferred and never blocks
the reactor.

Decision: dnspython's blocking resolver runs in the reactor's thread pool
(L{threads.deferToThread}), at most L{MAX_CONCURRENT} lookups at a time.
dnspython's own async API runs on asyncio or trio, which would force the
asyncio reactor on the whole process; the blocking resolver keeps every
dnspython feature (resolv.conf, TCP fallback on truncation, retries across
servers) and the thread hop costs far less than the lookup. The cap keeps
slow lookups (up to C{[dns] timeout} each) from taking every pool thread
that spool commits and password checks need.

Answers are cached for their TTL (negative answers for L{NEGATIVE_TTL}
seconds), in a bounded LRU. "No such domain" and "no records" are answers
(an empty tuple); a timeout or SERVFAIL is L{TemporaryDNSError}, never
cached, so callers can answer 4xx instead of refusing for good.
"""

import ipaddress
import time
from collections import OrderedDict
from dataclasses import dataclass

from twisted.internet import defer, threads

MAX_CONCURRENT = 4
NEGATIVE_TTL = 60
MAX_TTL = 86400
CACHE_SIZE = 10000


class TemporaryDNSError(Exception):
    """A lookup that may succeed later: timeout, SERVFAIL, no server answered."""


@dataclass(frozen=True)
class Answer:
    """
    @ivar records: the answer's data as text, C{()} for NXDOMAIN or no data.
    @ivar ttl: how many seconds it may be kept.
    """

    records: tuple
    ttl: int


class DNSPythonBackend:
    """
    Blocking lookups with dnspython (call in a thread).

    @param servers: C{(host, port)} pairs; empty: the system's resolv.conf.
        A host given by name (a blacklist's own server, "ns.list.example")
        is looked up by C{names}, in the thread of the first query, and
        again when its answer's TTL runs out.
    @param timeout: seconds for one whole lookup, every server and retry.
    @param names: the backend that finds the servers' addresses (the
        server's C{[dns]} one).
    """

    def __init__(self, servers, timeout, names=None):
        self._servers = tuple(servers)
        self._timeout = timeout
        self._names = names
        self._by_name = any(not _is_address(host) for host, _ in self._servers)
        self._resolver = None if self._by_name else self._made(self._servers)
        self._expires = 0.0

    def _made(self, servers):
        resolver = dnspython_resolver(servers, self._timeout)
        resolver.cache = None  # ours is in front of it
        return resolver

    def _current(self):
        """The dnspython resolver, its servers' names looked up if needed (in a thread)."""
        if self._by_name and (self._resolver is None or time.monotonic() >= self._expires):
            servers, ttl = [], MAX_TTL
            for host, port in self._servers:
                if _is_address(host):
                    servers.append((host, port))
                    continue
                for rdtype in ("A", "AAAA"):
                    answer = self._names.query(host, rdtype)
                    servers.extend((address, port) for address in answer.records)
                    if answer.records:
                        ttl = min(ttl, answer.ttl)
            if not servers:
                raise TemporaryDNSError(
                    "no address for " + ", ".join(h for h, _ in self._servers))
            self._resolver = self._made(servers)
            self._expires = time.monotonic() + max(ttl, NEGATIVE_TTL)
        return self._resolver

    def query(self, name, rdtype):
        import dns.exception
        import dns.name
        import dns.resolver

        try:
            answer = self._current().resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN,
                dns.exception.SyntaxError, dns.name.NameTooLong):
            # No such name, no such records, or a name that cannot exist.
            return Answer((), NEGATIVE_TTL)
        except dns.exception.Timeout:
            raise TemporaryDNSError(f"{rdtype} {name}: timeout")
        except dns.exception.DNSException as e:  # SERVFAIL everywhere, ...
            raise TemporaryDNSError(f"{rdtype} {name}: {e}")
        return Answer(tuple(_text(rdtype, r) for r in answer), answer.rrset.ttl)


def _is_address(host):
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def dnspython_resolver(servers, timeout):
    """
    A dnspython resolver for C{[dns]} settings (also used by libraries that
    do their own blocking DNS, such as pyspf).
    """
    import dns.nameserver
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=not servers)
    if servers:
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(host, port) for host, port in servers
        ]
    resolver.lifetime = timeout
    return resolver


def _text(rdtype, record):
    if rdtype == "TXT":  # one record's strings are one text (RFC 7208 3.3, RFC 6376 3.6.2.2)
        return b"".join(record.strings).decode("ascii", "replace")
    if rdtype == "MX":
        return (record.preference, _name(record.exchange))
    if rdtype in ("A", "AAAA"):
        return record.address
    return _name(record.target)


def _name(name):
    """A name as text; the root name (a null MX's, RFC 7505) as ""."""
    text = name.to_text(omit_final_dot=True).lower()
    return "" if text == "." else text


def reverse_name(ip):
    """The PTR name of an address: C{2.0.0.127.in-addr.arpa}."""
    return ipaddress.ip_address(ip).reverse_pointer


class Resolver:
    """
    Asynchronous, cached lookups over a blocking backend.

    @param backend: has C{query(name, rdtype) -> Answer}, may raise
        L{TemporaryDNSError}; called in a thread.
    @param clock: for TTLs.
    """

    def __init__(self, backend, clock, cache_size=CACHE_SIZE):
        self.backend = backend
        self.clock = clock
        self.cache_size = cache_size
        self._cache = OrderedDict()  # (name, rdtype) -> (expires, records)
        self._limit = defer.DeferredSemaphore(MAX_CONCURRENT)

    def query(self, name, rdtype):
        """A Deferred of the records (a tuple) of one type."""
        key = (name.lower().rstrip("."), rdtype)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self.clock.seconds():
            self._cache.move_to_end(key)
            return defer.succeed(cached[1])
        d = self._limit.run(threads.deferToThread, self.backend.query, key[0], rdtype)
        return d.addCallback(self._store, key)

    def _store(self, answer, key):
        self._cache[key] = (self.clock.seconds() + min(answer.ttl, MAX_TTL), answer.records)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return answer.records

    def mx(self, domain):
        """A Deferred of C{(preference, host)} pairs, best first."""
        return self.query(domain, "MX").addCallback(sorted)

    def txt(self, name):
        """A Deferred of the TXT records of C{name}, each one text."""
        return self.query(name, "TXT")

    def ptr(self, ip):
        """A Deferred of the names an address points back to."""
        return self.query(reverse_name(ip), "PTR")

    @defer.inlineCallbacks
    def addresses(self, name):
        """
        A Deferred of the A and AAAA addresses of C{name}; temporary only
        when neither family could be looked up.
        """
        found, errors = [], []
        for rdtype in ("A", "AAAA"):
            try:
                found.extend((yield self.query(name, rdtype)))
            except TemporaryDNSError as e:
                errors.append(e)
        if len(errors) == 2:
            raise errors[0]
        return tuple(found)

    @defer.inlineCallbacks
    def accepts_mail(self, domain):
        """
        Whether a domain can receive mail (RFC 5321 5.1): it has MX records
        other than a null MX (RFC 7505), or, without MX, an address.

        @return: a Deferred of a bool; fails with L{TemporaryDNSError}.
        """
        if domain.startswith("["):  # an address literal needs no DNS
            return True
        exchanges = yield self.mx(domain)
        if exchanges:
            return exchanges != [(0, "")]
        return bool((yield self.addresses(domain)))

    @defer.inlineCallbacks
    def confirmed_names(self, ip):
        """
        The forward-confirmed reverse DNS names of C{ip}: PTR names whose
        own addresses include C{ip} (anyone may put any name in a PTR).
        """
        address = ipaddress.ip_address(ip)
        confirmed = []
        for name in (yield self.ptr(ip)):
            forward = yield self.addresses(name)
            if any(ipaddress.ip_address(a) == address for a in forward):
                confirmed.append(name)
        return tuple(confirmed)


class Resolvers:
    """
    One server's resolvers, one per C{[dns]} settings (a blacklist with a
    server of its own has its own), so that every check, list and the
    queue share one cache per settings. Built once, in service.py.
    """

    def __init__(self, clock, names=None):
        """
        @param names: the server's C{[dns]} settings, whose servers find
            the addresses of servers given by name (L{DNSPythonBackend}).
        """
        self.clock = clock
        self._names = names
        self._made = {}

    def __call__(self, dns_settings):
        """The resolver for C{dns_settings} (a L{mailsrv.config.DNSSettings})."""
        resolver = self._made.get(dns_settings)
        if resolver is None:
            names = None
            if self._names is not None and dns_settings != self._names:
                names = DNSPythonBackend(self._names.servers, self._names.timeout)
            backend = DNSPythonBackend(dns_settings.servers, dns_settings.timeout, names)
            resolver = self._made[dns_settings] = Resolver(backend, self.clock)
        return resolver
