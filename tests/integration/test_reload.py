"""
Reloading the whole config (issue 20) on the real server: a changed
max_message_size applies to new connections after `mailsrv reload` or
SIGHUP, open ones keep theirs, a bad config is refused and the server
runs on, and a changed listener is reported as needing a restart.
"""

import signal
import smtplib

from twisted.trial import unittest

from tests.integration.harness import MailServerProcess

BIG = "Subject: big\r\n\r\n" + "x" * 3000 + "\r\n"


class ReloadTests(unittest.TestCase):
    def setUp(self):
        self.server = MailServerProcess(extra={"access": {"max_message_size": 2048}})
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def set_size(self, size):
        text = self.server.config.read_text()
        old = [line for line in text.splitlines() if line.startswith("max_message_size")][0]
        self.server.config.write_text(text.replace(old, f"max_message_size = {size}"))

    def send_big(self, client):
        client.ehlo("client.test")
        try:
            client.sendmail("x@remote.test", ["alice@example.test"], BIG)
            return 250
        except smtplib.SMTPDataError as e:
            return e.smtp_code
        except smtplib.SMTPSenderRefused as e:
            return e.smtp_code

    def test_reload_applies_to_new_connections(self):
        with self.server.smtp() as early:
            self.assertEqual(self.send_big(early), 552)
            self.set_size(65536)
            result = self.server.admin("reload")
            self.assertEqual(result.stdout, "reloaded: [access] max_message_size\n")
            with self.server.smtp() as late:
                self.assertEqual(self.send_big(late), 250)
            early.rset()
            self.assertEqual(self.send_big(early), 552, "the open connection keeps its limit")
        self.server.wait_for_log("changed: [access] max_message_size")

    def test_sighup_and_a_bad_config(self):
        self.set_size(65536)
        self.server.process.send_signal(signal.SIGHUP)
        self.server.wait_for_log("changed: [access] max_message_size")
        with self.server.smtp() as client:
            self.assertEqual(self.send_big(client), 250)
        self.server.config.write_text(self.server.config.read_text()
                                      .replace("max_message_size = 65536",
                                               "max_message_size = 'lots'"))
        refused = self.server.admin("reload", check=False)  # (the command reads it first)
        self.assertEqual(refused.returncode, 1)
        self.assertIn("[access] max_message_size: must be a whole number", refused.stderr)
        self.server.process.send_signal(signal.SIGHUP)
        self.server.wait_for_log("reload refused: ")
        with self.server.smtp() as client:
            self.assertEqual(self.send_big(client), 250, "runs on as before")

    def test_a_listener_change_needs_a_restart(self):
        text = self.server.config.read_text()
        self.server.config.write_text(text.replace("max_message_size = 2048",
                                                   "max_message_size = 2048\n"
                                                   "max_recipients = 7", 1)
                                      .replace('tls = "starttls"', 'tls = "required"', 1))
        result = self.server.admin("reload")
        self.assertEqual(result.stdout, "reloaded: [access] max_recipients\n"
                                        "needs a restart: [[listen]]\n")
