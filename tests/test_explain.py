"""
`mailsrv explain` (mailsrv/admin/explain.py): every check's verdict on one
message and what the server would do, from the server's own config.
"""

from pathlib import Path

from twisted.internet import reactor
from twisted.trial import unittest

from mailsrv.admin.explain import explain
from tests.helpers import make_settings
from tests.test_smtp.support import ALIASES, USERS, _HASH

MESSAGE = (b"From: Spammer <x@remote.test>\r\nSubject: offer\r\nContent-Type: text/html\r\n\r\n"
           b"<p>buy cheap pills</p><script>1</script><img src=x>\r\n")


class ExplainTests(unittest.TestCase):
    def settings(self, **antispam):
        root = Path(self.mktemp()).absolute()
        root.mkdir()
        (root / "phrases.txt").write_text("cheap pills\n")
        settings = make_settings(root, antispam={
            "phrases": {"file": str(root / "phrases.txt"), "action": "subject"},
            "html": {"features": ["script_tag", "image_tag"], "min_features": 2,
                     "action": "move:Junk"}, **antispam})
        settings.users_file.write_text("".join(f"{u}:{_HASH}\n" for u in USERS))
        settings.aliases_file.write_text(ALIASES)
        return settings

    def run_explain(self, settings, recipients, sender="x@remote.test"):
        lines = []
        d = explain(settings, reactor, MESSAGE, "192.0.2.7", "client.example", sender,
                    recipients, lines.append)
        return d.addCallback(lambda _: lines)

    def test_every_check_and_the_result(self):
        def explained(lines):
            self.assertEqual(lines[0], "listener smtp/mx tcp:0, client 192.0.2.7 "
                                       "(client.example), from <x@remote.test>")
            self.assertIn("recipient <alice@example.test> LocalRecipient: accepted", lines)
            self.assertIn("body PhraseFilter: spam, action subject: phrase cheap pills", lines)
            self.assertIn("body HTMLFeatures: spam, action move:Junk: html script_tag "
                          "image_tag", lines)
            self.assertEqual(lines[-2:], [
                "X-Mailsrv-Spam: yes; reasons=phrase cheap pills, html script_tag image_tag",
                "result: delivered, action move:Junk"])
        return self.run_explain(self.settings(), ["alice@example.test"]).addCallback(explained)

    def test_a_refused_recipient(self):
        def explained(lines):
            self.assertEqual(lines[-1], "result: RCPT TO:<nobody@example.test> refused: 550 "
                                        "5.1.1 <nobody@example.test>: user unknown")
            self.assertIn("recipient <nobody@example.test> LocalRecipient: refused 550 5.1.1 "
                          "<nobody@example.test>: user unknown (<nobody@example.test> reaches "
                          "no local user or remote address)", lines)
            self.assertFalse([line for line in lines if "RelayPermission" in line])
        d = self.run_explain(self.settings(), ["nobody@example.test"])
        return d.addCallback(explained)

    def test_one_explanation_per_copy_with_per_domain_sections(self):
        settings = self.settings()
        root = settings.path.parent
        settings = make_settings(root, domains={"local": ["example.test", "example.org"]},
                                 antispam={"phrases": {"file": str(root / "phrases.txt"),
                                                       "action": "subject"}},
                                 domain={"example.org": {"antispam": {"phrases": {
                                     "file": str(root / "phrases.txt"), "action": "reject"}}}})
        settings.users_file.write_text(f"alice@example.test:{_HASH}\ndave@example.org:{_HASH}\n")

        def explained(lines):
            first = lines.index("copy for <alice@example.test>: the [antispam] sections")
            second = lines.index('copy for <dave@example.org>: the sections of '
                                 '[domain."example.org"]')
            self.assertLess(first, second)
            self.assertEqual(lines[second - 1],
                             "result: delivered, action subject, Subject prefixed with '[SPAM] '")
            self.assertEqual(lines[-1], "result: refused after the final dot: 550 5.7.1 "
                                        "Message refused as spam")
        d = self.run_explain(settings, ["alice@example.test", "dave@example.org"])
        return d.addCallback(explained)
