"""
Password hashes from other servers: every accepted scheme against fixed
vectors that Dovecot, OpenLDAP and the schemes' reference implementations
printed, and against hashes the libraries make here; refused schemes.
"""

import base64
import hashlib
import os

import bcrypt
from argon2 import PasswordHasher
from hypothesis import example, given, strategies as st
from passlib.hash import sha256_crypt, sha512_crypt
from twisted.trial import unittest

from mailsrv.directory import passwords
from mailsrv.directory.passwords import hash_password, hash_problem, needs_rehash, verify
from tests.fuzzing import examples

# (stored hash, its password), as printed by the tools named.
FIXED_VECTORS = [
    # `doveadm pw -s SHA512-crypt -p onetestandone`
    ("{SHA512-CRYPT}$6$dEqUVsCirHzV8kHw$hgC0x0ufah.N0PzUVvhLEMnoww5lo.JBmeLSsRNDkgWVylC55Gk6z"
     "A1KWsn.SiIAAIDEqHxtugGZWHl1qMex..", "onetestandone"),
    # Drepper's SHA-crypt specification, bare as crypt(3) writes them
    ("$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEd"
     "FCoEOfaS35inz1", "Hello world!"),
    ("{SHA256-CRYPT}$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5", "Hello world!"),
    # `doveadm pw -s BLF-CRYPT -p Flz_3qc123`
    ("{BLF-CRYPT}$2y$05$F9s0JlyUD1MTWGVe1vIfqeKRWLg8f9H0dntjtme1W38HqQ5TEvzv6", "Flz_3qc123"),
    # `slappasswd -h {SSHA} -s 1234`, twice
    ("{SSHA}vQ8qMNAsFts88BKbe8R9HznLoTuMBzad", "1234"),
    ("{SSHA}pBbpnndVobICHI5kciLpL2CdhpWLJ4Um", "1234"),
    # a {SSHA512} of "password" (the scheme name's case does not matter)
    ("{ssha512}dOeDLmVpHJThhHeag10Hm2g4T7s3SBE6rGHcXUolXJHVufY4qT782rwZ/0XE6cuLcBZ0KpnwmUzRpAE"
     "tZBdv+JYEEtZQs/uC", "password"),
    # the argon2 reference CLI: `echo -n password | argon2 somesalt -id -t 2 -m 16 -p 4 -l 32 -e`
    ("{ARGON2ID}$argon2id$v=19$m=65536,t=2,p=4$c29tZXNhbHQ$GpZ3sK/oH9p7VIiV56G/64Zo/8GaUw434Iima"
     "PqxwCo", "password"),
    ("{ARGON2I}$argon2i$v=19$m=65536,t=2,p=4$c29tZXNhbHQ$IMit9qkFULCMA/ViizL57cnTLOa5DiVM9eMwpAv"
     "Pwr4", "password"),
]


def _ssha(digest, password, salt):
    return base64.b64encode(digest(password.encode() + salt).digest() + salt).decode()


def made_here(password):
    """C{(name, stored hash)} of each scheme, made by the libraries with a fresh salt."""
    salt = os.urandom(8)
    blf = bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt(4)).decode()  # (as libc cuts)
    return [
        ("argon2id (ours)", hash_password(password)),
        ("{ARGON2ID}", "{ARGON2ID}" + PasswordHasher(time_cost=1, memory_cost=64).hash(password)),
        ("{BLF-CRYPT}", "{BLF-CRYPT}" + blf.replace("$2b$", "$2y$")),
        ("{BCRYPT}", "{BCRYPT}" + blf),
        ("bare $2b$", blf),
        ("bare $2a$", blf.replace("$2b$", "$2a$")),
        ("{SHA512-CRYPT}", "{SHA512-CRYPT}" + sha512_crypt.using(rounds=5000).hash(password)),
        ("{SHA256-CRYPT}", "{SHA256-CRYPT}" + sha256_crypt.using(rounds=5000).hash(password)),
        ("bare $6$", sha512_crypt.using(rounds=5000).hash(password)),
        ("bare $5$", sha256_crypt.using(rounds=5000).hash(password)),
        ("{SSHA512}", "{SSHA512}" + _ssha(hashlib.sha512, password, salt)),
        ("{SSHA}", "{SSHA}" + _ssha(hashlib.sha1, password, salt)),
    ]


class AcceptedSchemeTests(unittest.TestCase):
    def test_fixed_vectors(self):
        for stored, password in FIXED_VECTORS:
            self.assertTrue(verify(stored, password), stored)
            self.assertFalse(verify(stored, password + "x"), stored)
            self.assertFalse(verify(stored, password[:-1]), stored)
            self.assertIsNone(hash_problem("bob@example.test", stored), stored)

    def test_hashes_made_by_the_libraries(self):
        for password in ("s3cret", "pässwörd ünïcode", "x" * 100):
            for name, stored in made_here(password):
                self.assertTrue(verify(stored, password), name)
                self.assertFalse(verify(stored, "wrong"), name)
                self.assertIsNone(hash_problem("bob@example.test", stored), name)

    def test_bcrypt_uses_the_first_72_bytes_as_the_hash_maker_did(self):
        stored = bcrypt.hashpw(b"y" * 72, bcrypt.gensalt(4)).decode()
        self.assertTrue(verify(stored, "y" * 80))

    def test_only_ours_needs_no_rehash(self):
        for name, stored in made_here("pw"):
            self.assertEqual(needs_rehash(stored), name != "argon2id (ours)", name)
        for stored, _ in FIXED_VECTORS:
            self.assertTrue(needs_rehash(stored), stored)
        self.assertFalse(needs_rehash("{MD5}$1$abc$def"), "it never verifies")


class RefusedSchemeTests(unittest.TestCase):
    def test_unsafe_schemes_never_verify_and_are_named(self):
        md5 = hashlib.md5(b"pw").hexdigest()
        for stored in ("{PLAIN}pw", "{CLEARTEXT}pw", "{MD5}$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0",
                       "{PLAIN-MD5}" + md5, "{SHA}" + base64.b64encode(
                           hashlib.sha1(b"pw").digest()).decode(),
                       "{CRYPT}abJnggxhB/yWI", "{MD5-CRYPT}$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0",
                       "{plain}pw"):
            self.assertFalse(verify(stored, "pw"), stored)
            scheme = stored[:stored.index("}") + 1].upper()
            self.assertEqual(hash_problem("bob@x.test", stored),
                             f"user bob@x.test: {scheme} is not accepted (unsafe); "
                             "set a new password with `mailsrv user passwd`")

    def test_unknown_and_malformed_hashes_never_verify_and_are_named(self):
        for stored, problem in [
                ("{ROT13}cj", "{ROT13} is not a scheme mailsrv knows"),
                ("{SSHA512.HEX}abcd", "{SSHA512.HEX} is not a scheme mailsrv knows"),
                ("$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0", "$1$ (MD5 crypt) is not accepted"),
                ("pw", "the hash is in no format mailsrv knows"),
                ("{SSHA}!!!", "{SSHA} is malformed (not base64)"),
                ("{SSHA}" + base64.b64encode(b"x" * 20).decode(),
                 "{SSHA} is malformed (no salt after the digest)"),
                ("{BLF-CRYPT}$2y$05$short", "{BLF-CRYPT} is malformed"),
                ("$6$salt", "the hash is malformed"),
                ("$argon2id$v=19$m=65536", "the hash is malformed"),
        ]:
            self.assertFalse(verify(stored, "pw"), stored)
            self.assertIn(problem, hash_problem("bob@x.test", stored), stored)

    def test_imported_costs_that_would_stall_logins_are_refused(self):
        slow_bcrypt = "$2y$20$" + "a" * 53
        slow_sha = "$6$rounds=5000000$saltstring$" + "a" * 86
        huge_argon2 = "$argon2id$v=19$m=4194304,t=1,p=1$c29tZXNhbHQ$" + "a" * 43
        for stored, problem in [(slow_bcrypt, "cost 2^20 is over 2^15"),
                                (slow_sha, "5000000 rounds are over 1000000"),
                                (huge_argon2, "4194304 KiB of memory is over")]:
            self.assertIn(f"the hash costs too much to verify at every login ({problem}",
                          hash_problem("bob@x.test", stored))
            self.assertFalse(verify(stored, "pw"))

    def test_refused_and_unknown_users_cost_an_argon2_verify(self):
        """So that the time of a refusal says nothing about the user."""
        dummies = []
        self.patch(passwords._ARGON2, "verify", lambda text, pw: dummies.append(text) or False)
        for stored in (None, "{PLAIN}pw", "{ROT13}x", "$6$bad"):
            self.assertFalse(verify(stored, "pw"))
        self.assertEqual(dummies, [passwords._DUMMY_HASH] * 4)


class VerifyNeverRaisesTests(unittest.TestCase):
    def setUp(self):
        cheap = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
        self.patch(passwords, "_DUMMY_HASH", cheap.hash("dummy"))

    @examples(300)
    @given(st.one_of(st.text(), st.sampled_from(
               [prefix for prefix in passwords.SCHEMES] + ["$2y$05$", "$6$", "$5$", "$argon2id$"]
           ).flatmap(lambda prefix: st.text().map(
               lambda tail: (f"{{{prefix}}}" if prefix[0] != "$" else prefix) + tail))),
           st.text())
    @example("{SSHA}" + base64.b64encode(b"x" * 21).decode(), "pw\0")
    @example("{BLF-CRYPT}$2y$04$" + "a" * 53, "\udcff")
    @example("$6$rounds=1000$salt$" + "a" * 86, "nul\0")
    def test_any_hash_and_password(self, stored, password):
        self.assertIn(verify(stored, password), (True, False))
        self.assertIn(needs_rehash(stored), (True, False))
        problem = hash_problem("bob@x.test", stored)
        self.assertTrue(problem is None or problem.startswith("user bob@x.test: "))
