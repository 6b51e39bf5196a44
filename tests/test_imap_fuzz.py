"""
Property tests of the IMAP command parser (issue 13, finding 6): arbitrary
and structured command lines, with literals, nesting, odd atoms, sequence
sets and FETCH partials, fed to a logged-in session on a StringTransport.

Invariant: nothing is logged as an error, the command gets exactly one
tagged OK, NO or BAD (or the connection closes after C{* BYE}), and the
server answers the NOOP that follows.
"""

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from mailsrv import errorlog
from mailsrv.imap import syntax
from mailsrv.imap.mailbox import Mailbox
from mailsrv.imap.server import _opt_select_params
from mailsrv.ranges import count, merged, runs
from tests.fuzzing import examples
from tests.test_imap import ALICE, MESSAGE, MULTIPART, IMAPTestCase, deliver

TAG = b"T7f3"
_TAGGED = re.compile(rb"^T7f3 (OK|NO|BAD)( |$)", re.M)
_SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.too_slow])

VERBS = [
    b"CAPABILITY", b"NOOP", b"SELECT", b"EXAMINE", b"CREATE", b"DELETE", b"RENAME",
    b"SUBSCRIBE", b"UNSUBSCRIBE", b"LIST", b"LSUB", b"STATUS", b"APPEND", b"CHECK",
    b"EXPUNGE", b"SEARCH", b"FETCH", b"STORE", b"COPY", b"MOVE", b"UID", b"ID",
    b"ENABLE", b"NAMESPACE", b"IDLE", b"UID FETCH", b"UID SEARCH", b"UID STORE",
    b"UID EXPUNGE", b"UID COPY", b"UID MOVE",
]
# No CLOSE, LOGOUT or second LOGIN: they end the selected state the NOOP
# after them is checked in (LOGOUT is covered by the BYE branch anyway).

numbers = st.one_of(
    st.integers(0, 5), st.integers(0, 2**32 + 5),
    st.sampled_from([2**32 - 1, 2**32, 2**64, 10**30, -1]),
).map(lambda n: b"%d" % n)
atoms = st.from_regex(rb"\A[A-Za-z0-9\\$.&*%:+-]{1,12}\Z")
quoted = st.binary(max_size=20).map(
    lambda b: b'"' + b.replace(b"\r", b"").replace(b"\n", b"") + b'"')
names = st.one_of(
    st.sampled_from([b"INBOX", b"Trash", b"a/b", b"&Jjo-", b"&Jjo", b"&", b"&-", b"..",
                     b"/x", b"a//b", b"x" * 300, b"&AA0-", b'"\xc3\xa9"', b'""']),
    atoms, quoted,
)
sequence_sets = st.lists(
    st.one_of(numbers, st.just(b"*"),
              st.tuples(numbers, st.one_of(numbers, st.just(b"*"))).map(b":".join)),
    min_size=1, max_size=4,
).map(b",".join)
partials = st.tuples(numbers, numbers).map(lambda p: b"<%s.%s>" % p)
sections = st.sampled_from([b"", b"TEXT", b"HEADER", b"1", b"2", b"1.MIME", b"3.1",
                            b"HEADER.FIELDS (Subject From)", b"HEADER.FIELDS.NOT (To)"])
fetch_items = st.one_of(
    st.sampled_from([b"FLAGS", b"UID", b"RFC822.SIZE", b"INTERNALDATE", b"ENVELOPE",
                     b"BODYSTRUCTURE", b"BODY", b"RFC822", b"RFC822.HEADER", b"MODSEQ",
                     b"ALL", b"FAST", b"FULL"]),
    st.tuples(st.sampled_from([b"BODY", b"BODY.PEEK"]), sections,
              st.one_of(st.just(b""), partials)).map(lambda t: b"%s[%s]%s" % t),
)
search_keys = st.one_of(
    st.sampled_from([b"ALL", b"SEEN", b"UNSEEN", b"NOT", b"OR", b"FROM", b"SUBJECT x",
                     b"LARGER", b"SINCE 1-Feb-2020", b"BEFORE x", b"HEADER", b"MODSEQ 1",
                     b"KEYWORD $x", b"TEXT hello", b"CHARSET UTF-8"]),
    sequence_sets, st.tuples(st.just(b"UID"), sequence_sets).map(b" ".join),
)


def nested(inner, depth):
    return b"(" * depth + inner + b")" * depth


tokens = st.one_of(
    atoms, quoted, numbers, sequence_sets, names, fetch_items, search_keys,
    st.tuples(fetch_items, st.integers(0, 150)).map(lambda t: nested(*t)),
    st.lists(fetch_items, max_size=4).map(lambda items: b"(" + b" ".join(items) + b")"),
    st.sampled_from([b"(", b")", b"[", b"]", b"{", b"}", b"{5", b"{x}", b"{-1}", b"NIL",
                     b"(\\Seen $Junk)", b"+FLAGS", b"-FLAGS.SILENT", b"(CHANGEDSINCE 1)",
                     b"(UNCHANGEDSINCE 99999999999999999999)", b'"17-Jul-1996 02:44:25 -0700"',
                     b"(CHANGEDSINCE 1 VANISHED)", b"(QRESYNC (1 1 1:5 (1,3 2,4)))", b"(QRESYNC)"]),
)


@st.composite
def commands(draw):
    """C{(segments, last)}: lines ending in a literal with its data, then the rest."""
    verb = draw(st.sampled_from(VERBS))
    head = draw(st.lists(tokens, max_size=6))
    segments = []
    for _ in range(draw(st.integers(0, 2))):
        data = draw(st.binary(max_size=40))
        plus = draw(st.booleans())
        line = b" ".join([verb] + head) + (b" {%d%s}" % (len(data), b"+" if plus else b""))
        segments.append((line, data, plus))
        verb, head = b"", draw(st.lists(tokens, max_size=3))
    last = b" ".join(([verb] if verb else []) + head)
    return segments, last


# Lines of mail a client APPENDs, looking like commands (issue 14: they ran).
mail_lines = st.lists(
    st.sampled_from([b"x1 CREATE inj", b"x2 LOGOUT", b"x3 DELETE INBOX", b"Subject: hi",
                     b"", b"x4 APPEND INBOX {3+}", b"abc", b"x5 FETCH 1:* BODY[]"]),
    min_size=1, max_size=6,
).map(lambda lines: b"\r\n".join(lines) + b"\r\n")
pipelined = st.lists(st.one_of(
    st.sampled_from([b"NOOP", b"FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)])",
                     b"FETCH 2 (BODYSTRUCTURE)", b"SEARCH TEXT hi", b"FETCH 1 (FLAGS)"]),
    st.tuples(st.sampled_from([b"APPEND INBOX", b"APPEND {5+}\r\nINBOX", b"FROBNICATE",
                               b"NOOP", b"APPEND INBOX ((("]), mail_lines)
    .map(lambda t: b"%s {%d+}\r\n%s" % (t[0], len(t[1]), t[1])),
), min_size=1, max_size=6)


def parenthesised(items):
    return b"(" + b" ".join(items) + b")"


# extended LIST (RFC 5258, 5819, 6154): options known and not, in lists and not
selection_options = st.lists(st.sampled_from([
    b"SUBSCRIBED", b"REMOTE", b"RECURSIVEMATCH", b"SPECIAL-USE", b"subscribed", b"X-FOO",
    b"(SUBSCRIBED)", b'"REMOTE"', b"NIL", b"STATUS"]), max_size=4).map(parenthesised)
status_lists = st.lists(st.sampled_from([
    b"MESSAGES", b"UNSEEN", b"SIZE", b"APPENDLIMIT", b"HIGHESTMODSEQ", b"RECENT", b"FOO",
    b"(MESSAGES)", b"uidnext"]), max_size=5).map(parenthesised)
return_options = st.lists(st.one_of(
    st.sampled_from([b"CHILDREN", b"SUBSCRIBED", b"SPECIAL-USE", b"STATUS", b"X", b"()"]),
    status_lists.map(lambda items: b"STATUS " + items),
), max_size=4).map(lambda options: b" RETURN " + parenthesised(options))
list_patterns = st.one_of(names, st.lists(names, max_size=4).map(parenthesised))


@st.composite
def extended_lists(draw):
    parts = [b"LIST"]
    if draw(st.booleans()):
        parts.append(draw(selection_options))
    parts += [draw(names), draw(list_patterns)]
    tail = draw(st.one_of(st.just(b""), return_options, tokens.map(lambda t: b" " + t)))
    return b" ".join(parts) + tail


raw_lines = st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


uid_ranges = st.lists(
    st.tuples(st.integers(1, 2**32 - 1), st.integers(0, 1000)).map(
        lambda r: (r[0], min(r[0] + r[1], 2**32 - 1))),
    min_size=1, max_size=5,
).map(merged)


def set_text(ranges):
    return b",".join(b"%d:%d" % r if r[0] != r[1] else b"%d" % r[0] for r in ranges)


@st.composite
def qresync_params(draw):
    """A valid C{QRESYNC (...)} parameter and the L{syntax.QResync} it means."""
    uidvalidity = draw(st.integers(1, 2**32 - 1))
    modseq = draw(st.integers(0, 2**63 - 1))
    known = draw(st.one_of(st.none(), uid_ranges))
    seq_match = None
    if draw(st.booleans()):
        seqs = draw(uid_ranges)
        # the same count of UIDs, as ranges of their own
        size, uids, start = count(seqs), [], draw(st.integers(1, 1000))
        while size:
            length = draw(st.integers(1, size))
            uids.append((start, start + length - 1))
            start += length + draw(st.integers(1, 5))
            size -= length
        seq_match = (seqs, merged(uids))
    words = [b"%d" % uidvalidity, b"%d" % modseq]
    if known is not None:
        words.append(set_text(known))
    if seq_match is not None:
        words.append(b"(%s %s)" % (set_text(seq_match[0]), set_text(seq_match[1])))
    line = b"(QRESYNC (" + b" ".join(words) + b"))"
    return line, syntax.QResync(uidvalidity, modseq, known, seq_match)


qresync_words = st.one_of(
    numbers, sequence_sets, atoms, st.just(b"NIL"),
    st.lists(st.one_of(numbers, sequence_sets), max_size=3).map(
        lambda w: b"(" + b" ".join(w) + b")"),
)


class FuzzTests(IMAPTestCase):
    def setUp(self):
        super().setUp()
        deliver(self.store, MESSAGE)
        deliver(self.store, MULTIPART)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.patch(errorlog, "client_errors", errorlog.ClientErrorLog(self.clock.seconds))

    def run_command(self, segments, last):
        """Send one command as a client would (waiting where it must); the replies."""
        c = self.selected()
        self.events.clear()
        out, prefix = b"", TAG + b" "
        for line, data, plus in segments:
            reply = c.send(prefix + line + b"\r\n")
            out, prefix = out + reply, b""
            if not plus and not reply.startswith(b"+ "):
                return c, out  # refused before the continuation
            out += c.send(data)
        out += c.send(prefix + last + b"\r\n")
        if out.endswith(b"+ idling\r\n"):
            out += c.cmd(b"DONE")
        return c, out

    def errors(self):
        return [e for e in self.events if "log_failure" in e
                or e.get("log_level") is not None
                and e["log_level"].name in ("error", "critical")]

    def check(self, c, out):
        self.assertEqual(self.errors(), [])
        if c.transport.disconnecting:
            self.assertIn(b"* BYE", out)
            return
        self.assertEqual(len(_TAGGED.findall(out)), 1, out[-300:])
        self.assertEqual(c.cmd(b"z NOOP")[-22:], b"z OK NOOP completed\r\n")

    @_SETTINGS
    @given(commands())
    def test_structured_commands(self, command):
        self.check(*self.run_command(*command))

    @_SETTINGS
    @given(st.sampled_from(VERBS), raw_lines)
    def test_arbitrary_arguments(self, verb, rest):
        self.check(*self.run_command([], verb + b" " + rest))

    @settings(_SETTINGS, max_examples=100)
    @given(pipelined, st.integers(1, 64))
    def test_pipelined_literals_are_never_commands(self, commands, packet):
        """
        Commands sent without waiting, APPENDs (and refused commands) with
        LITERAL+ mail among them, cut into packets of any size: each
        command gets its one tagged reply, in order, and no line of mail
        runs.
        """
        c = self.selected()
        self.events.clear()
        tags = [b"T%d" % i for i in range(len(commands))]
        data = b"".join(t + b" " + command + b"\r\n" for t, command in zip(tags, commands))
        out = b"".join(c.send(data[i:i + packet]) for i in range(0, len(data), packet))
        replied = re.findall(rb"^(\S+) (?:OK|NO|BAD)\b", out, re.M)
        self.assertEqual([t for t in replied if t != b"*"], tags, out[-500:])
        self.assertNotIn("inj", self.store.folders(ALICE))
        self.assertEqual(self.errors(), [])
        self.assertEqual(c.cmd(b"z NOOP")[-22:], b"z OK NOOP completed\r\n")

    @_SETTINGS
    @given(extended_lists())
    def test_extended_list(self, line):
        """Every LIST gets its one tagged reply; a BAD lists nothing."""
        c, out = self.run_command([], line)
        self.check(c, out)
        if re.search(rb"^T7f3 BAD", out, re.M):
            self.assertNotIn(b"* LIST", out)

    @_SETTINGS
    @given(raw_lines)
    def test_arbitrary_lines(self, line):
        c = self.selected()
        self.events.clear()
        out = c.send(TAG + b" " + line + b"\r\n")
        if out.endswith(b"+ idling\r\n"):
            out += c.cmd(b"DONE")
        elif b"+ Ready" in out:  # a literal the line announced: give it
            size = int(re.search(rb"Ready for (\d+) octets", out).group(1))
            out += c.send(b"x" * size + b"\r\n")
        self.check(c, out)

    @examples(200)
    @given(qresync_params())
    def test_valid_qresync_parameters_parse_to_what_they_say(self, param):
        """SELECT's QRESYNC parameter (RFC 7162 3.2.5)."""
        line, expected = param
        params, rest = _opt_select_params(None, line)
        self.assertEqual((rest, syntax.select_params(params)), (b"", (False, expected)))

    @examples(200)
    @given(st.lists(qresync_words, max_size=6), st.sampled_from([b"SELECT", b"EXAMINE"]))
    def test_any_qresync_parameter_gets_one_reply(self, words, verb):
        c = self.selected()
        c.cmd(b"e ENABLE QRESYNC")
        self.events.clear()
        line = b"%s INBOX (QRESYNC (%s))" % (verb, b" ".join(words))
        self.check(c, c.send(TAG + b" " + line + b"\r\n"))


class _Uids:
    """A folder as far as a L{Mailbox}'s view needs one."""

    def __init__(self, uids):
        self._uids = uids

    def uids(self):
        return list(self._uids)


@st.composite
def views_and_samples(draw):
    """A mailbox's UIDs and seq-match data a client could send, right or stale."""
    view = sorted(draw(st.sets(st.integers(1, 60), max_size=40)))
    seqs = sorted(draw(st.sets(st.integers(1, 45), min_size=1, max_size=12)))
    uids = sorted(draw(st.sets(st.integers(1, 60), min_size=len(seqs), max_size=len(seqs))))
    if view and draw(st.booleans()):  # a client that is right about a prefix
        seqs = list(range(1, len(view) + 1))[:len(seqs)]
        uids = view[:len(seqs)]
        if draw(st.booleans()) and len(uids) > 1:
            uids[-1] += 1
            uids = sorted(set(uids))
            seqs = seqs[:len(uids)]
    return view, seqs, uids


class SeqMatchTests(unittest.TestCase):
    @examples(300)
    @given(views_and_samples())
    def test_matched_uid_is_the_last_pair_of_the_matching_prefix(self, case):
        """RFC 7162 3.2.5.2, pair by pair against the ranges' bisection."""
        view, seqs, uids = case
        expected = 0
        for seq, uid in zip(seqs, uids):
            if seq > len(view) or view[seq - 1] != uid:
                break
            expected = uid
        mailbox = Mailbox(_Uids(view), False)
        self.assertEqual(mailbox._matched_uid(runs(seqs), runs(uids)), expected)
