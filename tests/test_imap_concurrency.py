"""
Sessions, deliveries and POP3 interleaved on one folder (issue 14): what
each IMAP session is told, and when the reactor does the folder's work.
"""

from tests.test_imap import MESSAGE, IMAPTestCase, deliver


class LogoutTests(IMAPTestCase):
    def test_logout_sends_nothing_after_bye(self):
        """imaptest forgets the mailbox at BYE: news after it is 'seq too high'."""
        watcher = self.selected(MESSAGE, MESSAGE)
        other = self.client()
        other.login()
        other.cmd(b"s SELECT INBOX")
        other.cmd(b"f STORE 1 +FLAGS (\\Flagged)")
        other.cmd(b"d STORE 2 +FLAGS (\\Deleted)")
        other.cmd(b"e EXPUNGE")
        watcher.read()
        reply = watcher.cmd(b"l LOGOUT")
        before, bye, after = reply.partition(b"* BYE")
        self.assertTrue(bye, reply)
        self.assertEqual(before, b"* 2 EXPUNGE\r\n")
        self.assertNotIn(b"\r\n* ", after)
