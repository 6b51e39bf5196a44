"""
Accepting a received message: the single step between the end of DATA and
"250 2.0.0 Ok: queued as ID". Everything here runs in one thread hop.
"""

import os
from typing import NamedTuple

from twisted.internet import threads

from mailsrv.queue.spool import Envelope, RecipientState
from mailsrv.store.delivery import deliver_file


class NoDestination(Exception):
    """
    A message with no mailbox and no remote address to go to: committing
    it would answer "250" and then drop it, so commit refuses.
    """


def commit(spool, incoming, envelope_fields, local_maildirs, remote_recipients, journal=()):
    """
    Make a received message durable, then put it where it goes.

    @param incoming: the L{IncomingMessage}, completely written.
    @param envelope_fields: C{sender}, C{client_ip}, C{helo} for the queue.
    @param local_maildirs: Maildir paths to deliver into now.
    @param remote_recipients: addresses for the queue.
    @param journal: L{mailsrv.queue.journal.JournalCopy}s to make too.
    @return: a Deferred that fires with C{(queue id, delivered paths)} when
        all is on disk, the paths in the order of C{local_maildirs} (so
        open folders take them in without a listing); it fails (and leaves nothing behind, journal copies included) on
        any I/O error, or with L{NoDestination} when a message has nowhere
        to go.
    """
    return threads.deferToThread(
        _commit, spool, incoming, envelope_fields, local_maildirs, remote_recipients,
        journal,
    )


def _commit(spool, incoming, envelope_fields, local_maildirs, remote_recipients, journal):
    placed = []  # (delivered paths, queue id or None) of each file put in place
    try:
        incoming.finish()
        for copy in journal:
            message = _journal_copy(spool, incoming, copy.header)
            journal_fields = {**envelope_fields, "sender": ""}  # no bounce reveals it
            placed.append(_place(spool, message, journal_fields, copy.maildirs, copy.remote))
        placed.append(_place(spool, incoming, envelope_fields, local_maildirs,
                             remote_recipients))
        delivered = placed[-1][0]
    except BaseException:
        for delivered, queue_id in placed:
            for path in delivered:
                os.unlink(path)
            if queue_id is not None:
                spool.remove(queue_id)
        incoming.abort()
        raise
    return incoming.queue_id, delivered


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


class LocalRoute(NamedTuple):
    """Where one address's copy goes: C{maildirs} of C{users} (in that order), C{remote} addresses."""

    maildirs: list
    remote: list
    users: tuple = ()


class LocalRoutes:
    """
    Where a message the queue makes itself (a bounce) goes, by the same
    directory as received mail.

    @return: (from a call with an address) a L{LocalRoute}, never empty, or
        L{None} for an address in a local domain that reaches no mailbox
        (L{mailsrv.directory.Directory.route}).
    """

    def __init__(self, directory, store):
        self.directory = directory
        self.store = store

    def __call__(self, address):
        route = self.directory.route(address)
        if route is None:
            return None
        users = tuple(route.local)
        return LocalRoute([self.store.maildir(user) for user in users], list(route.remote),
                          users)
