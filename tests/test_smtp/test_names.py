"""
Issue 13, findings 2 and 3 at the SMTP level: an alias to nobody, and user
names that would be paths, never end in "250" and a lost message or a
dropped connection.
"""

from twisted.trial import unittest

from tests.helpers import fresh_error_log
from tests.test_smtp.support import (
    connect,
    files_on_disk,
    make_mail_server,
    maildir_messages,
    run_threads_inline,
)
from tests.test_smtp.test_server import LogCapture

BODY = b"Subject: hi\r\n\r\nhello\r\n"


class NamesTestCase(unittest.TestCase):
    aliases = ""
    extra_users = ""

    def setUp(self):
        run_threads_inline(self)
        self.server = make_mail_server(self)
        settings = self.server.settings
        if self.aliases:
            settings.aliases_file.write_text(self.aliases)
            self.server.directory.aliases._file.reload()
        if self.extra_users:
            with open(settings.users_file, "a") as f:
                f.write(self.extra_users)
            self.server.directory.users._file.reload()
        self.conn = connect(self.server)
        self.conn.send(b"EHLO client.test\r\n")

    def rcpt(self, address):
        self.conn.send(b"RSET\r\nMAIL FROM:<s@remote.test>\r\n")
        return self.conn.send(b"RCPT TO:<" + address + b">\r\n")


class AliasToNobodyTests(NamesTestCase):
    aliases = ("postmaster: ghost@example.test\n"
               "ghosts@example.test: ghost@example.test, spectre@example.test\n"
               "half@example.test: ghost@example.test, bob@example.test\n"
               "chain@example.test: ghosts@example.test\n"
               "loop1@example.test: loop2@example.test\n"
               "loop2@example.test: loop1@example.test\n")

    def test_alias_to_nobody_refused_at_rcpt(self):
        for address in (b"postmaster@example.test", b"Postmaster", b"ghosts@example.test",
                        b"chain@example.test", b"loop1@example.test"):
            reply = self.rcpt(address)
            self.assertTrue(reply.startswith(b"550 5.1.1 "), (address, reply))

    def test_alias_with_some_live_members_delivers_to_them_and_warns(self):
        logs = LogCapture(self)
        self.rcpt(b"half@example.test")
        reply = self.conn.send(b"DATA\r\n" + BODY + b".\r\n")
        self.assertIn(b"250 2.0.0 Ok: queued as", reply)
        self.assertEqual(len(maildir_messages(self.server, "bob@example.test")), 1)
        self.assertIn("ghost@example.test", logs.text())

    def test_transaction_with_only_dead_aliases_gets_no_data(self):
        self.rcpt(b"ghosts@example.test")
        self.assertTrue(self.conn.send(b"DATA\r\n").startswith(b"503 5.5.1"))
        self.assertEqual(files_on_disk(self.server), [])

    def test_start_up_names_dead_members_and_loops(self):
        from mailsrv.service import StartupNotes

        logs = LogCapture(self)
        StartupNotes(self.server.settings, self.server.directory).startService()
        text = logs.text()
        self.assertIn("postmaster@example.test: ghost@example.test: no such user", text)
        self.assertIn("half@example.test: ghost@example.test", text)
        self.assertIn("alias loop: loop1@example.test -> loop2@example.test -> "
                      "loop1@example.test", text)

    def test_a_bounce_to_an_alias_to_nobody_has_no_route(self):
        """The queue then bounces to the postmaster (or logs), never into nothing."""
        delivery = self.server.delivery
        self.assertIsNone(delivery.route("ghosts@example.test"))
        self.assertEqual(delivery.route("half@example.test")[:2], (("bob@example.test",), ()))


class PathUserTests(NamesTestCase):
    # Lines an older `mailsrv user add` let in.
    extra_users = ("a/b@example.test:$argon2id$x\n"
                   "..@example.test:$argon2id$x\n"
                   ".hidden@example.test:$argon2id$x\n")

    def test_rcpt_to_a_path_user_is_refused_not_dropped(self):
        for address in (b"a/b@example.test", b"..@example.test", b".hidden@example.test",
                        b"../../x@example.test"):
            reply = self.rcpt(address)
            self.assertRegex(reply, rb"^5(50 5\.1\.1|01 5\.1\.3) ", address)
            self.assertFalse(self.conn.closed, address)
        self.assertFalse((self.server.settings.data_dir / "mail" / "example.test"
                          / "a").exists())

    def test_error_at_end_of_data_gets_a_reply(self):
        """Anything that fails while the message is being placed is a 451, not a hang-up."""
        fresh_error_log(self)
        self.rcpt(b"alice@example.test")

        def broken(user, folder="INBOX"):
            raise ValueError("unsafe mailbox name")

        self.patch(self.server.store, "maildir", broken)
        reply = self.conn.send(b"DATA\r\n" + BODY + b".\r\n")
        self.assertIn(b"451 4.3.0 ", reply)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertFalse(self.conn.closed)
        self.assertEqual(files_on_disk(self.server), [])

class LostMessageTests(NamesTestCase):
    def test_user_deleted_between_rcpt_and_data_still_gets_the_message(self):
        """The mailbox stays on disk when a user is deleted, and so does the message."""
        self.rcpt(b"bob@example.test")
        users = self.server.directory.users
        users.delete("bob@example.test")
        self.assertFalse(users.exists("bob@example.test"))
        reply = self.conn.send(b"DATA\r\n" + BODY + b".\r\n")
        self.assertIn(b"250 2.0.0 Ok: queued as", reply)
        self.assertEqual(len(maildir_messages(self.server, "bob@example.test")), 1)

    def test_maildir_that_cannot_be_created_gets_451_and_leaves_nothing(self):
        mail = self.server.settings.data_dir / "mail" / "example.test"
        mail.mkdir(parents=True)
        (mail / "bob").write_text("a file where the Maildir should be")
        self.rcpt(b"bob@example.test")
        reply = self.conn.send(b"DATA\r\n" + BODY + b".\r\n")
        self.assertIn(b"451 4.3.0 ", reply)
        self.flushLoggedErrors()
        self.assertEqual(files_on_disk(self.server), [mail / "bob"])
