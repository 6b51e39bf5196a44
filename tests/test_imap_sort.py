"""
SORT and THREAD as pure functions (mailsrv/imap/sort.py, thread.py) and
their keys (mailsrv/store/sortkeys.py): RFC 5256's base subject, the
address and display-name keys of RFC 5256 and 5957, and the threading
algorithms on the cases of Dovecot's imaptest groups (sort-*, thread*),
which tests/integration/test_imaptest.py also runs against the server.
"""

from calendar import timegm

from hypothesis import given, strategies as st
from twisted.trial import unittest

from mailsrv.imap import sort, thread
from mailsrv.store import headerfields, sortkeys
from tests.fuzzing import examples


def records(*headers, arrivals=None, sizes=None):
    """L{sort.Record}s of messages with these header blocks (str), sequence numbers from 1."""
    out = []
    for i, header in enumerate(headers):
        fields = headerfields.parse(header.replace("\n", "\r\n").encode() + b"\r\n")
        out.append(sort.Record(i + 1, 100 + i, sizes[i] if sizes else 10,
                               arrivals[i] if arrivals else 0, fields))
    return out


def seqs(ordered):
    return [r.seq for r in ordered]


def sorted_seqs(found, criteria):
    """The sequence numbers of C{found} (L{records}) as L{sort.sort} orders them."""
    rows = sort.Rows.of(found)
    return [rows.seqs[at] for at in sort.sort(rows, criteria)]


def threads(algorithm, found):
    return thread.format_threads(thread.thread(algorithm, found), lambda r: r.seq)


class BaseSubjectTests(unittest.TestCase):
    """RFC 5256 2.1."""

    def test_examples(self):
        table = [
            ("", ""),
            ("a", "a"),
            ("Re: b", "b"),
            ("[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)", "b"),
            ("Re: [FWD: c]", "c"),
            ("re: [fwd: [fwd: re: [fwd: babylon]]]", "babylon"),
            ("[xyz]", "[xyz]"),  # a blob is the base when nothing follows it
            ("[a] [b] x", "x"),
            ("Ad: Re: Ad: Re: Ad: x", "Ad: Re: Ad: Re: Ad: x"),
            ("b (a)", "b (a)"),
            ("Re:\t  spaced \t out  ", "spaced out"),
            ("RE [list]: topic", "topic"),
            ("Fw: x (fwd)", "x"),
        ]
        for subject, base in table:
            self.assertEqual(sortkeys.base_subject(subject)[0], base, subject)

    def test_reply_or_forward(self):
        for subject, reply in [("Re: x", True), ("x (fwd)", True), ("[fwd: x]", True),
                               ("[list] x", False), ("x", False), ("Ad: x", False)]:
            self.assertEqual(sortkeys.base_subject(subject)[1], reply, subject)

    def test_encoded_words_decoded_first(self):
        self.assertEqual(sortkeys.subject_key("=?iso-8859-1?q?RE:_C?="), ("C", 1))
        self.assertEqual(sortkeys.subject_key("=?us-ascii?b?UmU6IGM=?="), ("C", 1))
        self.assertEqual(sortkeys.subject_key("=?iso-8859-1?q?_?="), ("", 0))
        self.assertEqual(sortkeys.subject_key(None), ("", 0))

    def test_broken_encoded_words_read_as_written(self):
        """Regression: the email package's own errors (broken base64, a charset named in
        8-bit bytes) escaped decode_words, failing SEARCH and SORT on such a message."""
        for raw in ("=?utf-8?b?a?=", "=?u\xffx?q?a?=", "=?u\udcffx?q?a?="):
            self.assertEqual(sortkeys.decode_words(raw), raw)

    @examples(300)
    @given(st.text(alphabet=" \t[]():refwdREFWDxyz\u00e9", max_size=40))
    def test_idempotent_and_trimmed(self, subject):
        base, _ = sortkeys.base_subject(subject)
        self.assertEqual(sortkeys.base_subject(base)[0], base)
        self.assertEqual(base, base.strip(" "))

    @examples(200)
    @given(st.text(max_size=30))
    def test_reply_prefix_changes_nothing_but_the_flag(self, subject):
        base, _ = sortkeys.base_subject(subject)
        self.assertEqual(sortkeys.base_subject("Re: " + subject), (base, True))


class CasemapTests(unittest.TestCase):
    def test_titlecase_then_decomposed(self):
        self.assertEqual(sortkeys.casemap("abc[_"), "ABC[_")
        self.assertEqual(sortkeys.casemap("\u00e9t\u00e9"), sortkeys.casemap("E\u0301TE\u0301"))
        self.assertEqual(sortkeys.casemap("stra\u00dfe"), "STRA\u00dfE")  # simple mapping


class AddressKeyTests(unittest.TestCase):
    """RFC 5256 FROM/TO/CC (the addr-mailbox) and RFC 5957 DISPLAYFROM/DISPLAYTO."""

    def test_keys(self):
        table = [
            ("foo bar <a@b.c>", ("A", "FOO BAR")),
            ("b@c.d", ("B", "B@C.D")),
            ("d", ("D", "D")),
            ("=?iso-8859-1?q?foo_aar?= <e@f.g>", ("E", "FOO AAR")),
            ("user2@domain2.org (foo bar)", ("USER2", "FOO BAR")),
            ("a: xx@xx.org, yy@yy.org;", ("A", "A")),  # a group: its name, as ENVELOPE
            ("empty:;", ("EMPTY", "EMPTY")),
            ('"Last, First" <x@y>, z@w', ("X", "LAST, FIRST")),
            ("", (None, None)),
            (None, (None, None)),
        ]
        for raw, keys in table:
            self.assertEqual(sortkeys.address_keys(raw), keys, raw)

    def test_message_ids(self):
        self.assertEqual(sortkeys.message_ids("<a@b> (c) < c@d >, junk <nohost>"),
                         ["a@b", "c@d"])
        fields = headerfields.parse(b"In-Reply-To: <1@b> <2@b>\r\nMessage-ID: <x@y>\r\n")
        self.assertEqual((fields.thread_id, fields.thread_refs), ("x@y", "1@b"))
        fields = headerfields.parse(b"References: <1@b>\r\n <2@b>\r\nIn-Reply-To: <3@b>\r\n")
        self.assertEqual((fields.thread_id, fields.thread_refs), (None, "1@b 2@b"))


class SortTests(unittest.TestCase):
    """RFC 5256 SORT on the messages of imaptest's sort-* groups."""

    def test_criteria(self):
        self.assertEqual(sort.parse_criteria([b"reverse", b"DATE", b"Subject"]),
                         [("DATE", True), ("SUBJECT", False)])
        for bad in ([], [b"REVERSE"], [b"DATE", b"REVERSE"], [b"SENDER"],
                    [b"REVERSE", b"REVERSE", b"DATE"], [[b"DATE"]]):
            self.assertRaises(sort.BadCriteria, sort.parse_criteria, bad)

    @examples(200)
    @given(st.lists(st.sampled_from([b"REVERSE", b"DATE", b"ARRIVAL", b"SIZE", b"X", b"to"]),
                    max_size=6))
    def test_criteria_parse_or_refuse(self, words):
        try:
            criteria = sort.parse_criteria(words)
        except sort.BadCriteria:
            return
        self.assertEqual(len(criteria), sum(1 for w in words if w.upper() != b"REVERSE"))

    def test_addresses(self):
        found = records("From: user2@domain2.org\nCc: user2@domain2.org (foo bar)",
                        "From: user2@domain1.org\nCc: user2: blah@domain1.org;",
                        "From: user1@domain1.org\nCc: user1@domain1.org", arrivals=[1, 2, 3])
        for key in ("FROM", "CC"):
            self.assertEqual(sorted_seqs(found, [(key, False)]), [3, 1, 2])
            self.assertEqual(sorted_seqs(found, [(key, True)]), [1, 2, 3])
            self.assertEqual(sorted_seqs(found, [(key, False), ("ARRIVAL", True)]),
                             [3, 2, 1])

    def test_date_falls_back_to_arrival(self):
        found = records("Date: Fri, 22 Feb 2008 00:00:00 +0200",
                        "Date: Fri, 22 Feb 2008 02:00:00 +0200",
                        "Date: Fri, 22 Feb 2008 01:00:00 +0200",
                        "Date: Fri, 22 Feb 2008 02:00:00 +0200",
                        "Subject: foo",
                        "Date: Fri, 22 Feb 2008 02:00:00 +0200",
                        "Subject: foo bar",
                        # INTERNALDATE 01:30:23 and 01:00:00 +0200
                        arrivals=[0, 0, 0, 0, timegm((2008, 2, 21, 23, 30, 23)), 0,
                                  timegm((2008, 2, 21, 23, 0, 0))],
                        sizes=[1, 2, 3, 4, 5, 6, 7])
        self.assertEqual(sorted_seqs(found, [("DATE", False)]), [1, 3, 7, 5, 2, 4, 6])
        self.assertEqual(sorted_seqs(found, [("DATE", True)]), [2, 4, 6, 5, 3, 7, 1])
        self.assertEqual(sorted_seqs(found, [("DATE", False), ("SIZE", True)]),
                         [1, 7, 3, 5, 6, 4, 2])

    def test_subject(self):
        subjects = ["a", "C", "b", "_", "[foo] Fwd: [bar] Re: fw: b (fWd)  (fwd)", "b (a)",
                    "Re: [FWD: c]", "[xyz]", None, "=?iso-8859-1?q?_?=", "Re: =?utf-8?q?b?=",
                    "=?iso-8859-1?q?RE:_C?=", "=?us-ascii?b?UmU6IGM=?=", "Ad: Re: Ad: Re: Ad: x",
                    "re: [fwd: [fwd: re: [fwd: babylon]]]"]
        found = records(*["" if s is None else "Subject: " + s for s in subjects])
        self.assertEqual(sorted_seqs(found, [("SUBJECT", False)]),
                         [9, 10, 1, 14, 3, 5, 11, 6, 15, 2, 7, 12, 13, 8, 4])

    def test_display(self):
        found = records("To: foo bar <a@b.c>", "To: b@c.d", "To: d",
                        "To: =?iso-8859-1?q?foo_aar?= <e@f.g>",
                        "To: =?iso-8859-1?q?foo_car?= <f@g.h>", "To: a: xx@xx.org, yy@yy.org;",
                        "To: z: aa@aa.org, bb@bb.org;", "To: empty:;")
        self.assertEqual(sorted_seqs(found, [("DISPLAYTO", False)]), [6, 2, 3, 8, 4, 1, 5, 7])
        self.assertEqual(sorted_seqs(found, [("DISPLAYTO", True)]), [7, 5, 1, 4, 8, 3, 2, 6])


class ThreadTests(unittest.TestCase):
    """RFC 5256 3: ORDEREDSUBJECT and REFERENCES."""

    def test_orderedsubject(self):
        found = records("Subject: a\nDate: Fri, 22 Feb 2008 22:00:10 +0200",
                        "Date: Fri, 22 Feb 2008 22:00:09 +0200\nSubject: b",
                        "Date: Fri, 22 Feb 2008 22:00:08 +0200\nSubject: Re: a",
                        "Date: Fri, 22 Feb 2008 22:00:07 +0200\nSubject: b",
                        "Subject: a", "Subject: b", "Subject: a", "Subject: B",
                        arrivals=[0, 0, 0, 0, 1203710430, 1203710429, 1203710428, 1203710427])
        self.assertEqual(threads("ORDEREDSUBJECT", found), b"(4 (2)(8)(6))(3 (1)(7)(5))")
        self.assertEqual(threads("ORDEREDSUBJECT", found[:2]), b"(2)(1)")
        self.assertEqual(threads("ORDEREDSUBJECT", found[1:4:2]), b"(4 2)")
        self.assertEqual(threads("ORDEREDSUBJECT", []), b"")

    def test_references_loop_and_late_parent(self):
        """imaptest's thread: the message a reference loop would hang under starts a thread."""
        found = records("Message-ID: <a@b>", "Message-Id: <b@b>\nReferences: <a@b> <c@b>",
                        "Message-Id: <c@b>\nReferences: <b@b>",
                        arrivals=[17, 15, 16])
        self.assertEqual(threads("REFERENCES", found), b"(3 2)(1)")
        self.assertEqual(threads("REFERENCES", renumbered(found[1:])), b"(2 1)")

    def test_references_duplicate_ids(self):
        self.assertEqual(threads("REFERENCES", records("Message-Id: <a@b>", "Message-Id: <a@b>")),
                         b"(1)(2)")
        self.assertEqual(threads("REFERENCES", records(
            "Message-Id: <a@b>\nSubject: foo", "Message-Id: <a@b>\nSubject: Re: foo")), b"(1 2)")
        found = records("Message-Id: <a@b>", "Message-Id: <b@b>\nReferences: <a@b>",
                        "Message-Id: <c@b>\nReferences: <b@b>",
                        "Message-Id: <b@b>\nReferences: <a@b>")
        self.assertEqual(threads("REFERENCES", found), b"(1 (2 3)(4))")
        self.assertEqual(threads("REFERENCES", renumbered([found[0], found[2], found[3]])),
                         b"(1 3 2)")

    def test_references_dummies(self):
        # a dummy with one child at the top gives way to it; then subjects merge
        self.assertEqual(threads("REFERENCES", records(
            "Message-Id: <a@b>\nSubject: foo",
            "Message-Id: <b@b>\nReferences: <c@b>\nSubject: Re: foo")), b"(1 2)")
        # with two children it stays
        self.assertEqual(threads("REFERENCES", records("References: <a@b>", "References: <a@b>")),
                         b"((1)(2))")
        found = records("Message-ID: <1@b>", "Message-Id: <2@b>\nIn-Reply-To: <1@b>",
                        "Message-Id: <3@b>\nIn-Reply-To: <1@b>",
                        "Message-Id: <4@b>\nIn-Reply-To: <2@b>",
                        "Message-Id: <5@b>\nIn-Reply-To: <2@b>", arrivals=[2, 1, 1, 1, 1])
        self.assertEqual(threads("REFERENCES", found[:4]), b"(1 (2 4)(3))")
        self.assertEqual(threads("REFERENCES", renumbered(found[2:4])), b"(1)(2)")
        self.assertEqual(threads("REFERENCES", renumbered(found[2:])), b"(1)((2)(3))")

    def test_subject_merging(self):
        """RFC 5256 3 step 5: a reply joins the original; two originals get a dummy."""
        found = records("Subject: x\nMessage-Id: <1@b>", "Subject: Re: x\nMessage-Id: <2@b>",
                        "Subject: x\nMessage-Id: <3@b>", "Subject: y\nMessage-Id: <4@b>",
                        arrivals=[1, 2, 3, 4])
        self.assertEqual(threads("REFERENCES", found), b"((1 2)(3))(4)")

    def test_deep_chain_does_not_recurse(self):
        depth = 20000
        found = records(*[f"Message-Id: <{i}@x>\nReferences: <{i - 1}@x>" if i else
                          "Message-Id: <0@x>" for i in range(depth)])
        data = threads("REFERENCES", found)
        self.assertEqual(data, b"(" + b" ".join(b"%d" % (i + 1) for i in range(depth)) + b")")
        # each message with two replies, one of them a leaf: nested, depth deep
        found = records(*["Message-Id: <0@x>"] + [
            f"Message-Id: <{i}@x>\nReferences: <{(i - 1) // 2 * 2}@x>" for i in range(1, depth)])
        self.assertTrue(threads("REFERENCES", found).startswith(b"(1 (2)(3 (4)(5 (6)"))


def renumbered(found):
    """C{found} as if the others were expunged: sequence numbers from 1."""
    return [r._replace(seq=i + 1) for i, r in enumerate(found)]


class SimpleAddressTests(unittest.TestCase):
    """The regular expression for plain addresses agrees with ENVELOPE's tokenizer."""

    @examples(500)
    @given(st.text(alphabet=' \t"<>@.,;:()\\[]abAB=?_\u00e9', max_size=24))
    def test_same_as_tokenizer(self, raw):
        simple = sortkeys._simple_first_address(raw)
        if simple is not None:
            self.assertEqual(simple, sortkeys._first_address(raw))

    def test_plain_forms_take_the_fast_path(self):
        for raw in ("Sender 0 <sender0@remote.test>", '"Last, First" <x@y.z>', "a.b@c.d",
                    "<a@b>", " =?utf-8?q?x?= <a@b> "):
            self.assertIsNotNone(sortkeys._simple_first_address(raw), raw)
            self.assertEqual(sortkeys._simple_first_address(raw), sortkeys._first_address(raw))
