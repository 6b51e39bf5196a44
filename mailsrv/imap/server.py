"""
The IMAP listener: L{twisted.mail.imap4.IMAP4Server} with the gaps that
matter to real clients closed. Each override below says which gap:

- one command at a time, even pipelined (twisted#9282): the protocol stops
  reading while a command waits on a Deferred and resumes after its tagged
  reply, so replies keep the order of the commands (Twisted's FETCH kept
  and replayed lines, which split a pipelined literal into commands); the
  LITERAL+ literal of a refused command is read and dropped;
- passwords only where L{MailServer.passwords_allowed} says so: otherwise LOGINDISABLED, no AUTH=, and C{NO
  [PRIVACYREQUIRED]}; STARTTLS per listener, dropping anything pipelined
  behind it (STARTTLS injection);
- LOGIN and AUTHENTICATE PLAIN, LOGIN and EXTERNAL (with SASL-IR, RFC
  4959) go through the shared portal and its throttling checkers (C{NO
  [UNAVAILABLE]} when throttled), are logged (never the password) and open the
  POP-before-SMTP window; Twisted's challengers (CRAM-MD5 needs plaintext
  secrets) are not used;
- SELECT reports UNSEEN, PERMANENTFLAGS, UIDVALIDITY and UIDNEXT; FETCH of
  BODY[] sets \\Seen; other sessions' expunges are announced only where RFC
  3501 allows (not during FETCH, STORE or SEARCH);
- BODYSTRUCTURE, BODY, ENVELOPE, RFC822.HEADER and body sections come
  from our own MIME tree (L{mailsrv.imap.mime}: capped, parsed in a thread
  when costly), not Twisted's walker, which recursed per level, numbered
  parts wrongly inside attached messages and raised on a missing part;
- IDLE ends on DONE only, and sees new mail while it lasts;
- deadlines (L{mailsrv.deadline}) replace Twisted's idle timer, which every
  line and every literal chunk restarted: a login within C{login_timeout},
  each command line within C{command_timeout}, literals at
  C{min_data_rate}, silence (IDLE included) up to C{idle_timeout} after
  login;
- the extensions in L{EXTENSIONS} (docs/imap.md): LITERAL+, ID, ENABLE,
  UIDPLUS (APPENDUID, COPYUID, UID EXPUNGE), MOVE, SPECIAL-USE (the
  folders come from the realm), CONDSTORE (MODSEQ in FETCH, STORE,
  SEARCH, SELECT and STATUS; their syntax in L{mailsrv.imap.syntax}),
  QRESYNC (SELECT's resync, VANISHED, C{OK [CLOSED]}), MULTIAPPEND,
  CATENATE (APPEND's syntax in L{mailsrv.imap.append}), BINARY (FETCH
  BINARY from the MIME tree, literal8 APPEND), UNSELECT,
  LIST-EXTENDED, LIST-STATUS, CHILDREN, STATUS=SIZE and APPENDLIMIT
  (LIST and STATUS are ours, L{mailsrv.imap.listing}), ESEARCH,
  SEARCHRES and ESORT (RETURN options, C{$}), SORT, SORT=DISPLAY and
  THREAD (L{mailsrv.imap.sort}, L{mailsrv.imap.thread});
  keywords are stored (PERMANENTFLAGS has C{\\*});
- bad input (overlong lines, garbage, unknown commands, bad literals, deep
  nesting, absurd FETCH partials, names that are not mUTF-7) gets a tagged
  BAD or NO and the connection goes on (limits: docs/imap.md); Twisted's
  replies built from C{str} (a TypeError that left the client waiting) are
  replaced, and errors are logged through L{mailsrv.errorlog}, not as a
  traceback each.
"""

import email.utils
import os
import re

from twisted.internet import base, defer, interfaces, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.mail import imap4

from mailsrv import __version__, errorlog, login, sasl
from mailsrv.deadline import EVICTED, WHY, Deadline
from mailsrv.directory.certificate import CertificateCredentials
from mailsrv.directory.checker import ClientCredentials
from mailsrv.gather import gather
from mailsrv.imap import append, listing, mime, sequence, sort, syntax, thread
from mailsrv.imap._twisted_compat import (LITERAL_MEMORY_LIMIT, LiteralFile, TwistedIMAP4Server,
                                          flags_item, literal, uid_item)
from mailsrv.imap.listing import DELIMITER
from mailsrv.imap.search import MAX_DEPTH as MAX_SEARCH_DEPTH
from mailsrv.imap.mailbox import ChangedSince, write_failure
from mailsrv.logtext import printable
from mailsrv.ranges import runs
from mailsrv.realm import MailboxFactory
from mailsrv.store.names import PERMANENT_FLAGS

log = Logger()

_TAG = re.compile(rb"[!#$&'+,\-./0-9:;<=>?@A-Z\[^_`a-z|}~]+")
_COMMAND = re.compile(rb"[A-Za-z]+")
# Commands during which a sequence-number EXPUNGE must not be sent.
_NO_EXPUNGE = (b"FETCH", b"STORE", b"SEARCH", b"SORT", b"THREAD")
_STATES = ("unauth", "auth", "select", "logout")
# FETCH items answered from the index alone (see _fetch_from_index).
_INDEX_ITEMS = frozenset(("flags", "uid", "modseq", "rfc822size", "internaldate"))
FETCH_BATCH = 2000
# ... and at most about this many bytes of message text per reactor turn.
FETCH_BATCH_BYTES = 1 << 20
_LITERAL_PLUS = re.compile(rb"\{(\d{1,20})\+\}")
# The end of a discarded overlong line announcing a LITERAL+ literal.
_LITERAL_PLUS_END = re.compile(rb"\{\d{1,20}\+\}\r?$")
# Parenthesised lists (and SEARCH's NOT and OR) may nest this deep: the
# parsers recurse once per level. SEARCH's own limit is the same number.
MAX_NESTING = MAX_SEARCH_DEPTH
# Advertised in every state; each has its tests in tests/test_imap_extensions.py.
EXTENSIONS = (
    b"LITERAL+", b"ID", b"ENABLE", b"NAMESPACE", b"IDLE", b"UIDPLUS", b"MOVE",
    b"SPECIAL-USE", b"CONDSTORE", b"QRESYNC", b"MULTIAPPEND", b"BINARY", b"CATENATE",
    b"UNSELECT", b"CHILDREN", b"LIST-EXTENDED", b"LIST-STATUS", b"STATUS=SIZE",
    b"ESEARCH", b"SEARCHRES", b"SORT", b"SORT=DISPLAY", b"THREAD=REFERENCES",
    b"THREAD=ORDEREDSUBJECT", b"ESORT",
)
# How a failed login is answered (L{mailsrv.login}; RFC 5530 response codes).
_LOGIN_REPLIES = {
    login.THROTTLED: b"[UNAVAILABLE] Too many failed logins, try again later",
    login.FAILED: b"[AUTHENTICATIONFAILED] Authentication failed",
    login.BROKEN: b"[UNAVAILABLE] Authentication unavailable",
}
# Commands UID may prefix (RFC 3501, 4315, 6851, 5256).
_UID_COMMANDS = (b"COPY", b"FETCH", b"STORE", b"SEARCH", b"EXPUNGE", b"MOVE", b"SORT",
                 b"THREAD")
# SEARCH and SORT RETURN options (RFC 4731, 5182, 5267).
_RETURN_OPTIONS = frozenset((b"MIN", b"MAX", b"ALL", b"COUNT", b"SAVE"))

_base = imap4.IMAP4Server


def _arg_id(self, line):
    """The ID argument (RFC 2971): NIL or a list of field-value pairs."""
    if not line:
        raise imap4.IllegalClientResponse("Missing argument")
    parsed = imap4.parseNestedParens(line)
    if len(parsed) != 1 or not (parsed[0] is None or isinstance(parsed[0], list)):
        raise imap4.IllegalClientResponse("Expected NIL or a parenthesized list")
    return parsed[0], b""


def _arg_fetch(self, line):
    """
    FETCH's items and modifiers: C{((query, changedsince, vanished),
    b"")}, with MODSEQ (RFC 7162) as a L{syntax.ModSeqItem} and BINARY
    (RFC 3516) as L{syntax.BinaryItem}s in the query.
    """
    atts, changedsince, vanished = syntax.split_fetch_modifiers(line)
    atts, modseq = syntax.take_modseq_item(atts)
    atts, binary = (None, []) if atts is None else syntax.take_binary_items(atts)
    query = [] if atts is None else _base.arg_fetchatt(self, atts)[0]
    query += binary
    syntax.check_partials(query, sequence.NUMBER_MAX)
    if modseq or changedsince is not None:
        query.append(syntax.ModSeqItem())
    return (query, changedsince, vanished), b""


def _opt_select_params(self, line):
    """
    SELECT's and EXAMINE's parameters, nested as QRESYNC's are (Twisted's
    C{opt_plist} ends the list at the first C{")"}).
    """
    if not line.startswith(b"("):
        return None, line
    parsed = imap4.parseNestedParens(line)
    if len(parsed) != 1 or not isinstance(parsed[0], list):
        raise imap4.IllegalClientResponse("Expected one parenthesized list")
    return parsed[0], b""


def _opt_unchangedsince(self, line):
    return syntax.split_store_modifier(line)


def _decoded(parse, decode):
    """
    An argument parser giving a mailbox name or LIST pattern as C{str}
    (L{syntax.mailbox_name}, L{syntax.list_pattern}); Twisted's commands
    take it so, without decoding it again.
    """
    def arg(self, line):
        result = parse(self, line)
        if isinstance(result, defer.Deferred):
            # a literal: decode when read; the line after it starts with
            # the space before the next argument (APPEND {5}CRLF INBOX {9})
            return result.addCallback(lambda r: (decode(r[0]), r[1].removeprefix(b" ")))
        return decode(result[0]), result[1]
    return arg


def _quoted_astring(parse):
    """
    C{parse} (Twisted's astring parser), but a quoted string may hold
    C{\\"} and C{\\\\} (RFC 3501 quoted-specials): Twisted ends it at the
    first quote, and the rest of the name was a BAD "too many arguments".
    """
    def arg(self, line):
        line = line.lstrip()
        match = _QUOTED.match(line)
        if match is None:
            return parse(self, line)
        return _QUOTED_SPECIAL.sub(rb"\1", match.group(1)), line[match.end():].lstrip(b" ")
    return arg


_QUOTED = re.compile(rb'"((?:[^"\\\r\n]|\\["\\])*)"(?=\s|\)|$)')
_QUOTED_SPECIAL = re.compile(rb'\\(["\\])')
_arg_mailbox = _decoded(_quoted_astring(_base.arg_astring), syntax.mailbox_name)
_arg_final_mailbox = _decoded(_quoted_astring(_base.arg_finalastring), syntax.mailbox_name)
_arg_list_pattern = _decoded(_quoted_astring(_base.arg_astring), syntax.list_pattern)


def _opt_list_selection(self, line):
    """LIST's selection options (RFC 5258), parsed, or L{None}."""
    if not line.startswith(b"("):
        return None, line
    inside, rest = syntax.parenthesized(line)
    return imap4.parseNestedParens(inside), rest


def _arg_list_patterns(self, line):
    """
    LIST's pattern, or several in parentheses (RFC 5258; quoted or
    atoms, no literals): C{([str], several)}.
    """
    if not line.startswith(b"("):
        single = _arg_list_pattern(self, line)
        if isinstance(single, defer.Deferred):
            return single.addCallback(lambda r: (([r[0]], False), r[1]))
        return ([single[0]], False), single[1]
    inside, rest = syntax.parenthesized(line)
    patterns = imap4.parseNestedParens(inside)
    if not patterns or not all(isinstance(p, bytes) for p in patterns):
        raise imap4.IllegalClientResponse("Expected mailbox patterns")
    return ([syntax.list_pattern(p) for p in patterns], True), rest


def _opt_list_return(self, line):
    """LIST's C{RETURN (options)} (RFC 5258), parsed, or L{None}."""
    if not line:
        return None, b""
    keyword, _, rest = line.partition(b" ")
    if keyword.upper() != b"RETURN" or not rest.startswith(b"("):
        raise imap4.IllegalClientResponse("Expected RETURN (options)")
    inside, rest = syntax.parenthesized(rest)
    return imap4.parseNestedParens(inside), rest


def _arg_flaglist(self, line):
    """
    STORE's flags as L{syntax.client_flags} gives them; a missing list is
    a syntax error (Twisted's parser raised TypeError).
    """
    if not line:
        raise imap4.IllegalClientResponse("Missing flag list")
    flags, rest = _base.arg_flaglist(self, line)
    return syntax.client_flags(flags), rest


def _arg_seqset(self, line):
    """
    A sequence set kept as ranges (L{mailsrv.imap.sequence}), not
    Twisted's; C{$} is the saved search result (RFC 5182).
    """
    text, _, rest = line.partition(b" ")
    if text == b"$":
        return self._saved_set(), rest
    try:
        return sequence.parse(text), rest
    except sequence.BadSequenceSet as e:
        raise imap4.IllegalClientResponse("Bad message number " + str(e))


def _opt_search_return(self, line):
    """
    SEARCH's and SORT's optional C{RETURN (options)} (RFC 4731, 5267):
    the options as a set (C{RETURN ()} is ALL), or L{None} without RETURN.
    """
    if line[:6].upper() != b"RETURN" or line[6:7] not in (b" ", b"("):
        return None, line
    options, rest = _base.arg_plist(self, line[6:].lstrip(b" "))
    if not all(isinstance(o, bytes) and o.upper() in _RETURN_OPTIONS for o in options):
        raise imap4.IllegalClientResponse("Unknown RETURN option")
    return frozenset(o.upper() for o in options) or frozenset((b"ALL",)), rest


def _arg_sort_criteria(self, line):
    """SORT's parenthesised sort criteria (L{sort.parse_criteria})."""
    words, rest = _base.arg_plist(self, line)
    try:
        return sort.parse_criteria(words), rest
    except sort.BadCriteria as e:
        raise imap4.IllegalClientResponse(str(e))


def _arg_algorithm(self, line):
    """THREAD's algorithm, an atom (Twisted's parser gives L{None} for no rest)."""
    algorithm, rest = _base.arg_atom(self, line)
    return algorithm, rest or b""


def _opt_seqset(self, line):
    if not line:
        return None, b""
    return _arg_seqset(self, line)


class IMAPServer(TwistedIMAP4Server):
    """
    One IMAP connection.

    @ivar server: the shared L{mailsrv.context.MailServer}.
    @ivar listener: this listener's L{mailsrv.config.Listener}.
    """

    IDENT = b"mailsrv IMAP4rev1 ready"
    MAX_LENGTH = 65536
    IDLE_POLL = 15  # seconds between folder scans while a client IDLEs
    deadline = None

    def __init__(self, server, listener, portal):
        starttls = listener.tls in ("starttls", "required")
        super().__init__(
            contextFactory=server.tls_context_for(listener) if starttls else None,
            scheduler=self._iterate,
        )
        self.server = server
        self.listener = listener
        self.portal = portal
        self._tag = None  # the command being processed
        self._flag_news = set()  # UIDs whose flag change waits for a FETCH to end
        self._command = None
        self._discarding = False
        self._discarded_tail = b""  # the last bytes of the line being discarded
        self._refeed = b""
        self._idle_tag = None
        self._idle_poll = None
        self._lost = False
        self._sasl = None  # (tag, exchange) of an AUTHENTICATE awaiting a response
        self._nonsync = None  # the size of a LITERAL+ literal not yet being read
        self._condstore = False  # CONDSTORE enabled (RFC 7162 3.1)
        self._qresync = False  # QRESYNC enabled (RFC 7162 3.2.3): VANISHED, not EXPUNGE
        self._resync = None  # the QRESYNC parameter of the SELECT under way
        self._saved = []  # the UIDs of the saved search result, C{$} (RFC 5182)
        self._by_uid = False  # the command under way is a UID command
        self._flags = frozenset()  # the FLAGS the client was told (a keyword's first use)
        self._logout = None  # the realm's, once logged in: called when the connection ends

    # The clock: Twisted's timeouts and FETCH scheduling use the global
    # reactor; ours follow server.clock so tests can drive them.

    def callLater(self, delay, f, *args):
        return self.server.clock.callLater(delay, f, *args)

    def _iterate(self, steps):
        """
        Run a FETCH response generator: synchronous steps at once, waiting
        on the Deferreds it yields; the end is reported on the next clock
        turn so that long FETCHes do not recurse.
        """
        done = defer.Deferred()

        def go(result):
            while True:
                try:
                    step = next(steps)
                except StopIteration:
                    self.callLater(0, done.callback, result)
                    return
                except BaseException:
                    done.errback()
                    return
                if isinstance(step, defer.Deferred):
                    step.addCallbacks(go, done.errback)
                    return
                result = step

        go(None)
        return done

    # Connection

    def connectionMade(self):
        self.deadline = Deadline(
            self.server.clock, self.listener.timeouts, self.factory.load, self.transport,
            f"imap {self._peer_ip()}", self._deadline_passed,
        )
        super().connectionMade()

    def _deadline_passed(self, reason):
        if reason == EVICTED:
            self.sendUntaggedResponse(b"BYE [UNAVAILABLE] Too many connections; closing")
        else:
            self.sendUntaggedResponse(b"BYE Autologout; " + WHY[reason].encode("ascii"))
        self.transport.loseConnection()

    # Twisted's idle timer is replaced by the deadline: its calls do nothing.

    def setTimeout(self, period):
        return None

    def resetTimeout(self):
        pass

    def setRawMode(self):
        """A literal follows."""
        self.deadline.expect_data()
        super().setRawMode()

    def setLineMode(self, extra=b""):
        self.deadline.expect_command()
        return super().setLineMode(extra)

    def connectionLost(self, reason):
        self._lost = True
        if self.deadline is not None:
            self.deadline.stop()
        self._stop_idle_poll()
        if self.mbox is not None:
            self._drop_mailbox()
        super().connectionLost(reason)
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()

    def capabilities(self):
        caps = {}
        if self.state == "unauth":
            if self._starttls_offered():
                caps[b"STARTTLS"] = None
            if self._passwords_allowed():
                caps[b"AUTH"] = [name.encode("ascii") for name in self._mechanisms()]
                caps[b"SASL-IR"] = None
            else:
                caps[b"LOGINDISABLED"] = None
        for name in EXTENSIONS:
            caps[name] = None
        caps[b"APPENDLIMIT"] = [b"%d" % self._largest_literal()]  # RFC 7889
        return caps

    def _starttls_offered(self):
        """Not once a STARTTLS has begun; only where Twisted can start TLS on the transport."""
        return (
            not self.startedTLS
            and interfaces.ITLSTransport(self.transport, None) is not None
            and self.server.starttls_offered(self.transport, self.listener)
        )

    def _passwords_allowed(self):
        return self.server.passwords_allowed(self.transport, self.listener)

    def _mechanisms(self):
        return sasl.mechanisms(self.server.external_offered(self.transport, self.listener))

    def _peer_ip(self):
        return getattr(self.transport.getPeer(), "host", "?")

    # Input: line length, syntax, one command at a time

    def dataReceived(self, data):
        """Drop the rest of an overlong line, then parse as usual."""
        if self.transport.disconnecting:  # after LOGOUT: nothing more is read
            return
        self.deadline.received(data)
        while True:
            if self._discarding:
                dropped, newline, data = data.partition(b"\n")
                self._discarded_tail = (self._discarded_tail + dropped)[-32:]
                if not newline:
                    return
                self._discarding = False
                if _LITERAL_PLUS_END.search(self._discarded_tail):
                    return self._lost_track()
            super().dataReceived(data)
            if not self._refeed:
                return
            data, self._refeed = self._refeed, b""

    def lineLengthExceeded(self, line):
        """
        Twisted closes the connection here. We answer BAD, tagged when the
        tag can be read or a command is under way (the tag would otherwise
        never get its reply), and drop the line up to its CRLF.
        """
        dropped, newline, rest = line.partition(b"\n")
        self._discarding = not newline
        self._discarded_tail = dropped[-32:]
        self._refeed = rest
        tag = None
        if self.parseState == "sasl":  # the response ends the AUTHENTICATE
            (tag, _), self._sasl = self._sasl, None
            self.parseState = "command"
        elif self.parseState == "idle":
            return self.parse_idle(b"")
        elif self.parseState == "pending":  # the line after a literal
            tag, self.pending_literal = self._tag, None
            self.parseState = "command"
        elif self.parseState == "skip":  # a refused command: it has its BAD
            self.pending_literal = None
            self.parseState = "command"
            if not (newline and _LITERAL_PLUS_END.search(dropped)):
                return None
        else:
            match = _TAG.match(line)
            if match and line[match.end():match.end() + 1] == b" ":
                tag = match.group()
        if newline and _LITERAL_PLUS_END.search(dropped):
            self._refeed = b""
            return self._lost_track(tag)
        self.sendBadResponse(tag, b"Line too long")
        return None

    def _lost_track(self, tag=None):
        """
        An overlong line announced a LITERAL+ literal, which the client
        sends without waiting: its bytes cannot be told from commands.
        """
        self.sendBadResponse(tag, b"Line too long")
        self.sendUntaggedResponse(b"BYE Cannot read the rest of that command")
        self.transport.loseConnection()

    def lineReceived(self, line):
        if self.parseState in ("command", "pending", "skip"):
            line = self._literal_plus(line)
        super().lineReceived(line)
        if self._nonsync is not None and self.parseState == "command" and not self._lost:
            # refused before its literal was asked for: the client sends
            # it anyway, and its bytes are no commands
            self._skip_literal()
        if self._tag is not None and self.parseState == "command" and not self._lost:
            # the command waits on a Deferred: read nothing more until it
            # has answered (twisted#9282); literals and IDLE still read
            self.pauseProducing()
            self.deadline.hold()

    def parse_command(self, line):
        parts = line.split(None, 2)
        if not parts or not _TAG.fullmatch(parts[0]):
            self.sendBadResponse(None, b"Invalid tag or missing command")
            return
        if len(parts) < 2:
            self.sendBadResponse(parts[0], b"Missing command")
            return
        if not _COMMAND.fullmatch(parts[1]):
            self.sendBadResponse(parts[0], b"Invalid command")
            return
        if syntax.too_deep(line, MAX_NESTING):
            self.sendBadResponse(parts[0], b"Too deeply nested: at most %d levels"
                                 % MAX_NESTING)
            return
        self._tag = parts[0]
        self._command = parts[1].upper()
        try:
            super().parse_command(line)
        except Exception:
            self._client_error(Failure(), self._command)
            self.sendBadResponse(parts[0], b"Internal server error")

    def dispatchCommand(self, tag, cmd, rest, uid=None):
        if not self.lookupCommand(cmd):
            name = cmd.decode("ascii").upper()
            if any(hasattr(self, f"{state}_{name}") for state in _STATES):
                self.sendBadResponse(tag, b"Command not valid in this state")
            else:
                self.sendBadResponse(tag, b"Unknown command")
            return
        self._by_uid = bool(uid)
        # no arguments at all must parse as missing ones, not crash
        super().dispatchCommand(tag, cmd, rest or b"", uid)

    def arguments_failed(self, failure, tag):
        """
        An argument failed to parse (Twisted's own errback would log a
        traceback for every parser error that is not IllegalClientResponse).
        """
        if self._nonsync is not None and self._nonsync > self._largest_literal():
            # the client sends the literal anyway, too much to read and
            # drop: give up on the connection (RFC 7888 4); a smaller one
            # is skipped after the reply below (lineReceived)
            self._nonsync = None
            self.sendBadResponse(tag, b"Literal refused: " + _text(failure.value))
            self.sendUntaggedResponse(b"BYE Cannot read the rest of that command")
            self.transport.loseConnection()
        elif failure.check(imap4.IllegalOperation, imap4.IllegalMailboxEncoding):
            self.sendNegativeResponse(tag, _text(failure.value))
        elif failure.check(
            imap4.IllegalClientResponse, imap4.IMAP4Exception, ValueError
        ) or failure.type is Exception:
            self.sendBadResponse(tag, b"Syntax error: " + _text(failure.value))
        else:
            self._client_error(failure, self._command)
            self.sendBadResponse(tag, b"Internal server error")

    def fetch_failed(self, failure, tag):
        """Twisted's FETCH errback, with the error logged as one line."""
        self._client_error(failure, b"FETCH")
        self.sendBadResponse(tag, b"FETCH failed: server error")

    def fetch_broke_off(self, failure):
        """
        Part of a FETCH response may be out already: all we can do is close
        (as Twisted does), with the error logged as one line.
        """
        self._client_error(failure, b"FETCH")
        self.transport.write(b"\r\n* BYE Server error while sending a FETCH response\r\n")
        self.transport.loseConnection()

    def _client_error(self, failure, command):
        """Log an error the client's command caused (L{errorlog})."""
        name = (command or b"command").decode("ascii", "replace")
        errorlog.client_error(log, failure, f"IMAP {name}",
                              "imap", self.transport)

    def _literal_plus(self, line):
        """
        LITERAL+ (RFC 7888): a line ending in C{{N+}} is read as if it
        ended in C{{N}}, without the continuation request the client does
        not wait for.
        """
        self._nonsync = None
        match = _LITERAL_PLUS.search(line)
        if match is None or match.end() != len(line):
            return line
        self._nonsync = int(match.group(1))
        return line[:match.start()] + b"{" + match.group(1) + b"}"

    def sendContinuationRequest(self, msg=b"Ready for additional command text"):
        if self._nonsync is not None:
            self._nonsync = None
            return
        super().sendContinuationRequest(msg)

    def _skip_literal(self):
        """
        Read and drop the LITERAL+ literal of a command already answered
        BAD (unknown, not valid now, too deep, too many arguments), then
        the rest of that command (L{parse_skip}).
        """
        self.pending_literal = _SkippedLiteral(self._nonsync)
        self._nonsync = None
        self.parseState = "skip"
        self.setRawMode()

    def parse_skip(self, line):
        """
        The rest of a refused command after a skipped literal; if it ends
        in another LITERAL+ literal, L{lineReceived} skips that too.
        """
        self.pending_literal = None
        self.parseState = "command"

    def _arg_messages(self, line):
        """
        APPEND's messages (L{append.AppendParser}): MULTIAPPEND, literal8,
        CATENATE. A message bigger than we accept by SMTP is refused
        before its literal is read: C{NO [TOOBIG]} (RFC 7889) before the
        continuation request; so is one that would make the APPEND hold
        more than that in all.
        """
        return append.AppendParser(self._read_append_literal, self._largest_literal()).parse(line)

    def _read_append_literal(self, size, binary, held):
        """
        Twisted's C{_fileLiteral}, but in a temporary file once the APPEND
        holds more than Twisted keeps in memory for one literal.
        """
        d = defer.Deferred()
        self.parseState = "pending"
        # in memory while the APPEND's literals, this one too, fit in Twisted's limit for one
        self.pending_literal = LiteralFile(size, d, max(0, LITERAL_MEMORY_LIMIT - held))
        self.sendContinuationRequest(b"Ready for %d octets of data" % size)
        self.setRawMode()
        return d

    def _largest_literal(self):
        return self.server.settings.access.max_message_size

    def string_literal(self, size):
        """Twisted's, but a negative size is no size."""
        if size < 0:
            raise imap4.IllegalClientResponse("Bad literal size")
        return super().string_literal(size)

    def do_UID(self, tag, command, line):
        if command.upper() not in _UID_COMMANDS:
            self.sendBadResponse(tag, b"Unknown UID command")
            return
        self.dispatchCommand(tag, command.upper(), line, uid=1)

    select_UID = (do_UID, _base.arg_atom, _base.arg_line)

    # Output: the end of a command

    def respond(self, state, tag, message):
        if self._lost:  # a command that waited on a sync ends after the client left
            return
        if not (tag is not None and tag == self._tag and state in (b"OK", b"NO", b"BAD")):
            self.write_response(state, tag, message)
            return
        self.blocked = None  # a FETCH of Twisted's is over (see replay_blocked)
        self._flush_news()
        if self.mbox is not None:
            if self._command not in _NO_EXPUNGE or self._command == b"UID":
                self._send_expunges()
            else:
                self._held_back_expunges()
        self.write_response(state, tag, message)
        self._tag = self._command = None
        if not self._lost:
            self.deadline.release()
            if self.paused:
                self.resumeProducing()

    def replay_blocked(self):
        """
        Twisted's FETCH calls this after its tagged reply, to replay the
        lines it kept in C{blocked} meanwhile: split into lines, a
        pipelined APPEND's literal ran as commands. We read nothing while
        a command runs, and L{respond} ends the FETCH's C{blocked} (which
        then only holds back untagged replies): nothing to replay.
        """

    def _send_expunges(self):
        uids, seqs = self.mbox.take_expunges()
        self._announce_expunged(uids, seqs)

    def _announce_expunged(self, uids, seqs):
        """
        Messages gone from the view: C{EXPUNGE} each, or once QRESYNC is
        enabled C{VANISHED} with their UIDs as ranges (RFC 7162 3.2.10).
        """
        if self._qresync:
            for line in _vanished_lines(runs(uids)):
                self.write_response(line, None, None)
        else:
            for seq in seqs:
                self.write_response(b"%d EXPUNGE" % seq, None, None)

    def _held_back_expunges(self):
        """
        Expunges held back at the end of a FETCH, STORE or SEARCH: a
        QRESYNC client may have seen a later MODSEQ, so it hears of a
        HIGHESTMODSEQ before them, or it would resync past them after a
        lost connection (RFC 7162 3.2).
        """
        if self._qresync and self.mbox.pending:
            self.write_response(b"OK [HIGHESTMODSEQ %d] Expunges pending"
                                % self.mbox.pending_since, None, None)

    def _flush_news(self):
        """Send what waited for the command to end (Twisted's queue, flag changes)."""
        queued, self.queued_untagged = self.queued_untagged, []
        for line in queued:
            self.write_response(line, None, None)
        if self._flag_news and self.mbox is not None:
            uids, self._flag_news = self._flag_news, set()
            self._send_flags(uids)

    def expunges_pending(self):
        """Another session expunged messages we show: announce them if idle."""
        if self.parseState == "idle":
            self._send_expunges()

    # Commands: not authenticated

    def do_STARTTLS(self, tag):
        if not self._starttls_offered():
            self.sendBadResponse(tag, b"STARTTLS not available")
            return
        # whatever the client sent after STARTTLS came in clear: drop it
        self.clearLineBuffer()
        self.sendPositiveResponse(tag, b"Begin TLS negotiation now")
        self.transport.startTLS(self.ctx)
        self.startedTLS = True

    unauth_STARTTLS = (do_STARTTLS,)

    def _refuse_password(self, tag):
        if not self.listener.auth:
            self.sendNegativeResponse(tag, b"Password logins are disabled on this port")
        else:
            self.sendNegativeResponse(
                tag, b"[PRIVACYREQUIRED] Passwords need TLS: use STARTTLS first"
            )

    def do_LOGIN(self, tag, user, passwd):
        if not self._passwords_allowed():
            return self._refuse_password(tag)
        self._login(tag, user, passwd)

    unauth_LOGIN = (do_LOGIN, _base.arg_astring, _base.arg_finalastring)

    def do_AUTHENTICATE(self, tag, line):
        """RFC 3501 6.2.2, with an optional initial response (RFC 4959)."""
        if not self._passwords_allowed():
            return self._refuse_password(tag)
        name, _, initial = line.strip().partition(b" ")
        if not name:
            return self.sendBadResponse(tag, b"Syntax: AUTHENTICATE mechanism")
        mechanism = self._mechanisms().get(name.upper().decode("ascii", "replace"))
        if mechanism is None:
            return self.sendNegativeResponse(tag, b"Unsupported authentication mechanism")
        exchange = mechanism()
        self._sasl_step(tag, exchange, exchange.start, initial.strip().decode("latin-1") or None)

    unauth_AUTHENTICATE = (do_AUTHENTICATE, _base.arg_line)

    def parse_sasl(self, line):
        """The client's response to an AUTHENTICATE challenge."""
        (tag, exchange), self._sasl = self._sasl, None
        self.parseState = "command"
        self._sasl_step(tag, exchange, exchange.respond, line.decode("latin-1").strip())

    def _sasl_step(self, tag, exchange, step, value):
        try:
            result = step(value)
        except sasl.Forbidden as e:
            return self.sendNegativeResponse(tag, b"[AUTHORIZATIONFAILED] " + _text(e))
        except sasl.SASLError as e:  # cancelled or malformed: BAD (RFC 3501 6.2.2)
            return self.sendBadResponse(tag, _text(e))
        if isinstance(result, sasl.Challenge):
            self._sasl = (tag, exchange)
            self.parseState = "sasl"
            self.sendLine(b"+ " + result.text.encode("ascii"))
            return None
        if isinstance(result, sasl.Authorization):
            certificate = self.server.client_certificate(self.transport, self.listener)
            credentials = CertificateCredentials(certificate, result.authzid, self._peer_ip())
            return self._check(tag, credentials, credentials.name)
        return self._login(tag, result.username, result.password)

    def _login(self, tag, user, passwd):
        self._check(tag, ClientCredentials(user, passwd, self._peer_ip()), user)

    def _check(self, tag, credentials, name):
        """Log in with a password or certificate; C{name} is for the failure's log line."""
        d = self.portal.login(credentials, None, imap4.IAccount)
        d.addCallbacks(
            self._logged_in, self._login_failed, (tag,), None, (tag, name), None
        )

    def _logged_in(self, result, tag):
        _, account, logout = result
        ip = self._peer_ip()
        if self._lost:
            logout()
            return None
        self.account = account
        self._logout = logout
        self.state = "auth"
        self.deadline.logged_in()
        d = login.succeeded(self.server, account.user, ip, "imap")
        d.addCallback(
            lambda _: self.sendPositiveResponse(
                tag, b"[CAPABILITY " + b" ".join(self.listCapabilities())
                + b"] Logged in"
            )
        )
        return d

    def _login_failed(self, failure, tag, user):
        outcome = login.failed(failure, user, self._peer_ip(), "imap", self.transport)
        self.sendNegativeResponse(tag, _LOGIN_REPLIES[outcome])

    # Commands: authenticated

    def do_SELECT(self, tag, name, params, rw, command):
        """SELECT and EXAMINE, with the CONDSTORE and QRESYNC parameters (RFC 7162)."""
        try:
            condstore, resync = syntax.select_params(params)
        except imap4.IllegalClientResponse as e:
            return self.sendBadResponse(tag, _text(e))
        if resync is not None and not self._qresync:
            return self.sendBadResponse(tag, b"QRESYNC is not enabled")
        if condstore:
            self._condstore = True
        self._resync = resync
        if self.mbox is not None:
            # closing it is said first: what follows is the new one's (RFC 7162 3.2.11)
            self.sendPositiveResponse(None, b"[CLOSED] Previous mailbox closed")
        return self.select_mailbox(tag, name, rw, command)

    auth_SELECT = select_SELECT = (do_SELECT, _arg_mailbox, _opt_select_params, 1, b"SELECT")
    auth_EXAMINE = select_EXAMINE = (
        do_SELECT, _arg_mailbox, _opt_select_params, 0, b"EXAMINE")

    def mailbox_selected(self, mbox, cmdName, tag):
        resync, self._resync = self._resync, None
        if self._lost:  # gone while the folder was synced
            return
        if mbox is None:
            self.sendNegativeResponse(tag, b"[NONEXISTENT] No such mailbox")
            return
        self.mbox = mbox
        self._saved = []  # RFC 5182: a new mailbox has no saved result
        self._flag_news.clear()  # of the mailbox selected before
        mbox.addListener(self)
        flags = mbox.getFlags()
        self._flags = frozenset(flags)
        self.sendUntaggedResponse(b"FLAGS (" + _flag_list(flags) + b")")
        self.sendUntaggedResponse(b"%d EXISTS" % mbox.getMessageCount())
        self.sendUntaggedResponse(b"%d RECENT" % mbox.getRecentCount())
        unseen = mbox.first_unseen()
        if unseen is not None:
            self.sendPositiveResponse(None, b"[UNSEEN %d] First unseen" % unseen)
        self.sendPositiveResponse(None, _permanent_flags(flags, mbox.isWriteable()))
        self.sendPositiveResponse(None, b"[UIDVALIDITY %d] UIDs valid" % mbox.getUIDValidity())
        self.sendPositiveResponse(None, b"[UIDNEXT %d] Predicted next UID" % mbox.getUIDNext())
        self.sendPositiveResponse(
            None, b"[HIGHESTMODSEQ %d] Highest" % mbox.folder.highestmodseq)
        if resync is not None and resync.uidvalidity == mbox.getUIDValidity():
            self._resync_mailbox(resync)
        mode = b"[READ-WRITE]" if mbox.isWriteable() else b"[READ-ONLY]"
        self.state = "select"
        self.sendPositiveResponse(tag, mode + b" " + cmdName + b" completed")

    def _resync_mailbox(self, resync):
        """
        SELECT's QRESYNC (RFC 7162 3.2.5): the client's known UIDs (all
        below UIDNEXT when not given) expunged since its MODSEQ, as one
        C{VANISHED (EARLIER)} of ranges, then C{FETCH (UID FLAGS MODSEQ)}
        of those changed since: costs follow the changes, not the folder.
        """
        known = resync.known_uids
        if known is None:  # all UIDs given out (none in a folder never used)
            uidnext = self.mbox.getUIDNext()
            known = [(1, uidnext - 1)] if uidnext > 1 else []
        for line in _vanished_lines(
                self.mbox.vanished(resync.modseq, known, resync.seq_match), earlier=True):
            self.sendUntaggedResponse(line)
        changed = self.mbox.changed(resync.modseq, known)
        self._announce_flags(set().union(*(entry.keywords for _, entry in changed)))
        recent = self.mbox.recent
        for seq, entry in changed:
            flags = _recent_flags_item(entry) if entry.uid in recent else _flags_item(entry)
            self.sendUntaggedResponse(b"%d FETCH (UID %d %b MODSEQ (%d))"
                                      % (seq, entry.uid, flags, entry.modseq))

    def select_failed(self, failure, cmdName, tag):
        """
        A name no folder can have, and a folder whose Maildir cannot be
        made (a full disk), are a NO, not a BAD.
        """
        if failure.check(imap4.MailboxException):
            return self.sendNegativeResponse(tag, _text(failure.value))
        if failure.check(OSError):
            return self.sendNegativeResponse(tag, write_failure(cmdName, failure.value))
        return super().select_failed(failure, cmdName, tag)

    def do_LOGOUT(self, tag):
        """
        What the client has yet to hear (EXPUNGEs, flag changes) comes
        before C{* BYE}, since a client forgets the mailbox at BYE (imaptest
        reports an EXPUNGE after it); then the tagged OK and nothing after
        (RFC 3501 6.1.3), whatever other sessions do meanwhile.
        """
        self._stop_idle_poll()
        if self.mbox is not None:
            self._flush_news()
            self._send_expunges()
            self._drop_mailbox()
        self.queued_untagged = []
        self.state = "logout"
        super().do_LOGOUT(tag)

    unauth_LOGOUT = auth_LOGOUT = select_LOGOUT = logout_LOGOUT = (do_LOGOUT,)

    def _drop_mailbox(self):
        """No mailbox is selected any more: its changes are not ours to hear."""
        self.mbox.removeListener(self)
        self.mbox.close()
        self.mbox = None
        self._flag_news.clear()

    def do_UNSELECT(self, tag):
        """RFC 3691: CLOSE without expunging; what waited for the client is dropped."""
        self._drop_mailbox()
        self.queued_untagged = []
        self.state = "auth"
        self.sendPositiveResponse(tag, b"UNSELECT completed")

    select_UNSELECT = (do_UNSELECT,)

    def do_NOOP(self, tag):
        if self.mbox is None:
            return self.sendPositiveResponse(tag, b"NOOP completed")
        d = self.mbox.folder.sync()
        d.addCallbacks(lambda _: self.sendPositiveResponse(tag, b"NOOP completed"),
                       self._failed, None, None, (tag, b"NOOP"), None)
        return None

    unauth_NOOP = auth_NOOP = select_NOOP = logout_NOOP = (do_NOOP,)

    def do_ID(self, tag, params):
        """RFC 2971: who we are; what the client says about itself is logged."""
        if params:
            log.info("client id: {id} ip={ip}", ip=self._peer_ip(), id=printable(
                b" ".join(p if isinstance(p, bytes) else b"NIL" for p in params)))
        self.sendUntaggedResponse(
            b'ID ("name" "mailsrv" "version" "' + __version__.encode("ascii") + b'")'
        )
        self.sendPositiveResponse(tag, b"ID completed")

    unauth_ID = auth_ID = select_ID = (do_ID, _arg_id)

    def do_ENABLE(self, tag, line):
        """
        RFC 5161: CONDSTORE and QRESYNC can be switched on; QRESYNC
        switches CONDSTORE on too (RFC 7162 3.2.3).
        """
        names = line.upper().split()
        if not names:
            return self.sendBadResponse(tag, b"Syntax: ENABLE capability...")
        enabled = b""
        if b"CONDSTORE" in names and not self._condstore:
            self._condstore = True
            enabled += b" CONDSTORE"
        if b"QRESYNC" in names and not self._qresync:
            self._qresync = self._condstore = True
            enabled += b" QRESYNC"
        self.sendUntaggedResponse(b"ENABLED" + enabled)
        self.sendPositiveResponse(tag, b"ENABLE completed")
        return None

    auth_ENABLE = (do_ENABLE, _base.arg_line)

    def _enable_condstore(self):
        """
        A command in the selected state used MODSEQ: CONDSTORE is on from
        now, and the client hears the mailbox's HIGHESTMODSEQ, which its
        SELECT did not report as enabled (RFC 7162 3.1).
        """
        if not self._condstore:
            self._condstore = True
            self.sendPositiveResponse(
                None, b"[HIGHESTMODSEQ %d] Highest" % self.mbox.folder.highestmodseq)

    def checkpoint(self):
        return self.mbox.folder.sync()

    def do_IDLE(self, tag):
        self._idle_tag = tag
        self.parseState = "idle"
        self.sendContinuationRequest(b"idling")
        if self.mbox is not None:
            self._send_expunges()
            self._poll_idle()

    select_IDLE = auth_IDLE = (do_IDLE,)

    def _poll_idle(self):
        """Sync now, and again L{IDLE_POLL} seconds after this sync ends."""
        syncing = self._idle_poll = self.mbox.folder.sync()

        def again(_):
            if self._idle_poll is syncing:  # still idling
                self._idle_poll = self.callLater(self.IDLE_POLL, self._poll_idle)

        syncing.addCallbacks(again, lambda f: self._client_error(f, b"IDLE"))

    def _stop_idle_poll(self):
        """Stop polling (a sync under way ends, but starts no other)."""
        poll, self._idle_poll = self._idle_poll, None
        if isinstance(poll, base.DelayedCall) and poll.active():
            poll.cancel()

    def parse_idle(self, line):
        """RFC 2177: only DONE ends IDLE (Twisted takes any line)."""
        self._stop_idle_poll()
        self.parseState = "command"
        tag, self._idle_tag = self._idle_tag, None
        if line.strip().upper() == b"DONE":
            self.sendPositiveResponse(tag, b"IDLE terminated")
        else:
            self.sendBadResponse(tag, b"Expected DONE")

    def do_APPEND(self, tag, mailbox, messages):
        """
        One message or several (MULTIAPPEND, RFC 3502), stored all or
        none; CATENATE's URLs (RFC 4469) are looked up here and read in a
        thread with the rest of what needs reading (L{append.build}).
        """
        mbox = self._target(tag, mailbox, b"APPEND")
        if mbox is None:
            return
        d = self._catenate_urls(messages)
        d.addCallback(self._appended_messages, messages)
        d.addCallback(mbox.add_messages)
        d.addCallbacks(
            lambda uids: self.sendPositiveResponse(
                tag, b"[APPENDUID %d %s] APPEND completed"
                % (mbox.getUIDValidity(), syntax.sequence_set(uids))),
            self._append_failed, None, None, (tag,), None,
        )

    auth_APPEND = select_APPEND = (do_APPEND, _arg_mailbox, _arg_messages)

    def _catenate_urls(self, messages):
        """
        A Deferred of C{{URL bytes: (L{append.URL}, stored message)}} for
        the URLs of C{messages}; it fails with L{append.BadURL} at the
        first one that names no message of this user's.
        """
        urls = {part for message in messages for part in message.parts
                if isinstance(part, bytes)}
        found = {}

        def look(text):
            try:
                url = append.parse_url(text, self.account.user)
            except append.BadURL as e:
                return defer.fail(e)

            def check(message):
                if message is None:
                    raise append.BadURL(url.text, "No such message")
                found[text] = (url, message)
            d = self.account.find_message(url.mailbox, url.uidvalidity, url.uid)
            return d.addCallback(check)

        d = gather([look(text) for text in sorted(urls)])
        return d.addCallback(lambda _: found)

    def _appended_messages(self, found, messages):
        """
        C{(data, flags, date)} for each message: plain literals as they
        came, the others built in a thread (L{append.build}).
        """
        def build():
            built = append.build(messages, found, self._largest_literal())
            return [(data, message.flags, message.date)
                    for data, message in zip(built, messages)]

        if all(message.plain for message in messages):
            return build()
        return threads.deferToThread(build)

    def _append_failed(self, failure, tag):
        if failure.check(append.BadURL):
            url = _text(failure.value.url.decode("ascii", "replace")).replace(b" ", b"%20")
            return self.sendNegativeResponse(
                tag, b"[BADURL " + url + b"] " + _text(failure.value))
        if failure.check(append.TooBig):
            return self.sendNegativeResponse(tag, _text(failure.value))
        return self._failed(failure, tag, b"APPEND")

    def _failed(self, failure, tag, command):
        if failure.check(OSError):  # a full disk: no traceback, a response code
            return self.sendNegativeResponse(tag, write_failure(command, failure.value))
        self._client_error(failure, command)
        self.sendNegativeResponse(tag, command + b" failed: server error")

    # Mailbox names: decoded and checked by the argument parsers
    # (_arg_mailbox), not by Twisted's _parseMbox, which logs a traceback
    # for each name that is not mUTF-7.

    auth_CREATE = select_CREATE = (_base.do_CREATE, _arg_final_mailbox)
    auth_DELETE = select_DELETE = (_base.do_DELETE, _arg_final_mailbox)
    auth_RENAME = select_RENAME = (_base.do_RENAME, _arg_mailbox, _arg_final_mailbox)
    auth_SUBSCRIBE = select_SUBSCRIBE = (_base.do_SUBSCRIBE, _arg_final_mailbox)
    auth_UNSUBSCRIBE = select_UNSUBSCRIBE = (_base.do_UNSUBSCRIBE, _arg_final_mailbox)

    def do_STATUS(self, tag, name, items):
        """With SIZE (RFC 8438) and APPENDLIMIT (RFC 7889); an unknown item is BAD."""
        items = listing.status_items(items)
        try:
            d = self.account.status(name, items)
        except imap4.MailboxException as e:
            return self.sendNegativeResponse(tag, _text(e))
        if d is None:
            return self.sendNegativeResponse(tag, b"[NONEXISTENT] No such mailbox")
        d.addCallback(lambda values: self.sendUntaggedResponse(
            self._status_response(name, items, values)))
        d.addCallbacks(lambda _: self.sendPositiveResponse(tag, b"STATUS complete"),
                       self._failed, None, None, (tag, b"STATUS"), None)
        return None

    auth_STATUS = select_STATUS = (do_STATUS, _arg_mailbox, _base.arg_plist)

    def _status_response(self, name, items, values):
        values = dict(values, APPENDLIMIT=self._largest_literal())
        pairs = []
        for item in items:
            pairs += [imap4.DontQuoteMe(item.encode("ascii")), values[item]]
        return imap4.collapseNestedLists(
            [imap4.DontQuoteMe(b"STATUS"), name.encode("imap4-utf-7"), pairs])

    def do_LIST(self, tag, selection, ref, patterns, returns):
        """
        LIST with RFC 5258's options and several patterns, CHILDREN
        attributes always, and (RFC 5819) the STATUS of each selectable
        name after its LIST response: the folders one after the other
        (each first load in a thread), a folder whose STATUS fails is
        listed without it.
        """
        patterns, several = patterns
        options = listing.list_options(selection, returns, several)
        d = self._list(tag, self.account.list(ref, patterns, options), options.status)
        d.addErrback(self._failed, tag, b"LIST")

    @defer.inlineCallbacks
    def _list(self, tag, listed, status):
        for found in listed:
            if self._lost:
                return
            self.sendUntaggedResponse(_list_response(found))
            if status and found.exists:
                yield self._list_status(found.name, status)
        self.sendPositiveResponse(tag, b"LIST completed")

    auth_LIST = select_LIST = (
        do_LIST, _opt_list_selection, _arg_list_pattern, _arg_list_patterns, _opt_list_return)

    def _list_status(self, name, items):
        """The STATUS response of a listed folder, or a log line if it fails (RFC 5819 2)."""
        d = defer.maybeDeferred(self.account.status, name, items)

        def send(values):
            if values is not None:  # gone since it was listed
                self.sendUntaggedResponse(self._status_response(name, items, values))

        def failed(failure):
            self._client_error(failure, b"LIST STATUS")
        return d.addCallback(send).addErrback(failed)

    def do_LSUB(self, tag, ref, pattern):
        """From the subscriptions, not the folders (L{Account.lsub})."""
        d = defer.maybeDeferred(self.account.lsub, ref, pattern)
        self.send_listing(d, tag, b"LSUB")

    auth_LSUB = select_LSUB = (do_LSUB, _arg_list_pattern, _arg_list_pattern)

    # Commands: selected

    def do_FETCH(self, tag, messages, query, uid=0):
        query, changedsince, vanished = query
        if vanished:
            if not uid:
                return self.sendBadResponse(tag, b"VANISHED is for UID FETCH")
            if not self._qresync:
                return self.sendBadResponse(tag, b"QRESYNC is not enabled")
        if changedsince is not None:
            messages = ChangedSince(messages, changedsince)
        decoded = [part.numbers for part in query
                   if isinstance(part, syntax.BinaryItem) and part.numbers]
        if not decoded:
            return self._fetch(tag, messages, query, uid, vanished)
        d = self._unknown_encoding(messages, uid, decoded)

        def checked(encoding):
            if encoding is not None:
                name = _text(encoding.decode("ascii", "replace"))
                return self.sendNegativeResponse(tag, b"[UNKNOWN-CTE] Cannot decode " + name)
            return self._fetch(tag, messages, query, uid, vanished)
        d.addCallbacks(checked, self._failed, None, None, (tag, b"FETCH"), None)
        return None

    def _unknown_encoding(self, messages, uid, sections):
        """
        A Deferred of the first Content-Transfer-Encoding FETCH BINARY
        cannot decode (RFC 3516: C{NO [UNKNOWN-CTE]}, so before any
        response) among C{sections} of C{messages}, or of L{None}.
        Each message is read and parsed in a thread, one at a time.
        """
        found = [message for _, message in self.mbox.fetch(messages, uid)]
        found.reverse()

        def check():
            while found:
                message = found.pop()  # and let go of its bytes once checked
                try:
                    root = message.mime_tree()
                except (KeyError, OSError):
                    continue  # expunged meanwhile: the FETCH leaves it out
                for numbers in sections:
                    entity = mime.find(root, numbers)
                    if entity is not None and not mime.decodable(entity):
                        return mime.encoding(entity)
            return None
        return threads.deferToThread(check)

    def _fetch(self, tag, messages, query, uid, vanished):
        if vanished:
            self._fetch_vanished(messages)
        if query and self.mbox.isWriteable() and any(map(_sets_seen, query)):
            self.mbox.mark_seen(seq for seq, _ in self.mbox.fetch(messages, uid))
            if not any(part.type == "flags" for part in query):
                # in the same FETCH response: curl, for one, fails on a
                # separate FLAGS-only FETCH before the body
                query = [flags_item()] + list(query)
            if self._qresync and not uid and not any(part.type == "uid" for part in query):
                query.append(uid_item())  # RFC 7162 3.2.4
        if any(part.type == "modseq" for part in query):
            self._enable_condstore()
        elif self._condstore and any(part.type == "flags" for part in query):
            query.append(syntax.ModSeqItem())  # RFC 7162 3.2
        if query and all(map(_fast_item, query)):
            self._fetch_fast(tag, messages, query, uid)
            return
        if any(part.type == "flags" for part in query):
            self._announce_flags(set().union(
                *(entry.keywords for _, entry in self.mbox.fetch_entries(messages, uid))))
        super().do_FETCH(tag, messages, query, uid)

    def _fetch_vanished(self, messages):
        """
        The UIDs of a UID FETCH's set expunged since its CHANGEDSINCE (RFC
        7162 3.2.6), before its FETCH responses; C{*} is the last UID
        handed out, so that messages expunged at the end are in it.
        """
        known = messages.resolve(self.mbox.getUIDNext() - 1)
        for line in _vanished_lines(self.mbox.vanished(messages.changedsince, known),
                                    earlier=True):
            self.sendUntaggedResponse(line)

    def _fetch_fast(self, tag, messages, query, uid):
        """
        A FETCH of items the index holds (FLAGS, UID, sizes, dates,
        MODSEQ) and of whole messages (BODY[], BODY.PEEK[], RFC822), as
        clients syncing or downloading a folder send: each response is
        formatted from the folder's records with one bytes template, files
        are read with C{os.read}, and a batch of up to L{FETCH_BATCH}
        messages or L{FETCH_BATCH_BYTES} bytes goes out in one write per
        reactor turn, without Twisted's Deferred, generator and producer
        per message. The transport's flow control pauses it
        (L{_FetchProducer}). The output is byte for byte Twisted's
        (tests/test_imap.py FastFetchTests).
        """
        if uid and not any(part.type == "uid" for part in query):
            query = list(query) + [uid_item()]
        folder = self.mbox.folder
        cur = folder.cur_prefix()
        getters = [_fast_getter(self, part, cur) for part in query]
        template = b"* %d FETCH (" + b" ".join([b"%b"] * len(getters)) + b")\r\n"
        reads = any(part.type in ("body", "rfc822") for part in query)
        shows_flags = any(part.type == "flags" for part in query)
        found = self.mbox.fetch_entries(messages, uid)
        producer = _FetchProducer(self)

        def batch():
            producer.scheduled = None
            if self._lost:
                return
            if producer.paused:
                producer.waiting = batch
                return
            out = []
            count = size = 0
            try:
                for seq, entry in found:
                    if shows_flags and not entry.keywords <= self._flags:
                        self.transport.write(b"".join(out))
                        out.clear()
                        self._announce_flags(entry.keywords)
                    try:
                        line = template % (seq, *[g(entry) for g in getters])
                    except FileNotFoundError:
                        continue  # removed under us: the next sync expunges it
                    out.append(line)
                    count += 1
                    if reads:
                        size += len(line)
                        if size >= FETCH_BATCH_BYTES:
                            break
                    if count >= FETCH_BATCH:
                        break
                else:
                    count = 0  # the end
            except Exception:
                self._client_error(Failure(), b"FETCH")
                producer.finish()
                self.transport.write(b"".join(out))
                self.sendBadResponse(tag, b"FETCH failed: server error")
                return
            self.transport.write(b"".join(out))
            if count:
                producer.next(batch)
            else:
                producer.finish()
                self.sendPositiveResponse(tag, b"FETCH completed")

        producer.start()
        batch()

    select_FETCH = (do_FETCH, _arg_seqset, _arg_fetch)

    def spew_flags(self, id, msg, _w=None, _f=None):
        """
        The flags this client has been told of: a keyword another session
        sets while Twisted's FETCH runs (after its start announced the
        keywords it would show) is left out here, and shown after the
        FETCH by the flag change's own response, announced first.
        """
        shown = [f for f in msg.getFlags() if f.startswith("\\") or f in self._flags]
        _w(b"FLAGS (" + _flag_list(shown) + b")")

    def spew_modseq(self, id, msg, _w=None, _f=None):
        _w(b"MODSEQ (%d)" % msg.info.modseq)

    def spew_bodystructure(self, id, msg, _w=None, _f=None):
        return self._from_tree(msg, lambda data, root: b"BODYSTRUCTURE "
                               + mime.body_structure(data, root, True), _w)

    def spew_envelope(self, id, msg, _w=None, _f=None):
        """Address groups, comments and NIL for missing fields (L{mime.envelope})."""
        _w(b"ENVELOPE " + mime.envelope(mime.header_fields(msg.header_bytes())))

    def spew_rfc822header(self, id, msg, _w=None, _f=None):
        """BODY[HEADER]: the header as stored, with its empty line (Twisted rebuilt it)."""
        _w(b"RFC822.HEADER " + literal(mime.crlf(msg.header_bytes())))

    def _from_tree(self, msg, format, _w):
        """
        Write C{format(data, root)} for C{msg}'s bytes and MIME tree
        (L{mailsrv.imap.mime}): at once, or from a thread for a message
        that is big or has many parts (L{mime.costly}); the FETCH waits
        for it, other connections do not.
        """
        def run():
            return format(msg.mime_bytes(), msg.mime_tree())

        if not mime.costly(msg.mime_bytes()):
            return _w(run())
        return threads.deferToThread(run).addCallback(_w)

    def spew_body(self, part, id, msg, _w=None, _f=None):
        """
        Sections from our own MIME tree (L{mailsrv.imap.mime}): numbered
        parts inside attached messages, a part that does not exist is
        empty (Twisted raised TypeError and the client got C{* BYE}), the
        header as stored (Twisted rebuilt it from a dict), partial fetches
        cut to the range asked for. BINARY items come here too.
        """
        if isinstance(part, syntax.BinaryItem):
            return self._spew_binary(part, msg, _w)
        if not part.part and part.header is not None:
            data = mime.select_fields(
                mime.crlf(msg.header_bytes()), part.header.fields, part.header.negate
            )
            _w(_label(part) + b" " + literal(_partial(part, data)))
            return None
        if not part.part and part.partialBegin is not None and (part.text or part.empty):
            with (msg.getBodyFile() if part.text else msg.open()) as f:
                f.seek(part.partialBegin, 1)
                # past the end: empty (RFC 3501 6.4.5); never more than the file
                data = f.read(min(part.partialLength, msg.getSize()))
            _w(_label(part) + b" " + literal(data))
            return None
        if not part.part and part.empty:
            return super().spew_body(part, id, msg, _w, _f)  # the file, as the fast path
        if not (part.header or part.text or part.mime or part.empty):
            return self._from_tree(msg, lambda data, root: b"BODY "
                                   + mime.body_structure(data, root, False), _w)
        kind = "header" if part.header else "text" if part.text else "mime" if part.mime else ""
        header = part.header

        def section(data, root):
            found = mime.section(
                data, root, [n + 1 for n in part.part], kind,
                header and header.fields, header and header.negate,
            )
            return _label(part) + b" " + literal(_partial(part, found))
        return self._from_tree(msg, section, _w)

    def _spew_binary(self, part, msg, _w):
        """
        BINARY[section] and BINARY.SIZE[section] (RFC 3516): the part
        decoded (L{mime.binary_section}), as a literal8 when it holds NUL.
        """
        def section(data, root):
            content = mime.binary_section(data, root, part.numbers)
            if part.size:
                return bytes(part) + b" %d" % len(content)
            content = _partial(part, content)
            return _label(part) + (b" ~" if b"\0" in content else b" ") + literal(content)
        return self._from_tree(msg, section, _w)

    def do_STORE(self, tag, messages, unchangedsince, mode, flags, uid=0):
        """
        STORE with keywords, and UNCHANGEDSINCE (RFC 7162): messages
        changed since are left alone and named in C{[MODIFIED]}. Once
        CONDSTORE is on, every stored message is reported with its MODSEQ,
        .SILENT or not.
        """
        if not self.mbox.isWriteable():
            return self.sendNegativeResponse(tag, b"[READ-ONLY] Mailbox is read-only")
        mode = mode.upper()
        if mode.lstrip(b"+-") not in (b"FLAGS", b"FLAGS.SILENT"):
            return self.sendBadResponse(tag, b"Expected FLAGS, +FLAGS or -FLAGS")
        if unchangedsince is not None:
            self._enable_condstore()
        silent = mode.endswith(b".SILENT")
        sign = {b"+": 1, b"-": -1}.get(mode[:1], 0)
        try:
            stored, modified = self.mbox.store(messages, flags, sign, uid, unchangedsince)
        except OSError as e:
            return self.sendNegativeResponse(tag, write_failure(b"STORE", e))
        self._announce_flags(set().union(*(info.flags for info in stored.values())))
        for seq, info in sorted(stored.items()):
            if not silent or self._condstore:
                self.sendUntaggedResponse(
                    b"%d FETCH (%s)" % (seq, self._changed_items(info, not silent, uid)))
        if modified:
            ids = [self.mbox.getUID(s) for s in modified] if uid else modified
            return self.sendPositiveResponse(
                tag, b"[MODIFIED " + syntax.sequence_set(ids) + b"] Conditional STORE failed")
        return self.sendPositiveResponse(tag, b"STORE completed")

    select_STORE = (
        do_STORE, _arg_seqset, _opt_unchangedsince, _base.arg_atom, _arg_flaglist,
    )

    def _announce_flags(self, flags):
        """
        Before a FETCH shows a keyword the client was not told of: the
        new C{FLAGS} and C{PERMANENTFLAGS} (RFC 3501 7.2.6: a client may
        take a flag missing from FLAGS for an error, as imaptest does).
        """
        new = {f for f in flags if not f.startswith("\\")} - self._flags
        if not new:
            return
        self._flags |= new
        flags = list(PERMANENT_FLAGS) + sorted(self._flags.difference(PERMANENT_FLAGS))
        self.sendUntaggedResponse(b"FLAGS (" + _flag_list(flags) + b")")
        if self.mbox.isWriteable():
            self.sendUntaggedResponse(b"OK " + _permanent_flags(flags, True))

    def _changed_items(self, info, flags=True, uid=False):
        """The items of a FETCH response that reports a flag change."""
        items = []
        if flags:
            recent = {"\\Recent"} if info.uid in self.mbox.recent else set()
            items.append(b"FLAGS (" + _flag_list(sorted(info.flags | recent)) + b")")
        if uid or self._qresync:  # RFC 7162 3.2.4: every FETCH a change causes
            items.append(b"UID %d" % info.uid)
        if self._condstore:
            items.append(b"MODSEQ (%d)" % info.modseq)
        return b" ".join(items)

    def flagsChanged(self, newFlags):
        """
        Another session changed flags: FETCH, with MODSEQ once enabled.
        During a FETCH they wait for its end and are then read afresh: as
        they were now, they could follow the FETCH's own newer MODSEQ.
        """
        uids = [self.mbox.getUID(seq) for seq in newFlags]
        if self.blocked is not None:
            self._flag_news.update(uids)
        else:
            self._send_flags(uids)

    def _send_flags(self, uids):
        for uid in sorted(uids):
            seq = self.mbox.seq(uid)
            if seq is None or uid in self.mbox.pending or self.mbox.folder.entry(uid) is None:
                continue
            info = self.mbox.folder.message(uid)
            self._announce_flags(info.flags)
            self.respond(b"%d FETCH (%s)" % (seq, self._changed_items(info)), None, None)

    def _target(self, tag, mailbox, command):
        """
        The Mailbox an APPEND, COPY or MOVE goes to, or L{None} after saying
        NO: C{[TRYCREATE]} only for a name a folder could have.
        """
        try:
            self.account.check_name(mailbox)
        except imap4.MailboxException as e:
            self.sendNegativeResponse(tag, _text(e))
            return None
        try:
            target = self.account.target(mailbox)
        except OSError as e:  # its Maildir cannot be made
            self.sendNegativeResponse(tag, write_failure(command, e))
            return None
        if target is None:
            self.sendNegativeResponse(tag, b"[TRYCREATE] No such mailbox")
        return target

    def do_COPY(self, tag, messages, mailbox, uid=0):
        """
        In UID order, one at a time, so the copies' UIDs keep it; the OK
        carries COPYUID (RFC 4315).
        """
        target = self._target(tag, mailbox, b"COPY")
        if target is None:
            return
        pending = [message for _, message in self.mbox.fetch(messages, uid)]
        pairs = []

        def next_copy(_):
            if not pending:
                return pairs
            message = pending.pop(0)
            d = target.copy(message)
            d.addCallback(lambda new: pairs.append((message.getUID(), new)))
            return d.addCallback(next_copy)

        d = defer.maybeDeferred(next_copy, None)
        d.addCallbacks(
            lambda pairs: self.sendPositiveResponse(
                tag, _copyuid(target, pairs) + b"COPY completed"),
            self._failed, None, None, (tag, b"COPY"), None,
        )

    select_COPY = (do_COPY, _arg_seqset, _arg_final_mailbox)

    def do_MOVE(self, tag, messages, mailbox, uid=0):
        """
        RFC 6851: COPYUID in an untagged OK, then the EXPUNGEs, then the
        tagged OK. The files are renamed, not copied.
        """
        if not self.mbox.isWriteable():
            return self.sendNegativeResponse(tag, b"[READ-ONLY] Mailbox is read-only")
        target = self._target(tag, mailbox, b"MOVE")
        if target is None:
            return None
        d = defer.maybeDeferred(self.mbox.move, messages, uid, target)

        def moved(result):
            pairs, seqs = result
            if pairs:
                self.sendPositiveResponse(None, _copyuid(target, pairs) + b"Moved")
            self._announce_expunged([old for old, _ in pairs], seqs)
            self.mbox.announce_arrivals()  # a MOVE into this mailbox
            self.sendPositiveResponse(tag, self._highestmodseq_code() + b"MOVE completed")

        d.addCallbacks(moved, self._failed, None, None, (tag, b"MOVE"), None)
        return None

    select_MOVE = (do_MOVE, _arg_seqset, _arg_final_mailbox)

    def do_EXPUNGE(self, tag, messages=None, uid=0):
        """EXPUNGE, and UID EXPUNGE with a UID set (RFC 4315)."""
        if bool(uid) != (messages is not None):
            return self.sendBadResponse(tag, b"Syntax: EXPUNGE, or UID EXPUNGE set")
        if not self.mbox.isWriteable():
            return self.sendNegativeResponse(tag, b"[READ-ONLY] Mailbox is read-only")
        uids = None
        if messages is not None:
            uids = {u for _, u in self.mbox.resolve(messages, 1)}
        self._announce_expunged(*self.mbox.expunge(uids))
        return self.sendPositiveResponse(tag, self._highestmodseq_code() + b"EXPUNGE completed")

    def _highestmodseq_code(self):
        """
        C{[HIGHESTMODSEQ n] } for the tagged OK of an EXPUNGE or MOVE once
        QRESYNC is on (RFC 7162 3.2.7): the MODSEQ the VANISHED brought.
        """
        if not self._qresync:
            return b""
        return b"[HIGHESTMODSEQ %d] " % self.mbox.folder.highestmodseq

    select_EXPUNGE = (do_EXPUNGE, _opt_seqset)

    def do_SEARCH(self, tag, returns, charset, query, uid=0):
        """SEARCH, with RETURN options (ESEARCH, RFC 4731; SAVE, RFC 5182)."""
        if self._refused_charset(tag, charset, returns):
            return
        d = defer.maybeDeferred(self.mbox.search, query, uid, frozenset(self._saved))
        d.addCallback(lambda result: (
            [(self.mbox.getUID(s) if uid else s, self.mbox.getUID(s)) for s in result[0]],
            result[1]))
        d.addCallback(self._found, tag, uid, returns, b"SEARCH")
        d.addErrback(self._search_failed, tag, returns, b"SEARCH")

    select_SEARCH = (do_SEARCH, _opt_search_return, _base.opt_charset, _base.arg_searchkeys)

    def do_SORT(self, tag, returns, criteria, charset, query, uid=0):
        """SORT (RFC 5256, 5957), with RETURN options (ESORT, RFC 5267)."""
        if self._refused_charset(tag, charset, returns):
            return
        d = defer.maybeDeferred(
            self.mbox.arrange, query,
            lambda rows: _numbered(rows, sort.sort(rows, criteria), uid),
            frozenset(self._saved), sort.columns(criteria))
        d.addCallback(self._found, tag, uid, returns, b"SORT")
        d.addErrback(self._search_failed, tag, returns, b"SORT")

    select_SORT = (do_SORT, _opt_search_return, _arg_sort_criteria, _base.arg_astring,
                   _base.arg_searchkeys)

    def do_THREAD(self, tag, algorithm, charset, query, uid=0):
        """THREAD=REFERENCES and THREAD=ORDEREDSUBJECT (RFC 5256)."""
        name = algorithm.decode("ascii", "replace").upper()
        if name not in thread.ALGORITHMS:
            return self.sendBadResponse(tag, b"Unknown threading algorithm")
        if self._refused_charset(tag, charset, None):
            return None
        number = (lambda r: r.uid) if uid else (lambda r: r.seq)

        def threaded(result):
            data, uses_modseq = result
            if uses_modseq:
                self._enable_condstore()
            self.sendUntaggedResponse(b"THREAD " + data if data else b"THREAD")
            self.sendPositiveResponse(tag, b"THREAD completed")

        d = defer.maybeDeferred(
            self.mbox.arrange, query,
            lambda rows: thread.format_threads(thread.thread(name, rows.records()), number),
            frozenset(self._saved), thread.COLUMNS, ("THREAD", name, uid))
        d.addCallback(threaded)
        d.addErrback(self._search_failed, tag, None, b"THREAD")
        return None

    select_THREAD = (do_THREAD, _arg_algorithm, _base.arg_astring, _base.arg_searchkeys)

    def _refused_charset(self, tag, charset, returns):
        """NO [BADCHARSET] for a charset other than UTF-8 and US-ASCII (which empties C{$})."""
        if not charset or charset.upper() in (b"UTF-8", b"US-ASCII"):
            return False
        if returns and b"SAVE" in returns:
            self._saved = []
        self.sendNegativeResponse(tag, b"[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
        return True

    def _found(self, result, tag, uid, returns, command):
        """
        The answer of a SEARCH or SORT: C{result} is C{(ids, uses_modseq)},
        C{ids} C{(number, uid)} pairs in the order to report, numbers being
        UIDs or sequence numbers as the command asked. With MODSEQ among
        the criteria, the highest MODSEQ found (RFC 7162 3.1.5).
        """
        found, uses_modseq = result
        if uses_modseq:
            self._enable_condstore()
        if returns is None:
            words = [command] + [b"%d" % number for number, _ in found]
            if uses_modseq and found:
                words.append(b"(MODSEQ %d)" % self._highest_modseq(found))
            self.sendUntaggedResponse(b" ".join(words))
        else:
            self._extended(tag, uid, returns, found, uses_modseq)
        self.sendPositiveResponse(tag, command + b" completed")

    def _extended(self, tag, uid, returns, found, uses_modseq):
        """
        RETURN options: the ESEARCH response (RFC 4731; for SORT, RFC 5267:
        MIN and MAX are the first and last in the sort order) and SAVE
        (RFC 5182: with only MIN or MAX, only those messages are saved; SAVE
        alone sends no ESEARCH). MODSEQ is the highest of the messages
        reported (RFC 7162 3.1.5).
        """
        reported = found
        if found and not (returns & {b"ALL", b"COUNT"} or returns == {b"SAVE"}):
            reported = ([found[0]] if b"MIN" in returns else []) + (
                [found[-1]] if b"MAX" in returns else [])
        if b"SAVE" in returns:
            self._saved = sorted({u for _, u in reported})
            if returns == {b"SAVE"}:
                return
        words = [b'ESEARCH (TAG "' + tag + b'")']
        if uid:
            words.append(b"UID")
        if found:
            if b"MIN" in returns:
                words.append(b"MIN %d" % found[0][0])
            if b"MAX" in returns:
                words.append(b"MAX %d" % found[-1][0])
            if b"ALL" in returns:
                words.append(b"ALL " + syntax.sequence_set([number for number, _ in found]))
        if b"COUNT" in returns:
            words.append(b"COUNT %d" % len(found))
        if uses_modseq and reported:
            words.append(b"MODSEQ %d" % self._highest_modseq(reported))
        self.sendUntaggedResponse(b" ".join(words))

    def _highest_modseq(self, found):
        entries = (self.mbox.folder.entry(u) for _, u in found)
        return max((e.modseq for e in entries if e is not None), default=0)

    def _search_failed(self, failure, tag, returns, command):
        """
        Bad criteria: BAD, C{$} unchanged; a failure (of the search or of
        its answer): NO, and C{$} empty (RFC 5182 2.1).
        """
        if failure.check(imap4.IllegalQueryError):
            self.sendBadResponse(tag, b"Invalid search: " + _text(failure.value))
            return
        if returns and b"SAVE" in returns:
            self._saved = []
        self._failed(failure, tag, command)

    def _saved_set(self):
        """
        C{$} (RFC 5182): the saved messages still in the mailbox, as UIDs
        in a UID command, else as sequence numbers.
        """
        if self._by_uid:
            return sequence.of_numbers(self._saved)
        return sequence.of_numbers(
            [seq for seq in map(self.mbox.seq, self._saved) if seq is not None])


class _SkippedLiteral:
    """The bytes of a literal whose command was refused: counted, not kept."""

    def __init__(self, size):
        self.size = size

    def write(self, data):
        """What follows the literal in C{data}, or L{None} if it goes on."""
        if len(data) < self.size:
            self.size -= len(data)
            return None
        rest, self.size = data[self.size:], 0
        return rest


class _FetchProducer:
    """
    Flow control of a fast FETCH (L{IMAPServer._fetch_fast}): registered
    with the transport while the FETCH runs, so that a client reading
    slowly pauses it instead of letting the server buffer the folder; one
    that stops reading is cut by its deadline (L{Deadline.output_stalled}).
    """

    def __init__(self, server):
        self.server = server
        self.paused = False
        self.scheduled = None  # the delayed call of the next batch
        self.waiting = None  # the next batch, held while paused
        self.registered = False

    def start(self):
        try:
            self.server.transport.registerProducer(self, True)
        except RuntimeError:  # another producer: no flow control then
            return
        self.registered = True

    def next(self, batch):
        if self.paused:
            self.waiting = batch
        else:
            self.scheduled = self.server.callLater(0, batch)

    def finish(self):
        if self.registered:
            self.registered = False
            self.server.transport.unregisterProducer()
        self.server.deadline.output_flowing()  # what is left is timed as idleness

    def pauseProducing(self):
        self.paused = True
        self.server.deadline.output_stalled()

    def resumeProducing(self):
        """Run the next batch now (the transport has room for it)."""
        self.paused = False
        self.server.deadline.output_flowing()
        batch, self.waiting = self.waiting, None
        if self.scheduled is not None and self.scheduled.active():
            batch = self.scheduled.func
            self.scheduled.cancel()
            self.scheduled = None
        if batch is not None:
            batch()

    def stopProducing(self):
        self.paused = True
        self.waiting = None


def _fast_item(part):
    """Whether FETCH item C{part} has a fast path (L{IMAPServer._fetch_fast})."""
    if part.type in _INDEX_ITEMS or part.type == "rfc822":
        return True
    return (part.type == "body" and part.empty and not part.part
            and part.partialBegin is None)


_flag_bytes = {}  # (suffix, keywords) -> b"FLAGS (...)"
_recent_flag_bytes = {}  # the same, with \Recent


def _flag_list(flags):
    return " ".join(flags).encode("ascii")


def _permanent_flags(flags, writeable):
    """The C{[PERMANENTFLAGS ...]} response text: keywords may be created (C{\\*})."""
    permanent = _flag_list(flags) + b" \\*" if writeable else b""
    return b"[PERMANENTFLAGS (" + permanent + b")] Limited"


def _flags_item(entry, cache=_flag_bytes, recent=frozenset()):
    """
    C{FLAGS (...)} of an entry, remembered per (file name suffix, keywords):
    a folder has few distinct combinations.
    """
    key = (entry.suffix, entry.keywords)
    value = cache.get(key)
    if value is None:
        if len(cache) > 4096:
            cache.clear()
        flags = sorted(entry.flags() | recent)
        value = b"FLAGS (" + _flag_list(flags) + b")"
        cache[key] = value
    return value


def _recent_flags_item(entry):
    """L{_flags_item} of a message that is \\Recent in this session."""
    return _flags_item(entry, _recent_flag_bytes, frozenset({"\\Recent"}))


def _read_file(path, size):
    """The whole file: C{size} (the index's) is a hint, the file decides."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, size + 1)
        if len(data) <= size:
            return data
        chunks = [data]
        while True:
            more = os.read(fd, 1 << 16)
            if not more:
                return b"".join(chunks)
            chunks.append(more)
    finally:
        os.close(fd)


class _DateOnly:
    def __init__(self, when):
        self.when = when

    def getInternalDate(self):
        return email.utils.formatdate(self.when)


def _fast_getter(server, part, cur):
    """A function of a folder entry giving C{part}'s bytes in a FETCH response."""
    kind = part.type
    if kind == "flags":
        recent = server.mbox.recent
        if not recent:
            return _flags_item
        return lambda e: _recent_flags_item(e) if e.uid in recent else _flags_item(e)
    if kind == "uid":
        return lambda e: b"UID %d" % e.uid
    if kind == "rfc822size":
        wire_size = server.mbox.folder.wire_size
        return lambda e: b"RFC822.SIZE %d" % (e.wire if e.wire is not None else wire_size(e))
    if kind == "modseq":
        return lambda e: b"MODSEQ (%d)" % e.modseq
    if kind == "internaldate":
        dates = {}

        def internaldate(e):
            value = dates.get(e.internaldate)
            if value is None:
                out = []
                _base.spew_internaldate(server, 0, _DateOnly(e.internaldate), out.append)
                value = dates[e.internaldate] = out[0]
            return value
        return internaldate
    label = b"RFC822 " if kind == "rfc822" else part.getBytes() + b" "

    def whole(e):
        data = _read_file(cur + e.key + e.suffix, e.size)
        if e.wire != e.size:  # bare LF (docs/store.md), or not known yet
            data = mime.crlf(data)
        return b"%b{%d}\r\n%b" % (label, len(data), data)
    return whole


# UID ranges per VANISHED line: a line stays under about 8 KB (RFC 7162 4)
VANISHED_RANGES = 400


def _numbered(rows, order, uid):
    """SORT's C{(number, uid)} pairs: the L{sort.Rows} at C{order}, by UID or sequence number."""
    uids = rows.uids
    numbers = uids if uid else rows.seqs
    return [(numbers[at], uids[at]) for at in order]


def _vanished_lines(uids, earlier=False):
    """C{VANISHED [(EARLIER)] set} lines for UID ranges (none for none)."""
    head = b"VANISHED (EARLIER) " if earlier else b"VANISHED "
    return [head + syntax.ranges_text(uids[i:i + VANISHED_RANGES])
            for i in range(0, len(uids), VANISHED_RANGES)]


def _copyuid(target, pairs):
    """The C{[COPYUID ...] } response code (RFC 4315) for C{(old, new)} UIDs."""
    if not pairs:
        return b""
    return b"[COPYUID %d %s %s] " % (
        target.getUIDValidity(),
        syntax.sequence_set([old for old, _ in pairs]),
        syntax.sequence_set([new for _, new in pairs]),
    )


def _sets_seen(part):
    """Whether fetching C{part} sets \\Seen (RFC 3501 6.4.5, RFC 3516 4.2)."""
    if isinstance(part, syntax.BinaryItem):
        return not (part.peek or part.size)
    if part.type in ("rfc822", "rfc822text"):
        return True
    return part.type == "body" and not part.peek and bool(
        part.header or part.text or part.mime or part.empty
    )


def _label(part):
    """C{BODY[TEXT]<0.5>} is answered as C{BODY[TEXT]<0>} (RFC 3501 7.4.2)."""
    label = bytes(part)
    if part.partialBegin is not None:
        label = label.rsplit(b"<", 1)[0] + b"<%d>" % part.partialBegin
    return label


def _partial(part, data):
    if part.partialBegin is None:
        return data
    return data[part.partialBegin:part.partialBegin + part.partialLength]


def _list_response(listed):
    """The C{LIST (attributes) "/" name} line, with CHILDINFO (RFC 5258) when there is one."""
    items = [
        imap4.DontQuoteMe(b"LIST"),
        [imap4.DontQuoteMe(a.encode("ascii")) for a in listed.attributes],
        DELIMITER.encode("ascii"),
        listed.name.encode("imap4-utf-7"),
    ]
    if listed.childinfo:
        items.append([b"CHILDINFO", [c.encode("ascii") for c in listed.childinfo]])
    return imap4.collapseNestedLists(items)


def _text(value):
    return printable(str(value), 200).encode("ascii", "replace")


class IMAPFactory(MailboxFactory):
    protocol_class = IMAPServer


def build_factory(server, listener):
    """
    The factory for one C{[[listen]]} table with C{protocol = "imap"}.
    Implicit TLS is wrapped around it by the service; C{listener.tls} of
    C{"starttls"} or C{"required"} makes it offer STARTTLS.
    """
    return IMAPFactory(server, listener)
