"""
Couriers carry one queued message to one host. The interface is small on
purpose (chasquid's courier; smart hosts, transports and MX share it): the queue
runner decides routing, retries and state; a courier only says, per
recipient, what the host answered.
"""

import os
from dataclasses import dataclass, replace

from twisted.internet import defer, endpoints, protocol, ssl
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.logger import Logger
from zope.interface import Interface, implementer

from mailsrv.config import DeliverySettings
from mailsrv.queue.client import OPPORTUNISTIC, ConnectionPool, HostFailure, SMTPConnection
from mailsrv.tls import trust_root

log = Logger()

VERIFY = "verify"

OK = "ok"
TEMPORARY = "temporary"
PERMANENT = "permanent"


@dataclass(frozen=True)
class Result:
    """
    What happened to one recipient at one host.

    @ivar status: L{OK}, L{TEMPORARY} or L{PERMANENT}.
    @ivar code: the host's SMTP reply code, or -1 when there was none.
    @ivar text: the host's reply text, or what went wrong.
    @ivar host_failed: the host took no part in the decision (no connection,
        refused session, timeout), as opposed to a reply about this
        recipient. Either way a L{TEMPORARY} result sends the recipient on
        to the route's next hop (docs/queue.md, "Routes and failover").
    """

    address: str
    status: str
    code: int
    text: str
    host_failed: bool = False


def status_of(code):
    if 200 <= code < 300:
        return OK
    if 500 <= code < 600:
        return PERMANENT
    return TEMPORARY


class ICourier(Interface):
    def deliver(envelope, message_path, recipients, hop):
        """
        Hand the message to C{hop} for C{recipients} in one transaction.

        @param envelope: the L{mailsrv.queue.spool.Envelope} (its sender).
        @param message_path: the spooled message file.
        @param recipients: addresses, a subset of the envelope's.
        @param hop: the L{mailsrv.queue.client.Hop} to hand it to.
        @return: a Deferred of a list of L{Result}, one per recipient in
            order; it does not fail.
        """

    def stop():
        """Close the sessions kept open for the next message."""


@implementer(ICourier)
class SMTPCourier:
    """
    Delivers over SMTP (mailsrv/queue/client.py), reusing sessions from a
    L{ConnectionPool}.

    TLS, per hop (L{mailsrv.config.OutboundTLS}): in the C{"opportunistic"}
    mode STARTTLS is used whenever the host offers it, without checking its
    certificate (RFC 7435: MX hosts seldom have a certificate for the name we
    looked up, and refusing would only make us send in plain text), and a
    failed handshake is followed at once by a plain-text attempt, as Postfix
    does; C{"required"} hops get no mail without TLS; C{"verify"} hops also
    need a certificate for their name.

    @ivar hostname: the name we give in EHLO.
    @ivar timeout: seconds to wait for any one reply.
    """

    connect_timeout = 30

    def __init__(self, hostname, reactor, timeout=DeliverySettings.reply_timeout,
                 max_connections=DeliverySettings.max_connections,
                 max_connections_per_destination=DeliverySettings.max_connections_per_destination):
        self.hostname = hostname
        self.reactor = reactor
        self.timeout = timeout
        self.pool = ConnectionPool(self._open, reactor, max_connections,
                                   max_connections_per_destination)
        self._unverified = ssl.CertificateOptions(verify=False)
        self._trust_roots = {}  # CA file (or None) -> trust root

    @classmethod
    def from_settings(cls, settings, reactor):
        """The courier C{settings} ask for: our hostname and C{[delivery]}'s limits."""
        delivery = settings.delivery
        return cls(settings.hostname, reactor, timeout=delivery.reply_timeout,
                   max_connections=delivery.max_connections,
                   max_connections_per_destination=delivery.max_connections_per_destination)

    def deliver(self, envelope, message_path, recipients, hop):
        try:
            for address in [envelope.sender, *recipients]:
                address.encode("ascii")
        except UnicodeEncodeError:
            return defer.succeed([
                Result(r, PERMANENT, -1,
                       "non-ASCII address needs SMTPUTF8, which is not supported yet")
                for r in recipients
            ])
        return self._deliver(envelope, message_path, recipients, hop)

    @defer.inlineCallbacks
    def _deliver(self, envelope, message_path, recipients, hop):
        results = yield self._attempt(envelope, message_path, recipients, hop)
        failure = getattr(results, "tls_failure", None)
        if failure is not None and hop.outbound.tls == OPPORTUNISTIC:
            log.info("queue {id}: {hop}: {error}; trying again without TLS",
                     id=envelope.id, hop=hop, error=failure)
            results = yield self._attempt(envelope, message_path, recipients,
                                          replace(hop, plaintext=True))
        return list(results)

    @defer.inlineCallbacks
    def _attempt(self, envelope, message_path, recipients, hop, fresh=False):
        try:
            message = open(message_path, "rb")
        except OSError as e:
            return [Result(r, TEMPORARY, -1, f"cannot read the queued message: {e}")
                    for r in recipients]
        with message:
            size = os.fstat(message.fileno()).st_size
            try:
                connection = yield self.pool.acquire(hop, fresh)
            except HostFailure as e:
                return _HostFailed(recipients, e)
            reused = connection.transactions > 0
            try:
                replies = yield connection.transaction(envelope.sender, recipients,
                                                       message, size)
            except HostFailure as e:
                self.pool.release(hop, connection, reusable=False)
                if reused and not connection.answered:
                    # the host had closed the idle session: a new one
                    return (yield self._attempt(envelope, message_path, recipients,
                                                hop, fresh=True))
                return _HostFailed(recipients, e)
        self.pool.release(hop, connection, reusable=all(r.code != 421 for r in replies))
        return [Result(r, status_of(reply.code), reply.code, reply.text)
                for r, reply in zip(recipients, replies)]

    def stop(self):
        self.pool.close_idle()

    def _open(self, hop):
        """A new session to C{hop}, greeted, TLS and AUTH done."""
        connection = SMTPConnection(self.timeout)
        connection.callLater = self.reactor.callLater
        if isIPv6Address(hop.host):
            endpoint = endpoints.TCP6ClientEndpoint(self.reactor, hop.host, hop.port,
                                                    self.connect_timeout)
        elif isIPAddress(hop.host):
            endpoint = endpoints.TCP4ClientEndpoint(self.reactor, hop.host, hop.port,
                                                    self.connect_timeout)
        else:
            endpoint = endpoints.HostnameEndpoint(self.reactor, hop.host, hop.port,
                                                  self.connect_timeout)
        d = endpoint.connect(_OneSession(connection))
        d.addErrback(lambda f: defer.fail(HostFailure(
            f"cannot connect: {f.getErrorMessage()}")))
        d.addCallback(lambda _: connection.open(self.hostname, hop, self._tls_options(hop)))
        return d

    def _tls_options(self, hop):
        policy = hop.outbound
        if policy.tls != VERIFY:
            return self._unverified
        if policy.ca_file not in self._trust_roots:
            self._trust_roots[policy.ca_file] = trust_root(policy.ca_file)
        return ssl.optionsForClientTLS(hop.name or hop.host,
                                       trustRoot=self._trust_roots[policy.ca_file])


class _OneSession(protocol.Factory):
    """Builds the one given connection (quietly: no log line per session)."""

    noisy = False

    def __init__(self, connection):
        self.connection = connection

    def buildProtocol(self, addr):
        return self.connection


class _HostFailed(list):
    """
    The results when a host took no part, remembering a failed TLS
    handshake so that the courier can try plain SMTP.
    """

    def __init__(self, recipients, error):
        super().__init__(Result(r, TEMPORARY, error.code, error.text, host_failed=True)
                         for r in recipients)
        self.tls_failure = error.text if error.tls_failed else None
