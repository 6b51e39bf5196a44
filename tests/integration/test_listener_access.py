"""
Per-listener access through the real server: allow and deny lists (a list
file edited while it runs), the server's own address, and an outgoing-mail
port that takes mail from one account or from scripts on its safe list.
"""

import smtplib
import socket
import time
from pathlib import Path

from twisted.trial import unittest

from tests.integration.harness import PASSWORD, MailServerProcess, SinkServer


def first_line(server, name, source):
    with socket.create_connection(server.address(name), 10,
                                  source_address=(source, 0)) as s:
        return s.makefile("rb").readline()


class ListenerAccessTests(unittest.TestCase):
    def setUp(self):
        self.sink = SinkServer()
        self.addCleanup(self.sink.close)
        self.deny_file = Path(self.mktemp()).absolute()
        self.deny_file.parent.mkdir(parents=True, exist_ok=True)
        self.deny_file.write_text("# nobody yet\n")
        self.server = MailServerProcess(
            extra={"delivery": {"smart_host": f"127.0.0.1:{self.sink.port}"}},
            listeners={
                "smtp": {"deny": ["127.0.0.4"]},
                "submission": {"allow": ["127.0.0.1", "127.0.0.3"], "safe": ["127.0.0.3"],
                               "require_auth": "bob@example.test"},
                "imap": {"block_own_ips": True},
                "pop3": {"deny_file": str(self.deny_file)},
            })
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def test_deny_list(self):
        self.assertEqual(first_line(self.server, "smtp", "127.0.0.4"),
                         b"554 5.7.1 Access denied for 127.0.0.4\r\n")
        self.assertTrue(first_line(self.server, "smtp", "127.0.0.5").startswith(b"220 "))
        self.server.wait_for_log("refused connection from 127.0.0.4: deny list")

    def test_allow_list_named_account_and_safe_scripts(self):
        self.assertEqual(first_line(self.server, "submission", "127.0.0.2"),
                         b"554 5.7.1 Access denied for 127.0.0.2\r\n")
        port = self.server.ports["submission"]
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.login("alice@example.test", PASSWORD)
            code, text = client.mail("alice@example.test")
            self.assertEqual((code, text),
                             (530, b"5.7.0 This port takes mail only from bob@example.test"))
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.login("bob@example.test", PASSWORD)
            self.assertEqual(client.sendmail("bob@example.test", ["alice@example.test"],
                                             b"Subject: bob\r\n\r\nx\r\n"), {})
        # a script on the safe list: no login, and it may send out
        with smtplib.SMTP("127.0.0.1", port, timeout=30,
                          source_address=("127.0.0.3", 0)) as client:
            self.assertEqual(client.sendmail("backup@example.test",
                                             ["alice@example.test", "ops@elsewhere.test"],
                                             b"Subject: cron\r\n\r\ndone\r\n"), {})
        self.assertEqual(len(self.server.maildir_files()), 2)
        (_, recipients, _), = self.sink.wait_for(1)
        self.assertEqual(recipients, ["<ops@elsewhere.test>"])

    def test_own_address_is_refused(self):
        self.assertEqual(first_line(self.server, "imap", "127.0.0.1"),
                         b"* BYE Access denied for 127.0.0.1\r\n")
        self.server.wait_for_log(
            "refused connection from 127.0.0.1: client uses the server's own address")
        self.assertTrue(first_line(self.server, "imap", "127.0.0.2").startswith(b"* OK"))

    def test_deny_file_edited_while_running(self):
        self.assertTrue(first_line(self.server, "pop3", "127.0.0.6").startswith(b"+OK"))
        self.deny_file.write_text("127.0.0.6, 127.0.0.7\n")
        time.sleep(2)
        self.assertEqual(first_line(self.server, "pop3", "127.0.0.6"),
                         b"-ERR Access denied for 127.0.0.6\r\n")
        self.assertTrue(first_line(self.server, "pop3", "127.0.0.8").startswith(b"+OK"))
