"""
What a reader sees of an HTML part, where its links and images go, and
which of IMail's HTML features it has, for the content filters of issue 17
(the statistical and phrase filters read the text, the URL filter the
links and images, the HTML filter the features).

The stdlib's C{html.parser} reads it: it is forgiving of broken markup, as
mail clients are, needs no dependency, and reads a stream of tags in time
proportional to the part. An HTML5 tree builder is 2-3 times faster on
everyday mail (selectolax's lexbor) but superlinear on hostile markup, with
no limit to set: 100,000 nested C{<div>} took it 23 s, and 44 KB of
formatting elements that every paragraph reopens 25 s (html.parser: under
half a second each; tests/test_htmltext.py, test_hostile_nesting_costs_its_size). The part's
size is capped (L{MAX_HTML}) so its cost follows what a sender can grow
only so far, and the last few parts read are remembered, so the filters
of one message parse each part once. Text inside C{script}, C{style},
C{head}, C{template} and C{noscript} is not shown, so it is not text;
block elements and images end a word (C{<p>a</p><p>b</p>} is two).
"""

import functools
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

MAX_HTML = 2 << 20   # characters of one HTML part read
MAX_LINKS = 10000    # links and images kept
_HIDDEN = frozenset({"script", "style", "head", "template", "noscript"})
_BLOCKS = frozenset({"p", "div", "br", "tr", "td", "th", "li", "ul", "ol", "table", "h1",
                     "h2", "h3", "h4", "h5", "h6", "hr", "blockquote", "pre", "body", "html",
                     "section", "article", "header", "footer", "form", "title"})
# The elements of HTML (and the old ones mail still carries): any other
# tag is an "invalid_tag", often a made-up one splitting a word.
KNOWN_TAGS = frozenset("""
a abbr acronym address area article aside audio b base basefont bdi bdo big blink
blockquote body br button canvas caption center cite code col colgroup data datalist dd
del details dfn dialog dir div dl dt em embed fieldset figcaption figure font footer form
frame frameset h1 h2 h3 h4 h5 h6 head header hgroup hr html i iframe img input ins kbd
label legend li link main map mark marquee menu meta meter nav nobr noframes noscript
object ol optgroup option output p param picture pre progress q rp rt ruby s samp script
section select small source span strike strong style sub summary sup svg table tbody td
template textarea tfoot th thead time title tr track tt u ul var video wbr
""".split())
FEATURES = ("nested_table", "hyperlink", "script_tag", "invalid_tag", "image_tag",
            "mailto_link", "deceptive_url", "embedded_comment", "deceptive_text")
# Styles that hide text, or make it too small to read (deceptive_text).
_HIDING = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden|"
                     r"font-size\s*:\s*[0-2](?:\.\d+)?\s*(?:px|pt)?\s*(?:;|$)", re.I)
_COLOR = re.compile(r"(?:^|;)\s*color\s*:\s*([^;]+)", re.I)
_BACKGROUND = re.compile(r"background(?:-color)?\s*:\s*([^;]+)", re.I)


@dataclass
class Html:
    """
    @ivar text: what a reader sees, words apart as shown.
    @ivar links: C{(href, the link's text)} of each C{<a href>}.
    @ivar images: the C{src} of each C{<img>}.
    @ivar features: the names (L{FEATURES}) of the features found, but
        C{deceptive_url}, which needs the links' hosts (the HTML filter
        compares them).
    """

    text: str = ""
    links: list = field(default_factory=list)
    images: list = field(default_factory=list)
    features: frozenset = frozenset()


@functools.lru_cache(maxsize=8)
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
        self._tables = 0
        self._links, self._images = [], []
        self._link = None  # the open <a>: [href, its text pieces]
        self._features = set()
        self._comment_after_letter = False

    def handle_starttag(self, tag, attrs):
        self._comment_after_letter = False
        if tag not in KNOWN_TAGS:
            self._features.add("invalid_tag")
        values = {name: value or "" for name, value in attrs}
        if values and _deceptive(values):
            self._features.add("deceptive_text")
        if tag in _HIDDEN:
            self._hidden += 1
            if tag == "script":
                self._features.add("script_tag")
        elif tag in _BLOCKS:
            self._text.append("\n")
        if tag == "table":
            self._tables += 1
            if self._tables > 1:
                self._features.add("nested_table")
        elif tag == "img":  # (an image stands between the words beside it)
            self._text.append(" ")
            self._features.add("image_tag")
        if len(self._links) + len(self._images) >= MAX_LINKS:
            return
        if tag == "a" and values.get("href"):
            href = values["href"]
            self._features.add("mailto_link" if href.strip().lower().startswith("mailto:")
                               else "hyperlink")
            self._close_link()
            self._link = [href, []]
        elif tag == "img" and values.get("src"):
            self._images.append(values["src"])

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag in _HIDDEN:
            self._hidden -= 1
        elif tag == "table":
            self._tables -= 1

    def handle_endtag(self, tag):
        self._comment_after_letter = False
        if tag in _HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _BLOCKS:
            self._text.append("\n")
        if tag == "table":
            self._tables = max(0, self._tables - 1)
        elif tag == "a":
            self._close_link()

    def handle_comment(self, data):
        # a comment right after a letter, right before one: "via<!-- -->gra"
        self._comment_after_letter = bool(self._text) and self._text[-1][-1:].isalpha()

    def handle_data(self, data):
        if self._comment_after_letter and data[:1].isalpha():
            self._features.add("embedded_comment")
        self._comment_after_letter = False
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
        return Html("".join(self._text), self._links, self._images, frozenset(self._features))


def _deceptive(values):
    """Whether an element's attributes hide its text: hidden, tiny, or its colour its background's."""
    style = values.get("style", "")
    if style and _HIDING.search(style):
        return True
    color = _COLOR.search(style)
    color = _normal_color(color.group(1) if color else values.get("color", ""))
    if not color:
        return False
    background = _BACKGROUND.search(style)
    return color == _normal_color(background.group(1) if background else values.get("bgcolor", ""))


def _normal_color(text):
    """A colour as written, comparable: lower case, no spaces, #abc as #aabbcc."""
    text = "".join(text.split()).lower().rstrip(";").removesuffix("!important")
    if re.fullmatch(r"#[0-9a-f]{3}", text):
        text = "#" + "".join(c * 2 for c in text[1:])
    return {"white": "#ffffff", "black": "#000000"}.get(text, text)
