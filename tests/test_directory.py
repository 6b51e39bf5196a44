"""
Users file, aliases, routing and the password checker.
"""

import hashlib
import os
import stat
from pathlib import Path

from hypothesis import given, settings, strategies as st
from twisted.cred import credentials, error
from twisted.logger import formatEvent, globalLogPublisher
from twisted.internet import defer, task, threads
from twisted.trial import unittest

from mailsrv.address import AddressError, parse_mailbox
from mailsrv.directory import AliasMap, Directory, UserDB
from mailsrv.directory.aliases import parse_aliases
from mailsrv.directory.users import parse_users, read_users, refused_hashes, replace_hash
from mailsrv.directory.certificate import (
    CertificateChecker,
    CertificateCredentials,
    certificate_addresses,
)
from mailsrv.directory.checker import ClientCredentials, LoginThrottled, UserPasswordChecker
from mailsrv.directory import listfile
from mailsrv.directory.listfile import ListFileError, WatchedFile
from mailsrv.directory import checker as checker_module
from mailsrv.directory import users as users_module
from mailsrv.directory.passwords import hash_password, verify
from mailsrv.sessions import MemorySessionStore
from tests import certs
from tests.helpers import log_lines

# A well-formed hash (of "password", from the argon2 reference CLI): one that
# login accepts, so that the users file logs nothing about it.
HASH = "$argon2id$v=19$m=65536,t=2,p=4$c29tZXNhbHQ$GpZ3sK/oH9p7VIiV56G/64Zo/8GaUw434IimaPqxwCo"


class UsersFileTests(unittest.TestCase):
    def setUp(self):
        self.path = self.mktemp()
        self.clock = task.Clock()
        self.users = UserDB(self.path, self.clock)

    def test_missing_file_is_empty(self):
        self.assertEqual(self.users.addresses(), [])
        self.assertIsNone(self.users.hash_for("alice@example.test"))

    def test_add_writes_a_0600_file_of_address_hash_lines(self):
        self.users.set_password("Alice@Example.TEST", "s3cret")
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        with open(self.path) as f:
            (line,) = f.read().splitlines()
        address, stored = line.split(":", 1)
        self.assertEqual(address, "alice@example.test")
        self.assertTrue(stored.startswith("$argon2id$"))
        self.assertTrue(verify(stored, "s3cret"))
        self.assertFalse(verify(stored, "wrong"))

    def test_delete(self):
        self.users.set_password("alice@example.test", "a")
        self.users.set_password("bob@example.test", "b")
        self.users.delete("alice@example.test")
        self.assertEqual(self.users.addresses(), ["bob@example.test"])

    def test_edits_by_another_process_are_seen(self):
        other = UserDB(self.path, self.clock)
        other.set_password("carol@example.test", "c")
        self.assertFalse(self.users.exists("carol@example.test"))  # checked < 1 s ago
        self.clock.advance(1)
        self.assertTrue(self.users.exists("carol@example.test"))

    def test_bad_line_names_file_and_line(self):
        with open(self.path, "w") as f:
            f.write("# comment\n\nnot-an-entry\n")
        with self.assertRaises(ListFileError) as caught:
            parse_users(self.path)
        self.assertEqual(str(caught.exception), f"{self.path}:3: expected address:hash")

    def test_bad_lines_are_skipped_and_logged(self):
        """A line from an older version keeps out its own user, not the rest."""
        with open(self.path, "wb") as f:
            f.write(f"alice@example.test:{HASH}\n".encode()
                    + b"a/b@example.test:$argon2id$b\n"
                    b"..@example.test:$argon2id$b\n"
                    b"foo\n"
                    b"@example.test:$argon2id$b\n"
                    b"\xff@example.test:$argon2id$b\n"
                    + f"bob@example.test:{HASH}\n".encode())
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        users = UserDB(self.path, self.clock)
        self.assertEqual(users.addresses(), ["alice@example.test", "bob@example.test"])
        logged = [formatEvent(e) for e in events]
        self.assertEqual([line.split(": ")[1].rsplit(":", 1)[1] for line in logged],
                         ["2", "3", "4", "5", "6"])
        self.assertIn("'a/b@example.test'", logged[0])
        self.assertEqual([p.lineno for p in users.problems], [2, 3, 4, 5, 6])

    def test_a_re_read_logs_its_skipped_lines_once(self):
        """On the reactor thread (a big file's re-read runs in a thread)."""
        logged = log_lines(self)
        with open(self.path, "w") as f:
            f.write(f"foo\nalice@example.test:{HASH}\n")
        self.clock.advance(1)
        self.assertTrue(self.users.exists("alice@example.test"))
        self.assertTrue(self.users.exists("alice@example.test"))
        self.assertEqual(logged, [f"users file: skipped {self.path}:1: expected address:hash"])

    def test_set_password_refuses_a_name_the_reader_would_skip(self):
        for name in ("a/b@example.test", "x\n@example.test", "..@example.test"):
            self.assertRaises(AddressError, self.users.set_password, name, "pw")
        self.assertFalse(os.path.exists(self.path))

    def test_unknown_user_never_verifies(self):
        self.assertFalse(verify(None, "mailsrv: no such user"))


class WatchedFileTests(unittest.TestCase):
    """
    A list file is looked at once a second at most; a changed one over
    INLINE bytes (here: any) is re-parsed in a thread, one re-read at a
    time, the previous contents served until the new ones are in.
    """

    def setUp(self):
        self.path = Path(self.mktemp())
        self.path.write_text("a\n")
        self.clock = task.Clock()
        self.parsed = []
        self.rereads = []  # (the parse in its thread, the Deferred of its result)
        self.patch(threads, "deferToThread", self.in_thread)
        self.patch(listfile, "INLINE", 0)
        self.watched = WatchedFile(self.path, self.parse, self.clock)

    def parse(self, path):
        self.parsed.append(path)
        text = Path(path).read_text()
        if "bad" in text:
            raise ListFileError(path, 1, "bad")
        if "bug" in text:
            raise ZeroDivisionError()
        return text

    def in_thread(self, f, *args):
        d = defer.Deferred()
        self.rereads.append((lambda: f(*args), d))
        return d

    def finish_reread(self):
        """The last re-read's thread ends: its result (or error) reaches the reactor thread."""
        run, d = self.rereads[-1]
        defer.maybeDeferred(run).chainDeferred(d)

    def test_an_unchanged_file_is_not_re_read(self):
        for _ in range(3):
            self.clock.advance(1)
            self.assertEqual(self.watched.get(), "a\n")
        self.assertEqual((len(self.parsed), self.rereads), (1, []))

    def test_a_change_is_parsed_in_a_thread(self):
        self.path.write_text("bb\n")
        self.assertEqual(self.watched.get(), "a\n")  # looked at less than a second ago
        self.clock.advance(1)
        self.assertEqual(self.watched.get(), "a\n")  # the old contents until the thread ends
        self.assertEqual((len(self.parsed), len(self.rereads)), (1, 1))
        self.finish_reread()
        self.assertEqual(self.watched.get(), "bb\n")

    def test_a_small_file_is_re_read_at_once(self):
        """On the reactor thread: an edit holds for the very next lookup."""
        self.patch(listfile, "INLINE", len("bb\n"))
        self.path.write_text("bb\n")
        self.clock.advance(1)
        self.assertEqual(self.watched.get(), "bb\n")
        self.assertEqual((len(self.parsed), self.rereads), (2, []))

    def test_one_re_read_at_a_time(self):
        self.path.write_text("bb\n")
        self.clock.advance(1)
        self.watched.get()
        self.path.write_text("ccc\n")
        self.clock.advance(1)
        self.assertEqual(self.watched.get(), "a\n")
        self.assertEqual(len(self.rereads), 1)
        self.finish_reread()  # it read "ccc", but its stat saw "bb": the next look reads again
        self.assertEqual(self.watched.get(), "ccc\n")
        self.assertEqual(len(self.rereads), 2)

    def test_a_refused_file_keeps_the_previous_contents(self):
        """Until its next change; a parser's bug is logged with its traceback."""
        logged = log_lines(self)
        for rereads, text in enumerate(["bad\n", "a bug\n"], 1):
            self.path.write_text(text)
            self.clock.advance(1)
            self.watched.get()
            self.finish_reread()
            self.clock.advance(1)
            self.assertEqual(self.watched.get(), "a\n")
            self.assertEqual(len(self.rereads), rereads)
        self.assertEqual(logged, [
            f"keeping the previous contents of {self.path}: {self.path}:1: bad",
            f"keeping the previous contents of {self.path}"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class DirectoryTests(unittest.TestCase):
    def setUp(self):
        users_path, aliases_path = self.mktemp(), self.mktemp()
        self.clock = task.Clock()
        users = UserDB(users_path, self.clock)
        for name in ("alice", "bob"):
            users.set_password(f"{name}@example.test", "pw")
        with open(aliases_path, "w") as f:
            f.write(
                "postmaster: alice@example.test\n"
                "team@example.test: alice@example.test, bob@example.test, x@remote.test\n"
                "loop1@example.test: loop2@example.test\n"
                "loop2@example.test: loop1@example.test, bob@example.test\n"
                "all@example.test: team@example.test, Alice@example.test\n"
            )
        self.directory = Directory(["example.test"], users, AliasMap(aliases_path, self.clock))

    def route(self, address):
        found = self.directory.route(address)
        return found and (found.local, found.remote, found.is_local_domain)

    def test_routes(self):
        alice, bob = "alice@example.test", "bob@example.test"
        table = [
            ("alice@example.test", ((alice,), (), True)),
            ("ALICE@Example.Test", ((alice,), (), True)),
            ("alice+lists@example.test", ((alice,), (), True)),
            ("+lists@example.test", None),
            ("a/b@example.test", None),
            ("not an address", None),
            ("nobody@example.test", None),
            ("someone@remote.test", ((), ("someone@remote.test",), False)),
            ("postmaster@example.test", ((alice,), (), True)),
            ("team@example.test", ((alice, bob), ("x@remote.test",), True)),
            ("loop1@example.test", ((bob,), (), True)),
            ("all@example.test", ((alice, bob), ("x@remote.test",), True)),
        ]
        for address, expected in table:
            self.assertEqual(self.route(address), expected, address)

    def test_login_name(self):
        self.assertEqual(self.directory.login_name("Alice"), "alice@example.test")
        self.assertEqual(self.directory.login_name("bob@Example.test"), "bob@example.test")

    def test_owns(self):
        self.assertTrue(self.directory.owns("alice@example.test", "Alice@example.test"))
        self.assertTrue(self.directory.owns("alice@example.test", "postmaster@example.test"))
        self.assertFalse(self.directory.owns("bob@example.test", "alice@example.test"))

    def test_checker(self):
        checker = UserPasswordChecker(self.directory, MemorySessionStore(0, self.clock), self.clock)
        good = checker.requestAvatarId(credentials.UsernamePassword(b"alice", b"pw"))
        bad = checker.requestAvatarId(
            credentials.UsernamePassword(b"alice@example.test", b"nope"))
        unknown = checker.requestAvatarId(
            credentials.UsernamePassword(b"zed@example.test", b"pw"))
        garbage = checker.requestAvatarId(
            credentials.UsernamePassword(b"\xff", b"pw"))
        good.addCallback(self.assertEqual, "alice@example.test")
        for d in (bad, unknown, garbage):
            self.assertFailure(d, error.UnauthorizedLogin)
        return defer.gatherResults([good, bad, unknown, garbage])


# {SHA512-CRYPT} of "onetestandone", from `doveadm pw -s SHA512-crypt`.
SHA512_CRYPT = ("{SHA512-CRYPT}$6$dEqUVsCirHzV8kHw$hgC0x0ufah.N0PzUVvhLEMnoww5lo.JBmeLSsRNDkgWV"
                "ylC55Gk6zA1KWsn.SiIAAIDEqHxtugGZWHl1qMex..")


class RefusedHashTests(unittest.TestCase):
    """
    A user whose hash login refuses ({MD5}, an unknown scheme) still gets
    mail; start-up logs them once, check-config names file, line and user.
    """

    def setUp(self):
        self.path = self.mktemp()
        with open(self.path, "w") as f:
            f.write(f"# migrated\nalice@example.test:{HASH}\n"
                    "bob@example.test:{MD5}$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0\n"
                    "carol@example.test:{ROT13}pnebyf\n")
        self.clock = task.Clock()

    def test_kept_and_logged_once(self):
        logged = log_lines(self)
        users = UserDB(self.path, self.clock)
        self.assertEqual(users.addresses(),
                         ["alice@example.test", "bob@example.test", "carol@example.test"])
        self.assertEqual(logged, [
            f"users file {self.path}: user bob@example.test: {{MD5}} is not accepted (unsafe); "
            "set a new password with `mailsrv user passwd`",
            f"users file {self.path}: user carol@example.test: {{ROT13}} is not a scheme "
            "mailsrv knows; set a new password with `mailsrv user passwd`"])
        with open(self.path, "a") as f:
            f.write("dave@example.test:{PLAIN}x\n")
        self.clock.advance(1)
        self.assertTrue(users.exists("dave@example.test"))
        self.assertEqual(len(logged), 3, "only the new one")
        self.assertIn("user dave@example.test: {PLAIN}", logged[2])

    def test_check_config_names_file_line_and_user(self):
        self.assertEqual([str(problem) for problem in refused_hashes(self.path)], [
            f"{self.path}:3: user bob@example.test: {{MD5}} is not accepted (unsafe); "
            "set a new password with `mailsrv user passwd`",
            f"{self.path}:4: user carol@example.test: {{ROT13}} is not a scheme mailsrv "
            "knows; set a new password with `mailsrv user passwd`"])

    def test_their_login_fails_like_a_wrong_password(self):
        users = UserDB(self.path, self.clock)
        directory = Directory(["example.test"], users, AliasMap(self.mktemp(), self.clock))
        checker = UserPasswordChecker(directory, MemorySessionStore(0, self.clock), self.clock)
        d = checker.requestAvatarId(credentials.UsernamePassword(b"carol", b"pnebyf"))
        return self.assertFailure(d, error.UnauthorizedLogin)


class ReplaceHashTests(unittest.TestCase):
    def setUp(self):
        self.path = self.mktemp()
        self.text = (f"# users\n\nalice@example.test:{HASH}\n"
                     f"Bob@Example.test:{SHA512_CRYPT}  # from dovecot\n"
                     "garbage line\n")
        with open(self.path, "w") as f:
            f.write(self.text)

    def test_only_that_line_changes(self):
        self.assertTrue(replace_hash(self.path, "bob@example.test", SHA512_CRYPT, "$new"))
        with open(self.path) as f:
            self.assertEqual(f.read(), self.text.replace(SHA512_CRYPT, "$new"))

    def test_a_hash_changed_meanwhile_wins(self):
        for address, old in (("bob@example.test", HASH), ("zed@example.test", HASH)):
            self.assertFalse(replace_hash(self.path, address, old, "$new"))
        with open(self.path) as f:
            self.assertEqual(f.read(), self.text)


class RehashTests(unittest.TestCase):
    """
    A correct password for a hash that is not our argon2id is stored again
    as argon2id, in the users file, by the server; real hashing in threads.
    """

    def setUp(self):
        self.clock = task.Clock()
        self.path = self.mktemp()
        self.alice_hash = hash_password("password")
        with open(self.path, "w") as f:
            f.write(f"# imported\nbob@example.test:{SHA512_CRYPT}\n"
                    f"alice@example.test:{self.alice_hash}\n")
        self.users = UserDB(self.path, self.clock)
        directory = Directory(["example.test"], self.users, AliasMap(self.mktemp(), self.clock))
        self.checker = UserPasswordChecker(directory, MemorySessionStore(0, self.clock, Limits()),
                                           self.clock, cache_ttl=300)
        self.logged = log_lines(self)

    def login(self, name, password, ip="198.51.100.7"):
        return self.checker.requestAvatarId(ClientCredentials(name, password, ip))

    def line_of(self, address):
        with open(self.path) as f:
            (line,) = [line for line in f if line.startswith(address + ":")]
        return line.rstrip("\n").split(":", 1)[1]

    @defer.inlineCallbacks
    def test_the_file_gets_argon2id_and_the_next_login_uses_it(self):
        self.assertEqual((yield self.login(b"bob", b"onetestandone")), "bob@example.test")
        stored = self.line_of("bob@example.test")
        self.assertTrue(stored.startswith("$argon2id$"), stored)
        self.assertTrue(verify(stored, "onetestandone"))
        self.assertEqual(self.line_of("alice@example.test"), self.alice_hash, "other lines stay")
        with open(self.path) as f:
            self.assertTrue(f.read().startswith("# imported\n"))
        self.assertEqual(self.users.hash_for("bob@example.test"), stored)
        self.assertEqual([line for line in self.logged if "rehashed" in line],
                         ["users file: rehashed the password of bob@example.test with argon2id"])
        # The cache holds the new hash: no hashing at all for the next login.
        verified = []
        self.patch(checker_module, "verify_in_thread",
                   lambda stored, password: verified.append(stored) or defer.succeed(False))
        self.assertEqual((yield self.login(b"bob", b"onetestandone")), "bob@example.test")
        self.assertEqual(verified, [])
        self.checker._cache = checker_module.LoginCache(300)
        yield self.assertFailure(self.login(b"bob", b"onetestandone"), error.UnauthorizedLogin)
        self.assertEqual(verified, [stored], "argon2id is what is verified now")

    @defer.inlineCallbacks
    def test_wrong_passwords_and_current_argon2id_are_not_rewritten(self):
        with open(self.path) as f:
            before = f.read()
        yield self.assertFailure(self.login(b"bob", b"wrong"), error.UnauthorizedLogin)
        self.assertEqual((yield self.login(b"alice", b"password")), "alice@example.test")
        with open(self.path) as f:
            self.assertEqual(f.read(), before)

    @defer.inlineCallbacks
    def test_a_change_by_the_admin_meanwhile_is_not_lost(self):
        """`mailsrv user passwd` between the verify and the write: the admin's hash stays."""
        real_verify = checker_module.verify_in_thread

        def admin_edits(ok):
            UserDB(self.path, task.Clock()).set_password("bob@example.test", "from-admin")
            return ok

        def verify_then_admin_edits(stored, password):
            return real_verify(stored, password).addCallback(admin_edits)

        self.patch(checker_module, "verify_in_thread", verify_then_admin_edits)
        self.assertEqual((yield self.login(b"bob", b"onetestandone")), "bob@example.test")
        self.assertTrue(verify(self.line_of("bob@example.test"), "from-admin"))
        self.assertEqual([line for line in self.logged if "changed while" in line],
                         ["users file: bob@example.test changed while logging in; their hash "
                          "is left as it is"])

    @defer.inlineCallbacks
    def test_a_failed_write_is_logged_and_the_login_succeeds(self):
        def refuse(path, text):
            raise PermissionError(13, "Permission denied", path)

        self.patch(users_module, "replace_list_file", refuse)
        self.assertEqual((yield self.login(b"bob", b"onetestandone")), "bob@example.test")
        self.assertEqual(self.line_of("bob@example.test"), SHA512_CRYPT)
        (line,) = [line for line in self.logged if "could not store" in line]
        self.assertIn("users file: could not store the argon2id hash of bob@example.test (", line)
        self.assertIn("Permission denied", line)
        # The old hash is cached: no hash and no write at every login (a
        # users file the server's user may not replace).
        self.assertEqual((yield self.login(b"bob", b"onetestandone")), "bob@example.test")
        self.assertEqual(len([line for line in self.logged if "could not store" in line]), 1)


class LoginHelper:
    """For test cases with a C{checker} whose hashing answers at once."""

    def login(self, user, password, ip="198.51.100.7"):
        """The avatar id, or the failure's exception."""
        d = self.checker.requestAvatarId(ClientCredentials(user, password, ip))
        results = []
        d.addBoth(results.append)
        (result,) = results
        return result.value if hasattr(result, "value") else result


class Limits:
    max_failures = 5
    max_failures_per_ip = 100
    failure_window = 600
    lockout = 900


class ThrottlingCheckerTests(LoginHelper, unittest.TestCase):
    """
    The checker counts wrong passwords in the store and refuses locked-out
    keys before hashing (hashing runs inline here, so results are at once).
    """

    def setUp(self):
        self.clock = task.Clock()
        users = UserDB(self.mktemp(), self.clock)
        for name in ("alice", "bob"):
            users.set_password(f"{name}@example.test", "pw")
        directory = Directory(["example.test"], users, AliasMap(self.mktemp(), self.clock))
        self.store = MemorySessionStore(0, self.clock, Limits())
        self.checker = UserPasswordChecker(directory, self.store, self.clock)
        self.hashed = []

        def verify_inline(stored, password):
            self.hashed.append(stored is not None)
            return defer.maybeDeferred(verify, stored, password)

        self.patch(checker_module, "verify_in_thread", verify_inline)


    def test_five_distinct_wrong_passwords_lock_the_pair_out(self):
        for n in range(5):
            self.assertIsInstance(self.login(b"alice", b"wrong-%d" % n),
                                  error.UnauthorizedLogin)
        refused = self.login(b"alice", b"pw")
        self.assertIsInstance(refused, LoginThrottled)
        self.assertEqual(refused.key, "198.51.100.7/alice@example.test")
        self.assertEqual(len(self.hashed), 5, "a refused login is not hashed")
        self.assertEqual(self.login(b"ALICE@example.test", b"pw").key, refused.key)
        self.assertEqual(self.login(b"bob", b"pw"), "bob@example.test")
        self.assertEqual(self.login(b"alice", b"pw", ip="198.51.100.8"), "alice@example.test")
        self.clock.advance(900)
        self.assertEqual(self.login(b"alice", b"pw"), "alice@example.test")

    def test_the_same_wrong_password_counts_once(self):
        for _ in range(20):
            failure = self.login(b"alice", b"wrong")
            self.assertIsInstance(failure, error.UnauthorizedLogin)
            self.assertNotIsInstance(failure, LoginThrottled)
        self.assertEqual(self.login(b"alice", b"pw"), "alice@example.test")

    def test_unknown_users_are_counted_too(self):
        for n in range(5):
            self.login(b"zed", b"guess-%d" % n)
        self.assertIsInstance(self.login(b"zed", b"guess-5"), LoginThrottled)

    def test_only_hmacs_are_kept(self):
        self.login(b"alice", b"hunter2-secret")
        self.assertNotIn(b"hunter2-secret", repr(vars(self.store)).encode())
        (fingerprints,) = [v for _, v in self.store._failures._entries.values()][:1]
        (fingerprint,) = fingerprints._entries
        self.assertEqual(len(fingerprint), 32)
        self.assertNotIn(b"hunter2", fingerprint)

    def test_the_key_is_per_process(self):
        other = UserPasswordChecker(self.checker.directory, self.store, self.clock)
        self.assertNotEqual(other._fingerprint("a@example.test", "pw"),
                            self.checker._fingerprint("a@example.test", "pw"))

    def test_locked_while_hashing(self):
        """Parallel guesses that lock the key out also refuse a right password in flight."""
        pending = []
        self.checker = UserPasswordChecker(self.checker.directory, self.store, self.clock,
                                           max_hashes=6)
        self.patch(checker_module, "verify_in_thread",
                   lambda stored, password: pending.append(
                       (defer.Deferred(), verify(stored, password))) or pending[-1][0])
        right = self.checker.requestAvatarId(ClientCredentials(b"alice", b"pw", "198.51.100.7"))
        guesses = [
            self.checker.requestAvatarId(ClientCredentials(b"alice", b"g%d" % n, "198.51.100.7"))
            for n in range(5)
        ]
        for d, ok in pending[1:]:
            d.callback(ok)
        pending[0][0].callback(pending[0][1])
        for d in guesses:
            self.failureResultOf(d, error.UnauthorizedLogin)
        self.failureResultOf(right, LoginThrottled)

    def test_names_with_control_characters_are_refused_unhashed(self):
        self.assertIsInstance(self.login(b"alice\r\nlogin ok", b"pw"), error.UnauthorizedLogin)
        self.assertEqual(self.hashed, [])

    def test_without_a_client_ip_nothing_is_counted(self):
        for n in range(10):
            self.failureResultOf(self.checker.requestAvatarId(
                credentials.UsernamePassword(b"alice", b"wrong-%d" % n)), error.UnauthorizedLogin)
        self.assertEqual(self.login(b"alice", b"pw"), "alice@example.test")


class CertificateAddressesTests(unittest.TestCase):
    """Which addresses a client certificate names, for SASL EXTERNAL."""

    def test_table(self):
        for made, expected in [
            (certs.make("alice@example.test"), ["alice@example.test"]),
            (certs.make("Alice", subject_email="Alice@Example.TEST"), ["Alice@Example.TEST"]),
            (certs.make("bob@example.test", subject_email="alice@example.test"),
             ["alice@example.test"]),
            (certs.make("bob@example.test", subject_email="carol@example.test",
                        emails=["alice@example.test", "alice.smith@example.test"],
                        names=["host.example.test"]),
             ["alice@example.test", "alice.smith@example.test"]),
            (certs.make("bob@example.test", emails=["example.test"]), ["bob@example.test"]),
            (certs.make("Test Client", names=["alice.example.test"]), []),
            (certs.make("not an@address"), []),
        ]:
            self.assertEqual(certificate_addresses(made.cert), expected,
                             made.cert.subject.rfc4514_string())


class CertificateCheckerTests(unittest.TestCase):
    """SASL EXTERNAL: the user a certificate names, throttled like passwords."""

    def setUp(self):
        self.clock = task.Clock()
        users = UserDB(self.mktemp(), self.clock)
        for name in ("alice", "alice.smith", "bob"):
            users.set_password(f"{name}@example.test", "pw")
        directory = Directory(["example.test"], users, AliasMap(self.mktemp(), self.clock))
        self.store = MemorySessionStore(0, self.clock, Limits())
        self.checker = CertificateChecker(directory, self.store)
        self.patch(checker_module, "verify_in_thread", lambda *a: self.fail("hashed"))

    def login(self, made, authzid=b"", ip="198.51.100.7"):
        """The avatar id, or the failure's exception."""
        d = self.checker.requestAvatarId(CertificateCredentials(made.cert, authzid, ip))
        results = []
        d.addBoth(results.append)
        (result,) = results
        return result.value if hasattr(result, "value") else result

    def test_the_first_address_that_is_a_user(self):
        made = certs.make("x", emails=["nobody@example.test", "Alice.Smith@example.test",
                                       "alice@example.test"])
        self.assertEqual(self.login(made), "alice.smith@example.test")
        self.assertEqual(self.login(made, b"alice"), "alice@example.test")
        self.assertEqual(self.login(made, b"ALICE@example.test"), "alice@example.test")

    def test_a_user_of_the_ldap_book(self):
        self.checker.directory.book = type("Book", (), {
            "exists": staticmethod(lambda address: address == "dave@example.test")})()
        self.assertEqual(self.login(certs.make("Dave@example.test")), "dave@example.test")

    def test_another_authzid_or_no_user_fails(self):
        alice = certs.make("alice@example.test")
        for made, authzid in [(alice, b"bob@example.test"), (alice, b"\xff"),
                              (certs.make("carol@example.test"), b""),
                              (certs.make("carol@example.test"), b"carol@example.test"),
                              (certs.make("Test Client"), b"")]:
            failure = self.login(made, authzid)
            self.assertIsInstance(failure, error.UnauthorizedLogin, (made, authzid))
            self.assertNotIsInstance(failure, LoginThrottled)

    def test_failures_count_towards_the_lockout(self):
        alice = certs.make("alice@example.test")
        for n in range(5):  # five certificates: five distinct failures
            self.login(certs.make("alice@example.test"), b"bob@example.test")
        refused = self.login(alice, b"bob@example.test")
        self.assertIsInstance(refused, LoginThrottled)
        self.assertEqual(refused.key, "198.51.100.7/bob@example.test")
        self.assertEqual(self.login(alice), "alice@example.test")

    def test_a_pair_locked_out_by_passwords_is_refused(self):
        for n in range(5):
            self.store.record_failure("198.51.100.7", "alice@example.test", b"%d" % n)
        alice = certs.make("alice@example.test")
        self.assertIsInstance(self.login(alice), LoginThrottled)
        self.assertEqual(self.login(alice, ip="198.51.100.8"), "alice@example.test")

    def test_the_same_attempt_counts_once(self):
        made = certs.make("carol@example.test")
        for _ in range(10):
            self.assertNotIsInstance(self.login(made), LoginThrottled)


class LoginCacheTests(LoginHelper, unittest.TestCase):
    """
    A correct password is remembered for [auth] cache_ttl seconds; a new
    password or a deleted user ends it; wrong passwords are never cached.
    Hashing runs inline here and is counted, with a cheap stand-in for
    argon2 (salted, so that setting the same password again changes the
    stored hash, as argon2 does).
    """

    def setUp(self):
        salts = iter(range(1000))
        self.patch(users_module, "hash_password",
                   lambda pw: f"fake${next(salts)}${hashlib.sha256(pw.encode()).hexdigest()}")
        self.clock = task.Clock()
        self.users = UserDB(self.mktemp(), self.clock)
        self.users.set_password("alice@example.test", "pw")
        directory = Directory(["example.test"], self.users, AliasMap(self.mktemp(), self.clock))
        self.store = MemorySessionStore(0, self.clock, Limits())
        self.checker = UserPasswordChecker(directory, self.store, self.clock, cache_ttl=300)
        self.hashed = []

        def verify_inline(stored, password):
            self.hashed.append(password)
            digest = hashlib.sha256(password.encode()).hexdigest()
            return defer.succeed(stored is not None and stored.endswith("$" + digest))

        self.patch(checker_module, "verify_in_thread", verify_inline)


    def test_a_correct_password_is_hashed_once_until_it_expires(self):
        self.assertEqual(self.login(b"alice", b"pw"), "alice@example.test")
        self.assertEqual(self.login(b"Alice@Example.test", b"pw"), "alice@example.test")
        self.assertEqual(self.login(b"alice", b"pw", ip="203.0.113.1"), "alice@example.test")
        self.assertEqual(self.hashed, ["pw"])
        self.clock.advance(299)
        self.login(b"alice", b"pw")
        self.assertEqual(len(self.hashed), 1)
        self.clock.advance(1)
        self.assertEqual(self.login(b"alice", b"pw"), "alice@example.test")
        self.assertEqual(len(self.hashed), 2, "expired after cache_ttl")

    def test_failures_are_never_cached(self):
        for _ in range(3):
            self.assertIsInstance(self.login(b"alice", b"wrong"), error.UnauthorizedLogin)
        self.assertEqual(self.hashed, ["wrong"] * 3)
        self.login(b"alice", b"pw")
        self.assertIsInstance(self.login(b"alice", b"pw-"), error.UnauthorizedLogin)
        self.assertIsInstance(self.login(b"alice", b"wrong"), error.UnauthorizedLogin)
        self.assertEqual(len(self.checker._cache), 1)

    def test_a_password_change_ends_the_entry(self):
        self.login(b"alice", b"pw")
        self.users.set_password("alice@example.test", "new")
        self.assertIsInstance(self.login(b"alice", b"pw"), error.UnauthorizedLogin)
        self.assertEqual(self.login(b"alice", b"new"), "alice@example.test")
        self.assertEqual(self.hashed, ["pw", "pw", "new"])

    def test_an_edit_of_the_file_by_hand_ends_the_entry(self):
        """The server notices the file changed (at most a second later)."""
        self.login(b"alice", b"pw")
        other = UserDB(self.users.path, task.Clock())  # `mailsrv user passwd` in another process
        other.set_password("alice@example.test", "new")
        self.clock.advance(1)
        self.assertIsInstance(self.login(b"alice", b"pw"), error.UnauthorizedLogin)

    def test_a_deleted_user_is_refused(self):
        self.login(b"alice", b"pw")
        self.users.delete("alice@example.test")
        self.assertIsInstance(self.login(b"alice", b"pw"), error.UnauthorizedLogin)

    def test_a_locked_out_key_is_refused_even_when_cached(self):
        self.login(b"alice", b"pw")
        for n in range(5):
            self.login(b"alice", b"wrong-%d" % n)
        self.assertIsInstance(self.login(b"alice", b"pw"), LoginThrottled)

    def test_only_hmacs_are_kept(self):
        self.login(b"alice", b"hunter2-secret")  # wrong: not kept at all
        self.users.set_password("alice@example.test", "hunter2-secret")
        self.login(b"alice", b"hunter2-secret")
        self.assertEqual(len(self.checker._cache), 1)
        self.assertNotIn(b"hunter2", repr(vars(self.checker._cache)).encode())

    def test_zero_ttl_turns_it_off(self):
        self.checker = UserPasswordChecker(self.checker.directory, self.store, self.clock,
                                           cache_ttl=0)
        self.login(b"alice", b"pw")
        self.login(b"alice", b"pw")
        self.assertEqual(len(self.hashed), 2)


class HashConcurrencyTests(unittest.TestCase):
    def test_at_most_max_hashes_at_once(self):
        """Further logins wait for a free slot instead of hashing in parallel."""
        clock = task.Clock()
        users = UserDB(self.mktemp(), clock)
        directory = Directory(["example.test"], users, AliasMap(self.mktemp(), clock))
        checker = UserPasswordChecker(directory, MemorySessionStore(0, clock, Limits()), clock,
                                      max_hashes=2)
        running = []
        self.patch(checker_module, "verify_in_thread",
                   lambda stored, password: running.append(defer.Deferred()) or running[-1])
        logins = [checker.requestAvatarId(ClientCredentials(b"u%d" % n, b"pw", "192.0.2.1"))
                  for n in range(5)]
        self.assertEqual(len(running), 2)
        running[0].callback(False)
        self.assertEqual(len(running), 3)
        for d in running[1:3]:
            d.callback(False)
        self.assertEqual(len(running), 5)
        for d in running[3:]:
            d.callback(False)
        for d in logins:
            self.failureResultOf(d, error.UnauthorizedLogin)

    def test_defaults_to_the_cpu_count(self):
        checker = UserPasswordChecker(None, None, task.Clock())
        self.assertEqual(checker._hashing.limit, os.cpu_count() or 1)


# Lines built from the characters that matter to these files.
_LINE_CHARS = st.sampled_from(list("abz09.@:,;#/+-_ \t\r\"\\$=") + ["\u00e9", "\x00", "\x85"])
_FILE = st.lists(st.text(_LINE_CHARS, max_size=40), max_size=8).map("\n".join)
_BYTES = st.binary(max_size=200)


class ListFileProperties(unittest.TestCase):
    """Any file content gives entries or a ListFileError naming the line; nothing else."""

    def write(self, content):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content.encode("utf-8", "surrogatepass") if isinstance(content, str)
                    else content)
        return path

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(_FILE, _BYTES))
    def test_users_reader(self, content):
        path = self.write(content)
        users, problems = read_users(path)
        for address, stored in users.items():
            self.assertEqual(parse_mailbox(address).normalised, address)
            self.assertNotIn("\n", stored)
        for problem in problems:
            self.assertTrue(str(problem).startswith(f"{path}:{problem.lineno}: "))
            self.assertNotIn("\n", str(problem))
        if problems:
            self.assertRaises(ListFileError, parse_users, path)
        else:
            self.assertEqual(parse_users(path), users)

    @settings(max_examples=100, deadline=None)
    @given(st.dictionaries(
        st.from_regex(r"[a-z0-9][a-z0-9._-]{0,10}@example\.test", fullmatch=True)
        .filter(lambda a: ".." not in a and ".@" not in a),
        st.from_regex(r"\$argon2id\$[A-Za-z0-9$=,+/]{1,20}", fullmatch=True), max_size=5))
    def test_users_file_round_trip(self, users):
        db = UserDB(self.mktemp(), task.Clock())
        db._write(users)
        self.assertEqual(read_users(db.path), (users, []))

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(_FILE, _BYTES))
    def test_aliases_reader(self, content):
        path = self.write(content)
        try:
            aliases = parse_aliases(path)
        except ListFileError as e:
            self.assertTrue(str(e).startswith(f"{path}:{e.lineno}: "))
            self.assertNotIn("\n", str(e))
            return
        for name, members in aliases.items():
            self.assertTrue(members)
            self.assertEqual(name, name.lower())


class AliasGraphTests(unittest.TestCase):
    """Dead members, loops and depth, on hand-made and on random alias graphs."""

    def directory(self, aliases, users=("bob@example.test",)):
        users_path, aliases_path = self.mktemp(), self.mktemp()
        with open(users_path, "w") as f:
            f.write("".join(f"{user}:$argon2id$x\n" for user in users))
        clock = task.Clock()
        db = UserDB(users_path, clock)
        with open(aliases_path, "w") as f:
            f.write("".join(f"{name}: {', '.join(members)}\n" for name, members in aliases))
        return Directory(["example.test"], db, AliasMap(aliases_path, clock))

    def test_deep_chain_is_cut_and_reported(self):
        chain = [(f"a{i}@example.test", [f"a{i + 1}@example.test"]) for i in range(15)]
        chain.append(("a15@example.test", ["bob@example.test"]))
        directory = self.directory(chain)
        self.assertIsNone(directory.route("a0@example.test"))
        self.assertEqual(directory.route("a10@example.test").local, ("bob@example.test",))
        problems = directory.alias_problems()
        self.assertIn("a0@example.test: aliases nested deeper than 10 (at a11@example.test): "
                      "the rest is not delivered", problems)

    def test_missing_postmaster_is_reported(self):
        self.assertIn("postmaster@example.test is no user or alias: RFC 5321 requires it, "
                      "and bounces that reach no local sender go to it",
                      self.directory([]).alias_problems())
        self.assertEqual(self.directory([("postmaster", ["bob@example.test"])])
                         .alias_problems(), [])

    _NAMES = [f"n{i}@example.test" for i in range(6)] + ["bob@example.test",
                                                        "x@remote.test"]

    @settings(max_examples=200, deadline=None)
    @given(st.dictionaries(st.sampled_from(_NAMES[:6]),
                           st.lists(st.sampled_from(_NAMES), min_size=1, max_size=4),
                           max_size=6))
    def test_any_graph_routes_to_what_it_reaches_or_to_nothing(self, graph):
        directory = self.directory(graph.items())
        for name in self._NAMES:
            route = directory.route(name)
            reachable, todo = set(), [name]
            while todo:
                address = todo.pop()
                if address not in reachable:
                    reachable.add(address)
                    todo += graph.get(address, [])
            live = reachable & {"bob@example.test", "x@remote.test"}
            if not live:
                self.assertIsNone(route, name)
            else:
                self.assertEqual(set(route.local) | set(route.remote), live, name)
        directory.alias_problems()  # never raises
