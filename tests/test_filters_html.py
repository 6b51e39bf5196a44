"""
[antispam.html]: IMail's nine HTML features, each on HTML built here, the
filter's count, and the filter through the SMTP protocol.
"""

from twisted.trial import unittest

from mailsrv.config import HTML_FEATURES
from mailsrv.policy import content
from mailsrv.policy.actions import Action
from mailsrv.policy.checks.html import HTMLFeatures, deceptive, features
from mailsrv.policy.htmltext import FEATURES, read_html
from tests.test_smtp.support import (
    connect,
    make_mail_server,
    maildir_messages,
    run_threads_inline,
    send_to_alice,
)


def html_message(body):
    return (b"From: x@remote.test\r\nSubject: hi\r\nContent-Type: text/html\r\n\r\n"
            + body.encode() + b"\r\n")


def found(body):
    return features(content.parse(html_message(body)))


class FeatureTests(unittest.TestCase):
    def test_the_config_names_them_all(self):
        self.assertEqual(HTML_FEATURES, FEATURES)

    def test_each_feature(self):
        for body, feature in [
            ("<table><tr><td><table><tr><td>x</td></tr></table></td></tr></table>",
             "nested_table"),
            ("<a href='http://a.example/'>here</a>", "hyperlink"),
            ("<script>x=1</script>", "script_tag"),
            ("<p>via<xyzzy>gra</p>", "invalid_tag"),
            ("<img src='cid:1'>", "image_tag"),
            ("<a href='MAILTO:a@b.example'>write</a>", "mailto_link"),
            ("<a href='http://evil.example/'>www.bank.example</a>", "deceptive_url"),
            ("<p>via<!-- split -->gra</p>", "embedded_comment"),
            ("<span style='display: none'>hidden</span>", "deceptive_text"),
            ("<span style='font-size:1px'>tiny</span>", "deceptive_text"),
            ("<font color='#FFF' style='background-color: white'>same</font>", "deceptive_text"),
        ]:
            self.assertIn(feature, found(body), body)

    def test_plain_html_has_none(self):
        self.assertEqual(found("<table><tr><td><p>Hello <b>there</b>, see "
                               "<span style='color:#333'>this</span>.</p></td></tr></table>"
                               "<p>a <!-- note --> b</p><div style='font-size: 12px'>x</div>"),
                         set())

    def test_deceptive_url(self):
        self.assertTrue(deceptive("http://evil.example/", "http://www.bank.example/login"))
        self.assertTrue(deceptive("http://evil.example/", "bank.example"))
        self.assertFalse(deceptive("http://www.bank.example/x", "bank.example"))
        self.assertFalse(deceptive("http://bank.example/x", "BANK.example"))
        self.assertFalse(deceptive("http://evil.example/", "click here"))
        self.assertFalse(deceptive("mailto:a@b.example", "a@b.example"))

    def test_each_part_parsed_once(self):
        read_html.cache_clear()
        parsed = content.parse(html_message("<p>once</p>"))
        features(parsed)
        features(parsed)
        self.assertEqual(read_html.cache_info().misses, 1)


class FilterTests(unittest.TestCase):
    def judge(self, body, selected=("embedded_comment", "deceptive_url"), minimum=2):
        check = HTMLFeatures(selected, minimum, Action("subject"), "[HTML] ")
        return check.judge(content.parse(html_message(body))).finding

    def test_count(self):
        both = ("<p>via<!-- x -->gra</p>"
                "<a href='http://evil.example/'>www.bank.example</a>")
        finding = self.judge(both)
        self.assertEqual((finding.spam, finding.reasons, finding.subject_prefix),
                         (True, ("html embedded_comment deceptive_url",), "[HTML] "))
        self.assertFalse(self.judge("<p>via<!-- x -->gra</p>").spam)
        self.assertTrue(self.judge("<p>via<!-- x -->gra</p>", minimum=1).spam)
        self.assertFalse(self.judge("<script></script>", ("hyperlink",), 1).spam)


class ThroughSMTPTests(unittest.TestCase):
    def test_features_found(self):
        run_threads_inline(self)
        server = make_mail_server(self, antispam={"html": {
            "features": ["script_tag", "image_tag"], "min_features": 2}})
        send_to_alice(connect(server), html_message("<img src=x><script>1</script>"))
        [stored] = maildir_messages(server, "alice@example.test")
        self.assertIn(b"X-Mailsrv-Spam: yes; reasons=html script_tag image_tag\r\n", stored)
