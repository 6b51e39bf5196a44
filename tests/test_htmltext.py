"""What a reader sees of an HTML part (mailsrv/policy/htmltext.py)."""

import time

from hypothesis import given, strategies as st
from twisted.trial import unittest

from mailsrv.policy import htmltext
from mailsrv.policy.htmltext import read_html
from tests.fuzzing import examples


class ReadHtmlTests(unittest.TestCase):
    def test_text_links_and_images(self):
        html = read_html(
            "<html><head><title>t</title><style>p{color:red}</style></head><body>"
            "<p>Cheap&nbsp;<b>pills</b></p><p>today</p><script>var spam=1</script>"
            "<a href='http://spam.example/x'>your <i>bank</i></a>"
            "<img src=\"http://img.example/a.png\"><a href=mailto:a@b.example>mail</a>"
            "</body></html>")
        self.assertEqual(html.text.split(), ["Cheap", "pills", "today", "your", "bank", "mail"])
        self.assertIn("\n", html.text.strip())  # paragraphs stay apart
        self.assertEqual(html.links, [("http://spam.example/x", "your bank"),
                                      ("mailto:a@b.example", "mail")])
        self.assertEqual(html.images, ["http://img.example/a.png"])

    def test_entities_and_broken_markup(self):
        html = read_html("<p>v&#105;agra &amp; <b>more<p>unclosed <a href=x>link")
        self.assertEqual(html.text.split(), ["viagra", "&", "more", "unclosed", "link"])
        self.assertEqual(html.links, [("x", "link")])

    def test_size_is_capped(self):
        self.patch(htmltext, "MAX_HTML", 100)
        html = read_html("<p>" + "word " * 1000)
        self.assertLessEqual(len(html.text), 100)

    @given(st.lists(st.sampled_from(list("<>/=\"'& abcp!-;#x\n") + [
        "<a href=", "<img src=", "<script>", "</script>", "<!--", "-->", "&#", "<p>"]),
        max_size=200).map("".join))
    @examples(300)
    def test_any_markup_is_read(self, source):
        start = time.monotonic()
        html = read_html(source)
        self.assertIsInstance(html.text, str)
        self.assertLess(time.monotonic() - start, 1.0)

    def test_hostile_nesting_costs_its_size(self):
        # What an HTML5 tree builder (selectolax's lexbor, 1.0.2) takes
        # superlinear time on, and html.parser's tag stream reads in time
        # proportional to its size (0.1-0.5 s of CPU each here): lexbor
        # took 23 s on the divs, 8.5 s on the lists, 4 s on the spans (each
        # </q> searches them all) and 25 s on the formatting elements (each
        # <p> reopens all 3,000).
        reopened = ("<div>" + "".join(f"<b id={i}>" for i in range(3000)) + "</div>"
                    + "<p>x" * 3000)
        for source, words in [("<div>x" * 100000, 100000),
                              ("<table><tr><td>x" * 30000, 30000),
                              ("<ul><li>x" * 30000, 30000),
                              ("<span>x" * 30000 + "</q>" * 30000, 1),
                              (reopened, 3000)]:
            start = time.process_time()
            html = read_html(source)
            self.assertLess(time.process_time() - start, 2.0, source[:20])
            self.assertEqual(len(html.text.split()), words, source[:20])

