"""
POP3 against the real server with poplib: response codes in CAPA, one
session per maildrop, deletions only at QUIT.
"""

import poplib

from twisted.trial import unittest

from tests.integration.harness import PASSWORD, MailServerProcess

ALICE = "alice@example.test"


class MaildropTests(unittest.TestCase):
    def setUp(self):
        self.server = MailServerProcess().start()
        self.addCleanup(self.server.cleanup)
        with self.server.smtp() as smtp:
            for n in range(3):
                smtp.sendmail("sender@remote.test", [ALICE],
                              f"Subject: {n}\r\n\r\nmessage {n}\r\n")

    def pop3(self):
        client = self.server.pop3()
        self.addCleanup(client.close)
        return client

    def login(self, client):
        client.user(ALICE)
        return client.pass_(PASSWORD)

    def wait_for_mail(self, count):
        client = self.pop3()
        for _ in range(200):
            self.login(client)
            if client.stat()[0] == count:
                client.quit()
                return
            client.quit()
            client = self.pop3()
        self.fail(f"{count} messages never arrived")

    def test_capa_has_response_codes(self):
        capa = self.pop3().capa()
        self.assertIn("RESP-CODES", capa)
        self.assertIn("AUTH-RESP-CODE", capa)

    def test_second_session_is_refused_in_use(self):
        self.wait_for_mail(3)
        first = self.pop3()
        self.login(first)
        second = self.pop3()
        second.user(ALICE)
        with self.assertRaises(poplib.error_proto) as caught:
            second.pass_(PASSWORD)
        self.assertEqual(caught.exception.args[0],
                         b"-ERR [IN-USE] Mailbox in use by another POP3 session")
        first.quit()
        third = self.pop3()
        self.assertEqual(self.login(third), b"+OK Logged in")
        third.quit()

    def test_dropped_connection_deletes_nothing(self):
        self.wait_for_mail(3)
        client = self.pop3()
        self.login(client)
        client.dele(1)
        client.dele(2)
        client.close()  # gone without QUIT
        client = self.pop3()
        for _ in range(100):  # the server notices the drop and frees the lock
            try:
                self.login(client)
                break
            except poplib.error_proto:
                client = self.pop3()
        self.assertEqual(client.stat()[0], 3)
        client.dele(1)
        client.quit()
        self.assertEqual(len(self.server.maildir_files()), 2)
