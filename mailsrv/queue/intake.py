"""
Accepting a message: the single step between a finished spool file and
"250 2.0.0 Ok: queued as ID", for received mail and for the bounces the
queue makes alike (L{LocalDelivery}). The disk work runs in one thread
hop (L{commit}); open folders hear of their new files afterwards.
"""

import os
from typing import NamedTuple

from twisted.internet import threads
from twisted.logger import Logger

from mailsrv.queue.spool import Envelope, RecipientState
from mailsrv.store.delivery import deliver_file
from mailsrv.store.folder import FolderExists

log = Logger()


class NoDestination(Exception):
    """
    A message with no mailbox and no remote address to go to: committing
    it would answer "250" and then drop it, so commit refuses.
    """


def commit(spool, incoming, envelope_fields, local_maildirs, remote_recipients, journal=()):
    """
    Make a received message durable, then put it where it goes. Call it
    off the reactor thread (L{LocalDelivery.deliver} does).

    @param incoming: the L{IncomingMessage}, completely written.
    @param envelope_fields: C{sender}, C{client_ip}, C{helo} for the queue.
    @param local_maildirs: Maildir paths to deliver into now.
    @param remote_recipients: addresses for the queue.
    @param journal: C{(header, maildirs, remote addresses)} of each
        journal copy to make too.
    @return: C{(queue id, delivered paths)}, the paths a list for the
        message (in the order of C{local_maildirs}), then one for each
        journal copy, so that open folders take them in without a listing.
    @raise NoDestination: the message has nowhere to go.
    @raise OSError: on any I/O error; nothing is left behind, journal
        copies included.
    """
    placed = []  # (delivered paths, queue id or None) of each file put in place
    try:
        incoming.finish()
        for header, maildirs, remote in journal:  # first: placing the message may unlink it
            message = _journal_copy(spool, incoming, header)
            journal_fields = {**envelope_fields, "sender": ""}  # no bounce reveals it
            placed.append(_place(spool, message, journal_fields, maildirs, remote))
        placed.insert(0, _place(spool, incoming, envelope_fields, local_maildirs,
                                remote_recipients))
    except BaseException:
        for delivered, queue_id in placed:
            for path in delivered:
                os.unlink(path)
            if queue_id is not None:
                spool.remove(queue_id)
        incoming.abort()
        raise
    return incoming.queue_id, [delivered for delivered, _ in placed]


def _journal_copy(spool, incoming, header):
    """A new fsync'd spool message: C{header}, then the received message."""
    copy = spool.incoming()
    try:
        copy.write(header)
        with open(incoming.path, "rb") as original:
            while chunk := original.read(1 << 16):
                copy.write(chunk)
        copy.finish()
    except BaseException:
        copy.abort()
        raise
    return copy


def _place(spool, message, envelope_fields, local_maildirs, remote_recipients):
    """
    Link a finished message into Maildirs and queue it (or drop the spool
    file when nothing is remote).

    @return: C{(delivered paths, queue id or None)} for undoing it.
    """
    if not local_maildirs and not remote_recipients:
        raise NoDestination(f"{message.queue_id} has no mailbox and no remote address")
    delivered = deliver_file(message.path, local_maildirs) if local_maildirs else []
    try:
        if remote_recipients:
            envelope = Envelope(
                id=message.queue_id,
                recipients=[RecipientState(a) for a in remote_recipients],
                **envelope_fields,
            )
            spool.enqueue(message, envelope)
            return delivered, message.queue_id
        os.unlink(message.path)
    except BaseException:
        for path in delivered:
            os.unlink(path)
        message.abort()
        raise
    return delivered, None


class Destination(NamedTuple):
    """
    Where one copy of a message goes: the Maildir folder C{folder} of each
    local user in C{users} (in order), and C{remote} addresses for the
    queue, C{held} there for an admin (the C{hold} action) or not.
    """

    users: tuple
    remote: tuple
    folder: str = "INBOX"
    held: bool = False


class LocalDelivery:
    """
    The local delivery agent: routes addresses by the directory, carries
    out the C{forward:}, C{move:} and C{delete} actions, makes journal
    copies, commits, and tells open folders of the files they gained (an
    IMAP client in IDLE sees a message as soon as it is on disk). SMTP
    reception and the queue runner's bounces both deliver through it.
    """

    def __init__(self, spool, store, directory):
        self.spool = spool
        self.store = store
        self.directory = directory

    def route(self, address):
        """The L{Destination} of C{address}, or L{None} when it reaches no mailbox."""
        route = self.directory.route(address)
        if route is None:
            return None
        return Destination(tuple(route.local), tuple(route.remote))

    def destination(self, users, remote, action, queue_id):
        """
        The recipients' L{Destination} after the filters' C{action}: a
        C{forward:} address's instead (theirs, logged, when it reaches
        nothing), or their C{move:} folder.
        """
        if action.kind == "forward":
            forwarded = self.route(action.argument)
            if forwarded is not None:
                return forwarded
            log.error("forward:{address} reaches no mailbox or remote address; "
                      "{queue_id} goes to its recipients",
                      address=action.argument, queue_id=queue_id)
        folder = action.argument if action.kind == "move" else "INBOX"
        return Destination(tuple(users), tuple(remote), folder, action.kind == "hold")

    def deliver(self, incoming, envelope_fields, destination, journal=()):
        """
        Make C{incoming} durable where C{destination} says, with its
        C{journal} copies (L{mailsrv.queue.journal.JournalCopy}), in one
        thread hop.

        @return: a Deferred of the queue ID once everything is on disk; it
            fails as L{commit} raises, leaving nothing behind.
        """
        maildirs = [self.store.maildir(user, destination.folder) for user in destination.users]
        copies = [(copy.header, [self.store.maildir(user) for user in copy.destination.users],
                   list(copy.destination.remote)) for copy in journal]
        d = threads.deferToThread(self._deliver, incoming, envelope_fields, destination,
                                  maildirs, copies)
        d.addCallback(self._announce, destination, journal)
        return d

    def _deliver(self, incoming, envelope_fields, destination, maildirs, copies):
        if destination.folder != "INBOX":
            for user in destination.users:
                _ensure_folder(self.store, user, destination.folder)
        if destination.held:
            envelope_fields = {**envelope_fields, "held": True}
        return commit(self.spool, incoming, envelope_fields, maildirs,
                      list(destination.remote), copies)

    def _announce(self, committed, destination, journal):
        queue_id, placed = committed
        deliveries = [(destination.folder, destination.users)]
        deliveries += [("INBOX", copy.destination.users) for copy in journal]
        for (folder, users), paths in zip(deliveries, placed):
            for user, path in zip(users, paths):
                self.store.notify(user, folder, [os.path.basename(path)])
        return queue_id


def _ensure_folder(store, user, folder):
    """move:FOLDER delivers into a folder that the user may not have yet."""
    try:
        store.create_folder(user, folder)
    except FolderExists:
        pass
