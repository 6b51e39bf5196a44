"""
Accepting a received message: the single step between the end of DATA and
"250 2.0.0 Ok: queued as ID". Everything here runs in one thread hop.
"""

import os

from twisted.internet import threads

from mailsrv.queue.spool import Envelope, RecipientState
from mailsrv.store.delivery import deliver_file


def commit(spool, incoming, envelope_fields, local_maildirs, remote_recipients):
    """
    Make a received message durable, then put it where it goes.

    @param incoming: the L{IncomingMessage}, completely written.
    @param envelope_fields: C{sender}, C{client_ip}, C{helo} for the queue.
    @param local_maildirs: Maildir paths to deliver into now.
    @param remote_recipients: addresses for the queue.
    @return: a Deferred that fires with the queue id when all is on disk;
        it fails (and leaves nothing behind) on any I/O error.
    """
    return threads.deferToThread(
        _commit, spool, incoming, envelope_fields, local_maildirs, remote_recipients
    )


def _commit(spool, incoming, envelope_fields, local_maildirs, remote_recipients):
    delivered = []
    try:
        incoming.finish()
        if local_maildirs:
            delivered = deliver_file(incoming.path, local_maildirs)
        if remote_recipients:
            envelope = Envelope(
                id=incoming.queue_id,
                recipients=[RecipientState(a) for a in remote_recipients],
                **envelope_fields,
            )
            spool.enqueue(incoming, envelope)
        else:
            os.unlink(incoming.path)
    except BaseException:
        for path in delivered:
            os.unlink(path)
        incoming.abort()
        raise
    return incoming.queue_id
