from twisted.internet import task
from twisted.trial import unittest

from mailsrv.sessions import MemorySessionStore


class PopBeforeSmtpTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.store = MemorySessionStore(window=1800, clock=self.clock)

    def window(self, ip):
        return self.successResultOf(self.store.window_user(ip))

    def test_no_window_before_login(self):
        self.assertIsNone(self.window("127.0.0.2"))

    def test_pop3_and_imap_logins_open_a_window_that_closes(self):
        for protocol in ("pop3", "imap"):
            self.store.record_login("alice@example.test", "127.0.0.2", protocol)
            self.assertEqual(self.window("127.0.0.2"), "alice@example.test")
            self.assertIsNone(self.window("127.0.0.3"))
            self.clock.advance(1799)
            self.assertEqual(self.window("127.0.0.2"), "alice@example.test")
            self.clock.advance(1)
            self.assertIsNone(self.window("127.0.0.2"))

    def test_latest_login_counts(self):
        self.store.record_login("alice@example.test", "127.0.0.2", "pop3")
        self.clock.advance(1000)
        self.store.record_login("bob@example.test", "127.0.0.2", "imap")
        self.clock.advance(1000)
        self.assertEqual(self.window("127.0.0.2"), "bob@example.test")

    def test_smtp_login_opens_no_window(self):
        self.store.record_login("alice@example.test", "127.0.0.2", "smtp")
        self.assertIsNone(self.window("127.0.0.2"))

    def test_ipv4_mapped_ipv6_is_the_same_ip(self):
        self.store.record_login("alice@example.test", "::ffff:127.0.0.2", "imap")
        self.assertEqual(self.window("127.0.0.2"), "alice@example.test")

    def test_disabled(self):
        store = MemorySessionStore(window=0, clock=self.clock)
        store.record_login("alice@example.test", "127.0.0.2", "pop3")
        self.assertIsNone(self.successResultOf(store.window_user("127.0.0.2")))

    def test_expired_windows_are_dropped(self):
        for n in range(100):
            self.store.record_login("a@example.test", f"10.0.0.{n}", "pop3")
        self.clock.advance(2000)
        self.store.record_login("a@example.test", "10.0.1.1", "pop3")
        self.assertEqual(len(self.store._windows), 1)
