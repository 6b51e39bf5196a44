"""
Running the checks of one hook. A check is an object with one method,
C{check(session, transaction, subject)}, returning a L{Verdict} or a
Deferred of one; it never writes a reply and knows no other check. What
each hook passes (docs/policy.md):

    hook       when                       session      subject
    connect    before the protocol greets  L{Peer}      L{None}
    sender     MAIL FROM                   Session      the sender ("" for <>)
    recipient  RCPT TO                     Session      a Recipient
    header     the header section is in    Session      the header section (bytes)
    body       the final dot               Session      the L{Message}
"""

from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailsrv import errorlog
from mailsrv.policy import content
from mailsrv.policy.verdict import Verdict

log = Logger()

CONNECT, SENDER, RECIPIENT, HEADER, BODY = "connect", "sender", "recipient", "header", "body"


@dataclass(frozen=True)
class Peer:
    """
    What the connect hook knows of a client, before any protocol.

    @ivar ip: the client's address.
    @ivar local_ip: our address it connected to.
    """

    ip: str
    local_ip: str


# Messages analysed at once (Message.judged): each may hold about 130 MB
# while it is parsed (content.MAX_READ, MAX_DECODED as text), and the
# reactor's thread pool also writes the spool.
MAX_ANALYSES = 2
_analyses = defer.DeferredSemaphore(MAX_ANALYSES)
# A message this small (most mail) is analysed on the reactor thread, and
# judged there too unless its HTML is longer than INLINE_HTML: that takes
# a millisecond or two at most, and two thread hops, with the interpreter
# lock passed back and forth, cost more than the work. The HTML is what
# takes long (html.parser: about 5 us a tag, 16 KB of tags 9 ms).
INLINE = 16 << 10
INLINE_HTML = 4 << 10


@dataclass(frozen=True)
class Message:
    """
    What the body hook's checks read: the message as the client sent it
    (without our headers).

    @ivar size: its length in bytes.
    @ivar open: a function giving a binary file of it; call it, and read,
        off the reactor thread (a big message is on disk).
    """

    size: int
    open: Callable[[], BinaryIO]
    _analysed: list = field(default_factory=list, compare=False, repr=False)
    _judges: list = field(default_factory=list, compare=False, repr=False)
    _shared: dict = field(default_factory=dict, compare=False, repr=False)

    def shared(self, key, work):
        """
        A Deferred of C{work()}'s result (a Deferred), worked out once per
        message for every check that asks with the same C{key}: DKIM's
        verification serves [antispam.dkim] and [antispam.dmarc] alike.
        """
        if key not in self._shared:
            self._shared[key] = _Shared(defer.maybeDeferred(work))
        return self._shared[key].wait()

    def judged(self, judge):
        """
        C{judge(content)}: what a content filter makes of the message's
        L{content.Content}, which is worked out once, on the first call,
        and shared by every filter (the message is parsed only when a check
        asks).

        A small message (L{INLINE}) is analysed at once, and judged at once
        unless it holds much HTML (L{INLINE_HTML}): the judge's result
        comes back as it is (an exception raised as it is), with no
        Deferred. A bigger one is analysed in a thread (at most
        L{MAX_ANALYSES} messages at once), and the judges the body hook's
        checks asked for meanwhile run together in one more thread hop:
        the checks are all asked before the analysis can end, so a
        message's filters cost one hop together, not one each. Then the
        result is a Deferred.
        """
        if self.size <= INLINE:
            analysed = self._inline()
            if sum(map(len, analysed.texts("text/html"))) <= INLINE_HTML:
                return judge(analysed)
        d = defer.Deferred()
        first = not self._judges
        self._judges.append((judge, d))
        if first:
            self._in_thread().addCallbacks(self._judge_all, self._judges_failed)
        return d

    def _inline(self):
        """The L{content.Content} of a small message, analysed on the first call."""
        if not self._analysed:
            try:
                self._analysed.append(content.analyse(self.open))
            except Exception:
                self._analysed.append(Failure())
        analysed = self._analysed[0]
        if isinstance(analysed, Failure):
            analysed.raiseException()
        return analysed

    def _in_thread(self):
        """
        A Deferred of the L{content.Content} of a message judged in a
        thread: analysed in a thread once (a big message), or already.
        """
        if self.size <= INLINE:  # (a small message with much HTML)
            return defer.succeed(self._inline())
        if not self._analysed:
            analysed = _analyses.run(lambda: threads.deferToThread(content.analyse, self.open))
            self._analysed.append(_Shared(analysed))
        return self._analysed[0].wait()

    def _judge_all(self, analysed):
        waiting, self._judges[:] = list(self._judges), []
        d = threads.deferToThread(lambda: [_outcome(judge, analysed) for judge, _ in waiting])
        d.addCallback(lambda outcomes: [waiter.callback(outcome) for (_, waiter), outcome
                                        in zip(waiting, outcomes)])
        d.addErrback(self._judges_failed, waiting)

    def _judges_failed(self, failure, waiting=None):
        if waiting is None:
            waiting, self._judges[:] = list(self._judges), []
        for _, waiter in waiting:
            waiter.errback(failure)


class ContentFilter:
    """
    A body hook check that reads the message's L{content.Content}: its
    C{judge(content)} gives the L{Verdict}, at once for a small message, in
    a thread with the other filters' judges for a big one
    (L{Message.judged}).

    @ivar lists: the L{mailsrv.directory.listfile.WatchedFile}s whose
        C{value} C{judge} reads: C{check} has them look for an edit first,
        on the reactor thread.
    """

    lists = ()

    def check(self, session, transaction, message):
        for watched in self.lists:
            watched.refresh()
        return message.judged(self.judge)


def _outcome(judge, analysed):
    """C{judge(analysed)}, or the L{Failure} it raised (each judge's own)."""
    try:
        return judge(analysed)
    except Exception:
        return Failure()


class _Shared:
    """One Deferred's result, for any number of waiters (each gets its own Deferred)."""

    def __init__(self, pending):
        self._waiting = []
        self._outcome = None
        pending.addBoth(self._done)

    def wait(self):
        d = defer.Deferred()
        if self._outcome is None:
            self._waiting.append(d)
        else:
            d.callback(self._outcome)  # (a Failure errbacks)
        return d

    def _done(self, outcome):
        self._outcome = outcome
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(outcome)


# Bytes of a message's start the header hook reads when its header
# section does not end sooner.
HEADER_LIMIT = 65536


def header_section(data, limit=HEADER_LIMIT):
    """
    What the header hook's checks read of a message that starts with
    C{data}: its header section up to the empty line, or its first
    C{limit} bytes when the section does not end before.
    """
    end = data.find(b"\r\n\r\n")
    return bytes(data[:end + 2] if end >= 0 else data[:limit])


def run(checks, session, transaction, subject):
    """
    Run C{checks} in order: synchronously while each check answers with a
    L{Verdict}, through Deferreds only from the first check that returns
    one (a lookup). Most checks answer at once, and a Deferred per check
    cost more than the checks themselves.

    @return: the first refusing L{Verdict}, or an accepting one whose
        reason joins every check's reason; or a Deferred of it when a check
        went asynchronous. A check that fails (a bug, a lookup error)
        refuses with 451 4.3.0: a temporary error never turns into a
        permanent refusal.
    """
    reasons = []
    for index, check in enumerate(checks):
        try:
            verdict = check.check(session, transaction, subject)
        except Exception:
            return _check_failed(Failure(), check, session)
        if isinstance(verdict, defer.Deferred):
            return _run_async(verdict, check, checks[index + 1:], session, transaction,
                              subject, reasons)
        if not verdict.accepted:
            return verdict
        if verdict.reason:
            reasons.append(verdict.reason)
    return Verdict.accept("; ".join(reasons))


def _run_async(pending, check, remaining, session, transaction, subject, reasons):
    """The rest of L{run} once C{check} has returned a Deferred."""

    def judged(verdict):
        if not verdict.accepted:
            return verdict
        if verdict.reason:
            reasons.append(verdict.reason)
        rest = run(remaining, session, transaction, subject)
        if isinstance(rest, defer.Deferred):
            return rest.addCallback(joined)
        return joined(rest)

    def joined(verdict):
        if not verdict.accepted or not reasons:
            return verdict
        return Verdict.accept("; ".join([*reasons, verdict.reason] if verdict.reason
                                        else reasons))

    return pending.addCallbacks(judged, _check_failed, errbackArgs=(check, session))


def _check_failed(failure, check, session):
    # The log line still says "policy stage", as admins' filters expect.
    errorlog.client_errors.failed(log, failure, f"policy stage {type(check).__name__}",
                                  f"smtp {getattr(session, 'ip', '?')}")
    return Verdict.refuse(
        451, "4.3.0", "Temporary failure, try again later",
        f"{type(check).__name__} failed: {failure.getErrorMessage()}",
    )
