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


class Limits:
    """The [auth] defaults, as AuthSettings has them."""

    max_failures = 5
    max_failures_per_ip = 100
    failure_window = 600
    lockout = 900


ALICE = "alice@example.test"
BOB = "bob@example.test"


class LoginThrottlingTests(unittest.TestCase):
    """
    The counting rules of issue 4, on the store alone (the checker turns
    wrong passwords into fingerprints; here any distinct bytes will do).
    """

    def setUp(self):
        self.clock = task.Clock()
        self.store = MemorySessionStore(window=0, clock=self.clock, limits=Limits())

    def failed_login(self, ip, user, password):
        return self.successResultOf(self.store.record_failure(ip, user, password))

    def refused(self, ip, user):
        return self.successResultOf(self.store.login_refused(ip, user))

    def test_table(self):
        """
        Each row: (seconds to wait first, action, ip, user, password, what
        the store says). "fail" answers with the keys it locked out,
        "check" with the key that refuses the login (or None).
        """
        ip, other_ip = "198.51.100.7", "198.51.100.8"
        pair = f"{ip}/{ALICE}"
        table = [
            (0, "check", ip, ALICE, None, None),
            (0, "fail", ip, ALICE, b"guess-1", []),
            # the same wrong password repeated 20 times counts once
            *[(1, "fail", ip, ALICE, b"guess-1", []) for _ in range(20)],
            (0, "fail", ip, ALICE, b"guess-2", []),
            (0, "fail", ip, ALICE, b"guess-3", []),
            (0, "fail", ip, ALICE, b"guess-4", []),
            (0, "check", ip, ALICE, None, None),
            # the 5th distinct wrong password locks (ip, alice) out...
            (0, "fail", ip, ALICE, b"guess-5", [pair]),
            (0, "check", ip, ALICE, None, pair),
            (899, "check", ip, ALICE, None, pair),
            # ...but not bob from the same IP, nor alice from another IP
            (0, "check", ip, BOB, None, None),
            (0, "check", other_ip, ALICE, None, None),
            # the lockout ends, with a fresh count
            (1, "check", ip, ALICE, None, None),
            (0, "fail", ip, ALICE, b"guess-6", []),
            (0, "check", ip, ALICE, None, None),
        ]
        for number, (wait, action, row_ip, user, password, expected) in enumerate(table):
            self.clock.advance(wait)
            if action == "fail":
                result = self.failed_login(row_ip, user, password)
            else:
                result = self.refused(row_ip, user)
            self.assertEqual(result, expected, f"row {number}")

    def test_failures_expire_with_the_window(self):
        for n in range(4):
            self.failed_login("198.51.100.7", ALICE, b"old-%d" % n)
        self.clock.advance(600)
        self.assertEqual(self.failed_login("198.51.100.7", ALICE, b"new"), [])
        for n in range(3):
            self.assertEqual(self.failed_login("198.51.100.7", ALICE, b"newer-%d" % n), [])
        self.assertIsNone(self.refused("198.51.100.7", ALICE))

    def test_failures_spread_over_the_window_still_count(self):
        for n in range(4):
            self.failed_login("198.51.100.7", ALICE, b"guess-%d" % n)
            self.clock.advance(140)
        self.assertEqual(self.failed_login("198.51.100.7", ALICE, b"last"),
                         ["198.51.100.7/" + ALICE])

    def test_a_repeated_password_is_counted_again_after_the_window(self):
        self.failed_login("198.51.100.7", ALICE, b"same")
        self.clock.advance(600)
        for n in range(3):
            self.failed_login("198.51.100.7", ALICE, b"other-%d" % n)
        self.assertEqual(self.failed_login("198.51.100.7", ALICE, b"same"), [])
        self.assertEqual(self.failed_login("198.51.100.7", ALICE, b"last"),
                         ["198.51.100.7/" + ALICE])

    def test_per_ip_limit(self):
        ip = "198.51.100.7"
        for n in range(99):
            self.assertEqual(self.failed_login(ip, f"user{n % 50}@example.test", b"pw-%d" % n), [])
        self.assertIsNone(self.refused(ip, "nobody-yet@example.test"))
        self.assertEqual(self.failed_login(ip, "user99@example.test", b"pw-99"), [ip])
        self.assertEqual(self.refused(ip, BOB), ip)
        self.assertIsNone(self.refused("198.51.100.8", BOB))
        self.clock.advance(900)
        self.assertIsNone(self.refused(ip, BOB))

    def test_repeats_do_not_count_for_the_ip_either(self):
        for _ in range(200):
            self.assertEqual(self.failed_login("198.51.100.7", ALICE, b"same"), [])
        self.assertIsNone(self.refused("198.51.100.7", BOB))

    def test_a_success_clears_only_its_own_key(self):
        ip = "198.51.100.7"
        store = MemorySessionStore(
            window=0, clock=self.clock,
            limits=type("Tight", (Limits,), {"max_failures_per_ip": 7})(),
        )
        for n in range(4):
            store.record_failure(ip, ALICE, b"a-%d" % n)
        store.record_failure(ip, BOB, b"b-0")
        store.clear_failures(ip, BOB)  # bob logs in
        # alice's 5th failure still locks her out, and the IP counted bob's
        self.assertEqual(self.successResultOf(store.record_failure(ip, ALICE, b"a-4")),
                         [f"{ip}/{ALICE}"])
        self.assertEqual(self.successResultOf(store.record_failure(ip, BOB, b"b-1")),
                         [ip])

    def test_a_success_clears_its_own_count(self):
        for n in range(4):
            self.failed_login("198.51.100.7", ALICE, b"guess-%d" % n)
        self.store.clear_failures("198.51.100.7", ALICE)
        for n in range(4):
            self.assertEqual(self.failed_login("198.51.100.7", ALICE, b"again-%d" % n), [])

    def test_ipv4_mapped_ipv6_is_the_same_ip(self):
        for n in range(4):
            self.failed_login("::ffff:198.51.100.7", ALICE, b"guess-%d" % n)
        self.assertEqual(self.failed_login("198.51.100.7", ALICE, b"guess-4"),
                         ["198.51.100.7/" + ALICE])
        self.assertEqual(self.refused("::ffff:198.51.100.7", ALICE), "198.51.100.7/" + ALICE)

    def test_ipv6(self):
        for n in range(5):
            self.failed_login("2001:db8::7", ALICE, b"guess-%d" % n)
        self.assertEqual(self.refused("2001:db8:0::7", ALICE), "2001:db8::7/" + ALICE)

    def test_memory_is_bounded_by_recent_activity(self):
        for n in range(5000):
            self.failed_login(f"10.{n // 250}.{n % 250}.1", f"u{n}@example.test", b"x")
        self.assertEqual(len(self.store._failures), 10000)  # an IP and a pair key each
        self.clock.advance(600)
        self.failed_login("10.99.0.1", ALICE, b"x")
        self.assertEqual(len(self.store._failures), 2)
        for n in range(5):
            self.failed_login("10.99.0.2", ALICE, b"x%d" % n)
        self.clock.advance(900)
        self.assertEqual(len(self.store._locked), 0)

    def test_lockout_zero_counts_but_never_refuses(self):
        store = MemorySessionStore(
            window=0, clock=self.clock, limits=type("Off", (Limits,), {"lockout": 0})()
        )
        for n in range(10):
            store.record_failure("198.51.100.7", ALICE, b"guess-%d" % n)
        self.assertIsNone(self.successResultOf(store.login_refused("198.51.100.7", ALICE)))

    def test_without_limits_nothing_is_counted(self):
        store = MemorySessionStore(window=1800, clock=self.clock)
        for n in range(10):
            self.assertEqual(
                self.successResultOf(store.record_failure("198.51.100.7", ALICE, b"%d" % n)),
                [])
        self.assertIsNone(self.successResultOf(store.login_refused("198.51.100.7", ALICE)))
