"""
What every listener shares: settings, directory, session store, mail store,
spool, TLS context. Built once per process by L{mailsrv.service}.
"""

from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import ISSLTransport

from mailsrv.netaddr import is_loopback


@dataclass
class MailServer:
    """
    @ivar settings: the L{mailsrv.config.Settings}.
    @ivar directory: the L{mailsrv.directory.Directory}.
    @ivar checker: the shared username/password cred checker.
    @ivar sessions: the L{mailsrv.sessions.ISessionStore}.
    @ivar store: the L{mailsrv.store.folder.MailStore} (Maildirs).
    @ivar spool: the L{mailsrv.queue.spool.Spool}.
    @ivar trusted: the L{mailsrv.netaddr.IPList} of [relay] trusted IPs.
    @ivar tls_context: the server's TLS context factory (implicit TLS and
        STARTTLS alike).
    @ivar queue_runner: what delivers queued mail; C{wake()} after enqueueing.
    @ivar clock: the reactor, or a Clock in tests.
    """

    settings: Any
    directory: Any
    checker: Any
    sessions: Any
    store: Any
    spool: Any
    trusted: Any
    tls_context: Any
    queue_runner: Any = None
    clock: Any = None

    def plaintext_allowed(self, transport):
        """
        Whether a password may be sent on this connection now: over TLS, or
        from loopback when [auth] allow_plaintext_on_loopback is set.
        """
        if is_secure(transport):
            return True
        return self.settings.auth.allow_plaintext_on_loopback and is_loopback(
            transport.getPeer().host
        )


def is_secure(transport):
    """Whether the connection is encrypted (implicit TLS or after STARTTLS)."""
    return ISSLTransport.providedBy(transport)
