"""
The `mailsrv` command and start-up errors, as an admin meets them.
"""

import os
import stat
import subprocess
import socket

from twisted.trial import unittest

from mailsrv.directory.passwords import hash_password
from tests.integration.harness import MailServerProcess, twistd


class UserCommandTests(unittest.TestCase):
    def setUp(self):
        self.server = MailServerProcess(users=())
        self.addCleanup(self.server.cleanup)

    def test_user_lifecycle(self):
        s = self.server
        out = s.admin("user", "add", "Alice@example.test", "--password-stdin",
                      input="pw1\n").stdout
        self.assertEqual(out, "added alice@example.test\n")
        users_file = s.dir / "users"
        self.assertEqual(stat.S_IMODE(os.stat(users_file).st_mode), 0o600)
        line = users_file.read_text().strip()
        self.assertTrue(line.startswith("alice@example.test:$argon2id$"), line)
        self.assertNotIn("pw1", line)

        s.admin("user", "add", "bob@example.test", "--password-stdin", input="pw2\n")
        self.assertEqual(s.admin("user", "list").stdout,
                         "alice@example.test\nbob@example.test\n")
        again = s.admin("user", "add", "alice@example.test", "--password-stdin",
                        input="x\n", check=False)
        self.assertEqual(again.returncode, 1)
        self.assertIn("exists already", again.stderr)

        s.admin("user", "passwd", "alice@example.test", "--password-stdin", input="pw3\n")
        self.assertNotEqual(users_file.read_text().splitlines()[0], line)
        s.admin("user", "del", "bob@example.test")
        self.assertEqual(s.admin("user", "list").stdout, "alice@example.test\n")

    def test_refusals(self):
        s = self.server
        for args, message in [
            (("user", "add", "carol@elsewhere.test", "--password-stdin"),
             "elsewhere.test is not in [domains] local"),
            (("user", "add", "not-an-address", "--password-stdin"), "is not an address"),
            (("user", "passwd", "nobody@example.test", "--password-stdin"), "no such user"),
            (("user", "del", "nobody@example.test"), "no such user"),
        ]:
            result = s.admin(*args, input="pw\n", check=False)
            self.assertEqual(result.returncode, 1, args)
            self.assertIn(message, result.stderr)
            self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        empty = s.admin("user", "add", "dan@example.test", "--password-stdin",
                        input="\n", check=False)
        self.assertIn("empty password", empty.stderr)

    def test_check_config(self):
        result = self.server.admin("check-config")
        self.assertIn("ok, 7 listeners", result.stdout)


class StartupErrorTests(unittest.TestCase):
    def setUp(self):
        self.server = MailServerProcess(users=())
        self.addCleanup(self.server.cleanup)

    def start_fails(self):
        result = subprocess.run(
            twistd() + ["-n", "--pidfile=", "mailsrv", "--config", str(self.server.config)],
            capture_output=True, text=True, timeout=60, cwd=self.server.dir,
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        return result.stdout + result.stderr

    def test_bad_config_names_file_key_and_problem(self):
        config = self.server.config
        config.write_text(config.read_text().replace('[relay]', '') +
                          '\n[relay]\nmode = "open"\n')
        output = self.start_fails()
        self.assertIn(f"{config}: [relay] mode: unknown value 'open'", output)

    def test_unknown_key(self):
        config = self.server.config
        config.write_text(config.read_text().replace("[server]", "[server]\nhostnmae = \"x\""))
        self.assertIn(f"{config}: [server] hostnmae: unknown key", self.start_fails())

    def test_missing_config(self):
        self.server.config.unlink()
        self.assertIn(f"{self.server.config}: file not found", self.start_fails())

    def test_bad_users_lines_are_skipped_not_fatal(self):
        """Lines an older `user add` wrote: their users are unknown, the rest is served."""
        s = self.server
        users = s.dir / "users"
        users.write_text("garbage line\n"
                         "a/b@example.test:$argon2id$x\n"
                         "foo\n@example.test:$argon2id$x\n"
                         f"alice@example.test:{hash_password('pw')}\n")
        s.start()
        for lineno in (1, 2, 3, 4):
            s.wait_for_log(f"users file: skipped {users}:{lineno}: ")
        self.assertNotIn(f"{users}:5", s.log_text())
        with s.smtp() as client:
            client.ehlo("client.test")
            client.mail("someone@remote.test")
            self.assertEqual(client.rcpt("a/b@example.test")[0], 550)
            self.assertEqual(client.rcpt("alice@example.test")[0], 250)
            self.assertEqual(client.data(b"Subject: hi\r\n\r\nhello\r\n")[0], 250)
        self.assertEqual(len(s.maildir_files()), 1)
        check = s.admin("lists", "check", check=False)
        self.assertEqual(check.returncode, 1)
        self.assertIn(f"users: {users}:1: expected address:hash", check.stdout)

    def test_port_in_use_names_the_listener(self):
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", self.server.ports["imap"]))
        blocker.listen()
        output = self.start_fails()
        self.assertIn(f"(imap tcp:{self.server.ports['imap']}:interface=127.0.0.1): "
                      "cannot listen", output)
