"""
The `mailsrv` command in-process (tests/integration/test_admin.py runs it as
a program): user names, the users file, `lists check`.
"""

import io
import os
import stat
from pathlib import Path

from twisted.trial import unittest

from mailsrv.admin import cli

CONFIG = """\
[server]
hostname = "mail.example.test"
data_dir = "var"
[domains]
local = ["example.test"]
"""


class AdminTestCase(unittest.TestCase):
    def setUp(self):
        self.root = Path(self.mktemp()).absolute()
        self.root.mkdir()
        self.config = self.root / "mailsrv.toml"
        self.config.write_text(CONFIG)
        self.users = self.root / "users"
        self.aliases = self.root / "aliases"
        self.stderr = io.StringIO()
        self.patch(cli.sys, "stderr", self.stderr)

    def run_command(self, *args, password="pw\n"):
        """C{(exit status, stdout, stderr)} of one command."""
        stdout = io.StringIO()
        self.stderr.seek(0)
        self.stderr.truncate()
        status = cli.main(["--config", str(self.config), *args],
                          stdin=io.StringIO(password), stdout=stdout)
        return status, stdout.getvalue(), self.stderr.getvalue()

    def add(self, address):
        return self.run_command("user", "add", "--password-stdin", "--", address)


class UserNameTests(AdminTestCase):
    def test_user_add_refuses_path_names(self):
        self.add("alice@example.test")
        before = self.users.read_bytes()
        for name in ("a/b", "..", ".hidden", "../../x", "foo@bar", "new\nline", "tab\tname",
                     "a..b", "trailing.", "-dash", "nul\0", "x" * 65, "sp ace", "quo\"te",
                     "percent%x", "caf\u00e9"):
            status, out, err = self.add(f"{name}@example.test")
            self.assertEqual((status, out), (1, ""), repr(name))
            self.assertEqual(len(err.splitlines()), 1, repr(err))
            self.assertTrue(err.startswith("mailsrv: '"), err)
            self.assertIn("@example.test", err)
        self.assertEqual(self.users.read_bytes(), before)
        self.assertEqual(self.run_command("user", "list")[1], "alice@example.test\n")

    def test_user_add_takes_the_safe_set(self):
        for name in ("bob", "b.o.b", "b_o-b", "Bob2", "x" * 64):
            self.assertEqual(self.add(f"{name}@example.test")[0], 0, name)

    def test_server_starts_again_after_every_refused_name(self):
        from mailsrv import config
        from mailsrv.service import build_mail_server

        self.add("x\n@example.test")
        self.add("y@example.test")
        server = build_mail_server(config.load(self.config))
        self.assertEqual(server.directory.users.addresses(), ["y@example.test"])


class UsersFileWriteTests(AdminTestCase):
    def test_users_file_write_is_atomic(self):
        """A write that fails half-way leaves the old file whole, and no temp file."""
        self.add("alice@example.test")
        before = self.users.read_bytes()
        real_fsync = os.fsync

        def fail_on_file(fd):
            if stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(28, "No space left on device")
            return real_fsync(fd)

        self.patch(os, "fsync", fail_on_file)
        status, _, err = self.add("bob@example.test")
        self.assertEqual(status, 1)
        self.assertIn("No space left on device", err)
        self.assertEqual(self.users.read_bytes(), before)
        self.assertEqual(sorted(p.name for p in self.root.iterdir()),
                         ["mailsrv.toml", "users"])

    def test_users_file_write_fsyncs_the_directory(self):
        synced = []
        real_fsync = os.fsync

        def spy(fd):
            synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
            return real_fsync(fd)

        self.patch(os, "fsync", spy)
        self.add("alice@example.test")
        self.assertEqual(synced, [False, True])  # the file, then the rename

    def test_users_file_write_keeps_mode_and_owner(self):
        self.add("alice@example.test")
        os.chmod(self.users, 0o640)
        if os.geteuid() == 0:
            os.chown(self.users, 1234, 1235)
        self.add("bob@example.test")
        st = os.stat(self.users)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o640)
        if os.geteuid() == 0:
            self.assertEqual((st.st_uid, st.st_gid), (1234, 1235))

    def test_a_new_users_file_is_0600(self):
        self.add("alice@example.test")
        self.assertEqual(stat.S_IMODE(os.stat(self.users).st_mode), 0o600)


class BadUsersLineTests(AdminTestCase):
    def setUp(self):
        super().setUp()
        self.users.write_text("alice@example.test:$argon2id$a\n"
                              "a/b@example.test:$argon2id$b\n"
                              "foo\n"
                              "bob@example.test:$argon2id$c\n")

    def test_lists_check_names_file_and_line(self):
        status, out, err = self.run_command("lists", "check")
        self.assertEqual(status, 1)
        self.assertIn(f"users: {self.users}:2: ", out)
        self.assertIn("'a/b@example.test'", out)

    def test_a_write_drops_bad_lines_and_says_so(self):
        status, out, err = self.add("carol@example.test")
        self.assertEqual(status, 0)
        self.assertIn(f"{self.users}:2: ", err)
        self.assertIn(f"{self.users}:3: ", err)
        self.assertEqual([line.split(":")[0] for line in self.users.read_text().splitlines()],
                         ["alice@example.test", "bob@example.test", "carol@example.test"])


class DeadAliasCheckTests(AdminTestCase):
    def test_lists_check_reports_dead_members_and_loops(self):
        self.add("bob@example.test")
        self.aliases.write_text(
            "postmaster: ghost@example.test\n"
            "half@example.test: ghost@example.test, bob@example.test\n"
            "loop1@example.test: loop2@example.test\n"
            "loop2@example.test: loop1@example.test, bob@example.test\n")
        status, out, err = self.run_command("lists", "check")
        self.assertEqual(status, 0, out)
        lines = [line for line in out.splitlines() if "warning" in line]
        self.assertTrue(any("postmaster@example.test" in line and "ghost@example.test"
                            in line and "no mailbox" in line for line in lines), out)
        self.assertTrue(any("half@example.test" in line and "ghost@example.test" in line
                            for line in lines), out)
        self.assertTrue(any("loop" in line and "loop1@example.test" in line
                            for line in lines), out)


class FilterMergeTests(AdminTestCase):
    """`mailsrv filter merge` (IMail's cleanlist): counts add up, duplicates go, bad entries reported."""

    def write(self, name, text):
        path = self.root / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    def test_tables_add_up(self):
        a = self.write("a-table.txt", "_messages 2 3\ncheap 2 0\nlunch 0 3\n")
        b = self.write("b-table.txt", "_messages 1 1\ncheap 1 1\nv1agra 1 0\nx\n")
        out = str(self.root / "antispam-table.txt")
        status, stdout, _ = self.run_command("filter", "merge", a, b, "-o", out)
        self.assertEqual(status, 0)
        self.assertEqual(Path(out).read_text(), "_messages 3 4\ncheap 3 1\nlunch 0 3\n")
        self.assertEqual(stdout.splitlines(), [
            f"{b}:3: 'v1agra' is not a word of 2-40 letters (left out)",
            f"{b}:4: write: word spam_count good_count (left out)",
            f"{out}: 2 entries from 2 files, 2 left out"])

    def test_phrases_and_urls_lose_duplicates(self):
        a = self.write("a.txt", "Cheap  Pills\nbuy now # a comment\nno\n")
        b = self.write("b.txt", "cheap pills\n" + "x" * 33 + "\n")
        out = str(self.root / "phrase-list.txt")
        status, stdout, _ = self.run_command("filter", "merge", a, b, "-o", out)
        self.assertEqual(Path(out).read_text(), "cheap pills\nbuy now\n")
        self.assertIn(f"{a}:3: 'no': a phrase has 3-32 characters (left out)", stdout)
        self.assertIn("2 entries from 2 files, 2 left out", stdout)
        urls = self.write("u.txt", "Spam.Example.\nspam.example\n192.0.2.010\n[2001:DB8::1]\n"
                                   "münchen.example\nnot_a_domain\nlocalhost\n")
        status, stdout, _ = self.run_command("filter", "merge", urls, "--kind", "urls",
                                             "-o", str(self.root / "out.txt"))
        self.assertEqual((self.root / "out.txt").read_text(),
                         "spam.example\n2001:db8::1\nxn--mnchen-3ya.example\n")
        self.assertIn("'192.0.2.010' is not a domain or an IP address", stdout)
        self.assertIn("'localhost' is not a domain or an IP address", stdout)

    def test_kind_from_the_name_or_said(self):
        a = self.write("a.txt", "cheap pills\n")
        status, _, stderr = self.run_command("filter", "merge", a, "-o",
                                             str(self.root / "merged.txt"))
        self.assertEqual(status, 1)
        self.assertIn("say what the files are: --kind table|phrases|urls", stderr)
        status, _, stderr = self.run_command("filter", "merge", str(self.root / "nope.txt"),
                                             "-o", str(self.root / "phrase-list.txt"))
        self.assertEqual((status, stderr.strip()), (1, f"mailsrv: {self.root}/nope.txt: no such file"))


# `doveadm pw` outputs (passwords "onetestandone" and "Flz_3qc123").
SHA512_CRYPT = ("{SHA512-CRYPT}$6$dEqUVsCirHzV8kHw$hgC0x0ufah.N0PzUVvhLEMnoww5lo.JBmeLSsRNDkgWV"
                "ylC55Gk6zA1KWsn.SiIAAIDEqHxtugGZWHl1qMex..")
BLF_CRYPT = "{BLF-CRYPT}$2y$05$F9s0JlyUD1MTWGVe1vIfqeKRWLg8f9H0dntjtme1W38HqQ5TEvzv6"


class ImportUsersTests(AdminTestCase):
    """`mailsrv import users FILE`: a Dovecot passwd-file, all lines or none."""

    def passwd_file(self, text):
        path = self.root / "dovecot-users"
        path.write_text(text)
        return str(path)

    def import_users(self, text, *options):
        return self.run_command("import", "users", self.passwd_file(text), *options)

    def users_file(self):
        return dict(line.split(":", 1) for line in self.users.read_text().splitlines())

    def test_adds_users_with_their_hashes(self):
        status, out, err = self.import_users(
            "# from dovecot\n\n"
            f"bob@example.test:{SHA512_CRYPT}:5000:5000::/var/vmail/bob::userdb_quota=1G\n"
            f"carol:{BLF_CRYPT}::::::\n", "--domain", "example.test")
        self.assertEqual((status, out, err), (0, "2 added, 0 kept, 0 skipped\n", ""))
        self.assertEqual(self.users_file(), {"bob@example.test": SHA512_CRYPT,
                                             "carol@example.test": BLF_CRYPT})
        self.assertEqual(stat.S_IMODE(os.stat(self.users).st_mode), 0o600)
        status, out, _ = self.run_command("lists", "check")
        self.assertEqual(status, 0, out)
        self.assertNotIn("warning", out)

    def test_keeps_existing_users_unless_replace(self):
        self.add("bob@example.test")
        ours = self.users_file()["bob@example.test"]
        text = f"bob@example.test:{SHA512_CRYPT}\ncarol@example.test:{BLF_CRYPT}\n"
        status, out, _ = self.import_users(text)
        self.assertEqual((status, out), (0, "1 added, 1 kept, 0 skipped\n"))
        self.assertEqual(self.users_file()["bob@example.test"], ours)
        status, out, _ = self.import_users(text, "--replace")
        self.assertEqual((status, out), (0, "0 added, 2 replaced, 0 kept, 0 skipped\n"))
        self.assertEqual(self.users_file()["bob@example.test"], SHA512_CRYPT)

    def test_a_bad_line_refuses_the_whole_file(self):
        self.add("alice@example.test")
        before = self.users.read_bytes()
        status, out, err = self.import_users(
            f"bob@example.test:{SHA512_CRYPT}\n"
            "old@example.test:{MD5}$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0\n"
            "plain@example.test:{PLAIN}secret:::\n"
            "rot@example.test:{ROT13}frperg\n"
            f"a/b@example.test:{BLF_CRYPT}\n"
            f"far@remote.test:{BLF_CRYPT}\n"
            f"nodomain:{BLF_CRYPT}\n"
            "nohash@example.test::1000:1000\n"
            f"Bob@example.test:{BLF_CRYPT}\n")
        path = self.root / "dovecot-users"
        self.assertEqual(status, 1)
        lines = out.splitlines()
        self.assertEqual(len(lines), 8, out)
        for line, start in zip(lines, [
            f"{path}:2: old@example.test: {{MD5}} is not accepted (unsafe)",
            f"{path}:3: plain@example.test: {{PLAIN}} is not accepted (unsafe)",
            f"{path}:4: rot@example.test: {{ROT13}} is not a scheme mailsrv knows",
            f"{path}:5: 'a/b@example.test': a mailbox name may hold only ",
            f"{path}:6: far@remote.test: remote.test is not one of [domains] local",
            f"{path}:7: 'nodomain' has no @domain: say --domain DOMAIN",
            f"{path}:8: nohash@example.test: no password hash",
            f"{path}:9: bob@example.test is listed already, at line 1",
        ]):
            self.assertTrue(line.startswith(start), (line, start))
        self.assertEqual(err, f"mailsrv: 8 bad line(s) in {path}, nothing imported "
                              "(--skip-bad imports the other lines)\n")
        self.assertEqual(self.users.read_bytes(), before)

    def test_skip_bad_imports_the_rest(self):
        status, out, _ = self.import_users(
            f"bob@example.test:{SHA512_CRYPT}\nold@example.test:{{PLAIN-MD5}}abc\n", "--skip-bad")
        self.assertEqual(status, 0)
        self.assertEqual(out.splitlines(), [
            f"{self.root}/dovecot-users:2: old@example.test: {{PLAIN-MD5}} is not accepted "
            "(unsafe) (skipped)",
            "1 added, 0 kept, 1 skipped"])
        self.assertEqual(list(self.users_file()), ["bob@example.test"])

    def test_a_missing_file(self):
        status, out, err = self.run_command("import", "users", str(self.root / "nope"))
        self.assertEqual((status, err), (1, f"mailsrv: {self.root}/nope: no such file\n"))
        self.assertFalse(self.users.exists())


class RefusedHashCheckTests(AdminTestCase):
    def test_check_config_and_lists_check_name_file_line_and_user(self):
        self.users.write_text(f"bob@example.test:{SHA512_CRYPT}\n"
                              "old@example.test:{MD5}$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0\n")
        expected = (f"users: warning: {self.users}:2: user old@example.test: {{MD5}} is not "
                    "accepted (unsafe); set a new password with `mailsrv user passwd`\n")
        status, out, _ = self.run_command("check-config")
        self.assertEqual(status, 0)
        self.assertIn("note: " + expected, out)
        status, out, _ = self.run_command("lists", "check")
        self.assertEqual(status, 0, "a warning: the server starts, other users log in")
        self.assertIn(expected, out)

class RedisBackendCheckConfigTests(AdminTestCase):
    def test_check_config_needs_no_redis(self):
        """[sessions] backend = "redis" with nothing listening there: the config is fine."""
        with self.config.open("a") as f:
            f.write('[sessions]\nbackend = "redis"\n'
                    f'redis_url = "unix://{self.root}/no-redis.sock"\n')
        status, out, err = self.run_command("check-config")
        self.assertEqual((status, err), (0, ""))
        self.assertFalse((self.root / "var").exists())


class ImportCommandTests(AdminTestCase):
    """`mailsrv import`'s refusals; the imports themselves: tests/integration/test_import.py."""

    def test_refusals(self):
        self.add("alice@example.test")
        mbox = self.root / "old.mbox"
        mbox.write_bytes(b"From a Tue Jan  2 03:04:05 2024\nSubject: x\n\nx\n")
        for args, message in [
            (("--user", "bob@example.test"), "no such user: 'bob@example.test'"),
            (("--user", "alice@elsewhere.test"), "elsewhere.test is not in [domains] local"),
            (("--user", "not an address"), "not an address"),
            (("--user", "alice@example.test", "--folder", "a.b"),
             "--folder a.b: Folder names may not contain '.'"),
        ]:
            status, out, err = self.run_command("import", "mbox", str(mbox), *args)
            self.assertEqual((status, out), (1, ""), args)
            self.assertIn(message, err)
        self.assertFalse((self.root / "var" / "mail").exists())

    def test_the_lock_holder_takes_no_request(self):
        """Another import (no server) holds the data_dir lock: nothing waits forever."""
        from mailsrv import config
        from mailsrv.datadir_lock import DataDirLock

        self.add("alice@example.test")
        self.patch(cli, "REQUEST_WAIT", 0.1)
        holder = DataDirLock(config.load(str(self.config)))
        holder.acquire()
        self.addCleanup(os.close, holder._fd)
        status, out, err = self.run_command("import", "mbox", str(self.root / "x"),
                                            "--user", "alice@example.test")
        self.assertEqual(status, 1)
        self.assertIn("takes no imports (", err)
        (self.root / "var" / "import").mkdir()  # as a server makes it
        status, out, err = self.run_command("import", "mbox", str(self.root / "x"),
                                            "--user", "alice@example.test")
        self.assertEqual(status, 1)
        self.assertIn(f"(pid {os.getpid()}: a server, or another mailsrv import) did not take "
                      "the import within 0.1 s; nothing was imported", err)
        self.assertEqual(list((self.root / "var" / "import").iterdir()), [])
