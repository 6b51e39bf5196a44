"""
One message from DATA to its reply. The protocol reads the data (with
L{mailsrv.smtp.data.DataReader}) and hands the bytes to a L{Reception},
which owns everything else about the message, as chasquid's C{queue.Put}
and maddy's C{Body}/C{Commit} do: the spool file, our trace headers, the
policy's judgement (the header hook's checks wait for the header section,
the body hook's for the whole message), our DKIM signature (docs/dkim.md),
then at the final dot what the policy makes of it (L{mailsrv.policy.apply})
and the delivery (L{mailsrv.queue.intake.LocalDelivery}).
"""

import errno

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailsrv import errorlog
from mailsrv.gather import gather
from mailsrv.logtext import literal
from mailsrv.policy.hooks import Message
from mailsrv.smtp.data import HeaderSection
from mailsrv.smtp.trace import trace_headers

log = Logger()

# A message signed on the reactor thread, at most (bytes): about 2 ms with
# an RSA-2048 key (docs/performance.md, "DKIM signing"), as a content
# filter's parse of a small message (docs/policy.md). A bigger one is
# signed in a thread, MAX_SIGNINGS at once: each is read whole into memory
# (and dkimpy's canonical form is a copy), up to [access] max_message_size.
SIGN_INLINE = 16 * 1024
MAX_SIGNINGS = 2
_signings = defer.DeferredSemaphore(MAX_SIGNINGS)


def cannot_queue(error):
    """
    The temporary refusal of a message we could not store: 452 4.3.1 for a
    full disk or quota (RFC 3463 "mail system full", as Postfix says),
    451 4.3.0 for anything else.
    """
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return 452, "4.3.1", "Insufficient system storage, try again later"
    return 451, "4.3.0", "Cannot queue the message, try again later"


def receive(factory, session, transaction, transport):
    """
    The L{Reception} of a transaction's message, or a L{SplitReception}
    when its recipients' domains are judged with different settings.

    @raise OSError: a spool file could not be made.
    """
    groups = factory.policy.groups(transaction)
    if len(groups) == 1:
        policy, part = groups[0]
        return Reception(factory, session, part, factory.server.spool.incoming(), transport,
                         policy, transaction)
    return SplitReception(factory, session, transaction, groups, transport)


def signer_of(server, transaction):
    """
    The L{mailsrv.signing.Signer} that signs a transaction's message, or
    L{None}: mail that leaves (a signature is for other servers), from a
    client that stands (L{mailsrv.smtp.state.Transaction.signable}).
    """
    if server.signer is None or transaction.signable is None:
        return None
    return server.signer if transaction.remote_addresses() else None


def sealer_of(server, transaction):
    """
    The L{mailsrv.signing.Signer} that seals a transaction's message with
    ARC (RFC 8617), or L{None}: mail from the outside that we forward (an
    alias or list with remote members) when we have an RSA key for our
    host name's domain, so that it keeps passing DMARC downstream.
    """
    signer = server.signer
    if signer is None or transaction.signable is not None:
        return None
    if signer.sealing_key(server.settings.hostname) is None:
        return None
    return signer if transaction.remote_addresses() else None


class Reception:
    """
    @ivar judgement: the policy's L{mailsrv.policy.judgement.Judgement}:
        the transaction's so far, the message's once its header section
        (and its body) is judged.
    @ivar signer: the L{mailsrv.signing.Signer} when the message is to be
        signed (L{signer_of}), else L{None}.
    @ivar sealer: the L{mailsrv.signing.Signer} when the message is to be
        sealed (L{sealer_of}), else L{None}.
    """

    def __init__(self, factory, session, transaction, incoming, transport, policy,
                 journal_of=None):
        """
        @param factory: the listener's L{mailsrv.smtp.server.SMTPFactory}
            (its journal, clock and server).
        @param transaction: the recipients of this copy of the message.
        @param incoming: the new spool file (L{mailsrv.queue.spool.IncomingMessage}).
        @param transport: the connection, named in error log lines.
        @param policy: the L{mailsrv.policy.listener.ListenerPolicy} that
            judges this copy.
        @param journal_of: the whole transaction, whose journal copies go
            with this copy ([journal]); L{None}: none.
        """
        self.factory = factory
        self.session = session
        self.transaction = transaction
        self.incoming = incoming
        self.transport = transport
        self.policy = policy
        self.journal_of = journal_of
        self.judgement = transaction.judgement
        self.gone = False
        self._top = trace_headers(session, transaction, incoming.queue_id,
                                  factory.server.settings.hostname, factory.clock.seconds())
        self._rewriter = None
        self._write_error = None
        self._held = None  # the HeaderSection the header hook waits for
        self.signer = signer_of(factory.server, transaction)
        self.sealer = sealer_of(factory.server, transaction)
        self._sealed = None  # the message as written, while the sealer waits for all of it
        self._reads_body = self.policy.reads_body(self.judgement, transaction)
        # The message as it comes, while the body hook, the signer or the
        # sealer waits for all of it: our headers, the Subject and the
        # signature depend on the whole.
        self._received = None
        if self._reads_body or self.signer is not None or self.sealer is not None:
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
        headers, self._rewriter = self.policy.begin(
            self.judgement, self.session, self.incoming.queue_id,
            self.factory.server.settings.hostname, self._write_through)
        self._write_to(self.incoming, self._top + headers)

    def _write(self, data):
        if self._received is not None:
            self._write_to(self._received, data)
        elif self._rewriter is not None:
            self._rewriter.feed(data)
        elif data:
            self._write_to(self.incoming, data)

    def _write_through(self, data):
        """Write to the spool file, past the header rewriter."""
        self._write_to(self.incoming, data)

    def _write_to(self, message, data):
        """The first I/O error is kept for the end."""
        if self._sealed is not None and message is self.incoming:
            self._sealed += data
            return
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
        refusal = self.refusal(reader, max_size)
        if refusal is not None:
            return refusal
        concluded = self.conclude()
        if isinstance(concluded, defer.Deferred):
            return concluded.addCallback(lambda reply: reply or self.deliver(reader))
        return concluded or self.deliver(reader)

    def refusal(self, reader, max_size):
        """The reply to data that is no message (nothing is kept), else L{None}."""
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
        return None

    def conclude(self):
        """
        Judge what is left to judge and write the message.

        @return: L{None} when the message is to be delivered (L{deliver}),
            else the reply of a message that goes no further (refused,
            deleted, or not written); or a Deferred of either.
        """
        received, self._received = self._received, None
        if received is None:
            return self._verdict()
        if self._write_error is not None:
            received.abort()
            return self._verdict()
        if not self._reads_body:
            written = self._write_received(received)
            if written is None:
                return self._verdict()
            return written.addCallbacks(lambda _: self._verdict(), self._failed,
                                        errbackArgs=(received, "copying the message"))
        d = self.policy.body(self.judgement, self.session, self.transaction,
                             Message(received.size, received.reader))
        d.addCallback(self._body_judged, received)
        d.addCallbacks(lambda _: self._verdict(), self._failed,
                       errbackArgs=(received, "policy body hook"))
        return d

    def _body_judged(self, judgement, received):
        self.judgement = judgement
        return self._write_received(received)

    def _write_received(self, received):
        """
        Our headers and the policy's, our DKIM signature, then the message
        as received: at once from memory, in a thread from its file; signed
        at once up to L{SIGN_INLINE} bytes, else in a thread.

        @return: L{None} when written, or a Deferred that fires then.
        """
        if (self.sealer is not None and self.judgement.results
                and self.judgement.action.kind not in _DROPPED):
            self._sealed = bytearray()
            written = self._write_and_sign(received)
            if written is None:
                return self._seal()
            return written.addCallback(lambda _: self._seal())
        return self._write_and_sign(received)

    def _write_and_sign(self, received):
        """L{_write_received}, before any ARC seal."""
        self._begin()
        signer = self.signer
        if signer is not None and self._rewriter.prefix is not None:
            signer = None  # (it would sign a Subject that the reader does not get)
            self._not_signed("the Subject is prefixed (an anti-spam action)")
        if signer is None:
            if received.in_memory:
                return self._copy(received, None)
            return threads.deferToThread(self._copy, received, None)
        if received.size <= SIGN_INLINE:
            self._not_signed(self._copy(received, signer))
            return None
        return _signings.run(threads.deferToThread, self._copy, received,
                             signer).addCallback(self._not_signed)

    def _copy(self, received, signer):
        """
        @return: why the message went unsigned when C{signer} could not
            sign it, else L{None}.
        """
        try:
            with received.reader() as message:
                if signer is None:
                    while chunk := message.read(1 << 16):
                        self._write(chunk)
                    return None
                data = message.read()
            try:
                signature, why = signer.signature(data), None
            except Exception as e:  # (a signing error never costs the message)
                signature, why = b"", str(e) or type(e).__name__
            self._write(signature)
            self._write(data)
            return why
        finally:
            received.abort()

    def _seal(self):
        """
        The message is written (to memory): our ARC set, made in a thread,
        then the message, to the spool file.
        """
        self._rewriter.close()
        message, self._sealed = bytes(self._sealed), None
        hostname = self.factory.server.settings.hostname
        d = _signings.run(threads.deferToThread, _arc_set, self.sealer, message, hostname)
        return d.addCallback(self._sealed_as, message)

    def _sealed_as(self, outcome, message):
        arc, why = outcome
        if why is not None:
            log.info("not sealed {queue_id}: {why}", queue_id=self.incoming.queue_id, why=why)
        self._write_to(self.incoming, arc + message)

    def _not_signed(self, why):
        if why is not None:
            queue_id = self.incoming.queue_id
            log.info("not signed {queue_id}: {why}", queue_id=queue_id, why=why)

    def _failed(self, failure, received, what):
        received.abort()
        self.incoming.abort()
        errorlog.client_error(log, failure, what, "smtp", self.transport)
        return 451, "4.3.0", "Temporary failure, try again later"

    def _verdict(self):
        """The judgement is final and the message written: L{conclude}'s answer."""
        incoming = self.incoming
        if self._rewriter is not None:
            self._rewriter.close()
        if self._write_error is not None:
            incoming.abort()
            log.error("cannot write the spool file: {error}", error=self._write_error)
            return cannot_queue(self._write_error)
        verdict = self.policy.end(self.judgement, self.session, self.transaction,
                                  incoming.queue_id)
        if verdict is not None:  # refused or dropped: nothing is kept
            incoming.abort()
            return verdict.code, verdict.enhanced, verdict.text
        return None

    def deliver(self, reader):
        """
        Put the written message where it goes.

        @return: a Deferred of the reply once it is durable, or the reply
            of a message that could not be placed.
        """
        incoming, transaction = self.incoming, self.transaction
        delivery = self.factory.server.delivery
        try:
            destination = delivery.destination(
                transaction.local_users(), transaction.remote_addresses(),
                self.judgement.action, incoming.queue_id)
            journal = () if self.journal_of is None else \
                self.factory.journal.copies(self.journal_of)
            fields = {"sender": transaction.sender, "client_ip": self.session.ip,
                      "helo": self.session.helo}
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


# Actions after which the message is not kept: nothing to seal.
_DROPPED = frozenset({"reject", "tempfail", "delete"})


def _arc_set(sealer, message, hostname):
    """In a thread: C{(the ARC set, L{None})}, or C{(b"", why not)}: never the message's loss."""
    try:
        arc = sealer.seal(message, hostname)
    except Exception as e:
        return b"", str(e) or type(e).__name__
    return arc, None if arc else "our Authentication-Results holds no arc= for its ARC chain"


class SplitReception:
    """
    One message to recipients whose domains are judged with different
    settings (docs/filters.md, "Per-domain settings"): a L{Reception} for
    each set's copy, fed the same data, each with its own spool file,
    headers and action. One reply answers for all of them:

      - a temporary refusal of any copy (a scanner away, a full disk)
        refuses the whole message for now: nothing is kept, the client
        sends it again;
      - every copy refused (or deleted): the first refusal (or 250);
      - else the copies that pass are delivered (250), and each refused
        copy is bounced to the sender with the refusal, as an after-queue
        filter does (never for the null sender).
    """

    def __init__(self, factory, session, transaction, groups, transport):
        """
        @param groups: C{(policy, transaction)} of each copy (L{mailsrv.policy.listener}).
        @raise OSError: a spool file could not be made (none is left).
        """
        self.factory = factory
        self.session = session
        self.transaction = transaction
        self.header = HeaderSection()  # (for the bounces)
        self.copies = []
        try:
            for policy, part in groups:
                journal_of = None if self.copies else transaction
                self.copies.append(Reception(factory, session, part,
                                             factory.server.spool.incoming(), transport,
                                             policy, journal_of))
        except OSError:
            self.abort()
            raise

    def take(self, data, done):
        """As L{Reception.take}, for every copy."""
        if not self.header.complete:
            self.header.feed(data)
        waits = [d for d in (copy.take(data, done) for copy in self.copies) if d is not None]
        return gather(waits) if waits else None

    def abort(self):
        for copy in self.copies:
            copy.abort()

    def end(self, reader, max_size):
        """As L{Reception.end}: one reply for every copy."""
        refusal = self.copies[0].refusal(reader, max_size)
        if refusal is not None:
            for copy in self.copies[1:]:
                copy.abort()
            return refusal
        d = gather([defer.maybeDeferred(copy.conclude) for copy in self.copies])
        return d.addCallback(self._concluded, reader)

    def _concluded(self, replies, reader):
        ready = [copy for copy, reply in zip(self.copies, replies) if reply is None]
        refused = [reply for reply in replies if reply is not None and reply[0] >= 400]
        temporary = [reply for reply in refused if reply[0] < 500]
        if temporary:
            for copy in ready:
                copy.incoming.abort()
            log.info("deferred message from {ip}: a copy was refused for now: {reply}",
                     ip=self.session.ip, reply=" ".join(map(str, temporary[0])))
            return temporary[0]
        if not ready:
            return refused[0] if refused else replies[0]
        d = gather([defer.maybeDeferred(copy.deliver, reader) for copy in ready])
        return d.addCallback(self._delivered, replies)

    @defer.inlineCallbacks
    def _delivered(self, delivered, replies):
        failed = [reply for reply in delivered if reply[0] != 250]
        if failed:  # (the copies on disk come again with the client's retry: never lost)
            return failed[0]
        for copy, reply in zip(self.copies, replies):
            if reply is not None and reply[0] >= 500:
                yield self._bounce(copy, reply)
        ids = " ".join(text.rpartition(" ")[2] for _, _, text in delivered)
        return 250, "2.0.0", f"Ok: queued as {ids}"

    def _bounce(self, copy, reply):
        """A DSN of a refused copy's recipients, made by the queue runner."""
        runner = self.factory.server.queue_runner
        queue_id = copy.incoming.queue_id
        if runner is None:
            log.error("no bounce of {id}: no queue runner", id=queue_id)
            return None
        return runner.bounce_refused(
            queue_id, self.transaction.sender, [r.address for r in copy.transaction.recipients],
            "mailsrv: " + " ".join(map(str, reply)), bytes(self.header.header),
            self.session.ip, self.session.helo or "")
