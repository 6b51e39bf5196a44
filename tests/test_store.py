"""
The Maildir++ store: UIDs that survive restarts, flags in file names,
listeners shared between sessions, folder management.
"""

import errno
import os
from pathlib import Path

from twisted.internet import task
from twisted.trial import unittest

from mailsrv.store import delivery, expunges, uidlist
from mailsrv.store.delivery import deliver_file
from mailsrv.store.folder import SETTLED, FolderError, FolderExists, NoSuchFolder
from mailsrv.store.mailstore import MailStore
from mailsrv.store.names import arrival_order
from tests.fulldisk import FullDisk
from tests.test_smtp.support import run_threads_inline
from tests.helpers import opened

ALICE = "alice@example.test"
DATA = b"Subject: hi\r\n\r\nbody\r\n"


class Recorder:
    def __init__(self):
        self.events = []

    def messages_added(self, uids):
        self.events.append(("added", uids))

    def messages_expunged(self, uids):
        self.events.append(("expunged", uids))

    def flags_changed(self, changes):
        self.events.append(("flags", changes))


class StoreTestCase(unittest.TestCase):
    def setUp(self):
        self.root = Path(self.mktemp())
        self.root.mkdir()
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.store = MailStore(self.root / "mail", self.clock)
        run_threads_inline(self)  # the listing of Folder.sync

    def sync(self, folder):
        """What C{self.sync(folder)} found (its listing runs at once here)."""
        return self.successResultOf(folder.sync())

    def deliver(self, count=1, folder="INBOX"):
        source = self.root / "source"
        source.write_bytes(DATA)
        deliver_file(source, [self.store.maildir(ALICE, folder)] * count)

    def restart(self):
        self.store = MailStore(self.root / "mail", self.clock)
        return opened(self.store, ALICE)


class UIDTests(StoreTestCase):
    def test_size_and_date_of_new_files_from_their_names(self):
        new = self.store.maildir(ALICE) / "new"
        for sub in ("cur", "new", "tmp"):
            os.makedirs(new.parent / sub, exist_ok=True)
        named = new / "1600000000.M5P1Q1.elsewhere,S=21"
        bare = new / "1600000001.other-mda"
        for path in (named, bare):
            path.write_bytes(DATA)
            os.utime(path, (1650000000, 1650000000))
        folder = opened(self.store, ALICE)
        # the delivering program's name is believed; without S= the file is asked
        self.assertEqual([(m.size, m.internaldate) for m in folder.messages()],
                         [(21, 1600000000), (len(DATA), 1650000000)])

    def test_sync_moves_new_and_assigns_uids(self):
        self.deliver(3)
        folder = opened(self.store, ALICE)
        self.assertEqual(folder.uids(), [1, 2, 3])
        self.assertEqual((folder.uidvalidity, folder.uidnext), (1_700_000_000, 4))
        self.assertEqual(os.listdir(folder.path / "new"), [])
        info = folder.messages()[0]
        self.assertEqual((info.size, info.flags), (len(DATA), frozenset()))
        self.assertEqual(info.path.name, info.key + ":2,")
        with folder.open(1) as f:
            self.assertEqual(f.read(), DATA)

    def test_uids_and_flags_persist_across_restart(self):
        self.deliver(2)
        folder = opened(self.store, ALICE)
        keys = [m.key for m in folder.messages()]
        folder.set_flags(2, {"\\Seen", "\\Answered", "$Keyword"})
        self.clock.advance(100)
        again = self.restart()
        self.assertEqual((again.uidvalidity, again.uidnext), (1_700_000_000, 3))
        self.assertEqual([(m.uid, m.key, m.flags) for m in again.messages()], [
            (1, keys[0], frozenset()),
            (2, keys[1], {"\\Seen", "\\Answered", "$Keyword"}),
        ])
        self.assertTrue(again.message(2).path.name.endswith(":2,RS"))

    def test_no_uid_reuse_after_delete_or_vanish(self):
        self.deliver(3)
        folder = opened(self.store, ALICE)
        folder.delete([3])
        os.unlink(folder.message(2).path)  # another program removed it
        self.assertEqual(self.sync(folder), ([], [2], {}))
        self.deliver(1)
        self.assertEqual(self.sync(folder)[0], [4])
        self.assertEqual(self.restart().uids(), [1, 4])

    def test_arrival_order(self):
        names = ["1700000001.M9P1Q1.h", "1700000001.M10P1Q2.h", "1700000000.M5P1Q3.h"]
        self.assertEqual(sorted(names, key=arrival_order),
                         [names[2], names[0], names[1]])

    def test_flags_renamed_by_another_program(self):
        self.deliver(1)
        folder = opened(self.store, ALICE)
        path = folder.message(1).path
        os.rename(path, str(path) + "FS")
        self.assertEqual(self.sync(folder), ([], [], {1: {"\\Flagged", "\\Seen"}}))

    def test_stale_index_gets_new_uidvalidity(self):
        self.deliver(1)
        folder = opened(self.store, ALICE)
        index = (folder.path / "mailsrv-uidlist").read_bytes()
        self.deliver(1)
        self.sync(folder)
        # a crash lost the last index write: the file in cur/ is unknown
        (folder.path / "mailsrv-uidlist").write_bytes(index)
        del folder
        again = self.restart()
        self.assertEqual(again.uidvalidity, 1_700_000_001)
        self.assertEqual(again.uids(), [1, 2])

    def test_damaged_index_is_rebuilt(self):
        self.deliver(1)
        path = opened(self.store, ALICE).path / "mailsrv-uidlist"
        path.write_text("garbage")
        again = self.restart()
        self.assertEqual(again.uids(), [1])
        self.assertTrue(path.read_text().startswith("mailsrv-uidlist 2 "))

    def test_index_format(self):
        self.deliver(1)
        folder = opened(self.store, ALICE)
        info = folder.messages()[0]
        self.assertEqual(
            (folder.path / "mailsrv-uidlist").read_text(),
            f"mailsrv-uidlist 2 1700000000 2 1 0\n"
            f"1 {info.internaldate} {len(DATA)} 1 {info.key}:\n",
        )

    def test_changes_are_appended_then_compacted(self):
        self.deliver(2)
        folder = opened(self.store, ALICE)
        path = folder.path / "mailsrv-uidlist"
        snapshot = path.read_text()
        folder.set_flags(2, {"\\Seen", "$Label1", "$Done"})
        folder.delete([1])
        self.deliver(1)
        self.sync(folder)
        key = folder.message(3).key
        self.assertEqual(
            path.read_text(),
            snapshot + "=2 3 :S $Done $Label1\n-4:1\n"
            f"3 {folder.message(3).internaldate} {len(DATA)} 5 {key}:\n",
        )
        again = self.restart()
        self.assertEqual([(m.uid, m.modseq, m.flags) for m in again.messages()], [
            (2, 3, {"\\Seen", "$Label1", "$Done"}), (3, 5, frozenset())])
        self.assertEqual((again.uidnext, again.highestmodseq), (4, 5))
        for n in range(1001):
            again.set_flags(3, {"$N%d" % n})
        self.assertLess(len(path.read_text().splitlines()), 1000)
        self.assertEqual(self.restart().message(3).flags, {"$N1000"})

    def test_cut_append_loses_only_its_change(self):
        self.deliver(1)
        folder = opened(self.store, ALICE)
        folder.set_flags(1, {"$A"})
        path = folder.path / "mailsrv-uidlist"
        with open(path, "a") as f:
            f.write("=1 9 :S $Half")
        self.assertEqual(self.restart().message(1).flags, {"$A"})

    def test_version_1_index_is_read_and_upgraded(self):
        self.deliver(1)
        folder = opened(self.store, ALICE)
        info = folder.message(1)
        path = folder.path / "mailsrv-uidlist"
        path.write_text(f"mailsrv-uidlist 1 1600000000 7\n"
                        f"6 {info.internaldate} {info.size} {info.key}\n")
        again = self.restart()
        self.assertEqual((again.uidvalidity, again.uids(), again.uidnext), (1600000000, [6], 7))
        self.assertTrue(path.read_text().startswith("mailsrv-uidlist 2 1600000000 7 "))
        again.set_flags(6, {"\\Flagged"})
        self.assertEqual(self.restart().message(6).modseq, 2)


class ModseqTests(StoreTestCase):
    """MODSEQ (RFC 7162): every change to a message gives it a higher one."""

    def test_changes_raise_modseq(self):
        self.deliver(2)
        folder = opened(self.store, ALICE)
        self.assertEqual([m.modseq for m in folder.messages()], [1, 2])
        folder.set_flags(1, {"\\Seen"})
        folder.set_flags(1, {"\\Seen"})  # no change, no new MODSEQ
        self.assertEqual((folder.message(1).modseq, folder.highestmodseq), (3, 3))
        folder.delete([2])
        self.assertEqual(folder.highestmodseq, 4)
        again = self.restart()
        self.assertEqual((again.message(1).modseq, again.highestmodseq), (3, 4))

    def test_flags_changed_by_others_get_a_new_modseq(self):
        self.deliver(2)
        folder = opened(self.store, ALICE)
        path = folder.message(1).path
        os.rename(path, str(path) + "S")
        self.sync(folder)
        self.assertEqual(folder.message(1).modseq, 3)
        del folder
        path = opened(self.store, ALICE).message(2).path
        os.rename(path, str(path) + "F")  # while the server is down
        again = self.restart()
        self.assertEqual([m.modseq for m in again.messages()], [3, 4])


class ExpungeHistoryTests(StoreTestCase):
    """
    The UIDs a folder expunged, with the MODSEQ of each expunge (RFC 7162
    QRESYNC), and the messages changed since a MODSEQ.
    """

    def test_expunges_are_remembered_across_restarts(self):
        self.deliver(6)
        folder = opened(self.store, ALICE)  # MODSEQ 1..6
        folder.delete([2, 3])  # 7
        folder.set_flags(4, {"\\Seen"})  # 8
        folder.delete([5])  # 9
        self.assertEqual(folder.expunged_since(6), [(2, 3), (5, 5)])
        self.assertEqual(folder.expunged_since(7), [(5, 5)])
        self.assertEqual(folder.expunged_since(9), [])
        self.assertEqual(folder.changed_since(6), [4])
        again = self.restart()  # from the change lines
        self.assertEqual(again.expunged_since(6), [(2, 3), (5, 5)])
        self.assertEqual(again.expunged_since(7), [(5, 5)])
        self.assertEqual(again.changed_since(0), [1, 4, 6])
        again._snapshot()
        path = again.path / "mailsrv-uidlist"
        self.assertEqual(path.read_text().splitlines()[-2:], ["~7:2:3", "~9:5"])
        again = self.restart()  # from a snapshot
        self.assertEqual(again.expunged_since(6), [(2, 3), (5, 5)])
        self.assertEqual(again.expunged_since(8), [(5, 5)])

    def test_files_vanished_while_down_are_expunges(self):
        self.deliver(3)
        folder = opened(self.store, ALICE)
        folder.message(2).path.unlink()
        del folder
        again = self.restart()
        self.assertEqual(again.highestmodseq, 4)
        self.assertEqual(again.expunged_since(3), [(2, 2)])
        self.assertEqual(self.restart().expunged_since(3), [(2, 2)])

    def test_an_older_index_knows_expunges_only_from_its_snapshot_on(self):
        self.deliver(3)
        folder = opened(self.store, ALICE)
        path = folder.path / "mailsrv-uidlist"
        header, rest = path.read_text().split("\n", 1)
        path.write_text(header.rsplit(" ", 1)[0] + "\n" + rest)  # no 6th field
        del folder
        again = self.restart()
        again.delete([1])
        self.assertIsNone(again.expunged_since(2))
        self.assertEqual(again.expunged_since(3), [(1, 1)])
        self.assertEqual(self.restart().expunged_since(3), [(1, 1)])

    def test_a_new_uidvalidity_starts_a_new_history(self):
        self.deliver(2)
        folder = opened(self.store, ALICE)
        folder.delete([1])
        (folder.path / "mailsrv-uidlist").write_text("garbage")
        self.clock.advance(1)  # UIDVALIDITY is the time: the old one is unreadable
        again = self.restart()
        self.assertNotEqual(again.uidvalidity, folder.uidvalidity)
        self.assertEqual(again.expunged_since(0), [])

    def test_fifty_thousand_expunges_stay_small(self):
        history = expunges.ExpungeHistory()
        for uid in range(1, 100_001, 2):  # every other UID, one at a time
            history.add(uid, [(uid, uid)])
        self.assertLessEqual(len(history), expunges.MAX_RUNS)
        self.assertGreater(history.known_since, 0)
        self.assertIsNone(history.since(history.known_since - 1))
        self.assertEqual(history.since(99_997), [(99_999, 99_999)])
        history = expunges.ExpungeHistory()
        for uid in range(1, 50_001):  # the oldest first, one at a time
            history.add(uid, [(uid, uid)])
        self.assertLessEqual(len(history), expunges.MAX_RUNS)
        self.assertEqual(history.since(49_998), [(49_999, 50_000)])
        # merged runs take the later MODSEQ: reported again, never lost
        self.assertEqual(history.since(0)[0][0], 1)

    def test_changed_since_skips_what_changed_again_or_went(self):
        self.deliver(3)
        folder = opened(self.store, ALICE)
        folder.set_flags(1, {"\\Seen"})  # 4
        folder.set_flags(1, {"\\Flagged"})  # 5
        folder.delete([2])  # 6
        self.assertEqual(folder.changed_since(3), [1])
        self.assertEqual(folder.changed_since(0), [1, 3])
        self.assertEqual(folder.changed_since(5), [])
        for _ in range(1100):  # stale records are dropped as they pile up
            folder.set_flags(3, {"\\Seen"})
            folder.set_flags(3, set())
        self.assertLess(len(folder._change_uids), 1100)
        self.assertEqual(folder.changed_since(5), [3])


class SharingTests(StoreTestCase):
    def test_one_folder_object_per_user_and_name(self):
        self.assertIs(self.store.folder(ALICE), self.store.folder(ALICE, "inbox"))

    def test_listeners_see_each_others_changes(self):
        self.deliver(2)
        folder = opened(self.store, ALICE)
        a, b = Recorder(), Recorder()
        folder.add_listener(a)
        folder.add_listener(b)
        folder.set_flags(1, {"\\Seen"}, origin=a)
        folder.delete([2], origin=b)
        self.deliver(1)
        self.store.notify(ALICE)
        self.assertEqual(a.events, [("expunged", [2]), ("added", [3])])
        self.assertEqual(b.events, [("flags", {1: {"\\Seen"}}), ("added", [3])])
        folder.remove_listener(a)
        folder.set_flags(1, set())
        self.assertEqual(len(a.events), 2)

    def test_add_and_copy_in_thread(self):
        folder = opened(self.store, ALICE)
        self.store.create_folder(ALICE, "Archive")
        archive = opened(self.store, ALICE, "Archive")
        listener = Recorder()
        archive.add_listener(listener)

        def added(uid):
            self.assertEqual(uid, 1)
            info = folder.message(1)
            self.assertEqual((info.flags, info.internaldate, info.size),
                             ({"\\Seen"}, 1_600_000_000, len(DATA)))
            return folder.copy(1, archive)

        def copied(uid):
            self.assertEqual(uid, 1)
            self.assertEqual(archive.message(1).flags, {"\\Seen"})
            self.assertEqual(archive.message(1).path.read_bytes(), DATA)
            self.assertEqual(listener.events, [("added", [1])])
            self.assertEqual(self.restart().uids(), [1])

        d = folder.add(DATA, {"\\Seen"}, 1_600_000_000)
        return d.addCallback(added).addCallback(copied)

    def test_move_renames_into_the_other_folder(self):
        self.deliver(3)
        folder = opened(self.store, ALICE)
        folder.set_flags(2, {"\\Seen", "$Work"})
        self.store.create_folder(ALICE, "Archive")
        archive = opened(self.store, ALICE, "Archive")
        here, there = Recorder(), Recorder()
        folder.add_listener(here)
        archive.add_listener(there)
        names = [folder.message(u).path.name for u in (2, 3)]
        d = folder.move([3, 2, 9], archive)

        def moved(pairs):
            self.assertEqual(pairs, [(2, 1), (3, 2)])
            self.assertEqual(folder.uids(), [1])
            self.assertEqual([(m.path.name, m.flags) for m in archive.messages()],
                             [(names[0], {"\\Seen", "$Work"}), (names[1], frozenset())])
            self.assertEqual((here.events, there.events),
                             ([("expunged", [2, 3])], [("added", [1, 2])]))
            self.assertEqual(self.restart().uids(), [1])
            self.assertEqual(opened(self.store, ALICE, "Archive").message(1).flags,
                             {"\\Seen", "$Work"})

        return d.addCallback(moved)


class TwoProcessesTests(StoreTestCase):
    """
    Two stores on one Maildir, as two processes (nodes on shared storage)
    have: their locks are separate open files, so they exclude each other
    as two processes' do.
    """

    def setUp(self):
        super().setUp()
        self.deliver(1)
        self.other = MailStore(self.root / "mail", self.clock)
        self.here = opened(self.store, ALICE)
        self.there = opened(self.other, ALICE)
        self.here.add_listener(Recorder())
        self.heard = Recorder()
        self.there.add_listener(self.heard)

    def test_appends_on_both_never_share_a_uid(self):
        uids = []
        for n in range(6):
            folder = (self.here, self.there)[n % 2]
            uids.append(self.successResultOf(folder.add(DATA + b"%d" % n)))
        self.assertEqual(uids, [2, 3, 4, 5, 6, 7])
        self.here.set_flags(1, set())  # (any change takes in the other's first)
        for folder in (self.here, self.there):
            self.assertEqual((folder.uids(), folder.uidnext), ([1, 2, 3, 4, 5, 6, 7], 8))
            self.assertEqual([folder.message(u).path.read_bytes() for u in (2, 7)],
                             [DATA + b"0", DATA + b"5"])
        # each at its next change there, its own added after it
        self.assertEqual(self.heard.events, [("added", [n]) for n in range(2, 8)])
        self.assertEqual(self.restart().uids(), [1, 2, 3, 4, 5, 6, 7])

    def test_a_delivery_taken_in_here_gets_its_uid_there(self):
        self.deliver(1)
        self.store.notify(ALICE, "INBOX", os.listdir(self.here.path / "new"))
        self.assertEqual(self.here.uids(), [1, 2])
        self.sync(self.there)  # it finds the file in cur/: the index says its UID
        self.assertEqual((self.there.uids(), self.there.uidnext), ([1, 2], 3))
        self.assertEqual(self.heard.events, [("added", [2])])
        self.assertEqual(self.restart().uids(), [1, 2])

    def test_flags_and_expunges_cross(self):
        self.deliver(2)
        self.sync(self.here)
        self.sync(self.there)
        del self.heard.events[:]
        self.here.set_flags(2, {"\\Seen", "$Work"})
        self.here.delete([3])
        self.there.set_flags(1, {"\\Flagged"})
        self.assertEqual((self.there.uids(), self.there.message(2).flags),
                         ([1, 2], {"\\Seen", "$Work"}))
        self.assertEqual(self.heard.events, [("expunged", [3]),
                                             ("flags", {2: {"\\Seen", "$Work"}}),
                                             ("flags", {1: {"\\Flagged"}})])
        self.assertEqual(self.there.message(2).path.name,
                         self.here.message(2).path.name)
        self.assertEqual(self.there.highestmodseq, self.here.highestmodseq + 1)
        again = self.restart()
        self.assertEqual([again.message(u).flags for u in again.uids()],
                         [{"\\Flagged"}, {"\\Seen", "$Work"}])

    def test_the_others_snapshot_is_read_whole(self):
        self.here._index.snapshot_due = True
        self.successResultOf(self.here.add(DATA))
        self.here.delete([1])
        self.successResultOf(self.there.add(DATA))
        self.assertEqual(self.there.uids(), [2, 3])
        self.assertEqual(self.heard.events, [("expunged", [1]), ("added", [2]), ("added", [3])])
        self.assertEqual(self.restart().uids(), [2, 3])

    def test_a_load_that_raced_a_write_reads_again(self):
        self.successResultOf(self.here.add(DATA))
        late = MailStore(self.root / "mail", self.clock).folder(ALICE)
        read = late._read()
        self.successResultOf(self.here.add(DATA))  # after the read, before it is applied
        self.successResultOf(late._load(read))
        self.assertEqual((late.uids(), late.uidvalidity), ([1, 2, 3], self.here.uidvalidity))


class OwnChangesTests(StoreTestCase):
    """
    The server's own changes leave a settled folder trusted (no listing of
    it at the next sync); another program's change made meanwhile is seen
    once the folder has settled.
    """

    def settled(self):
        """INBOX with 3 messages, its directories old and listed: trusted."""
        self.deliver(3)
        folder = opened(self.store, ALICE)
        for sub in ("cur", "new"):
            os.utime(folder.path / sub, (1_600_000_000, 1_600_000_000))
        self.sync(folder)
        self.listings = []
        scan = folder._scan
        self.patch(folder, "_scan", lambda: self.listings.append(1) or scan())
        self.assertEqual(self.sync(folder), ([], [], {}))
        self.assertEqual(self.listings, [])
        return folder

    def test_store_and_expunge_need_no_listing(self):
        folder = self.settled()
        folder.set_flags(1, {"\\Seen"})
        self.assertEqual(self.sync(folder), ([], [], {}))
        folder.delete([2])
        self.deliver(1)
        self.store.notify(ALICE)  # (nobody listens: no take-in)
        folder.add_listener(Recorder())
        self.store.notify(ALICE, names=os.listdir(folder.path / "new"))
        self.assertEqual(self.sync(folder), ([], [], {}))
        self.assertEqual(self.listings, [])
        self.assertEqual(folder.uids(), [1, 3, 4])

    def test_other_programs_change_seen_once_settled(self):
        folder = self.settled()
        recorder = Recorder()
        folder.add_listener(recorder)
        folder.set_flags(1, {"\\Seen"}, origin=recorder)
        path = folder.message(3).path
        os.rename(path, path.with_name(path.name + "F"))  # another program flags it
        self.assertEqual(self.sync(folder), ([], [], {}))  # hidden behind ours
        self.clock.advance(SETTLED + 1)
        self.assertEqual(self.listings, [1])
        self.assertEqual(recorder.events, [("flags", {3: {"\\Flagged"}})])
        self.assertEqual(folder.message(3).flags, {"\\Flagged"})

    def test_more_changes_do_not_put_off_the_listing(self):
        folder = self.settled()
        folder.add_listener(Recorder())
        for uid in (1, 2, 3):
            folder.set_flags(uid, {"\\Seen"})
            self.clock.advance(SETTLED - 0.5)
        self.assertEqual(self.listings, [1])

    def test_a_folder_not_trusted_stays_listed(self):
        self.deliver(3)
        folder = opened(self.store, ALICE)  # its directories just changed: not settled
        folder.set_flags(1, {"\\Seen"})
        path = folder.message(3).path
        os.rename(path, path.with_name(path.name + "F"))
        self.assertEqual(self.sync(folder), ([], [], {3: {"\\Flagged"}}))


class FolderManagementTests(StoreTestCase):
    def test_create_list_rename_delete(self):
        store = self.store
        store.create_folder(ALICE, "Work/2024")
        self.assertEqual(store.folders(ALICE), ["INBOX", "Work", "Work/2024"])
        self.assertRaises(FolderExists, store.create_folder, ALICE, "Work")
        self.assertRaises(ValueError, store.create_folder, ALICE, "a.b")
        self.deliver(1, "Work/2024")
        open_folder = opened(store, ALICE, "Work/2024")
        store.subscribe(ALICE, "Work/2024")
        store.rename_folder(ALICE, "Work", "Old")
        self.assertEqual(store.folders(ALICE), ["INBOX", "Old", "Old/2024"])
        self.assertEqual(open_folder.name, "Old/2024")
        self.assertEqual(opened(store, ALICE, "Old/2024").uids(), [1])
        self.assertEqual(store.subscriptions(ALICE), ["INBOX", "Old/2024"])
        self.assertRaises(FolderError, store.delete_folder, ALICE, "Old")
        self.assertRaises(FolderError, store.delete_folder, ALICE, "INBOX")
        self.assertRaises(NoSuchFolder, store.folder, ALICE, "Nope")
        listener = Recorder()
        open_folder.add_listener(listener)
        d = store.delete_folder(ALICE, "Old/2024")
        self.assertEqual(listener.events, [("expunged", [1])])
        self.assertEqual(store.folders(ALICE), ["INBOX", "Old"])
        # RFC 3501 6.3.6: a deleted folder's name stays subscribed
        self.assertEqual(store.subscriptions(ALICE), ["INBOX", "Old/2024"])

        def gone(_):
            inbox = store.maildir(ALICE)
            self.assertEqual(sorted(n for n in os.listdir(inbox) if n.startswith(".")),
                             [".Old"])

        return d.addCallback(gone)


class FullDiskTests(StoreTestCase):
    """
    Issue 13, finding 4: a write that fails (ENOSPC, or any other error)
    leaves the UID index as it was, so the next start keeps UIDVALIDITY;
    reading keeps working.
    """

    def setUp(self):
        super().setUp()
        self.disk = FullDisk(self)

    def index(self, folder):
        return folder.path / "mailsrv-uidlist"

    def test_torn_index_line_keeps_uidvalidity(self):
        self.deliver(2)
        folder = opened(self.store, ALICE)
        folder.set_flags(1, {"$A"})
        with open(self.index(folder), "a") as f:
            f.write("=1 9 :S $Ha")  # what ENOSPC left of an append
        folder.set_flags(2, {"$B"})  # the server goes on writing
        again = self.restart()
        self.assertEqual(again.uidvalidity, 1_700_000_000)
        self.assertEqual([m.flags for m in again.messages()], [{"$A"}, {"$B"}])

    def test_uidvalidity_of_an_empty_folder_survives_a_restart(self):
        """
        The crash test's finding: an empty folder's index was written only
        with its first message, so a client that saw UIDVALIDITY and then
        a restart (or kill -9) saw another one.
        """
        first = opened(self.store, ALICE).uidvalidity
        self.clock.advance(10)
        self.assertEqual(self.restart().uidvalidity, first)

    def test_garbage_last_index_line_is_ignored_then_cut(self):
        self.deliver(1)
        folder = opened(self.store, ALICE)
        folder.set_flags(1, {"$A"})
        with open(self.index(folder), "a") as f:
            f.write("=1 x\x00\x00 :S\n")
        del folder
        again = self.restart()
        self.assertEqual((again.uidvalidity, again.message(1).flags),
                         (1_700_000_000, {"$A"}))
        again.set_flags(1, {"$B"})
        self.assertNotIn("x\x00", self.index(again).read_text())
        self.assertEqual(self.restart().message(1).flags, {"$B"})

    def test_store_on_full_disk_fails_and_changes_nothing(self):
        self.deliver(1)
        folder = opened(self.store, ALICE)
        before = self.index(folder).read_bytes()
        name = folder.message(1).name
        self.disk.fill()
        with self.assertRaises(OSError) as caught:
            folder.set_flags(1, {"\\Seen", "$A"})
        self.assertEqual(caught.exception.errno, errno.ENOSPC)
        info = folder.message(1)
        self.assertEqual((info.flags, info.name, info.modseq), (frozenset(), name, 1))
        self.assertEqual(self.index(folder).read_bytes(), before)
        self.disk.free()
        folder.set_flags(1, {"$B"})
        again = self.restart()
        self.assertEqual((again.uidvalidity, again.message(1).flags),
                         (1_700_000_000, {"$B"}))

    def test_new_mail_waits_in_new_while_the_disk_is_full(self):
        self.deliver(1)
        folder = opened(self.store, ALICE)
        listener = Recorder()
        folder.add_listener(listener)
        self.deliver(1)
        self.disk.fill()
        self.assertEqual(self.sync(folder), ([], [], {}))
        self.assertEqual((folder.uids(), len(os.listdir(folder.path / "new"))), ([1], 1))
        self.disk.free()
        self.assertEqual(self.sync(folder)[0], [3])  # UID 2 went with the failed write
        self.assertEqual(listener.events, [("added", [3])])
        again = self.restart()
        self.assertEqual((again.uidvalidity, again.uids()), (1_700_000_000, [1, 3]))

    def test_expunge_on_full_disk_removes_the_files(self):
        self.deliver(2)
        folder = opened(self.store, ALICE)
        self.disk.fill()
        self.assertEqual(folder.delete([1]), [1])
        self.disk.free()
        again = self.restart()
        self.assertEqual((again.uidvalidity, again.uids()), (1_700_000_000, [2]))
        self.assertGreater(again.highestmodseq, 2)  # the expunge's MODSEQ is not reused

    def test_folder_opens_on_full_disk(self):
        self.deliver(2)
        self.disk.fill()
        folder = opened(self.store, ALICE)
        self.assertEqual(folder.uids(), [1, 2])
        # no index (nor its temporary file): the empty lock file only
        self.assertEqual(sorted(os.listdir(folder.path)),
                         ["cur", "mailsrv-uidlist.lock", "new", "tmp"])

    def test_append_on_full_disk_fails_and_leaves_nothing(self):
        folder = opened(self.store, ALICE)
        self.disk.fill()
        d = folder.add(DATA, {"\\Seen"})

        def failed(failure):
            failure.trap(OSError)
            self.assertEqual(failure.value.errno, errno.ENOSPC)
            self.assertEqual(len(folder), 0)
            for sub in ("cur", "new", "tmp"):
                self.assertEqual(os.listdir(folder.path / sub), [])

        return d.addCallbacks(lambda _: self.fail("APPEND succeeded"), failed)

    def test_move_on_full_disk_leaves_the_messages(self):
        self.deliver(2)
        folder = opened(self.store, ALICE)
        self.store.create_folder(ALICE, "Archive")
        archive = opened(self.store, ALICE, "Archive")
        self.disk.fill()
        self.assertRaises(OSError, folder.move, [1, 2], archive)
        self.assertEqual((folder.uids(), archive.uids()), ([1, 2], []))
        self.assertEqual(len(os.listdir(folder.path / "cur")), 2)
        self.disk.free()
        self.assertEqual(self.restart().uidvalidity, 1_700_000_000)

    def test_snapshot_is_written_then_fsynced_then_renamed(self):
        calls = []

        class Recording:
            def __getattr__(self, name):
                return getattr(os, name)

            def fsync(self, fd):
                calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                os.fsync(fd)

            def replace(self, source, target):
                calls.append(("replace", os.path.abspath(target)))
                os.replace(source, target)

        self.deliver(1)
        self.patch(uidlist, "os", Recording())
        self.patch(delivery, "os", Recording())
        folder = opened(self.store, ALICE)
        index = os.path.abspath(self.index(folder))
        self.assertEqual(calls, [("fsync", index + ".tmp"), ("replace", index),
                                 ("fsync", os.path.abspath(folder.path))])
