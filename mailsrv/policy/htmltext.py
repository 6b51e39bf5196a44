"""
What a reader sees of an HTML part, and where its links and images go,
for the content filters of issue 17 (the statistical and phrase filters
read the text, the URL filter the links and images).

The stdlib's C{html.parser} reads it: it is forgiving of broken markup, as
mail clients are, and needs no dependency; the part's size is capped
(L{MAX_HTML}) so its cost follows what a sender can grow only so far.
Text inside C{script}, C{style}, C{head} and C{template} is not shown, so
it is not text; block elements and images end a word (C{<p>a</p><p>b</p>}
is two).
"""

from dataclasses import dataclass, field
from html.parser import HTMLParser

MAX_HTML = 2 << 20   # characters of one HTML part read
MAX_LINKS = 10000    # links and images kept
_HIDDEN = frozenset({"script", "style", "head", "template", "noscript"})
_BLOCKS = frozenset({"p", "div", "br", "tr", "td", "th", "li", "ul", "ol", "table", "h1",
                     "h2", "h3", "h4", "h5", "h6", "hr", "blockquote", "pre", "body", "html",
                     "section", "article", "header", "footer", "form", "title"})


@dataclass
class Html:
    """
    @ivar text: what a reader sees, words apart as shown.
    @ivar links: C{(href, the link's text)} of each C{<a href>}.
    @ivar images: the C{src} of each C{<img>}.
    """

    text: str = ""
    links: list = field(default_factory=list)
    images: list = field(default_factory=list)


def read_html(source):
    """The L{Html} of C{source} (text; at most L{MAX_HTML} characters of it are read)."""
    reader = _Reader()
    try:
        reader.feed(source[:MAX_HTML])
        reader.close()
    except (AssertionError, ValueError):  # html.parser's own complaints about hopeless input
        pass
    return reader.html()


class _Reader(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self._text = []
        self._hidden = 0
        self._links, self._images = [], []
        self._link = None  # the open <a>: [href, its text pieces]

    def handle_starttag(self, tag, attrs):
        if tag in _HIDDEN:
            self._hidden += 1
        elif tag in _BLOCKS:
            self._text.append("\n")
        elif tag == "img":  # (an image stands between the words beside it)
            self._text.append(" ")
        if len(self._links) + len(self._images) >= MAX_LINKS:
            return
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            self._close_link()
            self._link = [values["href"], []]
        elif tag == "img" and values.get("src"):
            self._images.append(values["src"])

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag in _HIDDEN:
            self._hidden -= 1

    def handle_endtag(self, tag):
        if tag in _HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _BLOCKS:
            self._text.append("\n")
        if tag == "a":
            self._close_link()

    def handle_data(self, data):
        if self._hidden:
            return
        self._text.append(data)
        if self._link is not None:
            self._link[1].append(data)

    def _close_link(self):
        if self._link is not None:
            href, pieces = self._link
            self._links.append((href, " ".join("".join(pieces).split())))
            self._link = None

    def html(self):
        self._close_link()
        return Html("".join(self._text), self._links, self._images)
