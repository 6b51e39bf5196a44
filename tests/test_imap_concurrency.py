"""
Sessions, deliveries and POP3 interleaved on one folder (issue 14): what
each IMAP session is told, and when the reactor does the folder's work.
"""

import os
from pathlib import Path

from twisted.internet import defer, task
from twisted.trial import unittest

from mailsrv.store import folder as folder_module
from mailsrv.store.delivery import deliver_file
from mailsrv.store.mailstore import MailStore
from tests.test_imap import ALICE, MESSAGE, IMAPTestCase, deliver


class LogoutTests(IMAPTestCase):
    def test_logout_sends_nothing_after_bye(self):
        """imaptest forgets the mailbox at BYE: news after it is 'seq too high'."""
        watcher = self.selected(MESSAGE, MESSAGE)
        other = self.client()
        other.login()
        other.cmd(b"s SELECT INBOX")
        other.cmd(b"f STORE 1 +FLAGS (\\Flagged)")
        other.cmd(b"d STORE 2 +FLAGS (\\Deleted)")
        other.cmd(b"e EXPUNGE")
        watcher.read()
        reply = watcher.cmd(b"l LOGOUT")
        before, bye, after = reply.partition(b"* BYE")
        self.assertTrue(bye, reply)
        self.assertEqual(before, b"* 2 EXPUNGE\r\n")
        self.assertNotIn(b"\r\n* ", after)


class HeldThreads:
    """deferToThread that runs nothing until the test says so."""

    def __init__(self):
        self.calls = []

    def deferToThread(self, f, *args, **kwargs):
        d = defer.Deferred()
        self.calls.append((f, args, kwargs, d))
        return d

    def run(self, index=0):
        """Run a held call (in the 'thread'), without firing its Deferred."""
        f, args, kwargs, d = self.calls.pop(index)
        result = f(*args, **kwargs)
        return lambda: d.callback(result)

    def run_all(self):
        while self.calls:
            self.run()()


class StoreInterleavingTests(unittest.TestCase):
    def setUp(self):
        root = Path(self.mktemp())
        root.mkdir()
        self.clock = task.Clock()
        self.clock.advance(1_795_000_000)
        self.store = MailStore(root / "mail", self.clock)
        self.threads = HeldThreads()
        self.patch(folder_module, "threads", self.threads)
        self.folder = self.store.folder(ALICE)
        self.folder.opened()
        self.threads.run_all()  # the first load

    def test_append_racing_a_scan_gets_one_uid(self):
        """A listing made before an APPEND's file reached cur/ is applied after it."""
        self.folder.add(MESSAGE)
        written = self.threads.run()  # the message is in tmp/
        self.folder.sync()
        listed = self.threads.run()  # the listing: not in cur/ yet
        written()  # UID 1, into cur/
        self.threads.run_all()
        listed()
        self.assertEqual(self.folder.uids(), [1])
        self.folder.sync()
        self.threads.run_all()
        self.assertEqual((self.folder.uids(), self.folder.uidnext), ([1], 2))

    def test_expunge_racing_a_scan_is_not_given_a_new_uid(self):
        deliver(self.store, MESSAGE)
        self.folder.sync()
        self.threads.run_all()
        self.folder.sync()
        listed = self.threads.run()  # still lists UID 1's file
        self.folder.delete([1])
        listed()
        self.assertEqual((self.folder.uids(), self.folder.uidnext), ([], 2))

    def test_modseq_never_goes_back(self):
        """A flag change after the listing is not undone by the listing."""
        deliver(self.store, MESSAGE)
        self.folder.sync()
        self.threads.run_all()
        self.folder.sync()
        listed = self.threads.run()
        self.folder.set_flags(1, {"\\Seen"})
        modseq = self.folder.highestmodseq
        listed()
        self.assertEqual(self.folder.message(1).flags, {"\\Seen"})
        self.assertEqual(self.folder.highestmodseq, modseq)

    def test_delivery_to_open_folder_does_not_rescan(self):
        listener = _Listener()
        self.folder.add_listener(listener)
        listings, listdir = [], os.listdir
        self.patch(os, "listdir", lambda path: listings.append(path) or listdir(path))
        source = Path(self.mktemp())
        source.write_bytes(MESSAGE)
        (path,) = deliver_file(source, [self.store.maildir(ALICE)])
        self.store.notify(ALICE, "INBOX", [os.path.basename(path)])
        self.threads.run_all()
        self.assertEqual((listings, listener.added, self.folder.uids()), ([], [[1]], [1]))
        self.assertEqual(listdir(self.folder.path / "new"), [])

    def test_delivery_already_taken_in_by_a_sync_keeps_its_uid(self):
        source = Path(self.mktemp())
        source.write_bytes(MESSAGE)
        self.folder.add_listener(_Listener())
        (path,) = deliver_file(source, [self.store.maildir(ALICE)])
        self.folder.sync()
        self.threads.run_all()
        self.store.notify(ALICE, "INBOX", [os.path.basename(path)])
        self.assertEqual((self.folder.uids(), self.folder.uidnext), ([1], 2))


class FirstLoadTests(IMAPTestCase):
    def setUp(self):
        super().setUp()
        self.threads = HeldThreads()
        self.patch(folder_module, "threads", self.threads)
        self.listings, listdir = [], os.listdir
        self.patch(os, "listdir", lambda path: self.listings.append(path) or listdir(path))

    def test_first_select_scans_off_the_reactor(self):
        """Another client is answered while the first load of a folder is in its thread."""
        deliver(self.store, MESSAGE)
        other = self.client()
        other.login()
        first = self.client()
        first.login()
        first.send(b"s SELECT INBOX\r\n")
        self.assertEqual(first.read(), b"")
        self.assertEqual(len(self.threads.calls), 1)  # the load, held
        self.assertEqual(self.listings, [])  # nothing listed on the reactor
        self.assertEqual(other.cmd(b"n NOOP"), b"n OK NOOP completed\r\n")
        self.threads.run_all()
        self.assertIn(b"* 1 EXISTS\r\n", first.read())

    def test_append_racing_the_first_load_gets_one_uid(self):
        """An APPEND whose file is written while the load lists the folder keeps one UID."""
        folder = self.store.folder(ALICE)
        folder.add(MESSAGE)
        written = self.threads.run()  # in tmp/
        folder.sync()
        self.assertEqual(self.listings, [])
        loaded = self.threads.run()  # the load: lists neither
        written()  # waits for the load
        loaded()
        self.threads.run_all()
        deliver(self.store, MESSAGE)
        folder.sync()
        self.threads.run_all()
        self.assertEqual((folder.uids(), folder.uidnext), ([1, 2], 3))

    def test_delivery_racing_the_first_load_gets_one_uid(self):
        folder = self.store.folder(ALICE)
        folder.sync()
        source = Path(self.mktemp())
        source.write_bytes(MESSAGE)
        (path,) = deliver_file(source, [self.store.maildir(ALICE)])
        self.assertEqual(self.listings, [])
        loaded = self.threads.run()  # the load lists the delivered file
        self.store.notify(ALICE, "INBOX", [os.path.basename(path)])
        loaded()
        folder.sync()
        self.threads.run_all()
        self.assertEqual((folder.uids(), folder.uidnext), ([1], 2))


class _Listener:
    def __init__(self):
        self.added = []

    def messages_added(self, uids):
        self.added.append(uids)

    def messages_expunged(self, uids):
        pass

    def flags_changed(self, changes):
        pass


class RecentAndMoveTests(IMAPTestCase):
    def test_recent_goes_to_the_first_session(self):
        deliver(self.store, MESSAGE)
        first = self.client()
        first.login()
        self.assertIn(b"* 1 RECENT\r\n", first.cmd(b"s SELECT INBOX"))
        second = self.client()
        second.login()
        self.assertIn(b"* 0 RECENT\r\n", second.cmd(b"s SELECT INBOX"))
        self.assertEqual(first.cmd(b"f FETCH 1 FLAGS"),
                         b"* 1 FETCH (FLAGS (\\Recent))\r\nf OK FETCH completed\r\n")
        self.assertEqual(second.cmd(b"f FETCH 1 FLAGS"),
                         b"* 1 FETCH (FLAGS ())\r\nf OK FETCH completed\r\n")
        self.assertIn(b"RECENT 0", second.cmd(b"t STATUS INBOX (RECENT)"))

    def test_move_into_selected_mailbox_sends_exists_after_expunge(self):
        c = self.selected(MESSAGE)
        self.assertEqual(
            c.cmd(b"m MOVE 1 INBOX"),
            b"* OK [COPYUID 1795000000 1 2] Moved\r\n* 1 EXPUNGE\r\n* 1 EXISTS\r\n"
            b"* 1 RECENT\r\nm OK MOVE completed\r\n")



class LeavingTests(IMAPTestCase):
    def test_noop_ending_after_the_client_left_writes_nothing(self):
        c = self.selected(MESSAGE)
        threads = HeldThreads()
        self.patch(folder_module, "threads", threads)
        c.send(b"n NOOP\r\n")
        c.proto.connectionLost(None)
        c.proto.transport = None  # as the connection wrapper leaves it
        threads.run_all()  # no AttributeError on the missing transport
