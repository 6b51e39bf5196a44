"""
[server] user and group (issue 20): started as root, the real server binds
its ports, hands data_dir to the user and runs as them; a file it must read
later that the user cannot read stops start-up with what to chown.
"""

import os
import pwd
import stat

from twisted.trial import unittest

from tests.integration.harness import PASSWORD, MailServerProcess

USER = "nobody"


class PrivilegeTests(unittest.TestCase):
    def setUp(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root (to start as root and become another user)")
        try:
            self.uid = pwd.getpwnam(USER).pw_uid
        except KeyError:
            raise unittest.SkipTest(f"no user {USER}")
        self.server = MailServerProcess(extra={"server": {"user": USER}})
        self.addCleanup(self.server.cleanup)

    def test_runs_as_the_user_and_data_dir_is_theirs(self):
        self.server.dir.chmod(0o755)  # (mkdtemp's 0700: nobody could not reach the files)
        (self.server.dir / "users").chmod(0o640)
        os.chown(self.server.dir / "users", 0, pwd.getpwnam(USER).pw_gid)
        self.server.start()
        # (the ports answer before the server hands data_dir over and drops root)
        self.server.wait_for_log(f"running as {USER} (uid {self.uid}")
        status = (self.server.dir / f"/proc/{self.server.process.pid}/status").read_text()
        uids = [line for line in status.splitlines() if line.startswith("Uid:")][0].split()
        self.assertEqual({int(u) for u in uids[1:]}, {self.uid}, "real, effective, saved, fs")
        self.assertEqual(self.server.send("Subject: hi\r\n\r\nhi\r\n")[0], 250)
        [delivered] = self.server.maildir_files()
        self.assertEqual(delivered.stat().st_uid, self.uid)
        for path in [self.server.data_dir, *self.server.data_dir.rglob("*")]:
            self.assertEqual(path.lstat().st_uid, self.uid, path)
        with self.server.imap() as client:
            self.assertEqual(client.login("alice@example.test", PASSWORD)[0], "OK")
        # root's `mailsrv user add` keeps the file theirs to read
        self.server.admin("user", "add", "carol@example.test", "--password-stdin",
                          input=PASSWORD + "\n")
        users = (self.server.dir / "users").stat()
        self.assertEqual((users.st_gid, stat.S_IMODE(users.st_mode)),
                         (pwd.getpwnam(USER).pw_gid, 0o640))
        self.assertNotIn("WARNING: running as root", self.server.log_text())

    def test_a_file_the_user_cannot_read_stops_start_up(self):
        try:  # (it may exit before or after its listeners said they listen)
            self.server.start()
        except AssertionError:
            pass
        self.assertNotEqual(self.server.process.wait(15) if self.server.process else 1, 0)
        self.assertIn(f"[server] user: {self.server.dir} is not readable by {USER}: "
                      f"chown {USER} {self.server.dir}", self.server.log_text())

    def test_no_such_user(self):
        text = self.server.config.read_text().replace(f'user = "{USER}"', 'user = "mailsrv-x"')
        self.server.config.write_text(text)
        result = self.server.admin("check-config", check=False)
        self.assertIn("[server] user: no such user 'mailsrv-x'", result.stderr)
