"""
Passwords checked by another SMTP server ([auth] source = "smtp",
docs/auth.md), as Symantec's gateway forwards SMTP AUTH: the user's
address and password go by AUTH PLAIN to C{[auth.smtp] host}, over
STARTTLS or implicit TLS with the certificate verified (plain text only to
loopback), and its 235 says yes, its 535 no. Anything else (no answer
within C{timeout}, a 4xx, a TLS failure, no AUTH PLAIN offered) is
L{SourceUnavailable}: a temporary refusal.

The exchange is smtplib's in the reactor's thread pool: a few short
commands per check, and the login cache spares the repeats.
"""

import smtplib
import ssl

from twisted.internet import threads

from mailsrv.directory.checker import SourceUnavailable


class SMTPSource:
    """
    @param settings: the L{mailsrv.config.SMTPAuthSettings}.
    @param hostname: ours, for EHLO.
    """

    name = "smtp"

    def __init__(self, settings, hostname):
        self.settings = settings
        self.hostname = hostname
        self._tls = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file else None)

    def check(self, address, password):
        """A Deferred of whether C{password} is C{address}'s; fails with L{SourceUnavailable}."""
        return threads.deferToThread(self._check, address, password)

    def _check(self, address, password):
        if not password:
            return False
        host, port = self.settings.host
        try:
            with self._connect(host, port) as client:
                client.ehlo(self.hostname)
                if "PLAIN" not in client.esmtp_features.get("auth", "").upper().split():
                    raise SourceUnavailable(f"smtp {host}:{port} offers no AUTH PLAIN")
                client.user, client.password = address, password
                code, text = client.auth("PLAIN", client.auth_plain)
        except smtplib.SMTPAuthenticationError as e:
            if e.smtp_code == 535:  # (RFC 4954: credentials invalid)
                return False
            code, text = e.smtp_code, e.smtp_error
        except (OSError, smtplib.SMTPException, ssl.SSLError) as e:
            raise SourceUnavailable(f"smtp {host}:{port}: {e}") from None
        if code == 235:
            return True
        raise SourceUnavailable(f"smtp {host}:{port} answered {code} "
                                f"{text.decode('ascii', 'replace')}")

    def _connect(self, host, port):
        """An SMTP client at C{host} (the name its certificate must hold), over TLS as set."""
        settings = self.settings
        if settings.tls == "implicit":
            return smtplib.SMTP_SSL(host, port, self.hostname, timeout=settings.timeout,
                                    context=self._tls)
        client = smtplib.SMTP(host, port, self.hostname, settings.timeout)
        if settings.tls == "starttls":
            try:
                client.starttls(context=self._tls)
            except BaseException:
                client.close()
                raise
        return client
