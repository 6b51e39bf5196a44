"""
[antispam.statistical]: the Bayesian word filter (issue 17). It reads the
words a reader sees: the Subject, the text/plain parts and what the
text/html parts show (L{mailsrv.policy.htmltext}), and gives the message
the spam probability of its words by the word table (L{bayes}); at or above
C{threshold} the message is spam, and the reason names the probability and
the words that weighed most, so an admin sees why.

The table and the exclude list are plain files an admin (and `mailsrv
filter train`) edits; they are re-read within a second of a change, a big
one in a thread (L{mailsrv.directory.listfile.WatchedFile}: a big table's
parse never holds the reactor), the previous contents judging meanwhile.
"""

from mailsrv.policy import bayes
from mailsrv.policy.hooks import ContentFilter
from mailsrv.policy.reading import body_text, subject_of
from mailsrv.policy.verdict import Verdict

# Words named in the reason (the most telling ones).
NAMED_CLUES = 5


def message_words(content, exclude=frozenset()):
    """The counted words (L{bayes.words}) of a message's L{content.Content}."""
    return bayes.words(subject_of(content) + "\n" + body_text(content), exclude)


class StatisticalFilter(ContentFilter):
    """
    A body filter: spam when the message's words make it spam with at
    least C{threshold} probability.

    @param table: a L{mailsrv.directory.listfile.WatchedFile} of the
        L{bayes.Table}.
    @param exclude: one of the exclude list (words never counted).
    @param action: the L{mailsrv.policy.actions.Action} for spam.
    @param subject_prefix: its own Subject mark, or L{None}.
    """

    def __init__(self, table, exclude, threshold, action, subject_prefix=None):
        self.table = table
        self.exclude = exclude
        self.lists = (table, exclude)
        self.threshold = threshold
        self.action = action
        self.subject_prefix = subject_prefix

    def judge(self, content):
        """The L{Verdict} on a message's L{content.Content}."""
        probability, clues = self.table.value.probability(
            message_words(content, self.exclude.value))
        if probability < self.threshold:
            return Verdict.found(False)
        words = ", ".join([word for word, f in clues if f > bayes.UNKNOWN][:NAMED_CLUES])
        return Verdict.found(True, self.action, (f"statistical {probability:.2f} ({words})",),
                             subject_prefix=self.subject_prefix)
