"""
The SMTP client under the courier (docs/queue.md): our own, on Twisted's
line protocol, because Twisted's ESMTPClient waits for each reply before the
next command (no PIPELINING), opens a connection per message and has no
place to say how a host's TLS must be checked.

An L{SMTPConnection} is one session: L{SMTPConnection.open} greets, says
EHLO, starts TLS and authenticates as the hop's policy says;
L{SMTPConnection.transaction} sends one message, pipelined when the host
offers PIPELINING. A L{ConnectionPool} keeps sessions open between messages
(Postfix's connection cache) within limits per destination and in total.
"""

import base64
from collections import deque
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.protocols.basic import FileSender, LineReceiver
from twisted.protocols.policies import TimeoutMixin

from mailsrv.config import DeliverySettings, OutboundTLS
from mailsrv.gather import gather
from mailsrv.queue.dotstuff import DotStuffer

OPPORTUNISTIC = "opportunistic"

# Messages up to this size are read and sent in one write; larger ones
# stream from the spool file.
SMALL_MESSAGE = 256 * 1024


@dataclass(frozen=True)
class Hop:
    """
    One host to try, and how to talk to it.

    @ivar host: an IP address or a host name to connect to.
    @ivar name: the host's name, which a certificate must match in the
        C{"verify"} mode (the MX name, not the address it resolved to).
    @ivar plaintext: skip STARTTLS (the retry after a failed handshake).
    """

    host: str
    port: int
    name: str = ""
    outbound: OutboundTLS = field(default_factory=OutboundTLS)
    plaintext: bool = False

    def __str__(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple

    @property
    def text(self):
        return " ".join(" ".join(self.lines).split())

    @property
    def ok(self):
        return 200 <= self.code < 300


class HostFailure(Exception):
    """
    The host took no part in a decision about any recipient: no connection,
    a refused greeting, a failed EHLO, STARTTLS or AUTH, a dropped
    connection, a timeout.

    @ivar code: the host's reply code, or -1.
    @ivar tls_failed: the TLS handshake failed, so plain SMTP might work.
    """

    def __init__(self, text, code=-1, tls_failed=False):
        super().__init__(text)
        self.text, self.code, self.tls_failed = text, code, tls_failed


class SMTPConnection(LineReceiver, TimeoutMixin):
    """
    One SMTP client session. Commands go out as soon as they are given;
    replies come back in order, each to the Deferred of its command, so a
    group of commands may be written at once (RFC 2920).

    @ivar extensions: EHLO keywords, upper case, to their parameters.
    @ivar transactions: messages sent on this session so far.
    @ivar closed: fires when the connection is gone.
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 16384

    def __init__(self, timeout=DeliverySettings.reply_timeout):
        self.timeout = timeout
        self.extensions = {}
        self.tls = False
        self.transactions = 0
        self.connected = False
        self.closed = defer.Deferred()
        self._replies = deque()  # Deferreds waiting for replies, in order
        self._lines = []
        self._error = None
        self._dirty = False  # a transaction was left open: RSET first
        self.released_from_pool = False
        self.answered = False  # a reply came since the transaction began
        self.greeting = self._expect()

    # Replies

    def connectionMade(self):
        self.connected = True
        self.setTimeout(self.timeout)

    def send(self, *commands):
        """Write C{commands} in one packet; Deferreds of their replies."""
        if not self.connected:
            return [defer.fail(HostFailure("connection closed")) for _ in commands]
        self.transport.write(b"".join(c.encode("ascii") + b"\r\n" for c in commands))
        return [self._expect() for _ in commands]

    def command(self, command):
        return self.send(command)[0]

    def _expect(self):
        if not self._replies and self.connected:
            self.setTimeout(self.timeout)
        d = defer.Deferred()
        self._replies.append(d)
        return d

    def lineReceived(self, line):
        self.resetTimeout()
        code, separator = line[:3], line[3:4]
        if not code.isdigit() or separator not in (b" ", b"-", b""):
            return self._abort(f"unreadable reply {line[:80]!r}")
        self._lines.append(line[4:].decode("utf-8", "replace"))
        if separator == b"-":
            return
        reply, self._lines = Reply(int(code), tuple(self._lines)), []
        self.answered = True
        if not self._replies:
            return self._abort(f"reply to no command: {reply.code} {reply.text}")
        waiting = self._replies.popleft()
        if not self._replies:
            self.setTimeout(None)
        waiting.callback(reply)

    def lineLengthExceeded(self, line):
        self._abort("reply line too long")

    def timeoutConnection(self):
        self._abort(f"no reply in {self.timeout} s")

    def _abort(self, why):
        self._error = why
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self.connected = False
        self.setTimeout(None)
        error = HostFailure(self._error or f"connection lost: {reason.getErrorMessage()}")
        waiting, self._replies = self._replies, deque()
        for d in waiting:
            d.errback(error)
        self.closed.callback(None)

    def quit(self):
        """End the session politely; the reply is not waited for."""
        if self.connected:
            self.transport.write(b"QUIT\r\n")
            self.transport.loseConnection()

    # The session

    @defer.inlineCallbacks
    def open(self, hostname, hop, tls_options):
        """
        Greeting, EHLO, STARTTLS and AUTH as C{hop} asks. It fails with
        L{HostFailure} (and closes the connection).
        """
        try:
            greeting = yield self.greeting
            if greeting.code != 220:
                raise HostFailure(f"greeting: {greeting.text}", greeting.code)
            yield self._hello(hostname)
            policy = hop.outbound
            if not hop.plaintext:
                yield self._start_tls(hostname, policy, tls_options)
            if policy.username:
                yield self._authenticate(policy.username, policy.password)
        except BaseException:
            self.quit()
            raise
        return self

    @defer.inlineCallbacks
    def _hello(self, hostname):
        reply = yield self.command(f"EHLO {hostname}")
        if reply.ok:
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, parameters = line.partition(" ")
                self.extensions[keyword.upper()] = parameters
            return
        if 500 <= reply.code < 600:  # an old host: HELO, no extensions
            reply = yield self.command(f"HELO {hostname}")
            if reply.ok:
                self.extensions = {}
                return
        raise HostFailure(f"EHLO: {reply.text}", reply.code)

    @defer.inlineCallbacks
    def _start_tls(self, hostname, policy, tls_options):
        required = policy.tls != OPPORTUNISTIC
        if "STARTTLS" not in self.extensions:
            if required:
                raise HostFailure(f"4.7.4 no STARTTLS offered, and [delivery] TLS is "
                                  f"{policy.tls!r}")
            return
        reply = yield self.command("STARTTLS")
        if reply.code != 220:
            if required:
                raise HostFailure(f"STARTTLS: {reply.text}", reply.code)
            return
        self.transport.startTLS(tls_options)
        try:
            yield self._hello(hostname)
        except HostFailure as e:
            raise HostFailure(f"TLS handshake failed: {e.text}", e.code,
                              tls_failed=e.code == -1)
        self.tls = True

    @defer.inlineCallbacks
    def _authenticate(self, username, password):
        if not self.tls:  # never: credentials make TLS required (config)
            raise HostFailure("will not send a password without TLS")
        mechanisms = self.extensions.get("AUTH", "").upper().split()

        def b64(text):
            return base64.b64encode(text.encode("utf-8")).decode("ascii")

        if "PLAIN" in mechanisms:
            reply = yield self.command("AUTH PLAIN " + b64(f"\0{username}\0{password}"))
        elif "LOGIN" in mechanisms:
            reply = yield self.command("AUTH LOGIN")
            for answer in (username, password):
                if reply.code != 334:
                    break
                reply = yield self.command(b64(answer))
        else:
            raise HostFailure("5.7.4 the host offers no AUTH mechanism we have "
                              f"(PLAIN, LOGIN): {mechanisms or 'none'}")
        if reply.code != 235:
            raise HostFailure(f"authentication as {username} failed: {reply.text}",
                              reply.code)

    @defer.inlineCallbacks
    def transaction(self, sender, recipients, message, size):
        """
        Send one message.

        @param message: the spooled message, an open binary file (CRLF line
            ends, not dot-stuffed).
        @param size: its length in bytes.
        @return: a Deferred of one L{Reply} per recipient: the reply to its
            RCPT if that failed, else the reply to the end of data (or to
            MAIL or DATA when those failed). It fails with L{HostFailure}
            when the session breaks.
        """
        limit = self.extensions.get("SIZE", "")
        if limit.isdigit() and 0 < int(limit) < size:
            reply = Reply(552, (f"5.3.4 the message has {size} bytes, the host takes "
                                f"at most {limit}",))
            return [reply] * len(recipients)
        self.answered = False
        commands = ["RSET"] if self._dirty else []
        mail = f"MAIL FROM:<{sender}>" + (f" SIZE={size}" if "SIZE" in self.extensions else "")
        commands += [mail] + [f"RCPT TO:<{r}>" for r in recipients]
        self._dirty = True
        if "PIPELINING" in self.extensions:
            replies = yield self._gather(self.send(*commands, "DATA"))
            data = replies.pop()
        else:
            replies, data = [], None
            for command in commands:
                reply = yield self.command(command)
                replies.append(reply)
                if command == mail and not reply.ok:
                    break
            if len(replies) == len(commands) and any(
                    r.ok for r in replies[-len(recipients):]):
                data = yield self.command("DATA")
        if commands[0] == "RSET":
            replies.pop(0)
        mail_reply, rcpt_replies = replies[0], replies[1:]
        if not mail_reply.ok:
            if data is not None and data.code == 354:
                yield self._send_data(None, 0)
            return [mail_reply] * len(recipients)
        accepted = any(r.ok for r in rcpt_replies)
        final = data
        if data is not None and data.code == 354:
            final = yield self._send_data(message if accepted else None, size)
            self._dirty = False
        return [final if r.ok else r for r in rcpt_replies]

    def _gather(self, deferreds):
        """All replies, or the session's failure (once, not once per command)."""
        return gather(deferreds)

    def _send_data(self, message, size):
        """
        The message (or nothing, when no recipient was accepted) and the
        final dot; a Deferred of the reply to it.
        """
        stuffer = DotStuffer()
        final = self._expect()
        if message is None or size <= SMALL_MESSAGE:
            body = message.read() if message is not None else b""
            self.transport.write(stuffer.feed(body) + stuffer.finish())
            return final

        def transform(chunk):
            self.resetTimeout()
            return stuffer.feed(chunk)

        sent = FileSender().beginFileTransfer(message, self.transport, transform)
        sent.addCallbacks(lambda _: self.transport.write(stuffer.finish()),
                          lambda _: None)  # the connection is gone: final fails
        return final


class ConnectionPool:
    """
    Open sessions by hop, kept for the next message to the same hop for
    C{idle_timeout} seconds and up to C{max_reuse} messages (Postfix's
    connection cache), with at most C{max_per_destination} sessions to one
    hop and C{max_total} in all; a request over a limit waits its turn.

    @ivar open_session: C{hop -> Deferred of an open SMTPConnection}.
    """

    def __init__(self, open_session, clock, max_total=DeliverySettings.max_connections,
                 max_per_destination=DeliverySettings.max_connections_per_destination,
                 idle_timeout=2.0, max_reuse=100):
        self.open_session = open_session
        self.clock = clock
        self.max_total = max_total
        self.max_per_destination = max_per_destination
        self.idle_timeout = idle_timeout
        self.max_reuse = max_reuse
        self.total = 0
        self._count = {}  # hop -> sessions opening, busy or idle
        self._idle = {}  # hop -> [(connection, timer)], most recent last
        self._waiting = {}  # hop -> deque of Deferreds

    def acquire(self, hop, fresh=False):
        """
        A Deferred of an open session to C{hop}; it fails with L{HostFailure}.

        @param fresh: a new session, not an idle one (an idle one just turned
            out to have been closed by the host).
        """
        idle = None if fresh else self._idle.get(hop)
        if idle:
            connection, timer = idle.pop()
            timer.cancel()
            return defer.succeed(connection)
        if self._count.get(hop, 0) < self.max_per_destination:
            if self.total >= self.max_total:
                self._close_an_idle_session()
            if self.total < self.max_total:
                return self._open(hop)
        d = defer.Deferred()
        self._waiting.setdefault(hop, deque()).append(d)
        return d

    def release(self, hop, connection, reusable):
        """
        Give a session back after a message: kept for the next one if
        C{reusable} and still good, else closed.
        """
        connection.transactions += 1
        if not (reusable and connection.connected
                and connection.transactions < self.max_reuse):
            connection.quit()
            return
        waiting = self._waiting.get(hop)
        if waiting:
            waiting.popleft().callback(connection)
            if not waiting:
                del self._waiting[hop]
            return
        timer = self.clock.callLater(self.idle_timeout, self._expire, hop, connection)
        self._idle.setdefault(hop, []).append((connection, timer))

    def close_idle(self):
        """Close every idle session (the server is stopping)."""
        for hop in list(self._idle):
            while self._idle.get(hop):
                self._expire(hop, self._idle[hop][0][0])

    def _open(self, hop):
        self._count[hop] = self._count.get(hop, 0) + 1
        self.total += 1
        d = self.open_session(hop)

        def opened(connection):
            connection.closed.addCallback(lambda _: self._gone(hop, connection))
            return connection

        def failed(failure):
            self._gone(hop, None)
            return failure

        return d.addCallbacks(opened, failed)

    def _expire(self, hop, connection):
        self._forget_idle(hop, connection)
        connection.quit()

    def _forget_idle(self, hop, connection):
        idle = self._idle.get(hop, [])
        for entry in idle:
            if entry[0] is connection:
                idle.remove(entry)
                if entry[1].active():
                    entry[1].cancel()
                break
        if not idle:
            self._idle.pop(hop, None)

    def _close_an_idle_session(self):
        """Make room for another hop: close the idle session kept longest."""
        oldest = min(
            ((timer.getTime(), hop, connection)
             for hop, idle in self._idle.items() for connection, timer in idle),
            default=None, key=lambda entry: entry[0],
        )
        if oldest is not None:
            _, hop, connection = oldest
            self._expire(hop, connection)
            self._gone(hop, connection)  # now, not when the close completes

    def _gone(self, hop, connection):
        """A session stopped counting against the limits (once per session)."""
        if connection is not None:
            if connection.released_from_pool:
                return
            connection.released_from_pool = True
            self._forget_idle(hop, connection)
        self._count[hop] -= 1
        if not self._count[hop]:
            del self._count[hop]
        self.total -= 1
        self._serve_waiting()

    def _serve_waiting(self):
        for hop in list(self._waiting):
            waiting = self._waiting.get(hop)
            while waiting and self._count.get(hop, 0) < self.max_per_destination:
                if self.total >= self.max_total:
                    self._close_an_idle_session()
                if self.total >= self.max_total:
                    return
                self._open(hop).chainDeferred(waiting.popleft())
            if not waiting:
                self._waiting.pop(hop, None)
