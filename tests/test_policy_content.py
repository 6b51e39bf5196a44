"""
The shared content analysis of the body hook (mailsrv/policy/content.py):
what the content filters read, on messages built here, and its limits
against hostile MIME.
"""

import base64
import io
import time
import zipfile

from hypothesis import example, given, strategies as st
from twisted.internet import defer, threads
from twisted.trial import unittest

from mailsrv.policy import content, hooks
from mailsrv.policy.hooks import Message
from tests.fuzzing import examples
from tests.test_smtp.support import run_threads_inline


def multipart(boundary, *parts, subtype="mixed", header=b""):
    """A multipart entity of C{parts} (each a header block and body, bytes)."""
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return (header + b"Content-Type: multipart/" + subtype.encode() + b"; boundary=\""
            + boundary + b"\"\r\n\r\npreamble\r\n" + body + b"--" + boundary + b"--\r\n")


def zipped(*names):
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as archive:
        for name in names:
            archive.writestr(name, b"MZ")
    return data.getvalue()


def attachment(name, data, content_type=b"application/octet-stream"):
    return (b"Content-Type: " + content_type + b"\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=\"" + name + b"\"\r\n\r\n"
            + base64.encodebytes(data).replace(b"\n", b"\r\n"))


TOP = b"From: x@remote.test\r\nSubject: hi\r\n"


class PartsTests(unittest.TestCase):
    def test_a_plain_message(self):
        parsed = content.parse(TOP + b"\r\nhello\r\n")
        [part] = parsed.parts
        self.assertEqual(part.header, TOP)
        self.assertEqual((part.content_type, part.text, part.depth), ("text/plain", "hello\r\n", 0))
        self.assertEqual(parsed.limits, frozenset())

    def test_nested_multiparts(self):
        inner = multipart(b"in", b"Content-Type: text/plain\r\n\r\nplain text",
                          b"Content-Type: text/html\r\n\r\n<p>html</p>", subtype="alternative")
        message = multipart(b"out", inner, attachment(b"a.pdf", b"%PDF"), header=TOP)
        parsed = content.parse(message)
        self.assertEqual([(p.content_type, p.depth) for p in parsed.parts],
                         [("multipart/mixed", 0), ("multipart/alternative", 1),
                          ("text/plain", 2), ("text/html", 2), ("application/octet-stream", 1)])
        self.assertEqual(parsed.texts("text/plain"), ["plain text"])
        self.assertEqual(parsed.texts("text/html"), ["<p>html</p>"])
        self.assertEqual(parsed.parts[1].boundary, "in")
        self.assertEqual(parsed.parts[4].filename, "a.pdf")

    def test_an_attached_message_is_read_too(self):
        attached = TOP + multipart(b"b", attachment(b"x.exe", b"MZ"))
        message = multipart(b"a", b"Content-Type: message/rfc822\r\n\r\n" + attached,
                            header=TOP)
        names = [p.filename for p in content.parse(message).parts]
        self.assertIn("x.exe", names)

    def test_transfer_encodings_and_charsets(self):
        message = multipart(
            b"b",
            b"Content-Type: text/plain; charset=iso-8859-1\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9 cr=\r\n=E8me",
            b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes("<b>héllo</b>".encode()),
            header=TOP)
        parsed = content.parse(message)
        self.assertEqual(parsed.texts("text/plain"), ["café crème"])
        self.assertEqual(parsed.texts("text/html"), ["<b>héllo</b>"])

    def test_bad_charsets_are_tolerated(self):
        for charset in (b"x-no-such", b"rot13", b"base64", b"punycode", b'"', b"utf-8''"):
            parsed = content.parse(TOP + b"Content-Type: text/plain; charset=" + charset
                                   + b"\r\n\r\ncaf\xc3\xa9 \xff")
            self.assertEqual(parsed.texts("text/plain"), ["café \ufffd"], charset)

    def test_broken_base64_keeps_what_decodes(self):
        parsed = content.parse(TOP + b"Content-Transfer-Encoding: base64\r\n\r\n"
                               + base64.b64encode(b"hello world") + b"!!=junk=")
        self.assertTrue(parsed.texts("text/plain")[0].startswith("hello wo"))

    def test_file_names_rfc2231_and_encoded_words(self):
        message = multipart(
            b"b",
            b"Content-Type: application/pdf; name*=utf-8''r%C3%A9sum%C3%A9.pdf\r\n\r\nx",
            b"Content-Type: application/pdf\r\nContent-Disposition: attachment;\r\n"
            b" filename*0=\"in\"; filename*1=\"voice.exe\"\r\n\r\nx",
            b"Content-Type: application/pdf; name=\"=?utf-8?b?w6kuZXhl?=\"\r\n\r\nx",
            b"Content-Type: application/pdf; name=\"=?bogus?q?a=FF.exe?=\"\r\n\r\nx",
            b"Content-Type: application/pdf; name=\"bad \xffname\x01.exe\"\r\n\r\nx",
            header=TOP)
        names = [p.filename for p in content.parse(message).parts[1:]]
        self.assertEqual(names, ["résumé.pdf", "invoice.exe", "é.exe", "a\ufffd.exe",
                                 "bad \ufffdname?.exe"])

    def test_names_inside_a_zip(self):
        message = multipart(b"b", attachment(b"docs.zip", zipped("a.txt", "dir/run.exe")),
                            attachment(b"x.bin", zipped("b.scr"), b"application/zip"),
                            attachment(b"fake.zip", b"not a zip"), header=TOP)
        parts = content.parse(message).parts
        self.assertEqual([p.members for p in parts[1:]], [("a.txt", "dir/run.exe"), ("b.scr",), ()])

    def test_no_line_end_reaches_a_name(self):
        """Names and types go into reasons, hence headers: no CR or LF in them."""
        message = multipart(b"b", attachment(b"a.zip", zipped("x\r\nX-Evil: 1.exe")),
                            b"Content-Type: text/\r\n x-evil\r\n\r\nx", header=TOP)
        parts = content.parse(message).parts
        self.assertEqual(parts[1].members, ("x??X-Evil: 1.exe",))
        self.assertEqual(parts[2].content_type, "text/ x-evil")

    def test_a_zip_with_too_many_members_is_not_listed(self):
        message = multipart(b"b", attachment(b"many.zip", zipped(
            *(f"{i}.txt" for i in range(content.MAX_MEMBERS + 1)))), header=TOP)
        parsed = content.parse(message)
        self.assertEqual(parsed.parts[1].members, ())
        self.assertEqual(parsed.limits, {"zip"})

    def test_multipart_without_boundary(self):
        parsed = content.parse(TOP + b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nhi\r\n")
        self.assertEqual([(p.content_type, p.boundary) for p in parsed.parts],
                         [("multipart/mixed", None)])

    def test_no_closing_delimiter(self):
        message = TOP + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nlast"
        self.assertEqual(content.parse(message).texts("text/plain"), ["last"])


class LimitsTests(unittest.TestCase):
    def test_depth(self):
        message = b"Content-Type: text/plain\r\n\r\ndeep"
        for level in range(content.MAX_DEPTH + 5):
            message = multipart(b"b%d" % level, message)
        parsed = content.parse(message)
        self.assertEqual(max(p.depth for p in parsed.parts), content.MAX_DEPTH - 1)
        self.assertEqual(parsed.limits, {"depth"})

    def test_parts(self):
        message = multipart(b"b", *[b"\r\nx"] * (content.MAX_PARTS + 10))
        parsed = content.parse(message)
        self.assertEqual(len(parsed.parts), content.MAX_PARTS)
        self.assertEqual(parsed.limits, {"parts"})

    def test_huge_header(self):
        header = b"X-Big: " + b"a" * (content.MAX_HEADER + 10) + b"\r\n"
        parsed = content.parse(header + TOP + b"\r\nbody")
        self.assertEqual(len(parsed.parts[0].header), content.MAX_HEADER)
        self.assertEqual(parsed.texts("text/plain"), ["body"])
        self.assertEqual(parsed.limits, {"header"})

    def test_a_long_content_type_is_cut(self):
        value = b"multipart/mixed; boundary=b" + b'; a="' + b';' * 200_000 + b'"'
        started = time.process_time()
        parsed = content.parse(TOP + b"Content-Type: " + value + b"\r\n\r\n--b\r\n\r\nx\r\n")
        self.assertLess(time.process_time() - started, 1)
        self.assertEqual(parsed.parts[0].boundary, "b")

    def test_decoded_bytes(self):
        self.patch(content, "MAX_DECODED", 10)
        parsed = content.parse(multipart(b"b", b"\r\n0123456789", b"\r\nmore", header=TOP))
        self.assertEqual(parsed.texts("text/plain"), ["0123456789", ""])
        self.assertEqual(parsed.limits, {"decoded"})

    def test_size(self):
        self.patch(content, "MAX_READ", 10)
        parsed = content.parse(b"\r\n0123456789abc")
        self.assertEqual(parsed.texts("text/plain"), ["01234567"])
        self.assertEqual(parsed.limits, {"size"})


# Lines a MIME message is made of, hostile ones included.
_LINES = st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=b", b"Content-Type: multipart/alternative;",
    b" boundary=\"c\"", b"boundary=b", b"--b", b"--b--", b"--c", b"--c--", b"",
    b"Content-Type: message/rfc822", b"Content-Type: text/plain; charset=utf-7",
    b"Content-Type: text/html; charset*=x''y", b"Content-Transfer-Encoding: base64",
    b"Content-Transfer-Encoding: quoted-printable", b"aGVsbG8=", b"=E9=\xff", b"=?utf-8?b?w6k",
    b"Content-Disposition: attachment; filename*0*=utf-8''%FF; filename*1=.exe",
    b"Content-Type: application/zip; name=a.zip", b"PK\x05\x06" + b"\xff" * 18,
])
MESSAGES = st.one_of(
    st.lists(st.one_of(_LINES, st.binary(max_size=30)), max_size=60).map(b"\r\n".join),
    st.binary(max_size=2000),
)


class PropertyTests(unittest.TestCase):
    @examples(300)
    @given(MESSAGES)
    @example(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n" * 3000)
    @example(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
             + b"--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" * 300)
    def test_any_message_is_analysed_in_bounded_time(self, message):
        started = time.process_time()
        parsed = content.parse(message)
        self.assertLess(time.process_time() - started, 2)
        self.assertLessEqual(len(parsed.parts), content.MAX_PARTS)
        self.assertTrue(all(p.depth < content.MAX_DEPTH for p in parsed.parts))


class SharedTests(unittest.TestCase):
    """Message.judged: one analysis for every check that asks."""

    def test_small_messages_on_the_reactor_thread(self):
        """Up to INLINE, no thread hop and no Deferred: the analysis and the judge run at once."""
        self.patch(threads, "deferToThread", lambda *a: self.fail("a thread hop"))
        message = Message(hooks.INLINE, lambda: io.BytesIO(TOP + b"\r\nhello"))
        self.assertEqual(message.judged(lambda analysed: analysed.texts("text/plain")),
                         ["hello"])

    def test_a_small_message_with_much_html_is_judged_in_a_thread(self):
        """Analysed at once, but its HTML (over INLINE_HTML) read by the judges in a thread."""
        hops = []

        def in_thread(f, *args):
            hops.append(f)
            return defer.maybeDeferred(f, *args)

        self.patch(threads, "deferToThread", in_thread)
        html = b"<b>x</b>" * (hooks.INLINE_HTML // 8 + 1)
        message = Message(hooks.INLINE, lambda: io.BytesIO(
            TOP + b"Content-Type: text/html\r\n\r\n" + html))
        first = message.judged(lambda analysed: len(analysed.parts))
        second = message.judged(lambda analysed: analysed.texts("text/html")[0][:8])
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)),
                         (1, "<b>x</b>"))
        self.assertEqual(len(hops), 2)  # (one hop for each judge here: a hop runs at once)

    def test_parsed_once(self):
        opened = []

        def open_message():
            opened.append(1)
            return io.BytesIO(TOP + b"\r\nhello")

        message = Message(11, open_message)
        first, second = (message.judged(lambda analysed: analysed) for _ in range(2))
        self.assertIs(first, second)
        self.assertEqual(first.texts("text/plain"), ["hello"])
        self.assertEqual(opened, [1])

    def test_a_failure_reaches_every_check(self):
        opened = []

        def unreadable():
            opened.append(1)
            raise OSError("gone")

        message = Message(1, unreadable)
        for _ in range(2):
            self.assertRaises(OSError, message.judged, lambda analysed: analysed)
        self.assertEqual(opened, [1])

    def test_a_big_message_failure_reaches_every_check(self):
        run_threads_inline(self)

        def unreadable():
            raise OSError("gone")

        message = Message(hooks.INLINE + 1, unreadable)
        first = message.judged(lambda analysed: analysed)
        self.failureResultOf(first, OSError)
        self.failureResultOf(message.judged(lambda analysed: analysed), OSError)

    def test_few_messages_at_once(self):
        started = []

        def in_thread(f, *args):
            started.append((f, args, defer.Deferred()))
            return started[-1][2]

        def run(n):
            f, args, d = started[n]
            d.callback(f(*args))

        self.patch(threads, "deferToThread", in_thread)
        messages = [Message(hooks.INLINE + 1, lambda: io.BytesIO(b""))
                    for _ in range(hooks.MAX_ANALYSES + 1)]
        waiting = [m.judged(lambda analysed: len(analysed.parts)) for m in messages]
        self.assertEqual(len(started), hooks.MAX_ANALYSES)
        run(0)
        # The first message's judges, and the next message's analysis:
        self.assertEqual(len(started), hooks.MAX_ANALYSES + 2)
        ran = 1
        while ran < len(started):  # (the semaphore is the module's: give every token back)
            run(ran)
            ran += 1
        self.assertEqual([self.successResultOf(d) for d in waiting], [1] * len(waiting))

    def test_judges_share_one_thread_hop(self):
        """The text filters of one message judge in one thread hop together; each gets its own result."""
        hops = []

        def in_thread(f, *args):
            hops.append((f, args, defer.Deferred()))
            return hops[-1][2]

        def run_hop(n):
            f, args, d = hops[n]
            d.callback(f(*args))

        self.patch(threads, "deferToThread", in_thread)
        self.patch(hooks, "INLINE", 0)  # (a big message's way)
        message = Message(6, lambda: io.BytesIO(TOP + b"\r\nhello"))

        def broken(analysed):
            raise ValueError("judge exploded")

        first = message.judged(lambda analysed: analysed.texts("text/plain"))
        second = message.judged(broken)
        third = message.judged(lambda analysed: len(analysed.parts))
        run_hop(0)  # the analysis
        self.assertEqual(len(hops), 2)  # then every judge, in one hop
        run_hop(1)
        self.assertEqual(self.successResultOf(first), ["hello"])
        self.failureResultOf(second, ValueError)
        self.assertEqual(self.successResultOf(third), 1)
        later = message.judged(lambda analysed: "late")  # after that hop: one more
        run_hop(2)
        self.assertEqual((self.successResultOf(later), len(hops)), ("late", 3))
