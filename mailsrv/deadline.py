"""
Deadlines for client input, shared by the SMTP, POP3 and IMAP servers.

A timer that restarts on every byte lets a client that sends one byte every
few seconds hold a connection forever. Here, as in Postfix's
C{smtpd_per_request_deadline} and Dovecot's login processes, bytes that
trickle in do not extend anything:

- between commands the client may be silent for C{idle} seconds;
- a command line must be complete within C{command} seconds of its first
  byte, however the bytes arrive (Postfix: C{smtpd_per_request_deadline});
- message data (SMTP DATA, IMAP literals) has C{command} seconds, and every
  N bytes received add N / C{min_data_rate} seconds, never beyond
  C{command} seconds from now (Postfix's C{smtpd_min_data_rate}): a sender
  at a fair rate never runs out, one that stalls or trickles does;
- POP3 and IMAP clients must log in within C{login} seconds of connecting,
  whatever they do meanwhile (Dovecot's login timeout);
- a client that stops reading what the server sends (a big RETR or FETCH
  whose producer the transport paused) has C{command} seconds to read
  again, even while the server works on its command; it sees no last
  line (it does not read), its connection is aborted;
- while the listener is under stress (at least C{stress_connections} open),
  each of these is cut to C{stress} seconds (Postfix's stress-dependent
  C{smtpd_timeout}).

While the server itself works on a command (a password check, a message
going out) the client is not timed. The protocol writes its own final line
when a deadline passes; this module writes the one log line. The limits are
the listener's L{mailsrv.config.Timeouts}.
"""

from twisted.logger import Logger

log = Logger()

# What a passed deadline is called in the log line.
IDLE = "idle"
COMMAND = "command"
DATA = "data"
LOGIN = "login"
EVICTED = "evicted"
WRITE = "write"

# Seconds a closed connection may take to send its last line before it is
# aborted (a client that does not read must not keep the socket).
CLOSE_GRACE = 10


class Unloaded:
    """The load of a listener without connection limits (tests): never stressed."""

    stressed = False


class Deadline:
    """
    The client-input deadlines of one connection. The protocol feeds it
    every byte it receives (L{received}) and says what it waits for
    (L{expect_command}, L{expect_data}, L{hold}, L{release}, L{logged_in}).

    @ivar last_progress: when the client last completed a line (or sent
        message data): the connection that made none for longest is evicted
        first.
    """

    def __init__(self, clock, timeouts, load, transport, name, expired):
        """
        @param load: has C{stressed}, true while the listener is under stress.
        @param transport: aborted if it has not closed L{CLOSE_GRACE}
            seconds after a deadline passed.
        @param name: the connection in the log line ("smtp 192.0.2.1").
        @param expired: C{expired(reason)} writes the protocol's final line
            and closes the connection.
        """
        self.clock = clock
        self.timeouts = timeouts
        self.load = load
        self.transport = transport
        self.name = name
        self._expired = expired
        now = clock.seconds()
        self._login_since = None if timeouts.login is None else now  # connected, not logged in
        self._waiting_since = now
        self._line_started = None  # the first byte of an unfinished line
        self._data_ends = None  # set while message data is expected
        self._logged_in = False
        self._held = False
        self._stalled_since = None  # the client stopped reading our output
        self._stopped = False  # the connection is gone or being closed
        self._gone = False
        self._call = None
        self._reason = None
        self.last_progress = now
        self._arm()

    @property
    def evictable(self):
        """
        Whether the connection may be closed to make room for a new one:
        not logged in, and not waiting for the server.
        """
        return not (self._logged_in or self._held or self._stopped)

    # What the protocol tells us

    def received(self, data):
        """Bytes from the client: only complete lines are progress."""
        if self._stopped or not data:
            return
        now = self.clock.seconds()
        if self._data_ends is not None:
            gained = len(data) / self.timeouts.min_data_rate
            cap = now + self._limit(self.timeouts.command)
            self._data_ends = min(self._data_ends + gained, cap)
            self.last_progress = now
        else:
            end = data.rfind(b"\n")
            if end >= 0:
                self.last_progress = self._waiting_since = now
                self._line_started = now if end + 1 < len(data) else None
            elif self._line_started is None:
                self._line_started = now
        self._arm()

    def expect_command(self):
        """The server waits for the next command line."""
        self._data_ends = None
        self._line_started = None
        self.release()

    def expect_data(self):
        """The server waits for message data (SMTP DATA, an IMAP literal)."""
        self._data_ends = self.clock.seconds() + self._limit(self.timeouts.command)
        self._arm()

    def hold(self):
        """The server works on a command: the client is not timed meanwhile."""
        self._held = True
        self._arm()

    def release(self):
        """The server is done and waits for the client again, from now on."""
        self._held = False
        now = self.clock.seconds()
        self._waiting_since = now
        if self._line_started is not None:
            self._line_started = now
        if self._data_ends is not None:
            self._data_ends = now + self._limit(self.timeouts.command)
        self._arm()

    def output_stalled(self):
        """The transport paused the command's output: the client does not read."""
        if self._stalled_since is None:
            self._stalled_since = self.clock.seconds()
            self._arm()

    def output_flowing(self):
        """The client reads again (the transport resumed, or the output ended)."""
        if self._stalled_since is not None:
            self._stalled_since = None
            self._arm()

    def logged_in(self):
        """POP3/IMAP login (SMTP: AUTH or a first accepted MAIL): no login deadline now."""
        self._logged_in = True
        self._login_since = None
        self._arm()

    def refresh(self):
        """The listener's stress changed: apply the limits that hold now."""
        self._arm()

    def stop(self):
        """The connection is gone."""
        self._stopped = self._gone = True
        self._cancel()

    def evict(self):
        """Close the connection to make room for a new one."""
        self._expire(EVICTED)

    # The timer

    def _limit(self, seconds):
        if self.load.stressed:
            return min(seconds, self.timeouts.stress)
        return seconds

    def _ends(self):
        """
        When the client's time runs out and why, or L{None}: while held,
        only a stalled reader is timed.
        """
        t = self.timeouts
        ends = []
        if self._stalled_since is not None:
            ends.append((self._stalled_since + self._limit(t.command), WRITE))
        if self._held:
            return min(ends, default=None)
        if self._data_ends is not None:
            ends.append((self._data_ends, DATA))
        elif self._line_started is not None:  # a command has begun: no longer idle
            ends.append((self._line_started + self._limit(t.command), COMMAND))
        else:
            ends.append((self._waiting_since + self._limit(t.idle), IDLE))
        if self._login_since is not None:
            ends.append((self._login_since + self._limit(t.login), LOGIN))
        return min(ends)

    def _arm(self):
        if self._stopped:
            return
        ends = self._ends()
        if ends is None:
            self._cancel()
            return
        when, self._reason = ends
        delay = max(0.0, when - self.clock.seconds())
        if self._call is not None and self._call.active():
            self._call.reset(delay)
        else:
            self._call = self.clock.callLater(delay, self._timed_out)

    def _cancel(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _timed_out(self):
        self._call = None
        self._expire(self._reason)

    def _expire(self, reason):
        if self._stopped:
            return
        self._cancel()
        self._stopped = True
        log.info("{connection}: {why}; closing", connection=self.name, why=WHY[reason])
        self._expired(reason)
        if reason == WRITE and not self._gone:
            self.transport.abortConnection()  # its buffer is full: nothing more gets out
        elif not self._gone:
            self._call = self.clock.callLater(CLOSE_GRACE, self.transport.abortConnection)


# Why a connection was closed: the log line's words, and the client's.
WHY = {
    IDLE: "idle too long",
    COMMAND: "command not complete in time",
    DATA: "message data too slow",
    LOGIN: "no login in time",
    EVICTED: "evicted to make room for a new connection",
    WRITE: "not reading",
}
