"""
Validation tests ([antispam.validation]): does the client's identity hold
up? Each failed test adds one to the count that standard DNS blacklist
hits add to, with the test's own action; a DNS failure skips the test.
A test's C{check(session)} gives a Deferred of L{None} (passed) or of what
failed, for its X-Mailsrv-Validation header; L{ValidationFilter}, a filter
check of the sender hook, runs them.
"""

import ipaddress
import re

from twisted.internet import defer

from mailsrv.policy.failopen import skip_on_failure
from mailsrv.policy.verdict import Verdict

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)


def literal_address(helo):
    """The address of an address literal (C{[192.0.2.1]}, C{[IPv6:...]}), or L{None}."""
    if not (helo.startswith("[") and helo.endswith("]")):
        return None
    inner = helo[1:-1]
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        return ipaddress.ip_address(inner)
    except ValueError:
        return None


def is_fqdn(name):
    """A domain name of at least two labels whose last is not all digits."""
    labels = name.rstrip(".").split(".")
    return (len(labels) >= 2 and all(_LABEL.match(label) for label in labels)
            and not labels[-1].isdigit())


class HeloIsFQDN:
    """RFC 5321 4.1.1.1: HELO names a fully qualified domain or is an address literal."""

    name = "helo-fqdn"

    def __init__(self, action):
        self.action = action

    def check(self, session):
        helo = session.helo or ""
        if literal_address(helo) is not None or is_fqdn(helo):
            return defer.succeed(None)
        return defer.succeed(f"HELO {helo} is not a fully qualified domain name")


class HeloNotOurs:
    """
    A client that greets us with our own host name, one of our domains, or
    an address of our host name is lying.
    """

    name = "helo-ours"

    def __init__(self, hostname, local_domains, resolver, action):
        self.names = frozenset({hostname.lower(), *local_domains})
        self.hostname = hostname
        self.resolver = resolver
        self.action = action

    def check(self, session):
        helo = session.helo or ""
        if helo.lower().rstrip(".") in self.names:
            return defer.succeed(f"HELO {helo} claims to be this server")
        address = literal_address(helo)
        if address is None:
            return defer.succeed(None)
        d = self.resolver.addresses(self.hostname)
        return d.addCallback(self._judge, helo, address)

    def _judge(self, ours, helo, address):
        if any(ipaddress.ip_address(a) == address for a in ours):
            return f"HELO {helo} claims an address of this server"
        return None


class ReverseDNS:
    """The client's address has a PTR record."""

    name = "reverse-dns"

    def __init__(self, resolver, action):
        self.resolver = resolver
        self.action = action

    def check(self, session):
        d = self.resolver.ptr(session.ip)
        return d.addCallback(lambda names: None if names else f"{session.ip} has no reverse DNS")


class ForwardConfirmed:
    """A PTR name of the client's address has that address (FCrDNS)."""

    name = "fcrdns"

    def __init__(self, resolver, action):
        self.resolver = resolver
        self.action = action

    def check(self, session):
        d = self.resolver.confirmed_names(session.ip)
        return d.addCallback(
            lambda names: None if names else
            f"{session.ip} has no reverse DNS name that resolves back to it")


class ValidationFilter:
    """
    The enabled tests, run in parallel: each failed test is a counted
    finding with its own action, reason and header.

    @param tests: objects with C{name}, C{action} and C{check(session)}.
    @param timeout: seconds before a test is skipped.
    @param clock: for the timeout.
    """

    def __init__(self, tests, timeout, clock):
        self.tests = tuple(tests)
        self.timeout = timeout
        self.clock = clock

    def check(self, session, transaction, sender):
        d = defer.gatherResults([
            skip_on_failure(defer.maybeDeferred(test.check, session), self.timeout,
                            self.clock, "validation", test.name, session.ip)
            for test in self.tests])
        return d.addCallback(self._judge)

    def _judge(self, failures):
        failed = [(test, failure) for test, failure in zip(self.tests, failures)
                  if failure is not None]
        return Verdict.found(
            False,
            reasons=[f"validation {test.name}" for test, _ in failed],
            headers=[("X-Mailsrv-Validation", failure) for test, failure in failed
                     if test.action.kind != "none"],
            counted=[test.action for test, _ in failed],
        )
