"""
Journaling: which transactions get an archive copy, the header of the copy,
and the commit that writes it beside an original left byte-identical.
"""

from pathlib import Path

from twisted.internet import defer, threads
from twisted.trial import unittest

from mailsrv.config import JournalSettings
from mailsrv.directory import Route
from mailsrv.queue import intake
from mailsrv.queue.intake import Destination, LocalDelivery
from mailsrv.queue.journal import Journal, journal_header
from mailsrv.queue.spool import Spool
from mailsrv.smtp.state import Recipient, Transaction

MESSAGE = (b"Return-Path: <s@remote.test>\r\nReceived: from x\r\n\tby y\r\n"
           b"Subject: hi\r\n\r\nbody\r\n")
ALICE = Recipient("alice@example.test", Route(local=("alice@example.test",)))
CAROL = Recipient("carol@remote.test", Route(remote=("carol@remote.test",),
                                             is_local_domain=False))


class FakeDirectory:
    def is_local_address(self, address):
        return address.endswith("@example.test")

    def route(self, address):
        if self.is_local_address(address):
            return Route(local=(address,))
        return Route(remote=(address,), is_local_domain=False)


class HeaderTests(unittest.TestCase):
    def test_short(self):
        self.assertEqual(journal_header("s@remote.test", ["a@x.test", "b@x.test"]),
                         b"X-Mailsrv-Journal: sender=<s@remote.test>; "
                         b"recipients=<a@x.test>, <b@x.test>\r\n")

    def test_null_sender_and_folding(self):
        recipients = [f"user{n}@example.test" for n in range(10)]
        header = journal_header("", recipients)
        lines = header.split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"X-Mailsrv-Journal: sender=<>; recipients="))
        self.assertTrue(all(len(line) <= 78 for line in lines))
        self.assertTrue(all(line.startswith(b"\t") for line in lines[1:-1]))
        self.assertEqual(header.count(b"@example.test"), 10)


class DecisionTests(unittest.TestCase):
    def journal(self, inbound="in@example.test", outbound="out@remote.test"):
        return Journal(JournalSettings(inbound, outbound),
                       LocalDelivery(None, None, FakeDirectory()))

    def test_table(self):
        # sender, recipients -> the copies' destinations
        inbound = Destination(("in@example.test",), ())
        outbound = Destination((), ("out@remote.test",))
        for sender, recipients, expected in [
            ("s@remote.test", [ALICE], [inbound]),
            ("", [ALICE, CAROL], [inbound]),
            ("bob@example.test", [CAROL, ALICE], [outbound]),
            ("bob@example.test", [ALICE], [inbound, outbound]),  # internal: "every message"
            ("s@remote.test", [CAROL], []),        # relayed for a trusted client
        ]:
            copies = self.journal().copies(Transaction(sender, recipients=recipients))
            self.assertEqual([c.destination for c in copies], expected, (sender, recipients))

    def test_internal_mail_once_when_both_archives_are_one(self):
        journal = self.journal(inbound="in@example.test", outbound="in@example.test")
        copies = journal.copies(Transaction("bob@example.test", recipients=[ALICE]))
        self.assertEqual([c.destination for c in copies], [Destination(("in@example.test",), ())])

    def test_off(self):
        journal = self.journal(inbound="", outbound="")
        self.assertEqual(journal.copies(Transaction("s@remote.test", recipients=[ALICE])), ())

    def test_every_envelope_recipient_is_in_the_header(self):
        bcc = Recipient("hidden@example.test", Route(local=("hidden@example.test",)))
        (copy,) = self.journal().copies(Transaction("s@remote.test", recipients=[ALICE, bcc]))
        self.assertEqual(copy.header, journal_header(
            "s@remote.test", ["alice@example.test", "hidden@example.test"]))


class CommitTests(unittest.TestCase):
    def setUp(self):
        self.root = Path(self.mktemp())
        self.spool = Spool(self.root / "queue")
        self.fields = {"sender": "s@remote.test", "client_ip": "127.0.0.1", "helo": "h"}
        self.header = b"X-Mailsrv-Journal: sender=<s@remote.test>; recipients=<a@example.test>\r\n"

    def commit(self, maildir, journal=()):
        incoming = self.spool.incoming()
        incoming.write(MESSAGE)
        return defer.maybeDeferred(intake.commit, self.spool, incoming, self.fields, [maildir],
                                   [], journal)

    def files(self, maildir):
        return [p.read_bytes() for p in (maildir / "new").iterdir()]

    @defer.inlineCallbacks
    def test_local_archive_and_byte_identical_original(self):
        plain, journaled, archive = (self.root / n for n in ("plain", "journaled", "archive"))
        yield self.commit(plain)
        yield self.commit(journaled, [(self.header, [archive], [])])
        self.assertEqual(self.files(journaled), self.files(plain))
        self.assertEqual(self.files(archive), [self.header + MESSAGE])
        self.assertEqual(self.spool.ids(), [])
        self.assertEqual(list(self.spool.tmp.iterdir()), [])

    @defer.inlineCallbacks
    def test_remote_archive_is_queued_from_the_null_sender(self):
        queue_id, _ = yield self.commit(self.root / "alice",
                                     [(self.header, [], ["archive@remote.test"])])
        (copy_id,) = self.spool.ids()
        self.assertNotEqual(copy_id, queue_id)
        envelope = self.spool.load(copy_id)
        self.assertEqual((envelope.sender, [r.address for r in envelope.recipients]),
                         ("", ["archive@remote.test"]))
        self.assertEqual(self.spool.message_path(copy_id).read_bytes(), self.header + MESSAGE)
        self.assertEqual(self.files(self.root / "alice"), [MESSAGE])

    @defer.inlineCallbacks
    def test_a_failure_leaves_no_copy(self):
        (self.root / "blocked").write_text("not a directory")
        d = self.commit(self.root / "blocked",
                        [(self.header, [self.root / "archive"], ["x@remote.test"])])
        yield self.assertFailure(d, OSError)
        self.assertEqual(list((self.root / "archive" / "new").iterdir()), [])
        self.assertEqual(self.spool.ids(), [])
        self.assertEqual(list(self.spool.tmp.iterdir()), [])
        self.assertEqual(list(self.spool.msg.iterdir()), [])


class AnnouncingStore:
    """Maildirs under C{root}; records what open folders would be told."""

    def __init__(self, root):
        self.root = root
        self.told = []

    def maildir(self, user, folder="INBOX"):
        return self.root / user / folder

    def create_folder(self, user, folder):
        self.maildir(user, folder).mkdir(parents=True)

    def notify(self, user, folder, names):
        self.told.append((user, folder, len(names)))


class LocalDeliveryTests(unittest.TestCase):
    def test_open_folders_hear_of_the_message_and_its_journal_copy(self):
        """An IMAP client in IDLE on the archive sees the copy at once, as the recipient does."""
        root = Path(self.mktemp())
        spool = Spool(root / "queue")
        store = AnnouncingStore(root / "mail")
        delivery = LocalDelivery(spool, store, FakeDirectory())
        self.patch(threads, "deferToThread", defer.maybeDeferred)
        incoming = spool.incoming()
        incoming.write(MESSAGE)
        destination = Destination(("alice@example.test",), (), "Junk")
        journal = Journal(JournalSettings("in@example.test", ""), delivery).copies(
            Transaction("s@remote.test", recipients=[ALICE]))
        queue_id = self.successResultOf(delivery.deliver(
            incoming, {"sender": "s@remote.test"}, destination, journal))
        self.assertEqual(queue_id, incoming.queue_id)
        self.assertEqual(store.told, [("alice@example.test", "Junk", 1),
                                      ("in@example.test", "INBOX", 1)])
