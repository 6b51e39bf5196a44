"""
The POP3 server protocol: Twisted's L{pop3.POP3} with what a mail server
needs and Twisted lacks or gets wrong:

- STLS (RFC 2595), and passwords only where
  L{MailServer.passwords_allowed} says so;
  SASL AUTH PLAIN, LOGIN and EXTERNAL (RFC 5034) beside USER/PASS; no
  APOP (it needs plaintext secrets on the server). Logins go through the
  shared checkers, which throttle repeated failures (C{-ERR [SYS/TEMP]}).
- One dispatcher with an explicit command table per state, so bad input
  gets one exact C{-ERR} line (never Twisted's "bad protocol or server:
  TypeError" with a logged traceback) and the session goes on.
- Login, QUIT and message transfers block the commands pipelined behind
  them (Twisted's C{blocked} queue; login is not among them upstream), so
  PIPELINING (RFC 2449) is advertised truthfully.
- RETR/TOP send the exact bytes of the file (twisted.mail.maildir opens it
  in text mode on Python 3), with dot-stuffing that survives chunk
  boundaries, read off the reactor thread, in as few writes as the size
  allows, and paused when the client reads slowly.
- Deletions happen at QUIT only; a dropped connection deletes nothing.
- One POP3 session per maildrop: a second login gets C{-ERR [IN-USE]}
  (RFC 2449) until the first ends; IMAP sessions are not locked out.
- Deadlines instead of Twisted's idle timer (L{mailsrv.deadline}): a login
  within C{login_timeout}, each command line within C{command_timeout},
  silence up to C{idle_timeout} (RFC 1939's ten minutes) after login.
"""

from twisted.internet import defer, threads
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.mail import pop3
from zope.interface import implementer

from mailsrv import errorlog, login, sasl
from mailsrv.context import is_secure
from mailsrv.deadline import EVICTED, WHY, Deadline
from mailsrv.directory.certificate import CertificateCredentials
from mailsrv.directory.checker import ClientCredentials
from mailsrv.realm import MailboxFactory
from mailsrv.queue.dotstuff import DotStuffer, stuff

log = Logger()

# RFC 2449 allows 255 octets per command; some clients send long passwords.
MAX_LINE = 1000
# Consecutive refused commands after which the client is not a mail client.
MAX_ERRORS = 20
# Pipelined commands held while one runs; beyond this, stop reading.
MAX_BLOCKED = 100
# Bytes read from a message file per thread hop.
CHUNK = 1 << 20
# Messages up to this size are read on the reactor thread: from the page
# cache that takes microseconds, a thread hop about 100 (a third of the
# server's time per small RETR, measured).
SMALL_MESSAGE = 128 << 10

# verb -> (minimum, maximum) number of arguments; None: the rest of the line.
AUTHORIZATION_COMMANDS = {
    b"CAPA": (0, 0),
    b"USER": None,
    b"PASS": None,
    b"APOP": None,
    b"AUTH": None,
    b"STLS": (0, 0),
    b"QUIT": (0, 0),
}
TRANSACTION_COMMANDS = {
    b"CAPA": (0, 0),
    b"STAT": (0, 0),
    b"LIST": (0, 1),
    b"UIDL": (0, 1),
    b"RETR": (1, 1),
    b"TOP": (2, 2),
    b"DELE": (1, 1),
    b"RSET": (0, 0),
    b"NOOP": (0, 0),
    b"QUIT": (0, 0),
}
# A browser or proxy pointed at the POP3 port: not worth a second line.
# How a failed login is answered (L{mailsrv.login}; RFC 2449 response codes).
_LOGIN_REPLIES = {
    login.THROTTLED: b"[SYS/TEMP] Too many failed logins, try again later",
    login.IN_USE: b"[IN-USE] Mailbox in use by another POP3 session",
    login.FAILED: b"[AUTH] Invalid user name or password",
    login.BROKEN: b"[SYS/TEMP] Login temporarily unavailable, try later",
}

HTTP_VERBS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"CONNECT", b"OPTIONS"))

SYNTAX = {
    b"LIST": b"LIST [msg]",
    b"UIDL": b"UIDL [msg]",
    b"RETR": b"RETR msg",
    b"TOP": b"TOP msg lines",
    b"DELE": b"DELE msg",
}


def parse_command(line):
    """
    Split a command line into an upper-case verb and its arguments.

    @return: C{(verb, args, rest)}: C{args} split on spaces, C{rest} the
        text after the verb as sent (passwords may contain spaces); or
        L{None} when the line holds no plausible verb (empty, not ASCII
        letters, over RFC 2449's 40 characters).
    """
    verb, _, rest = line.partition(b" ")
    if not verb or len(verb) > 40 or not verb.isalpha():
        return None
    return verb.upper(), rest.split(), rest


def read_top(fp, count):
    """
    The header of the message in C{fp} and the first C{count} lines of its
    body (TOP, RFC 1939). Runs in a thread.
    """
    out = []
    body_lines = None
    for line in fp:
        if body_lines is not None:
            if body_lines >= count:
                break
            body_lines += 1
        elif line in (b"\r\n", b"\n"):
            body_lines = 0
        out.append(line)
    return b"".join(out)


@implementer(IPushProducer)
class _Throttle:
    """
    Registered with the transport while a message is sent, so that a slow
    reader pauses the reading of the file instead of letting the whole
    message pile up in the transport's buffer; a reader that stops for
    good is cut by its deadline (L{Deadline.output_stalled}).
    """

    def __init__(self, deadline):
        self.deadline = deadline
        self.stopped = False
        self._resumed = None

    def pauseProducing(self):
        if self._resumed is None:
            self._resumed = defer.Deferred()
            self.deadline.output_stalled()

    def resumeProducing(self):
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            self.deadline.output_flowing()
            resumed.callback(None)

    def stopProducing(self):
        self.stopped = True
        self.resumeProducing()

    def wait(self):
        """A Deferred that fires when writing may go on (at once if it may)."""
        if self._resumed is None:
            return defer.succeed(None)
        return self._resumed


class POP3Server(pop3.POP3):
    """
    @ivar server: the L{mailsrv.context.MailServer}.
    @ivar listener: this listener's L{mailsrv.config.Listener}.
    @ivar deferToThread: how file reads leave the reactor thread (tests
        pass a synchronous one).
    @ivar deadline: the client's L{Deadline}.
    """

    deadline = None
    deferToThread = staticmethod(threads.deferToThread)

    def __init__(self, server, listener, portal):
        self.server = server
        self.listener = listener
        self.portal = portal
        self._partial_line = b""  # input after the last line end
        self._discarding = False
        self._epoch = 0
        self._errors = 0
        self._reading_paused = False
        self._peer_ip = ""
        self._connected = False
        self._sasl = None  # the AUTH exchange waiting for the client's next line
        self._user = None  # USER's name, waiting for PASS
        self._logout = None  # the realm's, once logged in: frees the maildrop
        clock = server.clock
        if clock is not None:
            self.callLater = clock.callLater

    # Connection and input

    def connectionMade(self):
        self._connected = True
        self._peer_ip = getattr(self.transport.getPeer(), "host", "")
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)  # else every RETR waits ~40 ms (Nagle)
            except OSError:
                pass
        self.deadline = Deadline(
            self.server.clock, self.listener.timeouts, self.factory.load, self.transport,
            f"pop3 {self._peer_ip}", self._deadline_passed,
        )
        self.successResponse(f"{self.server.settings.hostname} POP3 ready")

    def connectionLost(self, reason):
        self._connected = False
        self.deadline.stop()
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()
        pop3.POP3.connectionLost(self, reason)

    def _deadline_passed(self, reason):
        if reason == EVICTED:
            self.failResponse(b"[SYS/TEMP] Too many connections; closing")
        else:
            self.failResponse(b"Disconnected: " + WHY[reason].encode("ascii"))
        self.transport.loseConnection()

    def successResponse(self, message=b""):
        if isinstance(message, str):
            message = message.encode("utf-8")
        self.transport.write(b"+OK " + message + b"\r\n" if message else b"+OK\r\n")

    def _hold_commands(self, d):
        """
        Hold further commands until C{d} fires; the client is not timed
        meanwhile (a 20 MB RETR to a slow client is not idleness).
        """
        self.deadline.hold()
        self.blocked = []
        d.addCallback(self._run_held)
        d.addCallback(self._release_deadline)
        return d

    def _release_deadline(self, _):
        if self._connected and not self.transport.disconnecting:
            self.deadline.release()

    def dataReceived(self, data):
        """
        Split input into lines (CRLF, or a bare LF from a sloppy client),
        answering an over-long line with one error once its end arrives.
        Input that came in with an STLS command is dropped (RFC 2595 4).
        """
        self.deadline.received(data)
        lines = (self._partial_line + data).split(b"\n")
        self._partial_line = lines.pop()
        epoch = self._epoch
        for line in lines:
            if self.transport.disconnecting or epoch != self._epoch:
                return
            if self._discarding:
                self._discarding = False
                self._refuse(b"Line too long")
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > MAX_LINE:
                self._refuse(b"Line too long")
                continue
            self.lineReceived(line)
        if epoch == self._epoch and len(self._partial_line) > MAX_LINE:
            self._partial_line = b""
            self._discarding = True

    def lineReceived(self, line):
        if self.blocked is not None:
            self.blocked.append(line)
            if len(self.blocked) >= MAX_BLOCKED and not self._reading_paused:
                self._reading_paused = True
                self.transport.pauseProducing()
            return
        self._dispatch(line)

    def _run_held(self, _):
        """Run the commands pipelined behind the one that just finished."""
        lines, self.blocked = self.blocked, None
        epoch = self._epoch
        while lines and self.blocked is None:
            if self.transport.disconnecting or epoch != self._epoch:
                return
            self._dispatch(lines.pop(0))
        if self.blocked is not None:
            self.blocked.extend(lines)
        elif self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()

    def _dispatch(self, line):
        if self._sasl is not None:
            exchange, self._sasl = self._sasl, None
            return self._sasl_step(
                exchange, exchange.respond, line.decode("latin-1").strip()
            )
        command = parse_command(line)
        if command is None:
            return self._refuse(b"Unknown command" if line.strip() else b"Empty command")
        verb, args, rest = command
        if verb in HTTP_VERBS:
            self.failResponse(b"This is a POP3 server")
            self.transport.loseConnection()
            return
        table = AUTHORIZATION_COMMANDS if self.mbox is None else TRANSACTION_COMMANDS
        if verb not in table:
            if verb in TRANSACTION_COMMANDS:
                return self._refuse(b"Log in first (USER and PASS)")
            if verb in AUTHORIZATION_COMMANDS:
                return self._refuse(b"Already logged in")
            return self._refuse(b"Unknown command")
        arity = table[verb]
        if arity is None:
            args = (rest,)
        elif not arity[0] <= len(args) <= arity[1]:
            return self._refuse(b"Syntax: " + SYNTAX.get(verb, verb))
        self._errors = 0
        return getattr(self, "do_" + verb.decode("ascii"))(*args)

    def _refuse(self, text):
        """
        Answer a command (or SASL response) that was not run; close after
        too many in a row.
        """
        self._sasl = None
        self._errors += 1
        if self._errors >= MAX_ERRORS:
            self.failResponse(b"Too many bad commands, closing")
            self.transport.loseConnection()
        else:
            self.failResponse(text)

    def _write(self, data):
        self.transport.write(data)

    # Authorization

    def _passwords_allowed(self):
        return self.server.passwords_allowed(self.transport, self.listener)

    def _mechanisms(self):
        """The SASL mechanisms by name (bytes) when passwords are allowed."""
        offered = sasl.mechanisms(self.server.external_offered(self.transport, self.listener))
        return {name.encode("ascii"): mechanism for name, mechanism in offered.items()}

    def _stls_offered(self):
        """Not after login (RFC 2595 4)."""
        return self.mbox is None and self.server.starttls_offered(self.transport, self.listener)

    def _refuse_password(self):
        if not self.listener.auth:
            self.failResponse(b"Password logins are disabled on this port")
        elif self._stls_offered():
            self.failResponse(
                b"Passwords are only accepted over TLS: send STLS first"
            )
        else:
            self.failResponse(
                b"Passwords are only accepted over TLS: use the POP3 TLS port"
            )

    def capabilities(self):
        """The CAPA list (RFC 2449): exactly what works on this connection now."""
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self._passwords_allowed():
            caps.append(b"USER")
            caps.append(b" ".join([b"SASL", *self._mechanisms()]))
        if self._stls_offered():
            caps.append(b"STLS")
        caps.append(b"IMPLEMENTATION mailsrv")
        return caps

    def do_CAPA(self):
        self._write(
            b"+OK Capability list follows\r\n"
            + b"".join(c + b"\r\n" for c in self.capabilities())
            + b".\r\n"
        )

    def do_STLS(self):
        if not self._stls_offered():
            if is_secure(self.transport):
                return self.failResponse(b"TLS is already active")
            return self.failResponse(b"STLS is not available here")
        self.successResponse(b"Begin TLS negotiation")
        self.transport.startTLS(self.server.tls_context_for(self.listener))
        # What the client sent with STLS came before the handshake: an
        # attacker's injection, never the client's commands (RFC 2595 4).
        self._epoch += 1
        self._partial_line = b""
        self._discarding = False
        self._user = None
        if self.blocked is not None:
            self.blocked = []

    def do_USER(self, user):
        if not self._passwords_allowed():
            return self._refuse_password()
        user = user.strip()
        if not user:
            return self.failResponse(b"Syntax: USER name")
        self._user = user
        self.successResponse(b"Send PASS")

    def do_PASS(self, password):
        if not self._passwords_allowed():
            return self._refuse_password()
        if self._user is None:
            return self.failResponse(b"Send USER first")
        user, self._user = self._user, None
        return self._login(user, password)

    def _login(self, user, password):
        return self._check(ClientCredentials(user, password, self._peer_ip), user)

    def _check(self, credentials, name):
        """Log in with a password or certificate; C{name} is for the failure's log line."""
        d = self.portal.login(credentials, None, pop3.IMailbox)
        d.addCallbacks(self._logged_in, self._login_failed, (name,), None, (name,))
        d.addErrback(self._login_broken)
        return self._hold_commands(d)

    def _logged_in(self, result, user):
        interface, mailbox, logout = result
        if not self._connected or self.transport.disconnecting:
            logout()  # the client left during the login: free the maildrop
            return None
        self._logout = logout  # first: connectionLost frees the maildrop
        self.mbox = mailbox
        self.deadline.logged_in()
        d = login.succeeded(self.server, mailbox.user, self._peer_ip, "pop3")
        d.addCallback(lambda _: self.successResponse(b"Logged in"))
        return d

    def _login_failed(self, failure, user):
        outcome = login.failed(failure, user, self._peer_ip, "pop3", self.transport)
        self.failResponse(_LOGIN_REPLIES[outcome])

    def _login_broken(self, failure):
        """
        A bug after the password check: hang up, which frees the maildrop
        (connectionLost), rather than leave the client waiting.
        """
        log.failure("POP3 login failed unexpectedly", failure)
        self.transport.loseConnection()

    def do_APOP(self, rest):
        if not self._passwords_allowed():
            return self._refuse_password()
        self.failResponse(b"APOP is not supported: use USER and PASS")

    def do_AUTH(self, rest):
        """
        RFC 5034. A bare AUTH lists the mechanisms, as clients of the older
        RFC 1734 servers expect.
        """
        if not self._passwords_allowed():
            return self._refuse_password()
        name, _, initial = rest.strip().partition(b" ")
        offered = self._mechanisms()
        if not name:
            return self._write(b"+OK\r\n" + b"".join(n + b"\r\n" for n in offered) + b".\r\n")
        mechanism = offered.get(name.upper())
        if mechanism is None:
            return self.failResponse(b"Unrecognized authentication mechanism")
        exchange = mechanism()
        return self._sasl_step(
            exchange, exchange.start, initial.strip().decode("latin-1") or None
        )

    def _sasl_step(self, exchange, step, value):
        """One step of a SASL exchange: a C{+} challenge, or the login check."""
        try:
            result = step(value)
        except sasl.SASLError as e:
            return self.failResponse(str(e).encode("ascii"))
        if isinstance(result, sasl.Challenge):
            self._sasl = exchange
            return self._write(b"+ " + result.text.encode("ascii") + b"\r\n")
        if isinstance(result, sasl.Authorization):
            certificate = self.server.client_certificate(self.transport, self.listener)
            credentials = CertificateCredentials(certificate, result.authzid, self._peer_ip)
            return self._check(credentials, credentials.name)
        return self._login(result.username, result.password)

    def do_QUIT(self):
        if self.mbox is None:
            self.successResponse(b"Bye")
            self.transport.loseConnection()
            return None
        d = defer.maybeDeferred(self.mbox.sync)

        def done(_):
            self.successResponse(b"Bye")

        def failed(failure):
            log.failure(
                "POP3 QUIT could not delete messages of {user}", failure,
                user=self.mbox.user,
            )
            self.failResponse(b"[SYS/TEMP] Some deleted messages were not removed")

        d.addCallback(done)
        d.addErrback(failed)
        # whatever happened: closing frees the maildrop (connectionLost)
        d.addBoth(lambda _: self.transport.loseConnection())
        return self._hold_commands(d)

    # Transaction

    def _message(self, number):
        """
        The 0-based index for a message-number argument, or L{None} after
        answering with the reason it names no message.
        """
        try:
            index = int(number) - 1
        except ValueError:
            index = -1
        if not number.isdigit() or not 0 <= index < self.mbox.count():
            self.failResponse(b"No such message")
            return None
        if self.mbox.isDeleted(index):
            self.failResponse(b"Message %d is deleted" % (index + 1,))
            return None
        return index

    def _live(self):
        return [
            (i + 1, size)
            for i, size in enumerate(self.mbox.listMessages())
            if not self.mbox.isDeleted(i)
        ]

    def do_STAT(self):
        live = self._live()
        self.successResponse(b"%d %d" % (len(live), sum(s for _, s in live)))

    def do_LIST(self, number=None):
        if number is not None:
            index = self._message(number)
            if index is not None:
                self.successResponse(
                    b"%d %d" % (index + 1, self.mbox.listMessages(index))
                )
            return
        live = self._live()
        self._write(
            b"+OK %d messages\r\n" % (len(live),)
            + b"".join(b"%d %d\r\n" % entry for entry in live)
            + b".\r\n"
        )

    def do_UIDL(self, number=None):
        uidl = self.mbox.getUidl
        if number is not None:
            index = self._message(number)
            if index is not None:
                self.successResponse(b"%d %s" % (index + 1, uidl(index).encode()))
            return
        self._write(
            b"+OK\r\n"
            + b"".join(
                b"%d %s\r\n" % (n, uidl(n - 1).encode()) for n, _ in self._live()
            )
            + b".\r\n"
        )

    def do_DELE(self, number):
        index = self._message(number)
        if index is not None:
            self.mbox.deleteMessage(index)
            self.successResponse(b"Message %d deleted" % (index + 1,))

    def do_RSET(self):
        self.mbox.undeleteMessages()
        self.successResponse(b"%d messages" % (len(self._live()),))

    def do_NOOP(self):
        self.successResponse()

    def do_RETR(self, number):
        index = self._message(number)
        if index is None:
            return None
        size = self.mbox.listMessages(index)
        return self._hold_commands(
            self._send(
                index, b"+OK %d octets\r\n" % (size,),
                lambda fp, first: self._stream(fp, first, size),
            )
        )

    def do_TOP(self, number, lines):
        index = self._message(number)
        if index is None:
            return None
        if not lines.isdigit():
            return self.failResponse(b"Syntax: TOP msg lines")
        count = int(lines)

        def send_top(fp, first):
            d = self.deferToThread(read_top, fp, count)
            d.addCallback(lambda data: self._write(first + stuff(data)))
            return d

        return self._hold_commands(
            self._send(index, b"+OK Top of message follows\r\n", send_top)
        )

    def _send(self, index, first, transfer):
        """
        Open message C{index} and run C{transfer(fp, first)}, answering
        C{-ERR} when the file has gone (another session deleted it).
        """
        try:
            fp = self.mbox.getMessage(index)
        except (KeyError, FileNotFoundError):
            self.failResponse(
                b"Message %d was removed by another session" % (index + 1,)
            )
            return defer.succeed(None)
        except OSError as e:
            log.error(
                "POP3 cannot open message {number} of {user}: {error}",
                number=index + 1, user=self.mbox.user, error=e,
            )
            self.failResponse(b"[SYS/TEMP] Cannot read message %d" % (index + 1,))
            return defer.succeed(None)
        d = defer.maybeDeferred(transfer, fp, first)

        def failed(failure):
            errorlog.client_error(log, failure, f"POP3 transfer of message {index + 1}",
                                  "pop3", self.transport)
            self.transport.loseConnection()

        d.addErrback(failed)
        d.addBoth(lambda result: (fp.close(), result)[1])
        return d

    @defer.inlineCallbacks
    def _stream(self, fp, first, size):
        """
        Send a message file: chunks read in a thread, dot-stuffed, written
        as they come while the client keeps up. A message smaller than
        L{CHUNK} goes out in one write, status line and terminator included.

        @param size: the size the store lists; up to L{SMALL_MESSAGE} the
            file is read at once, on this thread.
        """
        stuffer = DotStuffer()
        if size <= SMALL_MESSAGE:
            data = fp.read(SMALL_MESSAGE + 1)
            if len(data) <= SMALL_MESSAGE:
                self._write(first + stuffer.feed(data) + stuffer.finish())
                return
            first += stuffer.feed(data)  # the listed size was wrong
        throttle = _Throttle(self.deadline)
        self.transport.registerProducer(throttle, True)
        try:
            while True:
                chunk = yield self.deferToThread(fp.read, CHUNK)
                if throttle.stopped:
                    return
                out = first + stuffer.feed(chunk)
                first = b""
                if len(chunk) < CHUNK:
                    self._write(out + stuffer.finish())
                    return
                self._write(out)
                yield throttle.wait()
                if throttle.stopped:
                    return
        finally:
            self.transport.unregisterProducer()
            self.deadline.output_flowing()  # what is left is timed as idleness


class POP3Factory(MailboxFactory):
    protocol_class = POP3Server


def build_factory(server, listener):
    """
    The factory for a POP3 listener. Implicit TLS (C{tls = "implicit"}) is
    wrapped around it by the service; STLS is offered when C{listener.tls}
    is C{"starttls"} or C{"required"}.
    """
    return POP3Factory(server, listener)
