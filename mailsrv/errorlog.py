"""
Errors a client can trigger, logged without letting the client fill the disk.

A full traceback for every failed command let a few hostile clients write
megabytes of log (one FETCH of a deeply nested message gave 185 KB). Here
each such error is one line naming the session and the error, and the
traceback is written only the first time an error is seen: once per
distinct error (exception type and innermost frame) per L{INTERVAL}, and at
most L{MAX_TRACEBACKS} tracebacks per interval in all. That is enough for
an admin to report the bug, and bounded whatever clients do.
"""

import time

from mailsrv.logtext import literal, printable

# Seconds during which one distinct error gets at most one traceback.
INTERVAL = 600
# Tracebacks per INTERVAL over all distinct errors.
MAX_TRACEBACKS = 20
# Characters of the error message in the one-line entry.
MESSAGE_CHARS = 200


class ClientErrorLog:
    """
    The rate limiter of tracebacks, and the one-line entries.

    @ivar seconds: a function giving the time in seconds (tests pass a
        L{twisted.internet.task.Clock}'s).
    """

    def __init__(self, seconds=time.monotonic, interval=INTERVAL,
                 max_tracebacks=MAX_TRACEBACKS):
        self.seconds = seconds
        self.interval = interval
        self.max_tracebacks = max_tracebacks
        self._last = {}  # error key -> when its traceback was last written
        self._window_start = None
        self._window_count = 0

    def failed(self, logger, failure, what, session):
        """
        Log C{failure}, raised while serving C{session}.

        @param logger: the caller's L{Logger} (its namespace names the module).
        @param what: what failed, such as C{"IMAP FETCH"}.
        @param session: who triggered it: the protocol and peer address.
        """
        error = _one_line(failure)
        if self._traceback_due(_key(failure)):
            logger.failure(
                literal(f"{what} failed: {session}: {error} "
                        f"(traceback written once per {self.interval} s)"),
                failure, what=what, session=session)
        else:
            logger.error(literal(f"{what} failed: {session}: {error}"),
                         what=what, session=session, error=error)

    def _traceback_due(self, key):
        now = self.seconds()
        if self._window_start is None or now - self._window_start >= self.interval:
            self._window_start, self._window_count = now, 0
            self._last = {k: t for k, t in self._last.items()
                          if now - t < self.interval}
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        if self._window_count >= self.max_tracebacks:
            return False
        self._window_count += 1
        self._last[key] = now
        return True


def _key(failure):
    """What makes two errors the same: the type and the innermost frame."""
    frame = failure.frames[-1][1:3] if failure.frames else None
    return failure.type, frame


def _one_line(failure):
    return printable(f"{failure.type.__name__}: {failure.getErrorMessage()}", MESSAGE_CHARS)


def peer(transport):
    """C{ip:port} of a connection's client, to tell sessions apart in the log."""
    address = transport.getPeer() if transport is not None else None
    host = getattr(address, "host", "?")
    port = getattr(address, "port", "?")
    return f"{host}:{port}"


# The one limiter every protocol shares, so the cap holds for the process.
client_errors = ClientErrorLog()


def client_error(logger, failure, what, protocol, transport):
    """
    Log an error a client of C{protocol} ("smtp") triggered on
    C{transport}: see L{ClientErrorLog.failed}.
    """
    client_errors.failed(logger, failure, what, f"{protocol} {peer(transport)}")
