"""
One message from DATA to its reply. The protocol reads the data (with
L{mailsrv.smtp.data.DataReader}) and hands the bytes to a L{Reception},
which owns everything else about the message, as chasquid's C{queue.Put}
and maddy's C{Body}/C{Commit} do: the spool file, our trace headers, the
policy's judgement (the header hook's checks wait for the header section,
the body hook's for the whole message), then at the final dot what the
policy makes of it (L{mailsrv.policy.apply}) and the delivery
(L{mailsrv.queue.intake.LocalDelivery}).
"""

import errno

from twisted.internet import threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailsrv import errorlog
from mailsrv.logtext import literal
from mailsrv.policy.hooks import Message
from mailsrv.smtp.data import HeaderSection
from mailsrv.smtp.trace import trace_headers

log = Logger()


def cannot_queue(error):
    """
    The temporary refusal of a message we could not store: 452 4.3.1 for a
    full disk or quota (RFC 3463 "mail system full", as Postfix says),
    451 4.3.0 for anything else.
    """
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return 452, "4.3.1", "Insufficient system storage, try again later"
    return 451, "4.3.0", "Cannot queue the message, try again later"


class Reception:
    """
    @ivar judgement: the policy's L{mailsrv.policy.judgement.Judgement}:
        the transaction's so far, the message's once its header section
        (and its body) is judged.
    """

    def __init__(self, factory, session, transaction, incoming, transport):
        """
        @param factory: the listener's L{mailsrv.smtp.server.SMTPFactory}
            (its policy, journal, clock and server).
        @param incoming: the new spool file (L{mailsrv.queue.spool.IncomingMessage}).
        @param transport: the connection, named in error log lines.
        """
        self.factory = factory
        self.session = session
        self.transaction = transaction
        self.incoming = incoming
        self.transport = transport
        self.policy = factory.policy
        self.judgement = transaction.judgement
        self.gone = False
        self._top = trace_headers(session, transaction, incoming.queue_id,
                                  factory.server.settings.hostname, factory.clock.seconds())
        self._prefixer = None
        self._write_error = None
        self._held = None  # the HeaderSection the header hook waits for
        # The message as it comes, while the body hook waits for all of it:
        # our headers and the Subject depend on its judgement.
        self._received = None
        if self.policy.reads_body(self.judgement, transaction):
            self._received = factory.server.spool.incoming()
        if self.policy.reads_header(self.judgement):
            self._held = HeaderSection()
        elif self._received is None:
            self._begin()

    def take(self, data, done):
        """
        Message bytes (C{done}: the last have come).

        @return: a Deferred while the header hook judges the header
            section (later input must wait for it), else L{None}.
        """
        held = self._held
        if held is None:
            self._write(data)
            return None
        held.feed(data)
        if not (held.complete or done):
            return None
        self._held = None
        d = self.policy.header(self.judgement, self.session, self.transaction, held.header)
        return d.addCallback(self._judged, bytes(held.data))

    def _judged(self, judgement, held):
        if self.gone:
            return
        self.judgement = judgement
        if self._received is None:
            self._begin()
        self._write(held)

    def _begin(self):
        """The judgement is final: our headers and the policy's, then the message."""
        headers, self._prefixer = self.policy.begin(
            self.judgement, self.session, self.incoming.queue_id, self._write_through)
        self._write_to(self.incoming, self._top + headers)

    def _write(self, data):
        if self._received is not None:
            self._write_to(self._received, data)
        elif self._prefixer is not None:
            self._prefixer.feed(data)
        elif data:
            self._write_to(self.incoming, data)

    def _write_through(self, data):
        """Write to the spool file, past the Subject prefixer."""
        self._write_to(self.incoming, data)

    def _write_to(self, message, data):
        """The first I/O error is kept for the end."""
        if self._write_error is None:
            try:
                message.write(data)
            except OSError as e:
                self._write_error = e

    def abort(self):
        """The client went away before the final dot: nothing is kept."""
        self.gone = True
        self._drop()

    def _drop(self):
        self.incoming.abort()
        if self._received is not None:
            self._received.abort()

    def end(self, reader, max_size):
        """
        The final dot has come (C{reader} read the data, C{max_size} is
        the listener's limit): refuse, delete or deliver the message.

        @return: the reply, C{(code, enhanced code, text)}, or a Deferred
            of it while the message is made durable.
        """
        ip = self.session.ip
        if reader.bare_line_ending:
            self._drop()
            log.info("refused message from {ip}: bare CR or LF in DATA", ip=ip)
            return (550, "5.6.0",
                    "Message contains bare CR or LF characters; lines must end with CRLF")
        if reader.size > max_size:
            self._drop()
            log.info("refused message from {ip}: {size} bytes is over the limit",
                     ip=ip, size=reader.size)
            return 552, "5.3.4", "Message size exceeds fixed limit"
        received, self._received = self._received, None
        if received is None:
            return self._finish(reader)
        if self._write_error is not None:
            received.abort()
            return self._finish(reader)
        d = self.policy.body(self.judgement, self.session, self.transaction,
                             Message(received.size, received.reader))
        d.addCallback(self._body_judged, received)
        d.addCallbacks(lambda _: self._finish(reader), self._body_failed, errbackArgs=(received,))
        return d

    def _body_judged(self, judgement, received):
        """
        Our headers and the policy's, then the message as received: at
        once from memory, in a thread from its file.
        """
        self.judgement = judgement
        self._begin()
        if received.in_memory:
            return self._copy(received)
        return threads.deferToThread(self._copy, received)

    def _copy(self, received):
        try:
            with received.reader() as message:
                while chunk := message.read(1 << 16):
                    self._write(chunk)
        finally:
            received.abort()

    def _body_failed(self, failure, received):
        received.abort()
        self.incoming.abort()
        errorlog.client_error(log, failure, "policy body hook", "smtp", self.transport)
        return 451, "4.3.0", "Temporary failure, try again later"

    def _finish(self, reader):
        """The judgement is final and the message written: refuse, delete or deliver it."""
        incoming, transaction, ip = self.incoming, self.transaction, self.session.ip
        if self._prefixer is not None:
            self._prefixer.close()
        if self._write_error is not None:
            incoming.abort()
            log.error("cannot write the spool file: {error}", error=self._write_error)
            return cannot_queue(self._write_error)
        verdict = self.policy.end(self.judgement, self.session, transaction, incoming.queue_id)
        if verdict is not None:  # refused or dropped: nothing is kept
            incoming.abort()
            return verdict.code, verdict.enhanced, verdict.text
        delivery = self.factory.server.delivery
        try:
            destination = delivery.destination(
                transaction.local_users(), transaction.remote_addresses(),
                self.judgement.action, incoming.queue_id)
            journal = self.factory.journal.copies(transaction)
            fields = {"sender": transaction.sender, "client_ip": ip, "helo": self.session.helo}
            d = delivery.deliver(incoming, fields, destination, journal)
        except Exception as e:  # every error a client meets gets a reply and a log line
            incoming.abort()
            errorlog.client_error(log, Failure(), f"placing {incoming.queue_id}",
                                  "smtp", self.transport)
            return cannot_queue(e)
        d.addCallbacks(self._queued, self._not_queued, callbackArgs=(reader.size, destination))
        return d

    def _queued(self, queue_id, size, destination):
        # One line per message: formatted here once, not field by field by
        # the logger's string.Formatter (a third of the line's cost).
        ip, sender = self.session.ip, self.transaction.sender
        to = ",".join([r.address for r in self.transaction.recipients])
        delivered = ",".join(destination.users) or "-"
        queued = ",".join(destination.remote) or "-"
        log.info(
            literal(f"accepted {queue_id} from {ip} sender=<{sender}> to={to} size={size} "
                    f"delivered={delivered} queued={queued}"),
            queue_id=queue_id, ip=ip, sender=sender, to=to, size=size,
            delivered=delivered, queued=queued,
        )
        runner = self.factory.server.queue_runner
        if destination.remote and runner is not None:
            runner.wake()
        return 250, "2.0.0", f"Ok: queued as {queue_id}"

    def _not_queued(self, failure):
        errorlog.client_error(log, failure, "SMTP queueing", "smtp", self.transport)
        return cannot_queue(failure.value)
