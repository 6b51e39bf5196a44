"""
The statistical filter's arithmetic (mailsrv/policy/bayes.py): words,
the table file, learning and Robinson-Fisher probabilities.
"""

from hypothesis import given, strategies as st
from twisted.trial import unittest

from mailsrv.directory.listfile import ListFileError
from mailsrv.policy import bayes
from tests.fuzzing import examples


class WordsTests(unittest.TestCase):
    def test_letters_only_case_folded_each_once(self):
        self.assertEqual(bayes.words("Cheap PILLS, cheap! v1agra 2024 a ok x_y Straße"),
                         ["cheap", "pills", "agra", "ok", "strasse"])

    def test_excluded_and_lengths(self):
        text = "the meeting " + "z" * 41 + " " + "y" * 40
        self.assertEqual(bayes.words(text, frozenset({"the"})), ["meeting", "y" * 40])

    def test_cost_follows_the_text_up_to_a_cap(self):
        text = " ".join("w" + "".join(chr(ord("a") + (n // 26 ** i) % 26) for i in range(4))
                        for n in range(bayes.MAX_WORDS + 50))
        self.assertEqual(len(bayes.words(text)), bayes.MAX_WORDS)

    def test_exclude_list(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# never counted\nThe\nand  # a comment\n")
        self.assertEqual(bayes.parse_exclude(path), {"the", "and"})
        with open(path, "w") as f:
            f.write("ok\nnot-a-word\n")
        with self.assertRaises(ListFileError) as e:
            bayes.parse_exclude(path)
        self.assertIn(":2: 'not-a-word' is not a word of 1-15 letters", str(e.exception))


tables = st.builds(
    bayes.Table,
    st.integers(0, 10 ** 6), st.integers(0, 10 ** 6),
    st.dictionaries(st.text(st.characters(whitelist_categories=("Ll",)), min_size=2,
                            max_size=40).filter(lambda w: w == w.casefold()),
                    st.lists(st.integers(0, 10 ** 6), min_size=2, max_size=2), max_size=20))


class TableTests(unittest.TestCase):
    def path(self, text):
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    @given(tables)
    @examples(100)
    def test_written_and_read_back(self, table):
        path = self.mktemp()
        table.write(path)
        again = bayes.Table.parse(path)
        self.assertEqual((again.spam_messages, again.ham_messages, again.counts),
                         (table.spam_messages, table.ham_messages, table.counts))

    def test_file_format(self):
        table = bayes.Table(3, 5)
        table.learn(["cheap", "pills"], spam=True)
        table.learn(["meeting", "cheap"], spam=False)
        self.assertEqual(table.text(), "_messages 4 6\ncheap 1 1\nmeeting 0 1\npills 1 0\n")

    def test_bad_lines_are_named(self):
        for text, problem in [("cheap 1\n", "write: word spam_count good_count"),
                              ("cheap one 2\n", "write: word spam_count good_count"),
                              ("v1agra 1 2\n", "'v1agra' is not a word of 2-40 letters")]:
            with self.assertRaises(ListFileError) as e:
                bayes.Table.parse(self.path("_messages 1 1\n" + text))
            self.assertIn(f":2: {problem}", str(e.exception))

    def test_repeated_words_add_up_and_missing_file_is_empty(self):
        table = bayes.Table.parse(self.path("Cheap 1 2\ncheap 3 4\n"))
        self.assertEqual(table.counts, {"cheap": [4, 6]})
        self.assertEqual(bayes.Table.parse(self.mktemp()).counts, {})


class ProbabilityTests(unittest.TestCase):
    def trained(self):
        table = bayes.Table()
        for _ in range(50):
            table.learn(bayes.words("cheap pills buy now casino winner"), spam=True)
            table.learn(bayes.words("meeting agenda lunch tomorrow report"), spam=False)
        return table

    def test_spam_and_good_mail(self):
        table = self.trained()
        spam, clues = table.probability(bayes.words("buy cheap pills at the casino"))
        self.assertGreater(spam, 0.99)
        self.assertEqual({word for word, _ in clues}, {"buy", "cheap", "pills", "casino"})
        good, _ = table.probability(bayes.words("lunch after the meeting"))
        self.assertLess(good, 0.01)

    def test_unknown_words_say_nothing(self):
        self.assertEqual(self.trained().probability(["hello", "world"]), (0.5, []))
        self.assertEqual(bayes.Table().probability(["cheap"]), (0.5, []))

    def test_rare_words_pulled_to_the_middle(self):
        table = bayes.Table(100, 100, {"once": [1, 0], "often": [90, 0]})
        self.assertLess(table.spamminess("once"), table.spamminess("often"))
        self.assertAlmostEqual(table.spamminess("once"), 0.75)

    @given(tables, st.lists(st.sampled_from(["cheap", "pills", "lunch", "meeting", "other"]),
                            max_size=5))
    @examples(100)
    def test_mirrored_table_mirrors_the_probability(self, table, message):
        """Swap what is spam and what is good: the probability becomes 1 - p."""
        for word in message:
            table.counts.setdefault(word, [len(word), 1])
        mirror = bayes.Table(table.ham_messages, table.spam_messages,
                             {w: [h, s] for w, (s, h) in table.counts.items()})
        p, _ = table.probability(message)
        q, _ = mirror.probability(message)
        self.assertTrue(0.0 <= p <= 1.0)
        self.assertAlmostEqual(p, 1.0 - q, places=9)

    def test_chi2q(self):
        self.assertEqual(bayes._chi2q(0.0, 2), 1.0)
        self.assertLess(bayes._chi2q(1000.0, 4), 1e-100)
