"""
[antispam.urls]: the URL list, the links a message has, and the filter
through the SMTP protocol with the server's own config.
"""

import io
import mailbox
from pathlib import Path

from twisted.internet import task
from twisted.trial import unittest

from mailsrv.admin import cli
from mailsrv.policy import content
from mailsrv.policy.actions import Action
from mailsrv.policy.checks.urls import URLFilter, links
from mailsrv.policy.lists import read_urls, watched
from tests.test_filters_phrases import WatchedListTests
from tests.test_smtp.support import (
    connect,
    make_mail_server,
    maildir_messages,
    run_threads_inline,
    send_to_alice,
)

MESSAGE = (b"From: x@remote.test\r\nSubject: hi\r\n"
           b"Content-Type: multipart/alternative; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nsee http://text.example/a and www.www.example\r\n"
           b"--b\r\nContent-Type: text/html\r\n\r\n"
           b"<a href=\"http://www.bank.example@x.spam.example/login\">www.bank.example</a>"
           b"<img src='http://0xC0000201/pixel.gif'> <a href=\"mailto:a@b.example\">mail</a>\r\n"
           b"--b--\r\n")


class URLListTests(WatchedListTests, unittest.TestCase):
    read = staticmethod(read_urls)
    lines = ("spam.example", "192.0.2.1", "phish.example")
    bad, problem = "not a host", "'not a host' is not a domain or an IP address"
    entries = staticmethod(lambda *lines: frozenset(lines))

    def test_read(self):
        path = self.mktemp()
        Path(path).write_text("Spam.Example.\n192.0.2.1\nnot a host\n")
        entries, skipped = read_urls(path)
        self.assertEqual(entries, {"spam.example", "192.0.2.1"})
        self.assertEqual([str(e) for e in skipped],
                         [f"{path}:3: 'not a host' is not a domain or an IP address"])


class FilterTests(unittest.TestCase):
    def judge(self, entries, scan="html"):
        path = self.mktemp()
        Path(path).write_text("".join(e + "\n" for e in entries))
        check = URLFilter(watched(path, read_urls, task.Clock()), scan, Action("move", "Junk"))
        return check.judge(content.parse(MESSAGE)).finding

    def test_links_looked_at(self):
        parsed = content.parse(MESSAGE)
        self.assertEqual(links(parsed, "html"), [
            "http://www.bank.example@x.spam.example/login", "mailto:a@b.example",
            "http://0xC0000201/pixel.gif"])
        self.assertEqual(links(parsed, "all")[3:],  # the HTML's text, then the plain text's
                         ["www.bank.example", "http://text.example/a", "www.www.example"])

    def test_listed_hosts(self):
        finding = self.judge(["spam.example", "192.0.2.1", "bank.example"])
        self.assertEqual(finding.reasons, ("url spam.example", "url 192.0.2.1"))
        self.assertEqual(finding.action, Action("move", "Junk"))
        self.assertFalse(self.judge(["text.example"]).spam)
        self.assertEqual(self.judge(["text.example"], scan="all").reasons,
                         ("url text.example",))


class ThroughSMTPTests(unittest.TestCase):
    def setUp(self):
        run_threads_inline(self)

    def test_listed_link(self):
        urls = Path(self.mktemp())
        urls.write_text("spam.example\n")
        server = make_mail_server(self, antispam={"urls": {"file": str(urls.absolute())}})
        self.assertTrue(send_to_alice(connect(server), MESSAGE).startswith(b"250 "))
        [stored] = maildir_messages(server, "alice@example.test")
        self.assertIn(b"X-Mailsrv-Spam: yes; reasons=url spam.example\r\n", stored)


class SeedURLsTests(unittest.TestCase):
    """`mailsrv filter seed-urls` (IMail's antispamseeder)."""

    def test_hosts_of_spam_added_to_the_list(self):
        root = Path(self.mktemp()).absolute()
        root.mkdir()
        config = root / "mailsrv.toml"
        config.write_text('[server]\nhostname = "mail.example.test"\ndata_dir = "var"\n'
                          '[domains]\nlocal = ["example.test"]\n[antispam.urls]\n')
        (root / "url-domain-bl.txt").write_text("spam.example\n")
        spam = mailbox.Maildir(root / "Junk")
        spam.add(MESSAGE)
        spam.add(MESSAGE.replace(b"text.example", b"other.example"))
        stdout = io.StringIO()
        self.patch(cli.sys, "stderr", io.StringIO())
        status = cli.main(["--config", str(config), "filter", "seed-urls", str(root / "Junk"),
                           "--min-messages", "2"], stdin=io.StringIO(), stdout=stdout)
        self.assertEqual(status, 0, cli.sys.stderr.getvalue())
        self.assertEqual((root / "url-domain-bl.txt").read_text(),
                         "spam.example\n192.0.2.1\n")
        self.assertIn("+ 192.0.2.1 (2 messages)", stdout.getvalue())
