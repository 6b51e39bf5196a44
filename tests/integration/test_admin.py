"""
The `mailsrv` command and start-up errors, as an admin meets them.
"""

import os
import signal
import stat
import subprocess
import socket

from twisted.trial import unittest

from mailsrv.directory.passwords import hash_password
from mailsrv.tls import generate_self_signed
from tests.integration.harness import MailServerProcess, mailsrv_command, twistd


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

    def test_explain_that_needs_no_waiting(self):
        """Regression: explain whose checks all answered at once stopped a reactor not running."""
        message = self.server.dir / "m.eml"
        message.write_bytes(b"From: a@remote.test\r\nSubject: hi\r\n\r\nhello\r\n")
        result = self.server.admin("explain", str(message), "--to", "nobody@example.test")
        self.assertEqual(result.stderr, "")
        self.assertIn("result: RCPT TO:<nobody@example.test> refused: 550 5.1.1",
                      result.stdout)

    def test_a_closed_pipe_and_no_terminal_are_no_tracebacks(self):
        """Regressions: `user list | head -1` and `user add` from a script printed tracebacks."""
        users = "".join(f"user{n}@example.test:$argon2id$x\n" for n in range(20000))
        (self.server.dir / "users").write_text(users)
        command = " ".join(mailsrv_command() + ["--config", str(self.server.config)])
        listed = subprocess.run(["bash", "-c", f"{command} user list | head -1"],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual((listed.stdout, listed.stderr), ("user0@example.test\n", ""))
        added = subprocess.run(mailsrv_command() + ["--config", str(self.server.config), "user",
                                                    "add", "eve@example.test"],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=60)
        self.assertEqual(added.returncode, 1)
        self.assertNotIn("Traceback", added.stderr)
        self.assertIn("--password-stdin", added.stderr)


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


class PreflightTests(unittest.TestCase):
    """
    check-config and start-up run one preflight: each refuses a config the
    other refuses, with the same one line and exit status 1.
    """

    def setUp(self):
        self.server = MailServerProcess(users=())
        self.addCleanup(self.server.cleanup)
        self.tls = self.server.dir / "tls"
        self.tls.mkdir()
        generate_self_signed(str(self.tls / "cert.pem"), str(self.tls / "key.pem"),
                             "mail.example.test")

    def assert_both_refuse(self, *expected):
        """
        Both commands exit 1 with one identical `mailsrv: CONFIG: ...` line
        holding each of C{expected}, and no traceback.
        """
        check = self.server.admin("check-config", check=False)
        self.assertEqual(check.returncode, 1, check.stdout)
        self.assertEqual(len(check.stderr.splitlines()), 1, check.stderr)
        line = check.stderr.strip()
        self.assertTrue(line.startswith(f"mailsrv: {self.server.config}: "), line)
        for text in expected:
            self.assertIn(text, line)
        start = subprocess.run(
            twistd() + ["-n", "--pidfile=", "mailsrv", "--config", str(self.server.config)],
            capture_output=True, text=True, timeout=60, cwd=self.server.dir,
        )
        self.assertEqual(start.returncode, 1, start.stdout + start.stderr)
        self.assertEqual(start.stderr.strip(), line)
        self.assertNotIn("Traceback", start.stdout + start.stderr)

    def test_missing_key_file(self):
        (self.tls / "key.pem").unlink()
        self.assert_both_refuse("[tls] key: ", "key.pem does not exist")

    def test_garbage_certificate(self):
        (self.tls / "cert.pem").write_text("garbage\n")
        self.assert_both_refuse("[tls] cert: ", "cert.pem")

    def test_garbage_key(self):
        (self.tls / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n")
        self.assert_both_refuse("[tls] cert: ", "key.pem")

    def test_directory_as_certificate(self):
        (self.tls / "cert.pem").unlink()
        (self.tls / "cert.pem").mkdir()
        self.assert_both_refuse("[tls] cert: ", "Is a directory")

    def test_data_dir_that_is_a_file(self):
        self.server.data_dir.write_text("not a directory\n")
        self.assert_both_refuse(f"[server] data_dir: {self.server.data_dir} is not a directory")

    def test_delivery_ca_file_without_certificates(self):
        config = self.server.config.read_text()
        self.server.config.write_text(
            config.replace("[delivery]\n", '[delivery]\ntls_ca_file = "cas.pem"\n', 1))
        (self.server.dir / "cas.pem").write_text("no certificate here\n")
        self.assert_both_refuse("[delivery] tls_ca_file: ", "holds no PEM certificate")

    def test_bad_users_line_is_a_warning_for_both(self):
        """
        Start-up skips a bad users line (one bad line must not keep every
        user's mail out), so check-config passes and names it.
        """
        (self.server.dir / "users").write_text("garbage line\n")
        check = self.server.admin("check-config")
        self.assertIn("users: warning: start-up skips ", check.stdout)
        self.assertIn("users:1: expected address:hash", check.stdout)
        listed = self.server.admin("lists", "check", check=False)
        self.assertEqual(listed.returncode, 1, listed.stdout)

    def test_unreadable_users_file(self):
        (self.server.dir / "users").mkdir()  # unreadable as a file, even for root
        self.assert_both_refuse("[users] file: ", "Is a directory")

    def test_bad_allow_list_file(self):
        allow = self.server.dir / "allow.txt"
        allow.write_text("10.0.0.0/33\n")
        config = self.server.config
        config.write_text(config.read_text().replace(
            'protocol = "pop3"', 'protocol = "pop3"\nallow_file = "allow.txt"', 1))
        self.assert_both_refuse("[listen #4] allow_file: ", "allow.txt:1")

    def test_bad_trusted_entry(self):
        config = self.server.config
        config.write_text(config.read_text() + '\n[relay]\ntrusted = ["10.0.0.0/33"]\n')
        self.assert_both_refuse("[relay] trusted: bad network '10.0.0.0/33'")

    def test_bad_endpoint(self):
        config = self.server.config
        config.write_text(config.read_text().replace('endpoint = "tcp:', 'endpoint = "tcpp:', 1))
        self.assert_both_refuse("[listen #1] endpoint: bad endpoint 'tcpp:")

    def test_check_config_changes_nothing(self):
        """A pair start-up would generate, and a data_dir it would create, are fine."""
        for path in self.tls.iterdir():
            path.unlink()
        self.tls.rmdir()
        result = self.server.admin("check-config")
        self.assertIn("ok, 7 listeners", result.stdout)
        self.assertIn("start-up generates a self-signed certificate", result.stdout)
        self.assertIn("start-up creates it", result.stdout)
        self.assertEqual(sorted(p.name for p in self.server.dir.iterdir()),
                         ["mailsrv.toml"])


class DataDirLockTests(unittest.TestCase):
    def setUp(self):
        self.first = MailServerProcess()
        self.addCleanup(self.first.cleanup)
        self.second = MailServerProcess(users=())
        self.addCleanup(self.second.cleanup)

    def test_second_server_on_one_data_dir_refuses_to_start(self):
        first = self.first.start()
        config = self.second.config
        config.write_text(config.read_text().replace(
            'data_dir = "var"', f'data_dir = "{first.data_dir}"'))
        result = subprocess.run(
            twistd() + ["-n", "--pidfile=", "mailsrv", "--config", str(config)],
            capture_output=True, text=True, timeout=60, cwd=self.second.dir,
        )
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertEqual(
            result.stderr,
            f"mailsrv: {config}: [server] data_dir: {first.data_dir} is in use by another "
            f"mailsrv (pid {first.process.pid}) (stop it, or give this server its own "
            "data_dir)\n")
        self.assertNotIn("listening", result.stdout)
        # The first still serves, and the admin commands still work beside it.
        with first.smtp() as client:
            self.assertEqual(client.noop()[0], 250)
        self.assertEqual(first.admin("queue", "list").stdout, "0 queued\n")
        self.assertIn("alice@example.test", first.admin("user", "list").stdout)

    def test_lock_goes_with_the_process(self):
        """kill -9 leaves no stale lock: the kernel drops it."""
        self.first.start()
        self.assertEqual((self.first.data_dir / "mailsrv.lock").read_text(),
                         f"{self.first.process.pid}\n")
        self.first.stop(signal.SIGKILL)
        self.first.start()
