"""
The statistical (Bayesian) word filter's arithmetic ([antispam.statistical],
issue 17), apart from any message or file access: the words of a text, the
table of how often each word was seen in spam and in good mail, and the
spam probability of a message's words.

Words are runs of letters only, case-folded, of 2 to 40 letters: IMail
counts no numbers or special characters, and shorter or longer runs are
noise. The probability is Gary Robinson's: each word's spamminess f(w),
adjusted for words seen rarely (strength 1, unknown words 0.5), combined
over the 150 most telling words (|f(w) - 0.5| at least 0.1) with Fisher's
chi-square method, as SpamBayes does. It answers 0.5 when the message says
nothing either way.

The table file (antispam-table.txt) is text an admin can read and diff:

    _messages 1200 3400           # how many spam and good messages it learned from
    viagra 310 2                  # word, spam count, good count
    meeting 12 540

Each word counts once per message it was in.
"""

import math
import re

from mailsrv.directory.listfile import ListFileError, read_lines, replace_list_file

MIN_LETTERS, MAX_LETTERS = 2, 40
# Exclude-list entries: words never counted (IMail: 1-15 characters).
MAX_EXCLUDED = 15
# How many of a message's words decide, and how far from 0.5 a word must be.
MAX_CLUES, MIN_STRENGTH = 150, 0.1
# Robinson's constants: the weight of the unknown-word probability, and it.
STRENGTH, UNKNOWN = 1.0, 0.5
# Distinct words taken from one message (its cost follows its size up to this).
MAX_WORDS = 20000
MESSAGES = "_messages"


def words(text, exclude=frozenset()):
    """The distinct counted words of C{text}, in the order first seen."""
    found = {}
    for runs in _ascii_runs(text) if text.isascii() else _runs(text):
        for word in runs:
            if MIN_LETTERS <= len(word) <= MAX_LETTERS and word not in exclude:
                found[word] = None
        if len(found) >= MAX_WORDS:
            return list(found)[:MAX_WORDS]
    return list(found)


# ASCII text (most mail), a piece at a time: its letters, every other byte a
# space (bytes.translate), split. Three to eight times faster than the
# regular expression below, and the pieces keep the list of words small.
_ASCII_SPACES = bytes(c if chr(c).isalpha() and c < 128 else 32 for c in range(256))
_PIECE = 1 << 16


def _ascii_runs(text):
    """The lower-case letter runs of ASCII C{text}, in lists (one for each piece)."""
    letters = text.encode("ascii").translate(_ASCII_SPACES)
    start = 0
    while start < len(letters):
        end = letters.find(b" ", start + _PIECE)
        end = len(letters) if end < 0 else end
        yield letters[start:end].decode("ascii").lower().split()
        start = end


def _runs(text):
    """The case-folded letter runs of any C{text}, a list for each run the expression finds."""
    for found in _LETTERS.finditer(text):
        run = found.group()
        yield [run.casefold()] if run.isalpha() else [w.casefold() for w in _letter_runs(run)]


# Runs of letters, as the regular expression engine knows them (fast); a
# run holding a character it counts as a letter and str.isalpha() does not
# (a superscript digit) is split by isalpha.
_LETTERS = re.compile(r"[^\W\d_]+")


def _letter_runs(text):
    return "".join(char if char.isalpha() else " " for char in text).split()


def parse_exclude(path):
    """An exclude list: one word a line (letters, 1-15); C{#} comments."""
    excluded = set()
    for lineno, text in read_lines(path):
        if not text.isalpha() or len(text) > MAX_EXCLUDED:
            raise ListFileError(path, lineno, f"{text!r} is not a word of 1-{MAX_EXCLUDED} "
                                              "letters")
        excluded.add(text.casefold())
    return frozenset(excluded)


class Table:
    """
    Word counts: C{counts[word] = [spam messages, good messages]} it was
    in, and how many messages of each kind were learned from.
    """

    def __init__(self, spam_messages=0, ham_messages=0, counts=None):
        self.spam_messages = spam_messages
        self.ham_messages = ham_messages
        self.counts = {} if counts is None else counts

    @classmethod
    def parse(cls, path):
        """
        The table in file C{path} (none: an empty table).

        @raise ListFileError: a bad line, named by number.
        """
        table = cls()
        for lineno, text in read_lines(path):
            try:
                table.add_line(text)
            except ValueError as e:
                raise ListFileError(path, lineno, str(e)) from None
        return table

    def add_line(self, text):
        """
        Add the counts of one line of a table file.

        @raise ValueError: not a line of the format, with what is wrong.
        """
        parts = text.split()
        if len(parts) != 3 or not all(p.isdigit() for p in parts[1:]):
            raise ValueError("write: word spam_count good_count")
        word, spam, ham = parts[0], int(parts[1]), int(parts[2])
        if word == MESSAGES:
            self.spam_messages += spam
            self.ham_messages += ham
        elif word.isalpha() and MIN_LETTERS <= len(word) <= MAX_LETTERS:
            counts = self.counts.setdefault(word.casefold(), [0, 0])
            counts[0] += spam
            counts[1] += ham
        else:
            raise ValueError(f"{word!r} is not a word of {MIN_LETTERS}-{MAX_LETTERS} letters")

    def text(self):
        """The file's text: the message counts, then the words, most seen first."""
        lines = [f"{MESSAGES} {self.spam_messages} {self.ham_messages}\n"]
        lines.extend(f"{word} {spam} {ham}\n" for word, (spam, ham) in
                     sorted(self.counts.items(), key=lambda item: (-sum(item[1]), item[0])))
        return "".join(lines)

    def write(self, path):
        """Replace file C{path} with this table (whole or not at all)."""
        replace_list_file(path, self.text())

    def learn(self, message_words, spam):
        """One message's words (L{words}), spam or good."""
        side = 0 if spam else 1
        for word in set(message_words):
            self.counts.setdefault(word, [0, 0])[side] += 1
        if spam:
            self.spam_messages += 1
        else:
            self.ham_messages += 1

    def spamminess(self, word):
        """Robinson's f(w): the word's spam probability, pulled to 0.5 when seen rarely."""
        spam, ham = self.counts.get(word, (0, 0))
        seen = spam + ham
        if not seen:
            return UNKNOWN
        spam_ratio = spam / max(self.spam_messages, 1)
        ham_ratio = ham / max(self.ham_messages, 1)
        p = spam_ratio / (spam_ratio + ham_ratio) if spam_ratio + ham_ratio else UNKNOWN
        return (STRENGTH * UNKNOWN + seen * p) / (STRENGTH + seen)

    def probability(self, message_words):
        """
        C{(spam probability 0..1, clues)}: Fisher's combination of the most
        telling words; C{clues} are C{(word, f(w))}, most telling first
        (for the reason and `mailsrv explain`).
        """
        scored = []
        for word in set(message_words):
            f = self.spamminess(word)
            if abs(f - UNKNOWN) >= MIN_STRENGTH:
                scored.append((abs(f - UNKNOWN), word, f))
        scored.sort(reverse=True)
        clues = [(word, f) for _, word, f in scored[:MAX_CLUES]]
        if not clues:
            return UNKNOWN, []
        # Fisher: S (H), how sure the words make it spam (good mail), then
        # (1 + S - H) / 2, as SpamBayes' chi2_spamprob does
        dof = 2 * len(clues)
        spam = 1.0 - _chi2q(-2.0 * sum(math.log(1.0 - f) for _, f in clues), dof)
        ham = 1.0 - _chi2q(-2.0 * sum(math.log(f) for _, f in clues), dof)
        return (1.0 + spam - ham) / 2.0, clues


def _chi2q(x2, dof):
    """P(chi-square with C{dof} (even) degrees of freedom >= C{x2}), clamped to 0..1."""
    m = x2 / 2.0
    term = total = math.exp(-m)
    for i in range(1, dof // 2):
        term *= m / i
        total += term
    return min(total, 1.0)
