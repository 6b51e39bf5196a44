"""
What the scanners that hand the message to a daemon share ([antispam.clamav],
[antispam.rspamd]): the message read a chunk at a time, and the admin's
C{on_error} when the daemon cannot say: C{tempfail} (451: the client
sends again later) or C{accept} (the message goes through, unscanned,
its X-Mailsrv-Spam saying so), with one log line naming the daemon's
address and what went wrong.
"""

from twisted.internet import defer, error, threads
from twisted.logger import Logger

from mailsrv.policy.actions import NONE, Action
from mailsrv.policy.hooks import INLINE
from mailsrv.policy.verdict import Verdict

log = Logger()

CHUNK = 64 << 10
TEMPFAIL = Action("tempfail")


class ScanError(Exception):
    """The daemon did not say whether the message is clean: why."""


class MessageChunks:
    """
    The bytes of a L{mailsrv.policy.hooks.Message}, L{CHUNK} at a time:
    read at once for a small message (held in memory), in a thread each
    for a bigger one (on disk).

    @param in_thread: how a big one's reads run (L{threads.deferToThread}).
    """

    def __init__(self, message, in_thread=threads.deferToThread):
        self._message = message
        self._run = in_thread if message.size > INLINE else defer.maybeDeferred
        self._file = None
        self._reading = False
        self._closed = False

    def next(self):
        """A Deferred of the next chunk; C{b""} at the end."""
        self._reading = True
        return self._run(self._read).addBoth(self._read_done)

    def _read(self):
        if self._file is None:
            self._file = self._message.open()
        return self._file.read(CHUNK)

    def _read_done(self, result):
        self._reading = False
        if self._closed:
            self._close_file()
        return result

    def close(self):
        """Done with the message: its file is closed, once a read under way ends."""
        self._closed = True
        if not self._reading:
            self._close_file()

    def _close_file(self):
        if self._file is not None:
            self._file.close()
            self._file = None


class DaemonScanner:
    """
    A body check that asks a daemon about the message.

    @ivar token: its reason token (C{clamav}, C{rspamd}).
    @param where: the daemon's address, as the log names it.
    @param timeout: seconds for the whole scan, connection included.
    @param on_error: C{"tempfail"} or C{"accept"}: what a scan that
        cannot say gives.
    @param action: the L{Action} for what it finds.
    @param subject_prefix: its own Subject mark, or L{None}.
    @param clock: the timeout's clock.
    @param in_thread: how a big message's reads run (L{MessageChunks}).
    """

    token = ""

    def __init__(self, where, timeout, on_error, action, subject_prefix, clock,
                 in_thread=threads.deferToThread):
        self.where = where
        self.timeout = timeout
        self.on_error = on_error
        self.action = action
        self.subject_prefix = subject_prefix
        self.clock = clock
        self.in_thread = in_thread

    def _unscanned(self, failure, session):
        """The daemon could not say: L{unscanned}, with L{why_unscanned}."""
        return unscanned(self.token, self.where, self._why(failure), self.on_error, session)

    def _why(self, failure):
        return why_unscanned(failure, self.timeout)


def why_unscanned(failure, timeout):
    """
    The log's words for why a scan failed, for a L{ScanError}, a
    connection error or the timeout (any other failure is passed on).
    """
    failure.trap(ScanError, error.ConnectError, defer.TimeoutError)
    if failure.check(defer.TimeoutError):
        return f"no reply in {timeout:g}s"
    if failure.check(error.ConnectError):
        return f"cannot connect: {failure.getErrorMessage()}"
    return failure.getErrorMessage()


def unscanned(name, where, why, on_error, session):
    """
    The daemon could not say: one log line, and the verdict of C{on_error}.

    @param name: the scanner's reason token (C{clamav}, C{rspamd}).
    @param where: the daemon's address, for the log.
    """
    log.warn("{name} {where}: {why}; message from {ip} {outcome}",
             name=name, where=where, why=why, ip=session.ip,
             outcome="deferred (on_error tempfail)" if on_error == "tempfail"
             else "accepted unscanned (on_error accept)")
    action = TEMPFAIL if on_error == "tempfail" else NONE
    return Verdict.found(False, action, (f"{name} unscanned",))
