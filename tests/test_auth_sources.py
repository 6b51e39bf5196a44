"""
[auth] source (issue 19): the checker asks a password source (LDAP,
another SMTP server) instead of the users file, through the same cache and
throttling; a source that cannot answer is a temporary refusal that counts
no failure; the LDAP book's addresses and aliases route mail; the LDAP
connections against a real slapd (TLS verified, filters escaped, empty
passwords refused).
"""

from pathlib import Path
from types import SimpleNamespace

from twisted.cred import error
from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailsrv import config, login
from mailsrv.config import LDAPSettings
from mailsrv.directory import AliasMap, Directory, UserDB
from mailsrv.directory.checker import SourceUnavailable, UserPasswordChecker
from mailsrv.directory.ldapsource import LDAPAddressBook, LDAPConnections
from mailsrv.policy.checks.recipient import LocalRecipient
from mailsrv.preflight import preflight
from mailsrv.sessions import MemorySessionStore
from tests.helpers import log_lines, make_settings
from tests.slapdserver import BASE, SEARCH_DN, SEARCH_PASSWORD, SlapdServer, person, slapd_missing
from tests.test_directory import Limits, LoginHelper


class FakeSource:
    """Answers from C{passwords}, or fails with L{SourceUnavailable} while C{down}."""

    name = "fake"

    def __init__(self, passwords):
        self.passwords = passwords
        self.down = False
        self.asked = []

    def check(self, address, password):
        self.asked.append((address, password))
        if self.down:
            return defer.fail(SourceUnavailable("fake: connection refused"))
        return defer.succeed(self.passwords.get(address) == password)


class SourceCheckerTests(LoginHelper, unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.source = FakeSource({"alice@example.test": "pw"})
        directory = Directory(["example.test"], UserDB(self.mktemp(), self.clock),
                              AliasMap(self.mktemp(), self.clock))
        self.store = MemorySessionStore(0, self.clock, Limits())
        self.checker = UserPasswordChecker(directory, self.store, self.clock, cache_ttl=300,
                                           source=self.source)

    def test_the_source_decides_and_successes_are_remembered(self):
        self.assertEqual(self.login(b"alice", b"pw"), "alice@example.test")
        self.assertEqual(self.login(b"alice", b"pw"), "alice@example.test")
        self.assertEqual(self.source.asked, [("alice@example.test", "pw")])
        self.clock.advance(300)
        self.login(b"alice", b"pw")
        self.assertEqual(len(self.source.asked), 2)
        for _ in range(2):
            self.assertIsInstance(self.login(b"alice", b"wrong"), error.UnauthorizedLogin)
        self.assertEqual(len(self.source.asked), 4, "failures are never remembered")

    def test_a_source_away_is_no_failure_and_no_success(self):
        self.source.down = True
        for _ in range(Limits.max_failures + 1):
            self.assertIsInstance(self.login(b"alice", b"pw"), SourceUnavailable)
        self.source.down = False
        self.assertEqual(self.login(b"alice", b"pw"), "alice@example.test",
                         "an outage locks nobody out")

    def test_one_log_line_and_the_temporary_reply(self):
        lines = log_lines(self)
        outcome = login.failed(Failure(SourceUnavailable("ldap search: refused")),
                               "alice@example.test", "192.0.2.1", "imap", None)
        self.assertEqual(outcome, login.BROKEN)
        self.assertEqual(lines, ["login unavailable: user=alice@example.test ip=192.0.2.1 "
                                 "protocol=imap: ldap search: refused"])


class Book:
    def __init__(self, mailboxes=(), aliases=None, loaded=True):
        self.loaded = loaded
        self._mailboxes = set(mailboxes)
        self._aliases = aliases or {}

    def exists(self, address):
        return address in self._mailboxes

    def mailbox_of(self, alias):
        return self._aliases.get(alias)


class BookDirectoryTests(unittest.TestCase):
    def directory(self, book):
        clock = task.Clock()
        return Directory(["example.test"], UserDB(self.mktemp(), clock),
                         AliasMap(self.mktemp(), clock), book)

    def test_directory_mailboxes_and_aliases(self):
        directory = self.directory(Book({"alice@example.test"},
                                        {"ali@example.test": "alice@example.test"}))
        self.assertEqual(directory.route("Ali@example.test").local, ("alice@example.test",))
        self.assertEqual(directory.route("alice+x@example.test").local, ("alice@example.test",))
        self.assertIsNone(directory.route("nobody@example.test"))
        self.assertTrue(directory.owns("alice@example.test", "ali@example.test"))
        self.assertFalse(directory.owns("bob@example.test", "ali@example.test"))

    def test_unknown_is_refused_for_now_until_the_book_is_read(self):
        book = Book(loaded=False)
        directory = self.directory(book)
        check = LocalRecipient(directory)
        recipient = SimpleNamespace(address="alice@example.test",
                                    route=directory.route("alice@example.test"))
        verdict = check.check(None, None, recipient)
        self.assertEqual((verdict.code, verdict.enhanced), (451, "4.3.0"))
        book.loaded = True
        self.assertEqual(check.check(None, None, recipient).code, 550)


class ConfigTests(unittest.TestCase):
    def test_refused(self):
        cases = [
            ({"source": "ldap", "ldap": {"url": "http://x"}},
             "[auth.ldap] url: 'http://x' is not an LDAP URL"),
            ({"source": "ldap", "ldap": {"url": "ldaps://x", "starttls": True}},
             "[auth.ldap] starttls: ldaps:// is TLS already"),
            ({"source": "ldap", "ldap": {"bind_dn": "cn=x"}},
             "[auth.ldap] bind_password_file: missing"),
            ({"source": "smtp", "smtp": {"host": "mail.example.test:25", "tls": "none"}},
             "[auth.smtp] tls: passwords go in plain text only to loopback"),
            ({"smtp": {}}, '[auth] smtp: [auth.smtp] is used only with source = "smtp"'),
            ({"source": "nis"}, "[auth] source: unknown value 'nis'"),
        ]
        for auth, expected in cases:
            with self.assertRaises(config.ConfigError, msg=repr(auth)) as caught:
                config.parse({"auth": auth}, Path("/c.toml"))
            self.assertIn(expected, str(caught.exception))

    def test_defaults(self):
        auth = config.parse({"auth": {"source": "ldap"}}, Path("/c.toml")).auth
        self.assertEqual((auth.ldap.url, auth.ldap.filter, auth.ldap.refresh, auth.smtp),
                         ("ldap://127.0.0.1:389", "(mail={address})", 60, None))
        self.assertEqual(config.parse({}, Path("/c.toml")).auth.source, "file")


class SlapdTests(unittest.TestCase):
    """LDAPConnections against a real slapd (in threads' place: called directly)."""

    def setUp(self):
        missing = slapd_missing()
        if missing:
            raise unittest.SkipTest(missing)
        self.slapd = SlapdServer([
            person("alice", "alice pw", "alice@example.test", "ali@example.test",
                   "alice@elsewhere.test"),
            person("star", "star pw", "st*r@example.test"),
            person("eve", "eve pw", "eve@elsewhere.test"),
        ])
        self.addCleanup(self.slapd.cleanup)
        self.slapd.start()

    def connections(self, url=None, **settings):
        settings.setdefault("ca_file", Path(self.slapd.ca))
        connections = LDAPConnections(LDAPSettings(url=url or self.slapd.tls_url, base=BASE,
                                                   bind_dn=SEARCH_DN, timeout=2, **settings),
                                      SEARCH_PASSWORD)
        self.addCleanup(connections.close)
        return connections

    def test_ldaps_and_starttls_verify_the_certificate(self):
        self.assertTrue(self.connections().check("alice@example.test", "alice pw"))
        starttls = self.connections(self.slapd.url.replace("127.0.0.1", "localhost"),
                                    starttls=True)
        self.assertTrue(starttls.check("alice@example.test", "alice pw"))
        unknown_ca = self.connections(ca_file=None)
        self.assertRaises(SourceUnavailable, unknown_ca.check, "alice@example.test", "alice pw")
        wrong_name = self.connections(self.slapd.tls_url.replace("localhost", "127.0.0.1"))
        self.assertRaises(SourceUnavailable, wrong_name.check, "alice@example.test", "alice pw")

    def test_wrong_empty_and_unknown(self):
        connections = self.connections()
        self.assertFalse(connections.check("alice@example.test", "wrong"))
        self.assertFalse(connections.check("alice@example.test", ""))
        self.assertFalse(connections.check("nobody@example.test", "alice pw"))
        self.assertTrue(connections.check("alice@example.test", "alice pw"), "still usable")

    def test_the_address_is_escaped_in_the_filter(self):
        connections = self.connections()
        self.assertFalse(connections.check("*", "alice pw"))
        self.assertFalse(connections.check("alice@example.test)(uid=*", "alice pw"))
        self.assertTrue(connections.check("st*r@example.test", "star pw"))

    def test_the_book_holds_local_addresses_only(self):
        mailboxes, aliases = self.connections().addresses(frozenset({"example.test"}))
        # (st*r is no mailbox name: it would become a directory)
        self.assertEqual(mailboxes, {"alice@example.test"})
        self.assertEqual(aliases, {"ali@example.test": "alice@example.test"})

    def test_the_book_keeps_its_addresses_when_the_directory_is_away(self):
        clock = task.Clock()
        book = LDAPAddressBook(self.connections(url="ldaps://localhost:1"),
                               {"example.test"}, 60, clock)
        book._mailboxes = frozenset({"alice@example.test"})
        lines = log_lines(self)
        d = book.refresh()
        self.assertFalse(book.loaded)

        def refreshed(_):
            self.assertTrue(book.exists("alice@example.test"))
            self.assertIn("ldap: cannot read the addresses", " ".join(lines))
        return d.addCallback(refreshed)


class PreflightTests(unittest.TestCase):
    def test_the_source_files_are_checked(self):
        root = Path(self.mktemp()).absolute()
        root.mkdir()
        settings = make_settings(root, auth={"source": "ldap", "ldap": {
            "bind_dn": "cn=x", "bind_password_file": "missing"}})
        with self.assertRaises(config.ConfigError) as caught:
            preflight(settings, task.Clock())
        self.assertIn("[auth.ldap] bind_password_file", str(caught.exception))
        (root / "ca.pem").write_text("not a certificate\n")
        settings = make_settings(root, auth={"source": "smtp", "smtp": {
            "host": "localhost:587", "ca_file": "ca.pem"}})
        with self.assertRaises(config.ConfigError) as caught:
            preflight(settings, task.Clock())
        self.assertIn("[auth.smtp] ca_file:", str(caught.exception))
        self.assertIn("holds no PEM certificate", str(caught.exception))
