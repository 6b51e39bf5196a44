"""
The spool and the step that makes a received message durable.
"""

import errno
import os
import time
from pathlib import Path

from twisted.internet import defer, task
from twisted.trial import unittest

from mailsrv.queue import intake
from mailsrv.queue.spool import (
    Envelope, IncomingMessage, QueueIds, RecipientState, Spool, new_queue_id,
)
from mailsrv.store.delivery import deliver_file
from mailsrv.store.layout import folder_maildir, unique_name, user_maildir

MESSAGE = b"Subject: hi\r\n\r\nbody \xc3\xa9\r\n"


class LayoutTests(unittest.TestCase):
    def test_paths(self):
        inbox = user_maildir("/m", "Alice@Example.test")
        self.assertEqual(inbox, Path("/m/example.test/alice"))
        self.assertEqual(folder_maildir(inbox, "INBOX"), inbox)
        self.assertEqual(folder_maildir(inbox, "Lists/Twisted"), inbox / ".Lists.Twisted")
        for bad in ("../x@example.test", "a@../x", "a/b@example.test", "@example.test",
                    ".hidden@example.test", "..@example.test", "a@.", "x\n@example.test"):
            self.assertRaises(ValueError, user_maildir, "/m", bad)
        for bad in ("a.b", "../x", "a//b"):
            self.assertRaises(ValueError, folder_maildir, inbox, bad)

    def test_unique_names(self):
        names = {unique_name(10) for _ in range(1000)}
        self.assertEqual(len(names), 1000)
        self.assertTrue(all(n.endswith(",S=10") and ":" not in n for n in names))


class DeliveryTests(unittest.TestCase):
    def test_links_into_new_of_every_maildir(self):
        root = Path(self.mktemp())
        root.mkdir()
        source = root / "spooled"
        source.write_bytes(MESSAGE)
        paths = deliver_file(source, [root / "a", root / "b"])
        self.assertEqual(len(paths), 2)
        for path in paths:
            self.assertEqual(Path(path).read_bytes(), MESSAGE)
            self.assertEqual(Path(path).parent.name, "new")
            for sub in ("cur", "tmp"):
                self.assertTrue((Path(path).parent.parent / sub).is_dir())

    def test_failure_leaves_nothing(self):
        root = Path(self.mktemp())
        root.mkdir()
        source = root / "spooled"
        source.write_bytes(MESSAGE)
        (root / "blocked").write_text("a file where a Maildir should be")
        self.assertRaises(OSError, deliver_file, source, [root / "a", root / "blocked"])
        self.assertEqual(list((root / "a" / "new").iterdir()), [])


class SpoolTests(unittest.TestCase):
    def setUp(self):
        self.root = Path(self.mktemp())
        self.spool = Spool(self.root)

    def test_envelope_round_trip(self):
        envelope = Envelope(id="X1", sender="", recipients=[RecipientState("a@b.test")])
        self.spool.save(envelope)
        self.assertEqual(self.spool.load("X1"), envelope)
        self.assertEqual(self.spool.ids(), ["X1"])
        self.spool.remove("X1")
        self.assertEqual(self.spool.ids(), [])

    def test_abort_leaves_nothing(self):
        for size in (10, IncomingMessage.IN_MEMORY + 1):
            incoming = self.spool.incoming()
            incoming.write(b"p" * size)
            incoming.abort()
            self.assertEqual(list(self.spool.tmp.iterdir()), [])

    def test_small_message_held_until_finish_large_one_written_as_it_comes(self):
        small, large = self.spool.incoming(), self.spool.incoming()
        small.write(b"small\r\n")
        large.write(b"L" * IncomingMessage.IN_MEMORY)
        self.assertEqual(list(self.spool.tmp.iterdir()), [])
        large.write(b"more\r\n")
        self.assertEqual(list(self.spool.tmp.iterdir()), [large.path])
        small.finish()
        large.finish()
        self.assertEqual(small.path.read_bytes(), b"small\r\n")
        self.assertEqual(large.path.read_bytes(), b"L" * IncomingMessage.IN_MEMORY + b"more\r\n")

    def test_recover_removes_what_was_never_acknowledged(self):
        self.spool.incoming().write(b"x" * (IncomingMessage.IN_MEMORY + 1))  # on disk
        (self.spool.msg / "ORPHAN").write_bytes(b"no envelope")
        self.spool.save(Envelope(id="KEPT", sender="a@b.test", recipients=[]))
        (self.spool.msg / "KEPT").write_bytes(MESSAGE)
        self.assertEqual(Spool(self.root).recover(), 2)
        self.assertEqual([p.name for p in self.spool.msg.iterdir()], ["KEPT"])

    def test_recover_spares_what_this_start_began(self):
        """Recovery runs in a thread while the server takes mail: it removes only older files."""
        started = time.time()
        old = self.spool.tmp / "OLD"
        old.write_bytes(b"a crash's")
        os.utime(old, (started - 60, started - 60))
        orphan = self.spool.msg / "ORPHAN"
        orphan.write_bytes(b"a crash's, renamed before its envelope was written")
        os.utime(orphan, (started - 60, started - 60))
        current = self.spool.incoming()
        current.write(b"x" * (IncomingMessage.IN_MEMORY + 1))  # on disk, begun just now
        (self.spool.msg / "RENAMED").write_bytes(b"its envelope is being written")
        self.assertEqual(Spool(self.root).recover(started - 1), 2)
        self.assertEqual(sorted(p.name for p in self.spool.msg.iterdir()), ["RENAMED"])
        self.assertEqual(list(self.spool.tmp.iterdir()), [current.path])

    def entry(self, spool, queue_id):
        spool.save(Envelope(id=queue_id, sender="a@b.test", recipients=[RecipientState("c@d.test")]))
        spool.message_path(queue_id).write_bytes(MESSAGE)

    def test_adopt_moves_a_dead_nodes_entries(self):
        dead = Spool(Path(self.mktemp()))
        self.entry(dead, "E1")
        self.entry(dead, "E2")
        self.assertEqual(self.spool.adopt(dead), ["E1", "E2"])
        self.assertEqual((dead.ids(), list(dead.msg.iterdir())), ([], []))
        self.assertEqual(self.spool.ids(), ["E1", "E2"])
        self.assertEqual(self.spool.message_path("E2").read_bytes(), MESSAGE)
        self.assertEqual(self.spool.load("E1").recipients, [RecipientState("c@d.test")])

    def test_adopt_again_after_a_crash_between_its_steps(self):
        dead = Spool(Path(self.mktemp()))
        self.entry(dead, "LINKED")  # crashed after the link: the entry is still the dead's
        os.link(dead.message_path("LINKED"), self.spool.message_path("LINKED"))
        self.entry(dead, "RENAMED")  # crashed after the rename: ours, a leftover there
        self.spool.save(dead.load("RENAMED"))
        os.link(dead.message_path("RENAMED"), self.spool.message_path("RENAMED"))
        (dead.env / "RENAMED.json").unlink()
        self.assertEqual(dead.recover(), 1)  # (the dead node's start drops its leftover)
        self.assertEqual(self.spool.adopt(dead), ["LINKED"])
        self.assertEqual(self.spool.ids(), ["LINKED", "RENAMED"])
        self.assertEqual(Spool(self.root).recover(), 0)

    def test_queue_ids_sort_by_arrival(self):
        """Many in a tight loop: most share a microsecond with another."""
        ids = [self.spool.incoming().queue_id for _ in range(5000)]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), len(ids))


class QueueIdTests(unittest.TestCase):
    def test_ids_keep_rising_when_the_clock_steps_back(self):
        clock = task.Clock()
        clock.advance(1_700_000_000)
        ids = QueueIds(now=lambda: int(clock.seconds() * 1e9), tag=0xABCDE)
        first = [ids.next() for _ in range(3)]
        clock.advance(-3600)
        later = [ids.next() for _ in range(3)]
        clock.advance(7200)
        latest = ids.next()
        made = first + later + [latest]
        self.assertEqual(made, sorted(made))
        self.assertEqual(len(set(made)), len(made))
        self.assertEqual(first[0], f"{1_700_000_000 * 10**6:013X}ABCDE")
        self.assertEqual(latest, f"{1_700_003_600 * 10**6:013X}ABCDE")

    def test_same_microsecond_in_two_processes_differs_by_tag(self):
        frozen = lambda: 1_700_000_000 * 10**9  # noqa: E731
        a, b = QueueIds(now=frozen, tag=1), QueueIds(now=frozen, tag=2)
        self.assertNotEqual(a.next(), b.next())

    def test_ids_are_file_names_of_fixed_length(self):
        queue_id = new_queue_id()
        self.assertRegex(queue_id, r"\A[0-9A-F]{18}\Z")


class IntakeTests(unittest.TestCase):
    def setUp(self):
        self.root = Path(self.mktemp())
        self.spool = Spool(self.root / "queue")
        self.fields = {"sender": "s@remote.test", "client_ip": "127.0.0.1", "helo": "h"}

    def receive(self):
        incoming = self.spool.incoming()
        incoming.write(MESSAGE)
        return incoming

    def test_local_only_leaves_no_queue_entry(self):
        d = defer.maybeDeferred(intake.commit, self.spool, self.receive(), self.fields, [self.root / "alice"], [])

        def check(committed):
            (delivered,) = (self.root / "alice" / "new").iterdir()
            self.assertEqual(delivered.read_bytes(), MESSAGE)
            self.assertEqual(self.spool.ids(), [])
            self.assertEqual(list(self.spool.tmp.iterdir()), [])

        return d.addCallback(check)

    def test_remote_recipients_are_queued(self):
        incoming = self.receive()
        d = defer.maybeDeferred(intake.commit, self.spool, incoming, self.fields, [self.root / "alice"],
                                ["x@remote.test", "y@remote.test"])

        def check(committed):
            queue_id, _ = committed
            self.assertEqual(queue_id, incoming.queue_id)
            self.assertEqual(self.spool.ids(), [queue_id])
            envelope = self.spool.load(queue_id)
            self.assertEqual(envelope.sender, "s@remote.test")
            self.assertEqual([r.address for r in envelope.pending()],
                                   ["x@remote.test", "y@remote.test"])
            self.assertEqual(self.spool.message_path(queue_id).read_bytes(), MESSAGE)
            (delivered,) = (self.root / "alice" / "new").iterdir()
            self.assertEqual(os.stat(delivered).st_ino,
                             os.stat(self.spool.message_path(queue_id)).st_ino)

        return d.addCallback(check)

    def test_a_message_with_nowhere_to_go_is_refused(self):
        """No "250" for a message that would be dropped at once (an alias to nobody)."""
        d = defer.maybeDeferred(intake.commit, self.spool, self.receive(), self.fields, [], [])
        self.assertFailure(d, intake.NoDestination)

        def check(_):
            self.assertEqual(list(self.spool.tmp.iterdir()), [])
            self.assertEqual(self.spool.ids(), [])

        return d.addCallback(check)

    def test_io_error_leaves_nothing_behind(self):
        (self.root / "blocked").write_text("not a directory")
        d = defer.maybeDeferred(intake.commit, self.spool, self.receive(), self.fields,
                                [self.root / "alice", self.root / "blocked"], ["x@remote.test"])
        self.assertFailure(d, OSError)

        def check(_):
            self.assertEqual(list((self.root / "alice" / "new").iterdir()), [])
            self.assertEqual(list(self.spool.tmp.iterdir()), [])
            self.assertEqual(self.spool.ids(), [])

        return d.addCallback(check)

    def test_abort_unlinks_when_close_fails(self):
        """Issue 13, finding 4: closing flushes the last bytes, which a full disk refuses."""
        incoming = self.spool.incoming()
        incoming.write(b"p" * (IncomingMessage.IN_MEMORY + 1))
        real_close = incoming._file.close

        def close():
            real_close()
            raise OSError(errno.ENOSPC, "No space left on device")

        incoming._file.close = close
        incoming.abort()
        self.assertEqual(list(self.spool.tmp.iterdir()), [])
