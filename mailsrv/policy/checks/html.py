"""
[antispam.html]: IMail's HTML features (issue 17). The message is spam
when its HTML parts have at least C{min_features} of the C{features}
selected: nested_table, hyperlink, script_tag, invalid_tag (a made-up
tag), image_tag, mailto_link, deceptive_url (a link whose text shows one
host and goes to another), embedded_comment (a comment splitting a word:
C{via<!-- -->gra}) and deceptive_text (text hidden, tiny, or in its
background's colour). The parts are read by L{mailsrv.policy.htmltext}.
"""

from mailsrv.policy.hooks import ContentFilter
from mailsrv.policy.htmltext import read_html
from mailsrv.policy.urlhost import host_of
from mailsrv.policy.verdict import Verdict


def deceptive(href, text):
    """Whether a link's C{text} shows a host other than the one C{href} goes to."""
    if not text or " " in text or "." not in text:
        return False
    shown = host_of(text) or host_of("http://" + text)
    target = host_of(href)
    if shown is None or target is None:
        return False
    return target != shown and not target.endswith("." + shown)


def features(content):
    """The L{htmltext.FEATURES} a message's HTML parts have."""
    found = set()
    for source in content.texts("text/html"):
        html = read_html(source)
        found |= html.features
        if any(deceptive(href, text) for href, text in html.links):
            found.add("deceptive_url")
    return found


class HTMLFeatures(ContentFilter):
    """
    A body filter: spam when the HTML has at least C{min_features} of
    C{selected}.

    @param selected: the feature names that count, in config order.
    @param action: the L{mailsrv.policy.actions.Action} for spam.
    @param subject_prefix: its own Subject mark, or L{None}.
    """

    def __init__(self, selected, min_features, action, subject_prefix=None):
        self.selected = tuple(selected)
        self.min_features = min_features
        self.action = action
        self.subject_prefix = subject_prefix

    def judge(self, content):
        """The L{Verdict} on a message's L{content.Content}."""
        found = features(content)
        counted = [name for name in self.selected if name in found]
        if not counted or len(counted) < self.min_features:
            return Verdict.found(False)
        return Verdict.found(True, self.action, ("html " + " ".join(counted),),
                             subject_prefix=self.subject_prefix)
