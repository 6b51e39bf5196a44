"""
APPEND's extensions through the protocol: MULTIAPPEND (RFC 3502), BINARY
(RFC 3516: FETCH BINARY and literal8 APPEND) and CATENATE (RFC 4469),
from the RFCs' examples; the parsers behind them (L{append.AppendParser},
L{append.parse_url}) with property tests.
"""

import errno
import io
from urllib.parse import quote_from_bytes

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.mail import imap4
from twisted.python.failure import Failure

from mailsrv.imap import append
from mailsrv.imap import server as server_module
from mailsrv.store import folder as folder_module
from mailsrv.store.uidlist import UidList
from tests.fuzzing import examples
from tests.helpers import opened, result
from tests.test_imap import (
    ALICE,
    MESSAGE,
    MULTIPART,
    IMAPTestCase,
    SyncThreads,
    deliver,
    make_mail_server,
)

# RFC 3502's example, its two messages
RFC3502_FIRST = (
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
    b"From: Fred Foobar <foobar@Blurdybloop.example.COM>\r\n"
    b"Subject: afternoon meeting\r\n"
    b"To: mooch@owatagu.example.net\r\n"
    b"Message-Id: <B27397-0100000@Blurdybloop.example.COM>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    b"\r\n"
    b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n"
)
RFC3502_SECOND = (
    b"Date: Mon, 7 Feb 1994 22:43:04 -0800 (PST)\r\n"
    b"From: Joe Mooch <mooch@OWaTaGu.example.net>\r\n"
    b"Subject: Re: afternoon meeting\r\n"
    b"To: foobar@blurdybloop.example.com\r\n"
    b"Message-Id: <a0434793874930@OWaTaGu.example.net>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    b"\r\n"
    b"3:30 is fine with me.\r\n"
)
QUOTED_PRINTABLE = (
    b"From: a@example.test\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Gr=C3=BC=C3=9Fe  \r\n"
    b"soft=\r\n"
    b"break\r\n"
)
UUENCODED = (
    b"From: a@example.test\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n'
    b"\r\n"
    b"--b\r\n"
    b"\r\n"
    b"text\r\n"
    b"--b\r\n"
    b"Content-Transfer-Encoding: x-uuencode\r\n"
    b"\r\n"
    b"begin 644 x\r\n"
    b"--b--\r\n"
)


def literal(data, plus=False, binary=False):
    return b"%b{%d%b}\r\n%b" % (b"~" if binary else b"", len(data), b"+" if plus else b"", data)


class AppendTestCase(IMAPTestCase):
    def setUp(self):
        super().setUp()
        self.patch(server_module, "threads", SyncThreads)

    def stored(self, name="INBOX"):
        folder = opened(self.store, ALICE, name)
        return [folder.message(uid).path.read_bytes() for uid in folder.uids()]


class MultiAppendTests(AppendTestCase):
    """RFC 3502."""

    def test_rfc_example(self):
        c = self.client()
        c.login()
        c.cmd(b"c CREATE saved-messages")
        self.assertEqual(c.cmd(b"A003 APPEND saved-messages (\\Seen) {%d}" % len(RFC3502_FIRST)),
                         b"+ Ready for %d octets of data\r\n" % len(RFC3502_FIRST))
        self.assertEqual(
            c.send(RFC3502_FIRST + b' (\\Seen) " 7-Feb-1994 22:43:04 -0800" {%d}\r\n'
                   % len(RFC3502_SECOND)),
            b"+ Ready for %d octets of data\r\n" % len(RFC3502_SECOND))
        self.assertEqual(c.send(RFC3502_SECOND + b"\r\n"),
                         b"A003 OK [APPENDUID 1795000000 1:2] APPEND completed\r\n")
        folder = opened(self.store, ALICE, "saved-messages")
        self.assertEqual(self.stored("saved-messages"), [RFC3502_FIRST, RFC3502_SECOND])
        self.assertEqual([folder.message(uid).flags for uid in folder.uids()],
                         [{"\\Seen"}, {"\\Seen"}])
        self.assertEqual(folder.message(2).internaldate, 760689784)

    def test_selected_session_and_others_see_them(self):
        c = self.selected()
        other = self.selected()
        self.assertEqual(
            c.send(b"a APPEND INBOX " + literal(MESSAGE, True) + b" "
                   + literal(MESSAGE, True) + b"\r\n"),
            b"* 2 EXISTS\r\n* 2 RECENT\r\na OK [APPENDUID 1795000000 1:2] APPEND completed\r\n")
        self.assertEqual(other.cmd(b"n NOOP"),
                         b"* 2 EXISTS\r\n* 0 RECENT\r\nn OK NOOP completed\r\n")

    def test_all_or_nothing_when_a_file_cannot_be_written(self):
        written = []
        real = folder_module._write_message

        def write(maildir, data, flags, date):
            if written:
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(real(maildir, data, flags, date))
            return written[-1]
        self.patch(folder_module, "_write_message", write)
        c = self.client()
        c.login()
        self.assertEqual(
            c.send(b"a APPEND INBOX " + literal(MESSAGE, True) + b" "
                   + literal(MESSAGE, True) + b"\r\n"),
            b"a NO [OVERQUOTA] APPEND failed: disk full\r\n")
        self.assertEqual(self.stored(), [])
        self.assertFalse(written[0][0].exists())  # its tmp/ file is gone too
        self.assertEqual(c.cmd(b"n NOOP"), b"n OK NOOP completed\r\n")

    def test_all_or_nothing_when_the_index_cannot_be_written(self):
        def refuse(self, entries):
            raise OSError(errno.EIO, "I/O error")
        c = self.client()
        c.login()
        self.patch(UidList, "append_added", refuse)
        self.assertEqual(
            c.send(b"a APPEND INBOX " + literal(MESSAGE, True) + b" "
                   + literal(MESSAGE, True) + b"\r\n"),
            b"a NO [SERVERBUG] APPEND failed: server error\r\n")
        self.assertEqual(self.stored(), [])
        self.assertEqual(list((self.store.maildir(ALICE) / "tmp").iterdir()), [])

    def test_total_size_limited_before_the_literal(self):
        self.server = make_mail_server(self.root, self.clock, access={"max_message_size": 2048})
        self.store = self.server.store
        c = self.client()
        c.login()
        big = MESSAGE + b"x" * (1500 - len(MESSAGE))
        self.assertEqual(c.cmd(b"a APPEND INBOX {1500}"), b"+ Ready for 1500 octets of data\r\n")
        self.assertEqual(c.send(big + b" {1500}\r\n"),
                         b"a NO [TOOBIG] Messages larger than 2048 bytes in all\r\n")
        # with LITERAL+ the refused literal comes anyway: read and dropped
        self.assertEqual(
            c.send(b"b APPEND INBOX " + literal(big, True) + b" " + literal(big, True)
                   + b" " + literal(MESSAGE, True) + b"\r\nn NOOP\r\n"),
            b"b NO [TOOBIG] Messages larger than 2048 bytes in all\r\nn OK NOOP completed\r\n")
        self.assertEqual(self.stored(), [])

    def test_number_of_messages_limited(self):
        self.patch(append, "MAX_MESSAGES", 2)
        c = self.client()
        c.login()
        self.assertEqual(
            c.send(b"a APPEND INBOX" + (b" " + literal(MESSAGE, True)) * 3 + b"\r\nn NOOP\r\n"),
            b"a NO [LIMIT] At most 2 messages in one APPEND\r\nn OK NOOP completed\r\n")
        self.assertEqual(self.stored(), [])

    def test_bad_second_message(self):
        c = self.client()
        c.login()
        for bad, reply in [(b"(\\Bogus) {3+}", b"Invalid system flag \\Bogus"),
                           (b'"31-Foo-2020 00:00:00 +0000" {3+}', b"Invalid date-time"),
                           (b"NIL {3+}", b"Expected a literal: {size}")]:
            self.assertEqual(
                c.send(b"a APPEND INBOX " + literal(MESSAGE, True) + b" " + bad
                       + b"\r\nabc\r\nn NOOP\r\n"),
                b"a BAD Syntax error: " + reply + b"\r\nn OK NOOP completed\r\n")
        self.assertEqual(self.stored(), [])


class BinaryTests(AppendTestCase):
    """RFC 3516: FETCH BINARY, BINARY.PEEK, BINARY.SIZE; APPEND with literal8."""

    def test_fetch_decoded_parts(self):
        c = self.selected(MULTIPART, QUOTED_PRINTABLE)
        self.assertEqual(
            c.cmd(b"f FETCH 1 (BINARY.SIZE[2] BINARY.PEEK[2] BINARY.PEEK[1])"),
            b"* 1 FETCH (BINARY.SIZE[2] 3 BINARY[2] ~{3}\r\n\x00\x01\x02 "
            b"BINARY[1] {8}\r\npart one)\r\nf OK FETCH completed\r\n")
        self.assertEqual(
            c.cmd(b"g FETCH 2 (BINARY.SIZE[1] BINARY.PEEK[1]<2.5>)"),
            b"* 2 FETCH (BINARY.SIZE[1] 20 BINARY[1]<2> {5}\r\n\xc3\xbc\xc3\x9fe)\r\n"
            b"g OK FETCH completed\r\n")
        self.assertEqual(c.cmd(b"h FETCH 2 (BINARY.PEEK[1])"),
                         b"* 2 FETCH (BINARY[1] {20}\r\nGr\xc3\xbc\xc3\x9fe\r\nsoftbreak\r\n)\r\n"
                         b"h OK FETCH completed\r\n")
        # the whole message, and a part that does not exist: as BODY[]
        self.assertEqual(c.cmd(b"i FETCH 2 (BINARY.SIZE[] BINARY.PEEK[3])"),
                         b"* 2 FETCH (BINARY.SIZE[] %d BINARY[3] {0}\r\n)\r\n"
                         b"i OK FETCH completed\r\n" % len(QUOTED_PRINTABLE))

    def test_binary_sets_seen_peek_and_size_do_not(self):
        c = self.selected(MESSAGE)
        self.assertEqual(c.cmd(b"f FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1]<0.2>)"),
                         b"* 1 FETCH (BINARY.SIZE[1] 25 BINARY[1]<0> {2}\r\nHi)\r\n"
                         b"f OK FETCH completed\r\n")
        self.assertEqual(c.cmd(b"g FETCH 1 (BINARY[1]<0.2>)"),
                         b"* 1 FETCH (FLAGS (\\Seen) BINARY[1]<0> {2}\r\nHi)\r\n"
                         b"g OK FETCH completed\r\n")

    def test_unknown_encoding(self):
        c = self.selected(MESSAGE, UUENCODED)
        self.assertEqual(c.cmd(b"f FETCH 1:2 (BINARY[2])"),
                         b"f NO [UNKNOWN-CTE] Cannot decode x-uuencode\r\n")
        self.assertEqual(c.cmd(b"g FETCH 2 (FLAGS)"),
                         b"* 2 FETCH (FLAGS ())\r\ng OK FETCH completed\r\n")  # no \\Seen
        self.assertEqual(c.cmd(b"h FETCH 2 (BINARY.SIZE[1] BODY.PEEK[2])"),
                         b"* 2 FETCH (BODY[2] {11}\r\nbegin 644 x BINARY.SIZE[1] 4)\r\n"
                         b"h OK FETCH completed\r\n")

    def test_syntax(self):
        c = self.selected(MESSAGE)
        for items, reply in [(b"BINARY[1.TEXT]", b"BINARY takes a part number only"),
                             (b"BINARY[0]", b"BINARY takes a part number only"),
                             (b"BINARY.SIZE[1]<0.5>", b"BINARY.SIZE takes no partial"),
                             (b"BINARY[1]<0.0>", b"Partial <offset.length> must be numbers"
                              b" up to 4294967295, length not 0")]:
            self.assertEqual(c.cmd(b"f FETCH 1 (" + items + b")"),
                             b"f BAD Syntax error: " + reply + b"\r\n")

    def test_append_literal8(self):
        """RFC 3516 4.1: binary content is stored so that BINARY gives it back."""
        body = b"\x00\x01\xff\r\n\n\r\x00"
        message = (b"From: a@example.test\r\nContent-Type: application/octet-stream\r\n"
                   b"Content-Transfer-Encoding: binary\r\n\r\n" + body)
        c = self.selected()
        self.assertEqual(c.cmd(b"a APPEND INBOX ~{%d}" % len(message)),
                         b"+ Ready for %d octets of data\r\n" % len(message))
        self.assertEqual(c.send(message + b"\r\n"),
                         b"* 1 EXISTS\r\n* 1 RECENT\r\na OK [APPENDUID 1795000000 1] "
                         b"APPEND completed\r\n")
        self.assertEqual(self.stored(), [
            b"From: a@example.test\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\nAAH/DQoKDQA=\r\n"])
        self.assertEqual(c.cmd(b"f FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1])"),
                         b"* 1 FETCH (BINARY.SIZE[1] 8 BINARY[1] ~{8}\r\n" + body + b")\r\n"
                         b"f OK FETCH completed\r\n")
        # a literal8 with LITERAL+, beside a plain literal (MULTIAPPEND)
        self.assertEqual(
            c.send(b"b APPEND INBOX " + literal(message, True, True) + b" "
                   + literal(MESSAGE, True) + b"\r\n"),
            b"* 3 EXISTS\r\n* 3 RECENT\r\nb OK [APPENDUID 1795000000 2:3] APPEND completed\r\n")
        self.assertEqual(self.stored()[1:], [self.stored()[0], MESSAGE])

    def test_binary_parts_inside_a_multipart(self):
        message = (b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nhi\r\n'
                   b"--b\r\nContent-Transfer-Encoding: BINARY\r\n\r\n\x00\xff\n\r\n--b--\r\n")
        self.assertEqual(
            append.mime.base64_binary_parts(message),
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nhi\r\n'
            b"--b\r\nContent-Transfer-Encoding: base64\r\n\r\nAP8K\r\n\r\n--b--\r\n")


class CatenateTests(AppendTestCase):
    """RFC 4469, with IMAP URLs (RFC 5092) of the user's own mailboxes."""

    DRAFT = (b"From: a@example.test\r\nSubject: draft\r\n"
             b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
             b"--b\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n"
             b"--b\r\nContent-Type: text/plain\r\n\r\nattachment\r\n--b--\r\n")

    def setUp(self):
        super().setUp()
        deliver(self.store, self.DRAFT, folder="Drafts")
        self.validity = opened(self.store, ALICE, "Drafts").uidvalidity

    def test_rfc_example(self):
        """RFC 4469 5: a message edited from a draft's header and parts."""
        c = self.selected()
        url = b'"/Drafts;UIDVALIDITY=%d/;UID=1/;section=' % self.validity
        first, between, last = b"--b\r\n", b"\r\n--b\r\n", b"\r\n--b--\r\n"
        c.cmd(b"a APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE (URL " + url
              + b'HEADER" TEXT {%d}' % len(first))
        self.assertEqual(
            c.send(first + b" URL " + url + b'1.MIME" URL ' + url + b'1" TEXT {%d}\r\n'
                   % len(between)),
            b"+ Ready for %d octets of data\r\n" % len(between))
        self.assertEqual(c.send(between + b" URL " + url + b'2.MIME" URL ' + url
                                + b'2" TEXT {%d}\r\n' % len(last)),
                         b"+ Ready for %d octets of data\r\n" % len(last))
        self.assertEqual(c.send(last + b")\r\n"),
                         b"a OK [APPENDUID %d 2] APPEND completed\r\n" % self.validity)
        drafts = opened(self.store, ALICE, "Drafts")
        self.assertEqual(self.stored("Drafts"), [self.DRAFT, self.DRAFT])
        self.assertEqual(drafts.message(2).flags, {"\\Seen", "\\Draft", "$MDNSent"})

    def test_urls_and_partial(self):
        c = self.selected()
        self.assertEqual(
            c.send(b'a APPEND INBOX CATENATE (URL "/Drafts/;UID=1/;SECTION=HEADER.FIELDS%20'
                   b'(SUBJECT)" TEXT ' + literal(b"body: ", True)
                   + b' URL "imap://alice%40example.test@mail/Drafts/;UID=1/;PARTIAL=6.4"'
                   b' URL "/Drafts/;UID=1/;PARTIAL=9999") CATENATE (URL /Drafts/;UID=1/'
                   b';SECTION=2)\r\n'),
            b"* 2 EXISTS\r\n* 2 RECENT\r\na OK [APPENDUID %d 1:2] APPEND completed\r\n"
            % opened(self.store, ALICE).uidvalidity)
        self.assertEqual(self.stored(), [b"Subject: draft\r\n\r\nbody: a@ex", b"attachment"])

    def test_bad_urls(self):
        c = self.selected()
        bad = [b"/Drafts;UIDVALIDITY=%d/;UID=1" % (self.validity + 1),
               b"/Drafts/;UID=2", b"/Nope/;UID=1", b"/Drafts/;UID=0", b"/Drafts",
               b"/Drafts/;UID=1/;SECTION=1.FOO", b"imap://bob@example.test@mail/INBOX/;UID=1",
               b"imap://mail/Drafts/;UID=1", b"/Drafts?SUBJECT%20x", b"/&Jjo/;UID=1"]
        for url in bad:
            reply = c.send(b'a APPEND INBOX CATENATE (TEXT {3+}\r\nabc URL "' + url
                           + b'") (\\Seen) {3+}\r\nabc\r\n')
            self.assertTrue(reply.startswith(b"a NO [BADURL " + url + b"] "), reply)
        self.assertEqual(self.stored(), [])

    def test_bad_url_reasons(self):
        c = self.selected()
        for url, reason in [(b"/Drafts/;UID=2", b"No such message"),
                            (b"/Drafts/;UID=1/;SECTION=X", b"Bad section"),
                            (b"imap://bob@mail/INBOX/;UID=1",
                             b"Only the logged-in user's mailboxes"),
                            (b"/INBOX", b"Not an IMAP URL of a message"),
                            (b"/&Jjo/;UID=1", b"Mailbox name is not valid mUTF-7")]:
            self.assertEqual(c.cmd(b'a APPEND INBOX CATENATE (URL "' + url + b'")'),
                             b"a NO [BADURL " + url + b"] " + reason + b"\r\n")

    def test_catenated_size_limited(self):
        self.patch(server_module.IMAPServer, "_largest_literal", lambda self: 100)
        c = self.selected()
        self.assertEqual(
            c.cmd(b'a APPEND INBOX CATENATE (URL "/Drafts/;UID=1" URL "/Drafts/;UID=1")'),
            b"a NO [TOOBIG] Messages larger than 100 bytes in all\r\n")
        # the size counts over all the messages of the APPEND
        self.assertEqual(
            c.cmd(b'b APPEND INBOX CATENATE (URL "/Drafts/;UID=1/;PARTIAL=0.60") '
                  b'CATENATE (URL "/Drafts/;UID=1/;PARTIAL=0.60")'),
            b"b NO [TOOBIG] Messages larger than 100 bytes in all\r\n")
        self.assertEqual(self.stored(), [])

    def test_urls_limited(self):
        self.patch(append, "MAX_URLS", 2)
        c = self.selected()
        self.assertEqual(
            c.cmd(b'a APPEND INBOX CATENATE (URL "/Drafts/;UID=1") CATENATE (URL "/Drafts/;UID=1"'
                  b' URL "/Drafts/;UID=1")'),
            b"a NO [LIMIT] At most 2 URLs in one APPEND\r\n")
        self.assertEqual(c.cmd(b'a APPEND Nope CATENATE (URL "/Drafts/;UID=1")'),
                         b"a NO [TRYCREATE] No such mailbox\r\n")

    def test_syntax(self):
        c = self.selected()
        for args, reply in [(b"CATENATE ()", b"CATENATE needs a part"),
                            (b"CATENATE (FOO)", b"Expected TEXT or URL"),
                            (b'CATENATE (URL "/Drafts/;UID=1"', b"Expected TEXT or URL"),
                            (b'CATENATE (URL "/Drafts/;UID=1")x', b"Expected a space between"
                             b" messages")]:
            self.assertEqual(c.cmd(b"a APPEND INBOX " + args),
                             b"a BAD Syntax error: " + reply + b"\r\n")


# Property tests of the parsers

_flag = st.sampled_from([b"\\Seen", b"\\Flagged", b"$Work", b"Junk"])
_date = st.sampled_from([None, b"07-Feb-1994 22:43:04 -0800", b" 1-Jan-2020 00:00:00 +0000"])
_data = st.binary(max_size=40)
_url = st.sampled_from([b"/INBOX/;UID=1", b"/Drafts;UIDVALIDITY=7/;UID=2/;SECTION=1.MIME",
                        b'/A%20B/;UID=3/;PARTIAL=0.5'])
_part = st.one_of(st.tuples(st.just("text"), _data, st.booleans()),
                  st.tuples(st.just("url"), _url))
_message = st.tuples(st.lists(_flag, max_size=3), _date,
                     st.one_of(st.tuples(st.just("literal"), _data, st.booleans()),
                               st.tuples(st.just("catenate"), st.lists(_part, min_size=1,
                                                                       max_size=4))))


def _wire(messages):
    """APPEND's arguments after the mailbox for C{messages}: lines and literal data."""
    out = b""
    for flags, date, (kind, *body) in messages:
        out += b" "
        if flags:
            out += b"(" + b" ".join(flags) + b") "
        if date is not None:
            out += b'"' + date + b'" '
        if kind == "literal":
            out += literal(body[0], binary=body[1])
            continue
        out += b"CATENATE ("
        for i, (part, *value) in enumerate(body[0]):
            out += b" " if i else b""
            if part == "text":
                out += b"TEXT " + literal(value[0], binary=value[1])
            else:
                out += b'URL "' + value[0] + b'"'
        out += b")"
    return out


def _feed(wire, largest=1 << 20):
    """Run an L{append.AppendParser} over C{wire}, reading literals from it."""
    rest = [wire]

    def read_literal(size, binary, held):
        data, tail = rest[0][:size], rest[0][size:]
        line, _, rest[0] = tail.partition(b"\r\n")
        d = defer.Deferred()
        d.callback((io.BytesIO(data), line))
        return d

    line, _, rest[0] = wire.partition(b"\r\n")
    parsed = result(append.AppendParser(read_literal, largest).parse(line))
    if isinstance(parsed, Failure):
        parsed.raiseException()
    return parsed[0]


class ParserPropertyTests(AppendTestCase):
    @examples(300)
    @given(st.lists(_message, min_size=1, max_size=5))
    def test_messages_read_back(self, messages):
        parsed = _feed(_wire(messages)[1:] + b"\r\n")
        self.assertEqual(len(parsed), len(messages))
        for got, (flags, date, (kind, *body)) in zip(parsed, messages):
            self.assertEqual(got.flags, [f.decode() for f in flags])
            self.assertEqual(got.date is None, date is None)
            if kind == "literal":
                expected = [tuple(body)]
            else:
                expected = [value[0] if part == "url" else tuple(value)
                            for part, *value in body[0]]
            self.assertEqual(
                [part if isinstance(part, bytes) else (part[0].getvalue(), part[1])
                 for part in got.parts], expected)

    @examples(500)
    @given(st.binary(max_size=80))
    def test_garbage_is_a_protocol_error(self, line):
        try:
            _feed(line)
        except (imap4.IllegalClientResponse, imap4.IllegalOperation):
            pass

    @examples(500)
    @given(st.binary(max_size=80), st.sampled_from(["alice@example.test", "bob"]))
    def test_url_parser_raises_only_badurl(self, text, user):
        try:
            url = append.parse_url(text, user)
        except append.BadURL as e:
            self.assertEqual(e.url, text)
        else:
            self.assertGreater(url.uid, 0)

    @examples(200)
    @given(st.sampled_from(["INBOX", "Drafts", "A B", "Ünïcode/sub"]),
           st.one_of(st.none(), st.integers(1, 2 ** 32 - 1)), st.integers(1, 2 ** 32 - 1),
           st.sampled_from([b"", b"HEADER", b"1.2.MIME", b"2.TEXT", b"HEADER.FIELDS (TO CC)"]),
           st.one_of(st.none(), st.tuples(st.integers(0, 10 ** 9),
                                          st.one_of(st.none(), st.integers(1, 10 ** 9)))))
    def test_url_round_trip(self, mailbox, validity, uid, section, partial):
        encoded = quote_from_bytes(imap4.encoder(mailbox)[0], safe="/&,+")
        text = b"/" + encoded.encode()
        if validity is not None:
            text += b";UIDVALIDITY=%d" % validity
        text += b"/;UID=%d" % uid
        if section:
            text += b"/;SECTION=" + section.replace(b" ", b"%20")
        if partial is not None:
            text += b"/;PARTIAL=%d" % partial[0]
            if partial[1] is not None:
                text += b".%d" % partial[1]
        url = append.parse_url(text, "alice")
        self.assertEqual((url.mailbox, url.uidvalidity, url.uid, url.section, url.partial),
                         (mailbox, validity, uid, section, partial))


_literal_data = st.lists(st.sampled_from([b"x CREATE inj\r\n", b"\x00", b"\n", b"\r", b"ab",
                                          b"~{3+}\r\n", b" CATENATE (", b"\xff"]),
                         max_size=8).map(b"".join)


class ProtocolPropertyTests(AppendTestCase):
    @examples(100)
    @given(st.lists(st.tuples(_literal_data, st.booleans()), min_size=1, max_size=4),
           st.integers(1, 64))
    def test_multiappend_in_any_packets(self, messages, packet):
        """
        A MULTIAPPEND of LITERAL+ literals and literal8s holding NULs and
        lines that look like commands, cut into packets of any size: one
        reply, every message stored, nothing in the data runs.
        """
        c = self.selected()
        data = b"a APPEND INBOX" + b"".join(
            b" " + literal(body, plus=True, binary=binary) for body, binary in messages)
        data += b"\r\nn NOOP\r\n"
        out = b"".join(c.send(data[i:i + packet]) for i in range(0, len(data), packet))
        count = len(opened(self.store, ALICE).uids())
        first = count - len(messages) + 1
        self.assertTrue(out.endswith(
            b"a OK [APPENDUID %d %b] APPEND completed\r\nn OK NOOP completed\r\n"
            % (opened(self.store, ALICE).uidvalidity,
               b"%d" % first if first == count else b"%d:%d" % (first, count))), out)
        self.assertNotIn("inj", self.store.folders(ALICE))
