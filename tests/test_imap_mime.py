"""
FETCH of MIME structure and sections (BODYSTRUCTURE, BODY, BODY[1.2.HEADER],
ENVELOPE, RFC822.HEADER) over the protocol, with the messages that broke
it: MIME bombs, sections inside attached messages, parts that do not exist,
address groups, bare LF line ends.
"""

from mailsrv.imap import mime
from mailsrv.imap import server as server_module
from tests.test_imap import MESSAGE, MULTIPART, IMAPTestCase, SyncThreads

# Dovecot's imaptest messages (src/tests/fetch-body-*.mbox), with CRLF.
NESTED_RFC822 = (
    b"From: user@domain.org\r\n"
    b"Date: Sat, 24 Mar 2007 23:00:00 +0200\r\n"
    b"Mime-Version: 1.0\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"From: sub@domain.org\r\n"
    b"Date: Sun, 12 Aug 2012 12:34:56 +0300\r\n"
    b"Subject: submsg\r\n"
    b'Content-Type: multipart/digest; boundary="foo"\r\n'
    b"\r\n"
    b"prologue\r\n"
    b"\r\n"
    b"--foo \r\n"
    b"\r\n"
    b"From: m1@example.com\r\n"
    b"Subject: m1\r\n"
    b"\r\n"
    b"m1 body\r\n"
    b"\r\n"
    b"--foo \r\n"
    b"X-Mime: m2 header\r\n"
    b"\r\n"
    b"From: m2@example.com\r\n"
    b"Subject: m2\r\n"
    b"\r\n"
    b"m2 body\r\n"
    b"\r\n"
    b"--foo--\r\n"
    b"\r\n"
    b"epilogue\r\n"
)
FOLDED_BOUNDARY = (
    b"From: user@domain.org\r\n"
    b"Mime-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="foo\r\n'
    b' bar"\r\n'
    b"\r\n"
    b"--foo bar\r\n"
    b"Content-Type: text/x-myown; charset=us-ascii\r\n"
    b"\r\n"
    b"hello\r\n"
    b"\r\n"
    b"--foo bar--\r\n"
)
GROUPS = (
    b"Date: Thu, 15 Feb 2007 01:02:03 +0200\r\n"
    b"From: user@domain (Real Name)\r\n"
    b"Sender: \r\n"
    b"To: group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;\r\n"
    b"Cc: group:;, group2: (foo) ;\r\n"
    b"Bcc: <@route:user@domain>, \"Quoted, \\\"Name\\\"\" <q@x.org>\r\n"
    b"\r\n"
    b"body\r\n"
)


def nested_multipart(depth):
    """C{depth} multiparts, each the only part of the one around it."""
    head = b"".join(
        b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
        for i in range(depth)
    )
    tail = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    return b"Subject: bomb\r\n" + head + b"Content-Type: text/plain\r\n\r\ninnermost" + tail


def sibling_parts(count):
    parts = b"".join(b"--s\r\n\r\nx\r\n" for _ in range(count))
    return b"Content-Type: multipart/mixed; boundary=s\r\n\r\n" + parts + b"--s--\r\n"


class Recording(SyncThreads):
    calls = None

    @classmethod
    def deferToThread(cls, f, *args):
        cls.calls.append(f)
        return SyncThreads.deferToThread(f, *args)


class MimeBombTests(IMAPTestCase):
    def test_mime_bomb_nested_900_levels_gets_truncated_structure(self):
        """
        900 nested multiparts (61 KB, accepted from anyone on port 25) used
        to raise RecursionError out of the MIME walk: every FETCH
        BODYSTRUCTURE or BODY dropped the connection. Now the structure
        stops at L{mime.MAX_DEPTH} levels, the deepest multipart shown with
        one empty text part, as Dovecot does (CVE-2020-12100).
        """
        self.patch(server_module, "threads", SyncThreads)
        bomb = nested_multipart(900)
        self.assertGreater(len(bomb), 60_000)
        c = self.selected(bomb)
        for item in (b"BODYSTRUCTURE", b"BODY"):
            reply = c.cmd(b"f FETCH 1 " + item)
            self.assertTrue(reply.startswith(b"* 1 FETCH (" + item + b" (("), reply[:80])
            self.assertTrue(reply.endswith(b"f OK FETCH completed\r\n"), reply[-200:])
            self.assertEqual(reply.count(b'"mixed"'), mime.MAX_DEPTH + 1)
            self.assertIn(b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'
                          b' "mixed"', reply)
        deepest = b".".join([b"1"] * mime.MAX_DEPTH)
        self.assertEqual(c.cmd(b"b FETCH 1 BODY.PEEK[" + deepest + b".1]"),
                         b"* 1 FETCH (BODY[" + deepest + b".1] {0}\r\n)\r\n"
                         b"b OK FETCH completed\r\n")
        self.assertEqual(c.cmd(b"n NOOP"), b"n OK NOOP completed\r\n")

    def test_20000_sibling_parts_parsed_off_the_reactor(self):
        """
        A 200 KB message of 20,000 parts stalled every other client for up
        to 1.3 s (it was under the size that sent parsing to a thread). Now
        many boundary lines send it to a thread too, and parts past
        L{mime.MAX_PARTS} are left in the last part's body.
        """
        Recording.calls = []
        self.patch(server_module, "threads", Recording)
        c = self.selected(sibling_parts(20_000), MESSAGE)
        reply = c.cmd(b"f FETCH 1 BODYSTRUCTURE")
        self.assertTrue(reply.endswith(b"f OK FETCH completed\r\n"), reply[-200:])
        self.assertEqual(len(Recording.calls), 1)
        self.assertEqual(reply.count(b'("text" "plain"'), mime.MAX_PARTS - 1)
        c.cmd(b"g FETCH 1 BODY.PEEK[2]")
        self.assertEqual(len(Recording.calls), 2)
        c.cmd(b"g FETCH 2 BODYSTRUCTURE")
        self.assertEqual(len(Recording.calls), 2)  # a small one is parsed at once


class SectionTests(IMAPTestCase):
    def fetch(self, c, section):
        reply = c.cmd(b"f FETCH 1 BODY.PEEK[" + section + b"]")
        self.assertTrue(reply.endswith(b")\r\nf OK FETCH completed\r\n"), reply)
        return reply.split(b"}\r\n", 1)[1][:-len(b")\r\nf OK FETCH completed\r\n")]

    def test_body_section_of_non_multipart(self):
        """
        BODY[1] of a single-part message is its body; BODY[2] used to raise
        TypeError out of Twisted's spew_body and the client got C{* BYE}:
        now it is empty, like Dovecot's, and the session goes on.
        """
        c = self.selected(MESSAGE)
        self.assertEqual(self.fetch(c, b"1"), b"Hi Alice,\r\nhow are you?\r\n")
        self.assertEqual(c.cmd(b"f FETCH 1 BODY.PEEK[2]"),
                         b"* 1 FETCH (BODY[2] {0}\r\n)\r\nf OK FETCH completed\r\n")
        self.assertEqual(c.cmd(b"f FETCH 1 BODY.PEEK[1.2.MIME]"),
                         b"* 1 FETCH (BODY[1.2.MIME] {0}\r\n)\r\nf OK FETCH completed\r\n")
        self.assertEqual(c.cmd(b"n NOOP"), b"n OK NOOP completed\r\n")

    def test_rfc822_part_sections(self):
        """
        Numbers inside a message/rfc822 part count the attached message's
        parts, and its HEADER and TEXT are the attached message's (RFC 3501
        6.4.5): they used to give the outer message's.
        """
        c = self.selected(NESTED_RFC822)
        expected = {
            b"1.HEADER": b"From: sub@domain.org\r\nDate: Sun, 12 Aug 2012 12:34:56 +0300\r\n"
                         b'Subject: submsg\r\nContent-Type: multipart/digest; boundary="foo"'
                         b"\r\n\r\n",
            b"1.1": b"From: m1@example.com\r\nSubject: m1\r\n\r\nm1 body\r\n",
            b"1.1.MIME": b"\r\n",
            b"1.1.HEADER": b"From: m1@example.com\r\nSubject: m1\r\n\r\n",
            b"1.1.TEXT": b"m1 body\r\n",
            b"1.2.MIME": b"X-Mime: m2 header\r\n\r\n",
            b"1.2.TEXT": b"m2 body\r\n",
            b"1.HEADER.FIELDS (FROM X-FOO)": b"From: sub@domain.org\r\n\r\n",
            b"1.HEADER.FIELDS.NOT (FROM DATE CONTENT-TYPE)": b"Subject: submsg\r\n\r\n",
        }
        for section, data in expected.items():
            self.assertEqual(self.fetch(c, section), data, section)
        self.assertTrue(self.fetch(c, b"1.TEXT").startswith(b"prologue\r\n\r\n--foo \r\n"))
        self.assertTrue(self.fetch(c, b"1").startswith(b"From: sub@domain.org\r\n"))

    def test_bare_lf_message_sections_served_with_crlf(self):
        """A message copied from another server's Maildir may end lines with LF only."""
        c = self.selected(MULTIPART.replace(b"\r\n", b"\n"))
        self.assertEqual(self.fetch(c, b"1"), b"part one")
        self.assertEqual(self.fetch(c, b"2.MIME"),
                         b"Content-Type: application/octet-stream\r\n"
                         b"Content-Transfer-Encoding: base64\r\n\r\n")
        self.assertIn(b'"base64" 4 NIL NIL NIL NIL) "mixed"', c.cmd(b"b FETCH 1 BODYSTRUCTURE"))


class StructureTests(IMAPTestCase):
    def test_bodystructure_defaults_without_content_type(self):
        """RFC 2045 5.2: no Content-Type is text/plain in US-ASCII, 7bit."""
        c = self.selected(MESSAGE)
        self.assertEqual(
            c.cmd(b"b FETCH 1 (BODYSTRUCTURE BODY)"),
            b'* 1 FETCH (BODYSTRUCTURE ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit"'
            b' 25 2 NIL NIL NIL NIL) BODY ("text" "plain" ("charset" "us-ascii") NIL NIL'
            b' "7bit" 25 2))\r\nb OK FETCH completed\r\n',
        )

    def test_fetch_body_with_folded_boundary(self):
        """The boundary parameter is read from the unfolded field (imaptest)."""
        c = self.selected(FOLDED_BOUNDARY)
        self.assertEqual(
            c.cmd(b"b FETCH 1 BODY"),
            b'* 1 FETCH (BODY (("text" "x-myown" ("charset" "us-ascii") NIL NIL "7bit" 7 1)'
            b' "mixed"))\r\nb OK FETCH completed\r\n',
        )

    def test_rfc822_part_structure_has_envelope_body_and_lines(self):
        c = self.selected(NESTED_RFC822)
        reply = c.cmd(b"b FETCH 1 BODYSTRUCTURE")
        self.assertTrue(reply.startswith(
            b'* 1 FETCH (BODYSTRUCTURE ("message" "rfc822" NIL NIL NIL "7bit" 296'
            b' ("Sun, 12 Aug 2012 12:34:56 +0300" "submsg" ((NIL NIL "sub" "domain.org"))'
        ), reply)
        self.assertIn(b'(("message" "rfc822" NIL NIL NIL "7bit" 46 (NIL "m1" ((NIL NIL "m1"'
                      b' "example.com"))', reply)
        self.assertTrue(reply.endswith(b' 25 NIL NIL NIL NIL))\r\nb OK FETCH completed\r\n'),
                        reply)

    def test_rfc822_header_ends_with_blank_line(self):
        """RFC822.HEADER is BODY[HEADER]: the header as stored, with its empty line."""
        c = self.selected(MESSAGE)
        header = MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
        self.assertEqual(
            c.cmd(b"h FETCH 1 RFC822.HEADER"),
            b"* 1 FETCH (RFC822.HEADER {%d}\r\n%b)\r\nh OK FETCH completed\r\n"
            % (len(header), header),
        )

    def test_envelope_address_groups(self):
        """
        RFC 3501 7.4.2: a group is C{(NIL NIL "name" NIL)}, its members,
        then C{(NIL NIL NIL NIL)}; a comment is the name when there is no
        phrase; an empty Sender is the From.
        """
        c = self.selected(GROUPS)
        real = b'(("Real Name" NIL "user" "domain"))'
        self.assertEqual(
            c.cmd(b"e FETCH 1 ENVELOPE"),
            b'* 1 FETCH (ENVELOPE ("Thu, 15 Feb 2007 01:02:03 +0200" NIL '
            + real + b" " + real + b" " + real + b" "
            b'((NIL NIL "group" NIL)(NIL NIL "g1" "d1.org")(NIL NIL "g2" "d2.org")'
            b'(NIL NIL NIL NIL)(NIL NIL "group2" NIL)(NIL NIL "g3" "d3.org")'
            b"(NIL NIL NIL NIL))"
            b' ((NIL NIL "group" NIL)(NIL NIL NIL NIL)(NIL NIL "group2" NIL)'
            b"(NIL NIL NIL NIL))"
            b' ((NIL "@route" "user" "domain")("Quoted, \\"Name\\"" NIL "q" "x.org"))'
            b" NIL NIL))\r\ne OK FETCH completed\r\n",
        )
