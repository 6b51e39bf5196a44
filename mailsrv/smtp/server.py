"""
The SMTP protocol (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
ENHANCEDSTATUSCODES, STARTTLS, AUTH PLAIN/LOGIN/EXTERNAL) and its factory.

Input is buffered and handled one command at a time: while a command waits
on a Deferred (a password check, a policy lookup, the spool commit), later
input stays in the buffer, so pipelined commands are answered in order
(twisted.mail.smtp does not do this: twisted#8126). The dispatcher, not each
verb, applies the defences: line length, error count, deadlines
(L{mailsrv.deadline}: trickled bytes extend nothing), HTTP requests,
STARTTLS injection.
"""

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailsrv import errorlog, login, metrics, sasl
from mailsrv.context import is_secure
from mailsrv.deadline import EVICTED, Deadline, Unloaded
from mailsrv.logtext import literal
from mailsrv.policy import listener as listener_policy
from mailsrv.directory.certificate import CertificateChecker, CertificateCredentials
from mailsrv.directory.checker import ClientCredentials
from mailsrv.queue.journal import Journal
from mailsrv.smtp.commands import (
    CommandError,
    is_http_request,
    parse_helo,
    parse_mail,
    parse_rcpt,
    split_command,
)
from mailsrv.smtp.data import DataReader
from mailsrv.smtp.reception import cannot_queue, receive
from mailsrv.smtp.state import Limits, Recipient, Session, Transaction

log = Logger()

# Commands a "tls = required" listener takes before STARTTLS (RFC 3207).
_BEFORE_TLS = frozenset({"EHLO", "HELO", "STARTTLS", "NOOP", "RSET", "QUIT"})

_TOO_LONG = object()  # what _next_line returns for an overlong line

# How a failed AUTH is answered (L{mailsrv.login}).
_LOGIN_REPLIES = {
    login.THROTTLED: (454, "4.7.0", "Too many failed logins, try again later"),
    login.FAILED: (535, "5.7.8", "Authentication credentials invalid"),
    login.BROKEN: (454, "4.7.0", "Temporary authentication failure, try again later"),
}

# How a SASL exchange that ends without a password check is answered.
_SASL_REPLIES = {
    sasl.Cancelled: (501, "5.7.0"),
    sasl.Malformed: (501, "5.5.2"),
    sasl.Forbidden: (535, "5.7.8"),
}


class SMTPServer(protocol.Protocol):
    """
    One SMTP connection.

    @ivar session: the L{Session}.
    @ivar transaction: the current L{Transaction}, or L{None} outside MAIL..DATA.
    @ivar deadline: the client's L{Deadline}.
    """

    def __init__(self, factory):
        self.factory = factory
        self.server = factory.server
        self.listener = factory.listener
        self.limits = factory.limits
        self.hostname = factory.server.settings.hostname
        self.session = None
        self.deadline = None
        self.transaction = None
        self._buffer = bytearray()
        self._out = []
        self._discarding = False  # inside an overlong command line
        self._sasl = None  # the AUTH exchange waiting for the client's next line
        self._reader = None  # the DataReader while in DATA
        self._reception = None  # the message being received, while in DATA
        self._busy = False  # a command's Deferred has not fired yet
        self._draining = False
        self._closed = False
        self._paused = False
        self._errors = 0

    # Connection events

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.session = Session(ip=getattr(peer, "host", ""), tls=is_secure(self.transport))
        self.deadline = Deadline(
            self.factory.clock, self.listener.timeouts, self.factory.load, self.transport,
            f"smtp {self.session.ip}", self._deadline_passed,
        )
        self._send(f"220 {self.hostname} ESMTP mailsrv")
        self._flush()

    def dataReceived(self, data):
        if self._closed:
            return
        self.deadline.received(data)
        self._buffer += data
        self._drain()

    def connectionLost(self, reason):
        self.deadline.stop()
        self._closed = True
        self._buffer.clear()
        if self._reception is not None:
            self._reception.abort()
            self._reception = self._reader = None
            log.info("{ip} disconnected during DATA; message discarded", ip=self.session.ip)

    def _deadline_passed(self, reason):
        if reason == EVICTED:
            self._send(f"421 4.7.0 {self.hostname} Too many connections; closing")
        else:
            self._send(f"421 4.4.2 {self.hostname} Error: timeout exceeded")
        self._close()

    # The dispatcher

    def _drain(self):
        """Handle buffered input until it runs out or a command must wait."""
        if self._draining:
            return
        self._draining = True
        try:
            while self._buffer and not self._busy and not self._closed:
                if self._reader is not None:
                    result = self._read_data()
                else:
                    line = self._next_line()
                    if line is None:
                        break
                    result = self._line(line)
                if isinstance(result, defer.Deferred):
                    self._wait(result)
        finally:
            self._draining = False
        self._flow_control()
        self._flush()

    def _wait(self, d):
        self._busy = True
        self.deadline.hold()
        d.addErrback(self._internal_error)
        d.addBoth(self._resume)

    def _resume(self, _):
        self._busy = False
        if not self._closed:
            self.deadline.release()
        self._drain()

    def _internal_error(self, failure):
        errorlog.client_error(log, failure, "SMTP command",
                              "smtp", self.transport)
        self._reply(451, "4.3.0", "Internal error, try again later")

    def _flow_control(self):
        """Stop reading while too much unprocessed input is waiting."""
        if self._closed or getattr(self.transport, "disconnecting", False):
            return
        if not self._paused and len(self._buffer) > self.limits.max_buffer:
            self._paused = True
            self.transport.pauseProducing()
        elif self._paused and len(self._buffer) <= self.limits.max_buffer // 2:
            self._paused = False
            self.transport.resumeProducing()

    def _next_line(self):
        """
        The next complete command line without its line end (CRLF, or a bare
        LF, which we tolerate on command lines), L{_TOO_LONG}, or L{None}.
        """
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) >= self.limits.max_line:
                self._discarding = True  # keep memory bounded: drop it now
                self._buffer.clear()
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        if self._discarding or end + 1 > self.limits.max_line:
            self._discarding = False
            return _TOO_LONG
        return line[:-1] if line.endswith(b"\r") else line

    def _line(self, line):
        if line is _TOO_LONG:
            self._sasl = None
            return self._reply(500, "5.5.2", "Line too long")
        if self._sasl is not None:
            return self._auth_response(line)
        if is_http_request(line):
            log.info("{ip} sent an HTTP request; closing", ip=self.session.ip)
            self._closed = True
            self._buffer.clear()
            self.transport.loseConnection()
            return None
        try:
            verb, arg = split_command(line)
        except CommandError as e:
            return self._reply(e.code, e.enhanced, e.text)
        handler = self._handlers.get(verb)
        if handler is None:
            return self._reply(500, "5.5.2", "Command not recognized")
        if self.listener.tls == "required" and not self.session.tls and verb not in _BEFORE_TLS:
            return self._reply(530, "5.7.0", "Must issue a STARTTLS command first")
        try:
            return handler(self, arg)
        except CommandError as e:
            return self._reply(e.code, e.enhanced, e.text)

    # Replies

    def _send(self, line):
        if not self._closed:
            self._out.append(line.encode("ascii") + b"\r\n")

    def _flush(self):
        """Write what is pending in one write: one packet per pipelined group."""
        if self._out:
            data, self._out = b"".join(self._out), []
            self.transport.write(data)

    def _reply(self, code, enhanced, text):
        """Send one reply; too many errors end the session."""
        self._send(f"{code} {enhanced} {text}")
        if code >= 500:
            self._errors += 1
            if self._errors >= self.limits.max_errors and not self._closed:
                log.info("{ip}: too many errors; closing", ip=self.session.ip)
                self._send("421 4.7.0 Too many errors")
                self._close()

    def _refuse(self, verdict):
        self._reply(verdict.code, verdict.enhanced, verdict.text)

    def _close(self):
        self._flush()
        self._closed = True
        self._buffer.clear()
        self.transport.loseConnection()

    # Session commands

    def _greet(self, arg, esmtp):
        name = parse_helo(arg)
        self.session.helo = name
        self.session.esmtp = esmtp
        self.transaction = None
        if not esmtp:
            self._send(f"250 {self.hostname}")
            return
        lines = [self.hostname, *self._extensions()]
        for line in lines[:-1]:
            self._send(f"250-{line}")
        self._send(f"250 {lines[-1]}")

    def _extensions(self):
        extensions = [
            "PIPELINING",
            f"SIZE {self.limits.max_message_size}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
        ]
        if self._tls_offered():
            extensions.append("STARTTLS")
        if self._auth_offered():
            extensions.append("AUTH " + " ".join(self._mechanisms()))
        extensions.append("HELP")
        return extensions

    def _tls_offered(self):
        return not self.session.tls and self.server.starttls_offered(self.transport, self.listener)

    def _auth_offered(self):
        return self.server.passwords_allowed(self.transport, self.listener)

    def _mechanisms(self):
        return sasl.mechanisms(self.server.external_offered(self.transport, self.listener))

    def smtp_EHLO(self, arg):
        self._greet(arg, esmtp=True)

    def smtp_HELO(self, arg):
        self._greet(arg, esmtp=False)

    def smtp_NOOP(self, arg):
        self._reply(250, "2.0.0", "Ok")

    def smtp_RSET(self, arg):
        if arg:
            raise CommandError(501, "5.5.4", "Syntax: RSET")
        self.transaction = None
        self._reply(250, "2.0.0", "Ok")

    def smtp_QUIT(self, arg):
        self._reply(221, "2.0.0", "Bye")
        self._close()

    def smtp_VRFY(self, arg):
        if not arg:
            raise CommandError(501, "5.5.4", "Syntax: VRFY address")
        self._reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")

    def smtp_EXPN(self, arg):
        """[lists] expn: a list's members, one per line (RFC 5321 3.5.2)."""
        if not self.server.settings.lists.expn:
            raise CommandError(502, "5.5.1", "EXPN not available")
        name = arg.strip().strip("<>")
        if not name:
            raise CommandError(501, "5.5.4", "Syntax: EXPN list")
        directory = self.server.directory
        members = directory.list_members(name if "@" in name else directory.login_name(name))
        if members is None:
            raise CommandError(550, "5.1.1", f"<{name}>: no such list")
        for member in members[:-1]:
            self._send(f"250-2.1.5 <{member}>")
        self._reply(250, "2.1.5", f"<{members[-1]}>")

    def smtp_HELP(self, arg):
        self._reply(214, "2.0.0", "Commands: " + " ".join(sorted(self._handlers)))

    def smtp_STARTTLS(self, arg):
        if arg:
            raise CommandError(501, "5.5.4", "Syntax: STARTTLS")
        if self.session.tls:
            raise CommandError(503, "5.5.1", "Already using TLS")
        if not self._tls_offered():
            raise CommandError(502, "5.5.1", "STARTTLS not available")
        self._reply(220, "2.0.0", "Ready to start TLS")
        self._flush()
        # Whatever the client sent after STARTTLS in plaintext was not
        # protected: drop it (STARTTLS command injection, CVE-2011-0411).
        self._buffer.clear()
        self.transport.startTLS(self.server.tls_context_for(self.listener))
        # RFC 3207 section 4.2: forget everything learnt before TLS.
        self.session = Session(ip=self.session.ip, tls=True)
        self.transaction = None

    def smtp_AUTH(self, arg):
        if not self.listener.auth:
            raise CommandError(503, "5.5.1", "Authentication not enabled")
        if not self.server.passwords_allowed(self.transport, self.listener):
            raise CommandError(538, "5.7.11", "Encryption required for authentication")
        if self.session.helo is None or not self.session.esmtp:
            raise CommandError(503, "5.5.1", "Send EHLO first")
        if self.session.user is not None:
            raise CommandError(503, "5.5.1", "Already authenticated")
        if self.transaction is not None:
            raise CommandError(503, "5.5.1", "AUTH not allowed during a mail transaction")
        name, _, initial = arg.partition(" ")
        mechanism = self._mechanisms().get(name.upper())
        if mechanism is None:
            raise CommandError(504, "5.5.4", "Unrecognized authentication mechanism")
        exchange = mechanism()
        return self._auth_step(exchange, exchange.start, initial.strip() or None)

    def _auth_response(self, line):
        exchange, self._sasl = self._sasl, None
        return self._auth_step(exchange, exchange.respond, line.decode("latin-1").strip())

    def _auth_step(self, exchange, step, value):
        """One step of a SASL exchange: challenge again, or check the password or certificate."""
        try:
            result = step(value)
        except sasl.SASLError as e:
            code, enhanced = _SASL_REPLIES[type(e)]
            return self._reply(code, enhanced, str(e))
        if isinstance(result, sasl.Challenge):
            self._sasl = exchange
            self._send(f"334 {result.text}")
            return None
        if isinstance(result, sasl.Authorization):
            certificate = self.server.client_certificate(self.transport, self.listener)
            credentials = CertificateCredentials(certificate, result.authzid, self.session.ip)
            checker, name = self.factory.certificate_checker, credentials.name
        else:
            credentials = ClientCredentials(result.username, result.password, self.session.ip)
            checker, name = self.server.checker, result.username.decode("utf-8", "replace")
        d = defer.maybeDeferred(checker.requestAvatarId, credentials)
        d.addCallbacks(self._authenticated, self._auth_failed, errbackArgs=(name,))
        return d

    def _authenticated(self, user):
        self.session.user = user
        self.deadline.logged_in()
        login.succeeded(self.server, user, self.session.ip, "smtp")
        self._reply(235, "2.7.0", "Authentication successful")

    def _auth_failed(self, failure, name):
        outcome = login.failed(failure, name, self.session.ip, "smtp", self.transport)
        self._reply(*_LOGIN_REPLIES[outcome])

    # Mail transaction commands

    def smtp_MAIL(self, arg):
        if self.session.helo is None:
            raise CommandError(503, "5.5.1", "Send HELO/EHLO first")
        if self.transaction is not None:
            raise CommandError(503, "5.5.1", "Nested MAIL command")
        sender, params = parse_mail(arg)
        if params.size is not None and params.size > self.limits.max_message_size:
            raise CommandError(552, "5.3.4", "Message size exceeds fixed limit")
        transaction = Transaction(sender, params)
        verdict = self.factory.policy.sender(self.session, transaction)
        return self._then(verdict, self._mail_verdict, transaction)

    def _then(self, result, callback, *args):
        """
        C{callback(result, *args)} now, or when C{result} (a Deferred) fires.
        Run now, a bug in it is answered as one in a Deferred callback is
        (L{_internal_error}).
        """
        if isinstance(result, defer.Deferred):
            return result.addCallback(callback, *args)
        try:
            return callback(result, *args)
        except Exception:
            self._internal_error(Failure())
            return None

    def _mail_verdict(self, verdict, transaction):
        if not verdict.accepted:
            metrics.SMTP_REFUSALS.labels("mail", verdict.enhanced).inc()
            sender, ip, reason = transaction.sender, self.session.ip, verdict.reason
            log.info(literal(f"refused MAIL FROM:<{sender}> from {ip}: {reason}"),
                     sender=sender, ip=ip, reason=reason)
            return self._refuse(verdict)
        if self.server.signer is None:
            return self._mail_accepted(None, transaction)
        return self._then(self._signable(), self._mail_accepted, transaction)

    def _signable(self):
        """
        Why this client's mail may carry our DKIM signature ([[dkim.sign]]):
        it stands (L{mailsrv.policy.standing.Standing}), and not merely
        because [relay] mode is "anyone"; else L{None}. Or a Deferred of it.
        """
        standing = self.factory.policy.standing
        if standing.mode == "anyone" and self.session.user is None:
            return None
        return standing.reason_now(self.session)

    def _mail_accepted(self, signable, transaction):
        transaction.signable = signable
        self.transaction = transaction
        self.deadline.logged_in()  # a sender, not a slow attacker: not evicted
        self._reply(250, "2.1.0", "Ok")

    def smtp_RCPT(self, arg):
        if self.transaction is None:
            raise CommandError(503, "5.5.1", "Need MAIL command")
        address = parse_rcpt(arg)
        directory = self.server.directory
        if address.lower() == "postmaster":
            route = directory.route(directory.login_name("postmaster"))
        else:
            route = directory.route(address)
        recipient = Recipient(address, route)
        verdict = self.factory.policy.recipient(self.session, self.transaction, recipient)
        return self._then(verdict, self._rcpt_verdict, recipient)

    def _rcpt_verdict(self, verdict, recipient):
        if not verdict.accepted:
            metrics.SMTP_REFUSALS.labels("rcpt", verdict.enhanced).inc()
            rcpt, ip, reason = recipient.address, self.session.ip, verdict.reason
            log.info(literal(f"refused RCPT TO:<{rcpt}> from {ip}: {reason}"),
                     rcpt=rcpt, ip=ip, reason=reason)
            return self._refuse(verdict)
        self.transaction.recipients.append(recipient)
        self._reply(250, "2.1.5", "Ok")

    def smtp_DATA(self, arg):
        if arg:
            raise CommandError(501, "5.5.4", "Syntax: DATA")
        if self.transaction is None:
            raise CommandError(503, "5.5.1", "Need MAIL command")
        if not self.transaction.recipients:
            raise CommandError(503, "5.5.1", "Need RCPT command")
        try:
            self._reception = receive(self.factory, self.session, self.transaction,
                                      self.transport)
        except OSError as e:
            log.error("cannot create a spool file: {error}", error=e)
            return self._reply(*cannot_queue(e))
        self._reader = DataReader()
        self.deadline.expect_data()
        self._send("354 End data with <CR><LF>.<CR><LF>")

    def _read_data(self):
        reader, reception = self._reader, self._reception
        message, consumed = reader.feed(self._buffer)
        del self._buffer[:consumed]
        if not (reader.bare_line_ending or reader.size > self.limits.max_message_size):
            judging = reception.take(message, reader.done)
            if judging is not None:
                return judging.addCallback(self._judged, reception, reader.done)
        if reader.done:
            return self._end_of_data()
        return None

    def _judged(self, _, reception, done):
        """The header hook is done with the header section (L{Reception.take})."""
        if done and reception is self._reception:  # else the client went away meanwhile
            return self._end_of_data()
        return None

    def _end_of_data(self):
        reader, reception = self._reader, self._reception
        self._reader = self._reception = self.transaction = None
        self.deadline.expect_command()
        started = self.factory.clock.seconds()
        reply = reception.end(reader, self.limits.max_message_size)
        if isinstance(reply, defer.Deferred):
            return reply.addCallback(self._data_reply, started)
        return self._data_reply(reply, started)

    def _data_reply(self, reply, started):
        code, enhanced, _ = reply
        metrics.MESSAGES.labels(metrics.outcome_of(code), enhanced).inc()
        metrics.INTAKE_SECONDS.observe(self.factory.clock.seconds() - started)
        return self._reply(*reply)

    _handlers = {
        "EHLO": smtp_EHLO,
        "HELO": smtp_HELO,
        "MAIL": smtp_MAIL,
        "RCPT": smtp_RCPT,
        "DATA": smtp_DATA,
        "RSET": smtp_RSET,
        "NOOP": smtp_NOOP,
        "QUIT": smtp_QUIT,
        "VRFY": smtp_VRFY,
        "EXPN": smtp_EXPN,
        "HELP": smtp_HELP,
        "STARTTLS": smtp_STARTTLS,
        "AUTH": smtp_AUTH,
    }


class SMTPFactory(protocol.ServerFactory):
    """
    Builds the connections of one [[listen]] table.

    @ivar server: the shared L{mailsrv.context.MailServer}.
    @ivar listener: the L{mailsrv.config.Listener}.
    @ivar limits: the listener's L{Limits}.
    @ivar policy: the listener's L{mailsrv.policy.listener.ListenerPolicy}:
        the protocol asks it at MAIL, RCPT and DATA.
    @ivar certificate_checker: checks AUTH EXTERNAL (the password checker
        is C{server.checker}).
    @ivar clock: for timeouts and Received dates.
    @ivar load: the listener's load (L{mailsrv.service.ConnectionLimits}
        sets it): whether it is under stress.
    """

    load = Unloaded()

    def __init__(self, server, listener):
        self.server = server
        self.listener = listener
        self.limits = Limits.from_settings(server.settings)
        self.journal = Journal(server.settings.journal, server.delivery)
        self.clock = server.clock
        self.policy = listener_policy.build(server, listener, self.clock)
        self.certificate_checker = CertificateChecker(server.directory, server.sessions)

    def buildProtocol(self, addr):
        return SMTPServer(self)


def build_factory(server, listener):
    """
    The factory for one SMTP listener (role "mx" or "submission").

    Implicit TLS is the caller's business (wrap the factory or use a TLS
    endpoint); STARTTLS uses C{server.tls_context}.
    """
    return SMTPFactory(server, listener)
