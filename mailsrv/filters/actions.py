"""
The action model shared by every filter: for each result an admin picks
what happens to the message, and the actions of several filters combine by
a fixed precedence (the strongest wins).
"""

from dataclasses import dataclass, replace

from mailsrv.address import is_address
from mailsrv.store.layout import folder_maildir

# Strongest first.
PRECEDENCE = ("reject", "delete", "move", "forward", "subject", "header", "none")
_TAKES_ARGUMENT = ("move", "forward")


@dataclass(frozen=True)
class Action:
    """
    @ivar kind: one of L{PRECEDENCE}.
    @ivar argument: the folder of C{move}, the address of C{forward}, else "".
    """

    kind: str
    argument: str = ""

    def __str__(self):
        return f"{self.kind}:{self.argument}" if self.argument else self.kind

    @property
    def strength(self):
        return len(PRECEDENCE) - PRECEDENCE.index(self.kind)


NONE = Action("none")
HEADER = Action("header")


def parse_action(text):
    """
    C{"header"}, C{"move:Junk"}, C{"forward:spam@example.test"}, ...

    @raise ValueError: with what is wrong, for the config error.
    """
    kind, colon, argument = text.partition(":")
    kind, argument = kind.strip().lower(), argument.strip()
    if kind not in PRECEDENCE:
        raise ValueError(f"unknown action {text!r} (one of: none, header, subject, "
                         "move:FOLDER, forward:ADDRESS, delete, reject)")
    if kind in _TAKES_ARGUMENT and not argument:
        raise ValueError(f"{kind} needs a target: {kind}:"
                         + ("FOLDER" if kind == "move" else "ADDRESS"))
    if kind not in _TAKES_ARGUMENT and colon:
        raise ValueError(f"{kind} takes no argument")
    if kind == "forward" and not is_address(argument):
        raise ValueError(f"forward needs a full address, not {argument!r}")
    if kind == "move":
        folder_maildir("/", argument)  # raises ValueError for a bad name
    return Action(kind, argument)


def combine(actions):
    """The strongest of C{actions} (the first of equals), L{NONE} for none."""
    strongest = NONE
    for action in actions:
        if action.strength > strongest.strength:
            strongest = action
    return strongest


@dataclass(frozen=True)
class FilterResult:
    """
    What one filter found.

    @ivar spam: whether the filter alone counts the message as spam.
    @ivar action: what the admin wants done whatever the count (L{NONE}
        when nothing).
    @ivar reasons: short texts for the summary header and the log.
    @ivar headers: C{(name, value)} pairs to add to the message.
    @ivar counted: the actions of findings that count toward the shared
        threshold (standard DNS blacklist hits, failed validation tests):
        the message is spam when the findings of all filters reach it, and
        only then do these actions apply.
    """

    spam: bool
    action: Action = NONE
    reasons: tuple = ()
    headers: tuple = ()
    counted: tuple = ()


@dataclass(frozen=True)
class Whitelisting:
    """
    Which whitelists let a message skip which filters.

    @ivar reasons: for the summary header and the log
        (C{whitelist:spamskip}, ...).
    @ivar connection: whether the connection filters (DNS blacklists,
        validation, SPF, Received IPs) are skipped.
    @ivar content: whether the content filters are skipped.
    """

    reasons: tuple = ()
    connection: bool = False
    content: bool = False


NOT_WHITELISTED = Whitelisting()


@dataclass(frozen=True)
class Judgement:
    """
    The combined result of every filter for one message.

    @ivar checked: whether filters ran (not for skipped, trusted senders).
    @ivar results: the L{FilterResult}s.
    @ivar threshold: the count of counted findings that makes a message spam.
    @ivar whitelist: the L{Whitelisting}; content filters read
        C{whitelist.content} and skip the message when it is set.
    """

    checked: bool
    results: tuple = ()
    threshold: int = 1
    whitelist: Whitelisting = NOT_WHITELISTED

    def adding(self, results):
        """This judgement with more results (of a later stage), checked."""
        return replace(self, checked=True, results=self.results + tuple(results))

    @property
    def _counted(self):
        return [action for r in self.results for action in r.counted]

    @property
    def _reached(self):
        counted = self._counted
        return bool(counted) and len(counted) >= self.threshold

    @property
    def spam(self):
        return self._reached or any(r.spam for r in self.results)

    @property
    def action(self):
        actions = [r.action for r in self.results]
        return combine(actions + self._counted if self._reached else actions)

    @property
    def reasons(self):
        reasons = [*self.whitelist.reasons, *(x for r in self.results for x in r.reasons)]
        counted = self._counted
        if counted and not self._reached:
            reasons.append(f"count below threshold {len(counted)}/{self.threshold}")
        return tuple(reasons)

    @property
    def headers(self):
        return tuple(header for r in self.results for header in r.headers)

    @property
    def summary(self):
        """The value of X-Mailsrv-Spam (and of the log line)."""
        reasons = ", ".join(self.reasons) or "-"
        return f"{'yes' if self.spam else 'no'}; reasons={reasons}"

    def header_block(self):
        """The headers to write on top of the message (bytes, CRLF ends)."""
        if not self.checked:
            return b""
        lines = [f"{name}: {value}\r\n" for name, value in self.headers]
        lines.append(f"X-Mailsrv-Spam: {self.summary}\r\n")
        return "".join(lines).encode("ascii", "replace")


SKIPPED = Judgement(checked=False)


class SubjectPrefixer:
    """
    Streams a message through, prefixing its Subject (adding one when it
    has none) in the header section.

    @param write: where the message goes.
    @param prefix: bytes put before the subject text.
    """

    def __init__(self, write, prefix):
        self.write = write
        self.prefix = prefix
        self._pending = bytearray()
        self._in_header = True
        self._done = False

    def feed(self, data):
        if not self._in_header:
            self.write(data)
            return
        self._pending += data
        while self._in_header:
            end = self._pending.find(b"\r\n")
            if end < 0:
                return
            line = bytes(self._pending[:end + 2])
            del self._pending[:end + 2]
            if line == b"\r\n":
                self._end_of_header()
                self.write(line)
            elif not self._done and line[:8].lower() == b"subject:":
                text = line[8:].lstrip(b" \t")
                self.write(b"Subject: " + self.prefix + text)
                self._done = True
            else:
                self.write(line)
        if self._pending:
            self.write(bytes(self._pending))
            self._pending.clear()

    def _end_of_header(self):
        self._in_header = False
        if not self._done:
            self.write(b"Subject: " + self.prefix.rstrip() + b"\r\n")
            self._done = True

    def close(self):
        """The message ended: a message with no body still gets its Subject."""
        if self._in_header:
            if self._pending:
                self.write(bytes(self._pending))
                self._pending.clear()
                self.write(b"\r\n")
            self._end_of_header()
