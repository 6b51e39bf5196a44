"""
What every listener shares: settings, directory, session store, mail store,
spool, TLS context. Built once per process by L{mailsrv.service}, the only
place that builds these objects and hands out the reactor; frozen, so no
part of the server swaps another's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Optional

from twisted.internet.interfaces import ISSLTransport

from mailsrv.netaddr import is_loopback

if TYPE_CHECKING:  # (for the annotations only: they import much of the server)
    from twisted.cred.checkers import ICredentialsChecker
    from twisted.internet.interfaces import IReactorTime

    from mailsrv.config import Settings
    from mailsrv.directory import Directory
    from mailsrv.dns import Resolvers
    from mailsrv.netaddr import ListedClients
    from mailsrv.policy.checks.connect import ListenerAccess
    from mailsrv.queue.intake import LocalDelivery
    from mailsrv.queue.runner import QueueRunner
    from mailsrv.queue.spool import Spool
    from mailsrv.redis.link import RedisLink
    from mailsrv.sessions import ISessionStore
    from mailsrv.signing import Signer
    from mailsrv.store.mailstore import MailStore
    from mailsrv.tls import ServerTLS


@dataclass(frozen=True)
class MailServer:
    """
    @ivar settings: the L{mailsrv.config.Settings}.
    @ivar directory: the L{mailsrv.directory.Directory}.
    @ivar checker: the shared username/password cred checker.
    @ivar sessions: the L{mailsrv.sessions.ISessionStore}.
    @ivar redis: the L{mailsrv.redis.link.RedisLink} the session store uses
        ([sessions] backend = "redis"), else L{None}.
    @ivar store: the L{mailsrv.store.mailstore.MailStore} (Maildirs).
    @ivar spool: the L{mailsrv.queue.spool.Spool}.
    @ivar trusted: the L{mailsrv.netaddr.IPList} of [relay] trusted IPs.
    @ivar tls_context: the server's TLS context factory for listeners that
        ask for no client certificate.
    @ivar tls: the L{mailsrv.tls.ServerTLS} with the contexts that do.
    @ivar delivery: the L{mailsrv.queue.intake.LocalDelivery} that accepts
        every message, received or a bounce.
    @ivar queue_runner: what delivers queued mail; C{wake()} after enqueueing.
    @ivar clock: the reactor, or a Clock in tests.
    @ivar resolvers: the L{mailsrv.dns.Resolvers}: the resolver of each
        C{[dns]} settings.
    @ivar listener_access: each listener's connect check, by its index.
    @ivar signer: the L{mailsrv.signing.Signer} of [[dkim.sign]], or
        L{None} when there is none.
    """

    settings: Settings
    directory: Optional[Directory]
    checker: Optional[ICredentialsChecker]
    sessions: Optional[ISessionStore]
    store: Optional[MailStore]
    spool: Optional[Spool]
    trusted: Optional[ListedClients]
    tls_context: object
    clock: IReactorTime
    resolvers: Optional[Resolvers]
    delivery: Optional[LocalDelivery] = None
    queue_runner: Optional[QueueRunner] = None
    tls: Optional[ServerTLS] = None
    listener_access: Mapping[int, ListenerAccess] = field(default_factory=dict)
    redis: Optional[RedisLink] = None
    signer: Optional[Signer] = None

    def tls_context_for(self, listener):
        """
        The TLS context factory of one listener, implicit TLS and STARTTLS
        alike: it asks for client certificates as the listener's effective
        client_cert says.
        """
        mode = self.settings.client_cert_mode(listener)
        if mode == "none":
            return self.tls_context
        return self.tls.context(mode)

    def access_for(self, listener):
        """
        The connect check of one listener
        (L{mailsrv.policy.checks.connect.ListenerAccess}), one per listener,
        shared by the service and the SMTP sender checks.
        """
        return self.listener_access[listener.index]

    def starttls_offered(self, transport, listener):
        """
        Whether STARTTLS (STLS) may be offered on this connection now, by
        any protocol: the listener has it, there is a context, and the
        connection is plain. Protocols add their own states (after a POP3
        login, after a STARTTLS already begun).
        """
        return (
            listener.tls in ("starttls", "required")
            and self.tls_context_for(listener) is not None
            and not is_secure(transport)
        )

    def passwords_allowed(self, transport, listener):
        """
        Whether a password may be sent on this connection now: the listener
        takes logins (C{auth}), and the connection is encrypted, or comes
        from loopback with [auth] allow_plaintext_on_loopback set and the
        listener does not say C{tls = "required"}.
        """
        if not listener.auth:
            return False
        if is_secure(transport):
            return True
        return (
            listener.tls != "required"
            and self.settings.auth.allow_plaintext_on_loopback
            and is_loopback(transport.getPeer().host)
        )

    def client_certificate(self, transport, listener):
        """
        The client's certificate (a C{cryptography} object) when it may
        vouch for a login on this connection (SASL EXTERNAL), else L{None}:
        the listener takes logins and asks for certificates (C{request} or
        C{require}), and the client sent one. Such a listener's handshake
        fails on a certificate that does not verify against [tls]
        client_ca, so one that is here has been verified.
        """
        if (not listener.auth or not is_secure(transport)
                or self.settings.client_cert_mode(listener) == "none"):
            return None
        certificate = transport.getPeerCertificate()
        return None if certificate is None else certificate.to_cryptography()

    def external_offered(self, transport, listener):
        """
        Whether SASL EXTERNAL is offered on this connection now: there is a
        client certificate (L{client_certificate}), or there will be: under
        C{require} a TLS connection without one fails its handshake, and
        the IMAP greeting is written before the handshake ends.
        """
        return self.client_certificate(transport, listener) is not None or (
            listener.auth and is_secure(transport)
            and self.settings.client_cert_mode(listener) == "require")


def is_secure(transport):
    """Whether the connection is encrypted (implicit TLS or after STARTTLS)."""
    return ISSLTransport.providedBy(transport)
