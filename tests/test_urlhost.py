"""
Where a link really goes (mailsrv/policy/urlhost.py): the tricks spammers
use to hide a link's host, undone, and list matching.
"""

from hypothesis import given, strategies as st
from twisted.trial import unittest

from mailsrv.policy.urlhost import host_of, listed
from tests.fuzzing import examples

labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)
domains = st.lists(labels, min_size=1, max_size=3).map(lambda ls: ".".join(ls) + ".example")


class HostTests(unittest.TestCase):
    def test_tricks(self):
        for url, host in [
            ("http://spam.example/x", "spam.example"),
            ("HTTPS://SPAM.Example./", "spam.example"),
            ("http://www.bank.example@spam.example/login", "spam.example"),
            ("http://user:pw@spam.example:8080/", "spam.example"),
            ("http://%73%70%61%6d.example/", "spam.example"),
            ("http&#58;//spam&#46;example/", "spam.example"),
            ("ht\ttp://spam.exa\nmple/", "spam.example"),
            ("http://3221225985/", "192.0.2.1"),
            ("http://0xC0000201/", "192.0.2.1"),
            ("http://0300.0.02.01/", "192.0.2.1"),
            ("http://0xc0.0.2.1/", "192.0.2.1"),
            ("http://192.0.2.1:80/", "192.0.2.1"),
            ("http://[2001:DB8::1]:443/", "2001:db8::1"),
            ("http://münchen.example/", "xn--mnchen-3ya.example"),
            ("www.spam.example/page", "www.spam.example"),
            ("http:\\\\spam.example\\x", "spam.example"),
        ]:
            self.assertEqual(host_of(url), host, url)

    def test_no_host(self):
        for url in ["mailto:a@spam.example", "cid:part1", "javascript:alert(1)", "http://",
                    "http://[::1", "relative/page.html", "http://not_a_host/", ""]:
            self.assertIsNone(host_of(url), url)

    @given(domains, st.sampled_from(["http://{}/", "https://user@{}/x", "http://{}.:81",
                                     "HTTP://{}/?q=1", "www.{}"]))
    @examples(200)
    def test_forms_of_one_host(self, domain, form):
        host = host_of(form.format(domain.upper()))
        if domain.startswith("www.") or not form.startswith("www."):
            self.assertEqual(host, domain)
        else:
            self.assertEqual(host, "www." + domain)

    @given(st.text(max_size=60))
    @examples(300)
    def test_anything_gives_a_host_or_none(self, text):
        host = host_of(text)
        self.assertTrue(host is None or (host == host.lower() and " " not in host))


class ListedTests(unittest.TestCase):
    def test_domains_cover_their_subdomains(self):
        entries = frozenset({"spam.example", "192.0.2.1", "co.example"})
        self.assertEqual(listed("spam.example", entries), "spam.example")
        self.assertEqual(listed("a.b.spam.example", entries), "spam.example")
        self.assertIsNone(listed("notspam.example", entries))
        self.assertIsNone(listed("example", entries))
        self.assertEqual(listed("192.0.2.1", entries), "192.0.2.1")
        self.assertIsNone(listed("10.192.0.2.1", entries))
