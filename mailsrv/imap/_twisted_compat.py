"""
The private parts of L{twisted.mail.imap4} the IMAP server relies on, all
in one place.

L{mailsrv.imap.server.IMAPServer} closes the gaps of Twisted's
C{IMAP4Server}, and some of the places it must hook into are private:
methods Twisted calls (three of them name-mangled), attributes it keeps
its state in, and module helpers. Only this module names them
(tests/test_architecture.py checks it): L{TwistedIMAP4Server} and the
functions below give each a name that says what it is, and L{PRIVATES}
says what we expect of each, which tests/test_twisted_compat.py checks
against the installed Twisted, so that an upgrade that changes one fails
there, naming it, rather than somewhere in a protocol test.
"""

from dataclasses import dataclass

from twisted.mail import imap4


@dataclass(frozen=True)
class Private:
    """
    What we expect of one Twisted private.

    @ivar owner: the class or module that has it.
    @ivar name: its name on C{owner} (mangled if Twisted's is; dotted for a
        nested class).
    @ivar parameters: a callable's parameter names, C{self} left out;
        L{None} for an attribute.
    @ivar used_by: C{owner}'s methods that call it (a hook we override) or
        keep it (an attribute we read or set): it matters to us only as
        long as they do.
    """

    owner: object
    name: str
    parameters: tuple | None
    used_by: tuple = ()


_SERVER = imap4.IMAP4Server
PRIVATES = (
    Private(_SERVER, "_respond", ("state", "tag", "message"),
            ("sendBadResponse", "sendPositiveResponse", "sendNegativeResponse",
             "sendUntaggedResponse")),
    Private(_SERVER, "_queuedAsync", None, ("__init__", "sendUntaggedResponse", "_respond")),
    Private(_SERVER, "_pendingLiteral", None, ("rawDataReceived", "parse_pending")),
    Private(_SERVER, "_stringLiteral", ("size",), ("arg_astring",)),
    Private(_SERVER, "_IMAP4Server__ebDispatch", ("failure", "tag"),
            ("_IMAP4Server__doCommand",)),
    Private(_SERVER, "_IMAP4Server__ebFetch", ("failure", "tag"), ("do_FETCH",)),
    Private(_SERVER, "_oldTimeout", None, ("do_FETCH", "_IMAP4Server__ebFetch")),
    Private(_SERVER, "_IMAP4Server__ebSpewMessage", ("failure",), ("_IMAP4Server__cbFetch",)),
    Private(_SERVER, "_unblock", (), ("_IMAP4Server__cbFetch",)),
    Private(_SERVER, "_selectWork", ("tag", "name", "rw", "cmdName")),
    Private(_SERVER, "_cbSelectWork", ("mbox", "cmdName", "tag"), ("_selectWork",)),
    Private(_SERVER, "_ebSelectWork", ("failure", "cmdName", "tag"), ("_selectWork",)),
    Private(_SERVER, "_cbListWork", ("mailboxes", "tag", "sub", "cmdName")),
    Private(_SERVER, "_ebListWork", ("failure", "tag")),
    Private(imap4.LiteralFile, "_memoryFileLimit", None, ("__init__",)),
    Private(imap4, "_literal", ("s",)),
    Private(imap4, "_FetchParser.Flags", ()),
    Private(imap4, "_FetchParser.UID", ()),
)


class TwistedIMAP4Server(imap4.IMAP4Server):
    """
    Twisted's C{IMAP4Server} with its private hooks and state under names
    that say what they are.

    Twisted calls these hooks, which a subclass defines:
    C{arguments_failed(failure, tag)}, C{fetch_failed(failure, tag)},
    C{fetch_broke_off(failure)}, C{replay_blocked()} and
    C{mailbox_selected(mbox, command, tag)} (see the private method that
    calls each); C{respond}, C{select_failed} and C{string_literal} have
    Twisted's behaviour unless overridden.
    """

    # Responses

    def _respond(self, state, tag, message):
        """Twisted sends every response line through here (the C{send*Response} methods)."""
        self.respond(state, tag, message)

    def respond(self, state, tag, message):
        """
        One response line: C{tag} (C{*} if L{None}), C{state} (C{OK}, C{NO},
        C{BAD}, or an untagged response's text), C{message}. A tagged one
        ends a command: override to act then, and send with
        L{write_response}.
        """
        self.write_response(state, tag, message)

    def write_response(self, state, tag, message):
        """
        Send one response line as Twisted does: a command's tagged end
        comes after the untagged responses it held back
        (L{queued_untagged}).
        """
        _SERVER._respond(self, state, tag, message)

    @property
    def queued_untagged(self):
        """
        The untagged responses Twisted holds back while a command is under
        way (C{sendUntaggedResponse(..., isAsync=True)} while C{blocked}),
        sent before the command's tagged end; assign a new list to send
        them earlier or to drop them.
        """
        return self._queuedAsync

    @queued_untagged.setter
    def queued_untagged(self, responses):
        self._queuedAsync = responses

    # Literals

    @property
    def pending_literal(self):
        """
        What Twisted feeds a literal's bytes to in raw mode
        (C{rawDataReceived}): its C{write(data)} returns the bytes after the
        literal, or L{None} while the literal goes on; in the C{pending}
        parse state, C{parse_pending} calls its C{callback} with the rest of
        the command line. L{None} when no literal is being read.
        """
        return self._pendingLiteral

    @pending_literal.setter
    def pending_literal(self, literal):
        self._pendingLiteral = literal

    def _stringLiteral(self, size):
        """Twisted's argument parsers (C{arg_astring}) read a string literal here."""
        return self.string_literal(size)

    def string_literal(self, size):
        """
        A Deferred of a string literal of C{size} bytes and the rest of its
        line, once read: the continuation request goes out now.
        """
        return _SERVER._stringLiteral(self, size)

    # Command arguments

    def _IMAP4Server__ebDispatch(self, failure, tag):
        """
        Twisted's errback (name-mangled C{__ebDispatch}) when a command's
        argument parser fails: calls C{arguments_failed(failure, tag)},
        which answers the command.
        """
        self.arguments_failed(failure, tag)

    # FETCH (Twisted's, for the items our fast path does not answer)

    def _IMAP4Server__ebFetch(self, failure, tag):
        """
        Twisted's errback (C{__ebFetch}) when a FETCH fails before its
        first response. Like Twisted's, it restores the idle timer
        C{do_FETCH} stopped (C{_oldTimeout}); then C{fetch_failed(failure,
        tag)} answers the command.
        """
        self.setTimeout(self._oldTimeout)
        del self._oldTimeout
        self.fetch_failed(failure, tag)

    def _IMAP4Server__ebSpewMessage(self, failure):
        """
        Twisted's errback (C{__ebSpewMessage}) when writing one message's
        FETCH response fails, part of it possibly sent: calls
        C{fetch_broke_off(failure)}.
        """
        self.fetch_broke_off(failure)

    def _unblock(self):
        """
        Twisted's FETCH calls this after its tagged reply, to run the lines
        it kept in C{blocked} meanwhile: calls C{replay_blocked()}.
        """
        self.replay_blocked()

    # SELECT and EXAMINE

    def select_mailbox(self, tag, name, rw, command):
        """
        Twisted's SELECT or EXAMINE (C{command}) of C{name}: the selected
        mailbox is closed, the account's C{select(name, rw)} asked for the
        new one, then C{mailbox_selected(mbox, command, tag)} or
        L{select_failed} answers.
        """
        return _SERVER._selectWork(self, tag, name, rw, command)

    def _cbSelectWork(self, mbox, cmdName, tag):
        """The account's C{select} gave C{mbox} (or L{None}): calls C{mailbox_selected}."""
        return self.mailbox_selected(mbox, cmdName, tag)

    def _ebSelectWork(self, failure, cmdName, tag):
        """The account's C{select} failed: calls L{select_failed}."""
        return self.select_failed(failure, cmdName, tag)

    def select_failed(self, failure, command, tag):
        """Twisted's answer: C{BAD} and the traceback logged."""
        return _SERVER._ebSelectWork(self, failure, command, tag)

    # LIST and LSUB

    def send_listing(self, d, tag, command):
        """
        Twisted's C{LIST} or C{LSUB} (C{command}) responses for the C{(name,
        mailbox)} pairs C{d} fires with, all of them (the account chose),
        then the tagged OK; C{BAD} and the traceback logged if C{d} fails.
        """
        d.addCallback(self._cbListWork, tag, 0, command)
        d.addErrback(self._ebListWork, tag)


def literal(data):
    """C{data} as an IMAP literal: C{{size}}, CRLF, the bytes."""
    return imap4._literal(data)


def flags_item():
    """FETCH's C{FLAGS} item, as Twisted's parser makes it (C{arg_fetchatt})."""
    return imap4._FetchParser.Flags()


def uid_item():
    """FETCH's C{UID} item, as Twisted's parser makes it."""
    return imap4._FetchParser.UID()


# Twisted keeps a literal of up to this many bytes in memory, a bigger one
# in a temporary file.
LITERAL_MEMORY_LIMIT = imap4.LiteralFile._memoryFileLimit


class LiteralFile(imap4.LiteralFile):
    """Twisted's reader of a message literal, in memory up to C{memory_limit} bytes."""

    def __init__(self, size, d, memory_limit):
        self._memoryFileLimit = memory_limit
        super().__init__(size, d)
