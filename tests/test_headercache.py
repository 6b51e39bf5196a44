"""
The folder's header cache (mailsrv/store/headercache.py) and SEARCH over
it: whatever the cache says must be what the message files say.
"""

import copy
import itertools
import os
from pathlib import Path

from hypothesis import example, given, strategies as st
from twisted.internet import task
from twisted.trial import unittest

from mailsrv.imap import mailbox as mailbox_module
from mailsrv.imap.mailbox import Mailbox, Message
from mailsrv.imap.search import compile_search
from mailsrv.store import folder as folder_module
from mailsrv.store import delivery, headercache, headerfields
from mailsrv.store.mailstore import MailStore
from tests.fulldisk import FailingOS
from tests.fuzzing import examples
from tests.helpers import opened, result
from tests.test_imap import SyncThreads

_users = itertools.count()

FIELD_NAMES = ["From", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "References",
               "In-Reply-To", "X-Tag", "SUBJECT", "subject ", "Subjects", "from\t"]
PIECES = [b"needle", b"NEEDLE", b"n\xc3\xa9e", b"N\xc3\x89E", b"\xe9t\xe9", b"caf\xe9",
          b"=?utf-8?q?n=C3=A9edle?=", b"=?iso-8859-1?q?caf=E9?=", b"=?bogus?x?y?=",
          b"a@b.example", b"Bob <bob@x.example>", b"bob@x.example (Bob)",
          b'"Bo\\"b" <b@x>', b"\xe2\x84\xaa", b"\xc4\xb0", b"\\", b"\t", b" ", b"",
          b"x", b"k", b"Tue, 14 Nov 2023 22:13:20 +0000", b"1 Jan 2024 00:00 -1200",
          b"\r", b"\x00"]
FOLDS = [b"\r\n\t", b"\r\n ", b"\n "]
NEEDLES = ["needle", "NEEDLE", "n\u00e9e", "k", "i", "a@b", "bob@x", "bob <bob@x.example>",
           "=?", "", "\\", "x y", "\u00e9", "caf", "\u212a", "b\"b", "<b@x>"]
DATES = [b"14-Nov-2023", b"13-Nov-2023", b"1-Jan-2024", b"31-Dec-2023"]

values = st.lists(st.one_of(st.sampled_from(PIECES), st.sampled_from(FOLDS)),
                  max_size=6).map(b"".join)
huge = st.sampled_from(PIECES).map(lambda piece: piece + b" <a@b>" * 3000)
header_lines = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(FIELD_NAMES), st.one_of(values, huge)).map(
            lambda nv: nv[0].encode() + b": " + nv[1]),
        st.sampled_from([b"garbage line", b" continued", b"From nobody"]),
    ),
    max_size=8)


@st.composite
def messages(draw):
    lines = draw(header_lines)
    body = draw(st.sampled_from([b"body needle text", b"", b"caf\xe9 NEEDLE"]))
    ending = draw(st.sampled_from([b"\r\n", b"\n"]))
    data = b"".join(line.replace(b"\r\n", ending) + ending for line in lines)
    if draw(st.booleans()):  # a header block that ends
        data += ending + body + ending
    return data


def _criteria(depth):
    needle = st.sampled_from(NEEDLES).map(lambda n: n.encode("utf-8"))
    leaf = st.one_of(
        st.tuples(st.sampled_from([b"SUBJECT", b"FROM", b"TO", b"CC", b"BCC", b"BODY",
                                   b"TEXT"]), needle).map(list),
        st.tuples(st.just(b"HEADER"), st.sampled_from(FIELD_NAMES).map(
            lambda n: n.strip().encode()), needle).map(list),
        st.tuples(st.sampled_from([b"SENTON", b"SENTBEFORE", b"SENTSINCE"]),
                  st.sampled_from(DATES)).map(list),
        st.sampled_from([[b"ALL"], [b"SEEN"], [b"UNSEEN"]]),
    )
    if depth == 0:
        return leaf
    inner = _criteria(depth - 1)
    return st.one_of(
        leaf,
        inner.map(lambda c: [b"NOT"] + c),
        st.tuples(inner, inner).map(lambda lr: [b"OR", lr[0], lr[1]]),
        st.tuples(inner, inner).map(lambda lr: lr[0] + lr[1]),
    )


criteria = _criteria(2)


class CacheTestCase(unittest.TestCase):
    def setUp(self):
        root = Path(self.mktemp())
        root.mkdir()
        clock = task.Clock()
        clock.advance(1_795_000_000)
        self.patch(folder_module, "threads", SyncThreads)
        self.patch(mailbox_module, "threads", SyncThreads)
        self.store = MailStore(root / "mail", clock)

    def folder_with(self, datas):
        """A loaded folder of a new user holding C{datas}, in order (every second one seen)."""
        user = f"user{next(_users)}@example.test"
        maildir = self.store.maildir(user)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(maildir / sub, exist_ok=True)
        for n, data in enumerate(datas):
            (maildir / "cur" / f"{1_700_000_000 + n}.test{n}:2,{'S' if n % 2 else ''}"
             ).write_bytes(data)
        return opened(self.store, user)

    def search(self, folder, query):
        """SEARCH as a session does it (the header cache where it has the fields)."""
        found, _ = result(Mailbox(folder, True).search(copy.deepcopy(query), False))
        return found

    @staticmethod
    def file_search(folder, query):
        """SEARCH reading every file, as before the cache."""
        uids = folder.uids()
        matcher = compile_search(copy.deepcopy(query), len(uids), uids[-1] if uids else 0)
        found = []
        for seq, uid in enumerate(uids, 1):
            message = Message(folder, folder.message(uid))
            message.whole = matcher.reads_body
            if matcher(seq, message):
                found.append(seq)
        return found

    def cached(self, folder):
        """The UIDs the cache file has a good record for."""
        return folder.headers.valid


class AgreementTests(CacheTestCase):
    """The cache never says what the file does not."""

    @given(st.lists(messages(), min_size=1, max_size=4), st.lists(criteria, min_size=1,
                                                                  max_size=3))
    @examples(200)
    @example([b"Subject: \xe2\x84\xaa\r\n\r\n"], [[b"SUBJECT", b"k"]])
    @example([b"Subject: a\r\n\tneedle\r\n\r\n"], [[b"SUBJECT", b"a\tneedle"]])
    @example([b"From: \"Bo\\\"b\" <b@x>\r\n\r\n"], [[b"FROM", b'b"b']])
    def test_search_from_cache_is_search_from_files(self, datas, queries):
        folder = self.folder_with(datas)
        for query in queries:
            expected = self.file_search(folder, query)
            self.assertEqual(self.search(folder, query), expected, query)  # builds it
            result(folder.headers.idle())
            self.assertEqual(self.search(folder, query), expected, query)  # uses it
        if folder.headers.path.exists():
            records = folder.headers.path.read_bytes().split(b"\n")[1:-1]
            self.assertEqual({int(r.split(b"\t")[0]) for r in records}, set(folder.uids()))
        for _ in range(2):  # keys made from the raw records, then read from the cache
            fields = folder.fields(folder.uids())
            result(folder.headers.idle())
            for uid in folder.uids():
                message = Message(folder, folder.message(uid))
                for name in headerfields.CACHED:
                    self.assertEqual(fields[uid].values(name), message.header_values(name))
                self.assertEqual(fields[uid], headerfields.parse(folder.read_header(uid)))

    @given(messages())
    @examples(200)
    def test_record_holds_the_fields(self, data):
        fields = headerfields.parse(data[:headerfields.header_end(data) or len(data)])
        line = headercache.encode(7, "1.key\tx\\", fields)
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1)
        uid, key, decoded = headercache.decode(line[:-1])
        self.assertEqual((uid, key), (7, "1.key\tx\\"))
        self.assertIn(decoded, (fields, None))
        self.assertEqual(decoded is None, line.endswith(b"\t!\n"))
        self.assertLessEqual(len(line), headercache.MAX_RECORD)

    @given(messages(), st.sets(st.sampled_from(headerfields.Fields._fields)))
    @examples(100)
    def test_record_decoded_in_part(self, data, names):
        """SORT and THREAD decode only the columns they read: the same values, the others None."""
        fields = headerfields.parse(data[:headerfields.header_end(data) or len(data)])
        line = headercache.encode(7, "key", fields)[:-1]
        _, _, whole = headercache.decode(line)
        _, _, part = headercache.decode(line, headercache.column_indexes(names))
        if whole is None:
            self.assertIsNone(part)
            return
        if any(name in names for name in headerfields.Fields._fields[headerfields.RAW:]):
            names = names | {"sort_subject"}  # tells whether the record has keys
        for name in headerfields.Fields._fields:
            self.assertEqual(getattr(part, name), getattr(whole, name) if name in names else None)


    def test_damaged_record_is_an_error(self):
        empty = b"\t\\N" * len(headercache.COLUMNS)
        headercache.decode(b"7\tkey" + empty)
        date = [name for name, _ in headercache.COLUMNS].index("date")
        bad_date = empty.split(b"\t")
        bad_date[1 + date] = b"not a number"
        for damaged in (b"7\tkey\\x" + empty, b"7\tkey" + empty[2:], b"x\tkey" + empty,
                        b"7\tkey" + b"\t".join(bad_date)):
            self.assertRaises(ValueError, headercache.decode, damaged)


SUBJECTS = [b"Subject: needle one\r\n\r\nbody\r\n", b"Subject: other\r\n\r\nbody\r\n",
            b"Subject: needle two\r\n\r\nbody\r\n"]


class BehaviourTests(CacheTestCase):
    def built(self, datas=SUBJECTS, found=(1, 3)):
        folder = self.folder_with(datas)
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), list(found))
        result(folder.headers.idle())
        self.assertEqual(self.cached(folder), set(folder.uids()))
        return folder

    def reopen(self, folder):
        """The folder as the next process sees it."""
        store = MailStore(self.store.mail_root, self.store.clock)
        return opened(store, folder.user)

    def records(self, folder):
        return folder.headers.path.read_bytes().split(b"\n")[1:-1]

    def test_format(self):
        folder = self.built([b"Subject: a\tb\r\n\tc\r\nDate: 1 Jan 2024 00:00 +0000\r\n\r\n"],
                            found=[])
        header, record, end = folder.headers.path.read_bytes().split(b"\n")
        self.assertEqual(header, b"mailsrv-headercache 1 %d " % folder.uidvalidity
                         + headercache.SPEC)
        self.assertTrue(headercache.SPEC.startswith(
            b"from_:s,to:s,cc:s,bcc:s,subject:s,date_text:s,message_id:s,"
            b"references:s,in_reply_to:s,date:i"))
        # a search writes the raw columns only
        self.assertEqual(record, b"1\t1700000000.test0\t\\N\t\\N\t\\N\t\\N\ta\\tb\\tc\t"
                         b"1 Jan 2024 00:00 +0000\t\\N\t\\N\t\\N\t1704067200")
        self.assertEqual(end, b"")

    def test_keys_added_by_the_first_sort(self):
        """SORT and THREAD append a few records with keys; the last record of a UID is its record."""
        folder = self.built(SUBJECTS * 2, found=(1, 3, 4, 6))
        raw = self.records(folder)
        self.assertEqual({r.count(b"\t") for r in raw}, {1 + headerfields.RAW})
        fields = folder.fields([3], headercache.column_indexes({"sort_subject"}))
        result(folder.headers.idle())
        with_keys = self.records(folder)[len(raw):]
        self.assertEqual(len(with_keys), 1)  # appended: under half the folder
        self.assertEqual(with_keys[0].count(b"\t"), 1 + len(headercache.COLUMNS))
        self.assertEqual(fields[3].sort_subject, "NEEDLE TWO")
        again = self.reopen(folder)
        result(again.headers.ready())
        self.assertEqual(again.fields([3]), fields)
        self.assertEqual(len(self.records(again)), len(raw) + 1)  # nothing to make again

    def test_keys_for_most_of_the_folder_rewrite_it(self):
        folder = self.built()
        folder.fields(folder.uids(), headercache.column_indexes({"sort_subject"}))
        result(folder.headers.idle())
        records = self.records(folder)
        self.assertEqual(len(records), len(folder.uids()))
        self.assertEqual({r.count(b"\t") for r in records}, {1 + len(headercache.COLUMNS)})

    def test_sort_by_another_key_from_records_with_keys(self):
        """Regression: a SORT (TO) after a SORT (SUBJECT) made records of None keys."""
        folder = self.folder_with([b"To: %s@x\r\nSubject: %s\r\n\r\n" % (to, to) for to in (b"c", b"a", b"b")])
        uids = folder.uids()
        result(folder.headers.ready())  # as SORT starts it
        folder.fields(uids, headercache.column_indexes({"sort_subject"}))  # from the files
        result(folder.headers.idle())
        fields = folder.fields(uids, headercache.column_indexes({"sort_to"}))
        result(folder.headers.idle())
        for uid in uids:
            self.assertEqual(fields[uid].sort_to, headerfields.parse(folder.read_header(uid)).sort_to)
        self.assertEqual(folder.fields(uids), {uid: headerfields.parse(folder.read_header(uid))
                                               for uid in uids})

    def test_keys_kept_at_compaction(self):
        folder = self.built()
        self.patch(headercache.HeaderCache, "COMPACT_AFTER", 1)
        folder.fields(folder.uids())
        result(folder.headers.idle())
        records = self.records(folder)
        self.assertEqual(len(records), len(folder.uids()))  # rewritten: the last of each
        self.assertEqual({r.count(b"\t") for r in records}, {1 + len(headercache.COLUMNS)})
        self.assertEqual(self.cached(folder), set(folder.uids()))
        self.assertEqual(folder.headers._lines, len(records))
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [1, 3])

    def test_no_cache_until_a_search_needs_it(self):
        folder = self.folder_with(SUBJECTS)
        self.search(folder, [b"SEEN"])
        self.search(folder, [b"BODY", b"x"])
        self.assertFalse(folder.headers.path.exists())

    def test_loaded_by_the_next_process(self):
        folder = self.reopen(self.built())
        calls = []
        self.patch(folder_module.Folder, "read_start",
                   lambda *args: calls.append(args))
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [1, 3])
        self.assertEqual(calls, [])  # no file read

    def test_kept_up_to_date_once_a_folder_has_one(self):
        folder = self.reopen(self.built())
        (folder.path / "new" / "1700000100.test9").write_bytes(b"Subject: needle new\r\n\r\n")
        folder.arrived(["1700000100.test9"])
        result(folder.headers.idle())
        self.assertEqual(len(self.records(folder)), 4)

    def test_rebuilt_when_deleted(self):
        folder = self.built()
        folder.headers.path.unlink()
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [1, 3])  # files
        result(folder.headers.idle())
        self.assertEqual(len(self.records(folder)), 3)
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [1, 3])

    def test_rebuilt_when_of_other_fields(self):
        folder = self.built()
        path = folder.headers.path
        path.write_bytes(path.read_bytes().replace(headercache.SPEC,
                                                   headercache.SPEC + b",extra:s", 1))
        folder = self.reopen(folder)
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [1, 3])
        result(folder.headers.idle())
        self.assertTrue(path.read_bytes().split(b"\n")[0].endswith(headercache.SPEC))
        self.assertEqual(len(self.records(folder)), 3)

    def test_stale_record_is_ignored(self):
        """A record naming another file (a file replaced under the same UID) is not used."""
        folder = self.built()
        path = folder.headers.path
        header, first, second, third, end = path.read_bytes().split(b"\n")
        # UID 2's record says "needle" but names UID 1's file
        forged = first.replace(b"1\t", b"2\t", 1)
        path.write_bytes(b"\n".join([header, first, forged, third, end]))
        folder = self.reopen(folder)
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [1, 3])
        result(folder.headers.idle())
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [1, 3])

    def test_records_of_another_uidvalidity_are_ignored(self):
        folder = self.built()
        path = folder.headers.path
        data = path.read_bytes().replace(b"other", b"needle three")
        path.write_bytes(data.replace(b" %d " % folder.uidvalidity, b" 1 ", 1))
        folder = self.reopen(folder)
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [1, 3])
        result(folder.headers.idle())
        self.assertNotIn(b"needle three", path.read_bytes())

    def test_torn_last_line_is_ignored_and_cut_off(self):
        folder = self.built()
        path = folder.headers.path
        data = path.read_bytes()
        torn = data[:data.rindex(b"\t")]  # the last record loses its end (and newline)
        path.write_bytes(torn.replace(b"needle two", b"other two"))
        folder = self.reopen(folder)
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [1, 3])
        result(folder.headers.idle())
        records = self.records(folder)
        self.assertEqual(len(records), 3)
        self.assertNotIn(b"other two", path.read_bytes())
        self.assertTrue(path.read_bytes().endswith(b"\n"))

    def test_damaged_record_rewrites_the_file(self):
        folder = self.built()
        path = folder.headers.path
        header, first, second, third, end = path.read_bytes().split(b"\n")
        path.write_bytes(b"\n".join([header, first, b"2\tgarbage", third, end]))
        folder = self.reopen(folder)
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [1, 3])
        result(folder.headers.idle())
        self.assertNotIn(b"garbage", path.read_bytes())
        self.assertEqual(len(self.records(folder)), 3)

    def test_delivered_message_is_searchable_at_once(self):
        folder = self.built()
        maildir = folder.path
        (maildir / "new" / "1700000100.test9").write_bytes(b"Subject: needle new\r\n\r\n")
        folder.arrived(["1700000100.test9"])
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [1, 3, 4])
        result(folder.headers.idle())
        self.assertEqual(self.cached(folder), {1, 2, 3, 4})
        self.assertEqual(len(self.records(folder)), 4)

    def test_appended_copied_and_moved_messages_get_records(self):
        folder = self.built()
        other = self.folder_with([])
        other_uid = result(other.add(b"Subject: needle appended\r\n\r\n"))
        self.search(other, [b"SUBJECT", b"x"])  # starts its cache
        result(folder.copy(1, other))
        result(folder.move([3], other))
        result(other.headers.idle())
        self.assertEqual(self.cached(other), set(other.uids()))
        self.assertEqual(self.search(other, [b"SUBJECT", b"needle"]), [1, 2, 3])
        self.assertIn(other_uid, other.uids())

    def test_expunged_records_go_at_compaction(self):
        folder = self.built()
        folder.headers.COMPACT_AFTER = 0
        folder.delete([1, 2])
        result(folder.headers.idle())
        self.assertEqual([r.split(b"\t")[0] for r in self.records(folder)], [b"3"])
        self.assertEqual(self.cached(folder), {3})
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [1])

    def test_expunged_records_stay_until_they_outnumber_the_rest(self):
        folder = self.built()
        folder.delete([1])
        result(folder.headers.idle())
        self.assertEqual(len(self.records(folder)), 3)
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [2])

    def test_huge_header_is_read_from_its_file(self):
        huge = b"References: " + b"<a@b> " * 5000 + b"\r\nSubject: needle\r\n\r\n"
        folder = self.folder_with(SUBJECTS + [huge])
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [1, 3, 4])
        result(folder.headers.idle())
        self.assertEqual(self.cached(folder), {1, 2, 3})
        self.assertEqual(self.records(folder)[3], b"4\t1700000003.test3\t!")
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [1, 3, 4])
        self.assertEqual(self.search(folder, [b"HEADER", b"references", b"<a@b> <a@b>"]),
                         [4])
        result(folder.headers.idle())
        self.assertEqual(len(self.records(folder)), 4)  # its file read again, not recorded

    def test_full_disk_leaves_searches_to_the_files(self):
        folder = self.built()
        full = FailingOS()
        self.patch(headercache, "write_all", full.write)  # writes half, then fails
        (folder.path / "new" / "1700000100.test9").write_bytes(b"Subject: needle new\r\n\r\n")
        folder.arrived(["1700000100.test9"])  # its record cannot be written: torn
        result(folder.headers.idle())
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [1, 3, 4])
        self.assertFalse(folder.headers.path.read_bytes().endswith(b"\n"))
        self.flushLoggedErrors()
        self.patch(headercache, "write_all", delivery.write_all)  # disk freed
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [1, 3, 4])
        result(folder.headers.idle())
        folder = self.reopen(folder)  # the torn record is ignored, then cut off
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle"]), [1, 3, 4])
        result(folder.headers.idle())
        self.assertEqual(len(self.records(folder)), 4)

    def test_body_search_reads_each_file_once(self):
        folder = self.folder_with(SUBJECTS)
        opens = []
        real_open, real_start = folder_module.Folder.open, folder_module.Folder.read_start
        self.patch(folder_module.Folder, "open",
                   lambda f, uid: opens.append(uid) or real_open(f, uid))
        self.patch(folder_module.Folder, "read_start",
                   lambda f, uid, *rest: opens.append(uid) or real_start(f, uid, *rest))
        query = [b"BODY", b"body", b"TEXT", b"needle", b"HEADER", b"X-Tag", b"",
                 b"NOT", b"BODY", b"zzz"]
        self.assertEqual(self.search(folder, query), [])
        self.assertEqual(sorted(opens), [1, 2, 3])
        del opens[:]
        self.assertEqual(self.search(folder, [b"SUBJECT", b"needle", b"BODY", b"body"]),
                         [1, 3])
        self.assertEqual(sorted(opens), [1, 2, 3])

    def test_fields_for_sort(self):
        folder = self.built()
        fields = folder.fields([1, 3, 99])
        self.assertEqual(sorted(fields), [1, 3])
        self.assertEqual(fields[3].subject, "needle two")
        for uid in fields:
            self.assertEqual(fields[uid], headerfields.parse(folder.read_header(uid)))

    def test_fields_for_sort_in_part(self):
        folder = self.built()
        fields = folder.fields([1, 3], headercache.column_indexes({"subject"}))
        self.assertEqual(fields[3].subject, "needle two")
        self.assertIsNone(fields[3].from_)


class DateTests(unittest.TestCase):
    """headerfields reads the usual Date forms itself: the same as email.utils."""

    @given(st.sampled_from(["", "Tue, ", "tue, ", "Xyz, "]), st.integers(0, 99),
           st.sampled_from(["Jan", "Feb", "Dec", "jan", "Foo"]), st.integers(0, 9999),
           st.integers(0, 99), st.integers(0, 99), st.integers(0, 99),
           st.sampled_from(["+", "-"]), st.integers(0, 9999),
           st.sampled_from(["", "GMT", "UT", "UTC", "gmt", "EST", "Z"]),
           st.sampled_from(["", " (UTC)", " (Pacific Standard Time)", " (a)(b)", " ()", " (",
                            " x", "  (UTC)"]))
    @examples(300)
    @example("", 1, "Jan", 2024, 0, 0, 0, "-", 0, "", "")
    @example("Tue, ", 14, "Nov", 2023, 22, 13, 20, "+", 0, "GMT", "")
    def test_usual_date(self, weekday, day, month, year, hour, minute, second, sign, zone,
                        named, comment):
        text = (f"{weekday}{day} {month} {year:04d} {hour:02d}:{minute:02d}:{second:02d} "
                f"{named or f'{sign}{zone:04d}'}{comment}")
        self.assertEqual(headerfields._epoch(text), headerfields._parsed_epoch(text))


class HeaderEndTests(unittest.TestCase):
    @given(st.lists(st.sampled_from([b"\r", b"\n", b"a", b"\r\n"]), max_size=12).map(b"".join))
    @examples(500)
    def test_first_empty_line(self, data):
        """Where the first empty line (CRLF or bare LF) ends."""
        ends = [i + len(sep) for sep in (b"\n\r\n", b"\n\n") if (i := data.find(sep)) >= 0]
        if data[:1] == b"\n" or data[:2] == b"\r\n":
            expected = 1 if data[:1] == b"\n" else 2
        else:
            expected = min(ends) if ends else None
        self.assertEqual(headerfields.header_end(data), expected)
