"""mailsrv.imap.sequence: sequence sets as ranges, table tests."""

from twisted.trial import unittest

from mailsrv.imap import sequence


class SequenceSetTests(unittest.TestCase):
    def test_resolve(self):
        for text, star, ranges in [
            (b"1:3,5", 9, [(1, 3), (5, 5)]),
            (b"4:2", 9, [(2, 4)]),
            (b"*:3", 5, [(3, 5)]),
            (b"7:*", 5, [(5, 7)]),
            (b"*", 5, [(5, 5)]),
            (b"*:*", 5, [(5, 5)]),
            (b"5,1:2,3,10:4", 9, [(1, 10)]),
            (b"1:4294967295", 3, [(1, 4294967295)]),
        ]:
            self.assertEqual(sequence.parse(text).resolve(star), ranges, text)

    def test_members_follow_the_mailbox(self):
        uids = [2, 5, 9, 4000000000]
        self.assertEqual(list(sequence.parse(b"1:4294967295").indexes(uids)), [0, 1, 2, 3])
        self.assertEqual(list(sequence.parse(b"3:9,*").indexes(uids)), [1, 2, 3])
        self.assertEqual(list(sequence.parse(b"1").indexes([])), [])
        self.assertEqual(list(sequence.parse(b"2:4294967295").numbers(3)), [2, 3])
        self.assertEqual(list(sequence.parse(b"*:2").numbers(0)), [])
        member = sequence.parse(b"1:3,7,10:*").matcher(12)
        self.assertEqual([n for n in range(15) if n in member], [1, 2, 3, 7, 10, 11, 12])

    def test_refused(self):
        for text in (b"", b"0", b"4294967296", b"-1", b"+1", b"1_0", b" 1", b"1:", b"1::2",
                     b"1,", b"**", b"\xd9\xa3"):
            self.assertRaises(sequence.BadSequenceSet, sequence.parse, text)
