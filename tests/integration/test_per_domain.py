"""
Per-domain [antispam.*] sections through the real server, driven by swaks:
example.org refuses what the rest of the server only marks, one message to
both domains is split into a copy per domain, and the refused copy comes
back to its sender as a bounce.
"""

import subprocess

from twisted.trial import unittest

from tests.integration.harness import MailServerProcess, require_tool

ALICE, DAVE = "alice@example.test", "dave@example.org"

PER_DOMAIN = """
[antispam.phrases]
file = "phrases.txt"

[domain."example.org".antispam.phrases]
file = "org-phrases.txt"
action = "reject"
"""

SPAM_BODY = "buy cheap pills today"


class PerDomainTests(unittest.TestCase):
    def setUp(self):
        require_tool(self, "swaks")
        self.server = MailServerProcess(
            extra={"domains": {"local": ["example.test", "example.org"]}},
            users=(ALICE, DAVE))
        (self.server.dir / "phrases.txt").write_text("cheap pills\n")
        (self.server.dir / "org-phrases.txt").write_text("cheap pills\npharmacy\n")
        with open(self.server.config, "a") as config:
            config.write(PER_DOMAIN)
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def swaks(self, to, body, sender="x@remote.test"):
        return subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", str(self.server.ports["smtp"]),
             "--helo", "client.test", "--from", sender, "--to", to,
             "--header", "Subject: offer", "--body", body],
            capture_output=True, text=True, timeout=60)

    def test_split_copies_and_the_bounce_of_the_refused_one(self):
        result = self.swaks(f"{ALICE},{DAVE}", SPAM_BODY)
        self.assertEqual(result.returncode, 0, result.stdout)
        [alice] = self.server.maildir_files(ALICE)
        self.assertIn(b"X-Mailsrv-Spam: yes; reasons=phrase cheap pills", alice.read_bytes())
        self.assertEqual(self.server.maildir_files(DAVE), [])
        self.server.wait_for_log("to <x@remote.test>: queued")  # (the bounce)
        self.assertIn("refused message from 127.0.0.1", self.server.log_text())

    def test_the_domain_alone_refuses_at_the_end_of_data(self):
        result = self.swaks(DAVE, "the pharmacy is open")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("<** 550 5.7.1 Message refused as spam", result.stdout)
        result = self.swaks(ALICE, "the pharmacy is open")  # (not on the global list)
        self.assertEqual(result.returncode, 0, result.stdout)
        [alice] = self.server.maildir_files(ALICE)
        self.assertIn(b"X-Mailsrv-Spam: no;", alice.read_bytes())

    def test_check_config_names_a_domain_section(self):
        with open(self.server.config, "a") as config:
            config.write('\n[domain."example.org".antispam.mime]\naction = "bounce"\n')
        result = self.server.admin("check-config", check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn('[domain."example.org".antispam.mime] action: unknown action', result.stderr)
