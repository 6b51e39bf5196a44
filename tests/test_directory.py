"""
Users file, aliases, routing and the password checker.
"""

import os
import stat

from twisted.cred import credentials, error
from twisted.internet import task
from twisted.trial import unittest

from mailsrv.directory import AliasMap, Directory, UserDB
from mailsrv.directory.checker import UserPasswordChecker
from mailsrv.directory.listfile import ListFileError
from mailsrv.directory.passwords import verify


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
            UserDB(self.path)
        self.assertEqual(str(caught.exception), f"{self.path}:3: expected address:hash")

    def test_unknown_user_never_verifies(self):
        self.assertFalse(verify(None, "mailsrv: no such user"))


class DirectoryTests(unittest.TestCase):
    def setUp(self):
        users_path, aliases_path = self.mktemp(), self.mktemp()
        users = UserDB(users_path)
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
        self.directory = Directory(["example.test"], users, AliasMap(aliases_path))

    def route(self, address):
        found = self.directory.route(address)
        return found and (found.local, found.remote, found.is_local_domain)

    def test_routes(self):
        alice, bob = "alice@example.test", "bob@example.test"
        table = [
            ("alice@example.test", ((alice,), (), True)),
            ("ALICE@Example.Test", ((alice,), (), True)),
            ("alice+lists@example.test", ((alice,), (), True)),
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
        checker = UserPasswordChecker(self.directory)
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
        from twisted.internet import defer
        return defer.gatherResults([good, bad, unknown, garbage])
