"""
The queue runner: takes queued messages to their next hop and keeps each
recipient's state on disk (docs/queue.md).

It knows the spool's envelopes in memory, learns new ones from a directory
scan (at once after L{QueueRunner.wake}, and every C{scan_interval} seconds
for changes made by other programs), and sets one timer for the earliest
retry. Each message is delivered by one job at a time, destination after
destination, and its envelope is saved after each destination, so a restart
never sends a recipient already acknowledged again.
"""

import random as _random
import time

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from mailsrv import metrics
from mailsrv.queue import intake
from mailsrv.queue.bounce import (
    DSN, POSTMASTER, bounce_target, count_received, dsn_message, read_headers,
)
from mailsrv.queue.courier import OK, PERMANENT, TEMPORARY, Result
from mailsrv.queue.mx import MXLookup, NoRoute, mx_hops
from mailsrv.queue.retry import retry_delay
from mailsrv.queue.routing import group_by_route
from mailsrv.queue.spool import DEFERRED, DELIVERED, FAILED, Envelope, RecipientState

log = Logger()


def _reply_text(result):
    """A result's reply as a log line shows it: C{"451 4.3.0 later"}, or the text alone."""
    return f"{result.code} {result.text}" if result.code > 0 else result.text


def record_result(recipient, result, relay, now, created, delivery, random):
    """
    Update one L{RecipientState} with what a courier reported.

    @param relay: C{"host:port"} that answered, for C{last_error}.
    @param created: when the message was queued (for [delivery] max_age).
    @param delivery: the L{mailsrv.config.DeliverySettings}.
    @param random: passed to L{retry_delay}.
    """
    recipient.attempts += 1
    if result.status == OK:
        recipient.state = DELIVERED
        recipient.last_error = ""
        return
    error = f"{relay}: {_reply_text(result)}"
    if result.status == PERMANENT:
        recipient.state = FAILED
        recipient.last_error = error
    elif now - created >= delivery.max_age:
        recipient.state = FAILED
        recipient.last_error = f"gave up after {delivery.max_age} s: {error}"
    else:
        recipient.state = DEFERRED
        recipient.last_error = error
        recipient.next_attempt = now + retry_delay(
            recipient.attempts, delivery.retry, random=random
        )


class QueueRunner(service.Service):
    """
    @ivar spool: the L{mailsrv.queue.spool.Spool}.
    @ivar courier: an L{mailsrv.queue.courier.ICourier}; service.py gives an SMTPCourier.
    @ivar max_deliveries: messages being delivered at once, at most; by
        default C{[delivery] max_connections}.
    @ivar scan_interval: seconds between spool scans.
    @ivar control_interval: seconds between looks for requests from
        C{mailsrv queue} (a listing of an empty directory).
    @ivar resolver: the L{mailsrv.dns.Resolver} for MX routes.
    @ivar local_delivery: the L{intake.LocalDelivery} that routes and delivers
        bounces, as it does received mail.
    @ivar postmaster: who gets a bounce that could not be delivered.
    @ivar signer: the L{mailsrv.signing.Signer} that signs the bounces and
        delay notices that leave, or L{None}.
    @ivar deferToThread: how spool I/O leaves the reactor thread.
    """

    scan_interval = 60
    control_interval = 1
    deferToThread = staticmethod(threads.deferToThread)

    def __init__(self, spool, settings, clock, resolver, courier, max_deliveries=None,
                 random=_random.random, local_delivery=None, signer=None):
        self.spool = spool
        self.settings = settings
        self.delivery = settings.delivery
        self.clock = clock
        self.courier = courier
        self.max_deliveries = max_deliveries or self.delivery.max_connections
        self.random = random
        self.resolver = resolver
        self.local_delivery = local_delivery
        self.signer = signer
        domain = settings.local_domains[0] if settings.local_domains else settings.hostname
        self.postmaster = f"postmaster@{domain}"
        self._envelopes = {}  # queue id -> Envelope, as last written
        self._busy = set()  # ids being delivered
        self._unreadable = set()  # ids whose envelope could not be read
        self._starting = False
        self._scanning = False
        self._rescan = False
        self._dispatching = False
        self._redispatch = False
        self._timer = None
        self._loop = None
        self._control_loop = None
        self._controlling = False
        self._idle_waiters = []

    # Service

    def startService(self):
        """Clean up what a crash left in the spool, then deliver what is due."""
        super().startService()
        self._starting = True
        # Files this process writes from now on are not a crash's (a second
        # less: the kernel stamps files with a coarse clock).
        d = self.deferToThread(self.spool.recover, time.time() - 1)

        def recovered(removed):
            self._starting = False
            if removed:
                log.info("queue: removed {n} unacknowledged file(s) at start",
                         n=removed)
            if self.running:
                self._loop = task.LoopingCall(self.wake)
                self._loop.clock = self.clock
                self._loop.start(self.scan_interval, now=True)
                self._control_loop = task.LoopingCall(self._control)
                self._control_loop.clock = self.clock
                self._control_loop.start(self.control_interval, now=False)
            self._check_idle()

        d.addErrback(lambda f: log.failure("queue: spool recovery failed", f))
        d.addCallback(recovered)

    def stopService(self):
        """
        Start nothing new. Deliveries under way finish on their own; one cut
        short by the process ending is tried again at the next start.
        """
        super().stopService()
        for loop in (self._loop, self._control_loop):
            if loop is not None and loop.running:
                loop.stop()
        self._loop = self._control_loop = None
        self._cancel_timer()
        self.courier.stop()

    def wake(self):
        """
        New mail is in the spool (or may be): look now, or once the scan or
        control pass under way ends (a scan during a removal would read the
        envelope back in: the id is forgotten before its file goes).
        """
        if not self.running:
            return
        if self._scanning or self._controlling:
            self._rescan = True
            return
        self._scanning = True
        d = self.deferToThread(self._read_spool, set(self._envelopes))
        d.addCallback(self._scanned)
        d.addErrback(lambda f: log.failure("queue: spool scan failed", f))
        d.addBoth(self._scan_done)

    def reconfigure(self, settings, courier, resolver, local_delivery, signer=None):
        """
        A reload's new settings (mailsrv/reload.py): deliveries from now on
        use them; those under way finish as they began.
        """
        self.settings = settings
        self.delivery = settings.delivery
        self.max_deliveries = self.delivery.max_connections
        self.courier = courier
        self.resolver = resolver
        self.local_delivery = local_delivery
        self.signer = signer

    def queued(self):
        """C{(messages in the queue, seconds the oldest has waited)} (the metrics)."""
        if not self._envelopes:
            return 0, 0.0
        oldest = min(envelope.created for envelope in self._envelopes.values())
        return len(self._envelopes), max(0.0, self.clock.seconds() - oldest)

    def when_idle(self):
        """
        A Deferred that fires once start-up recovery, scans and deliveries
        are all done (tests, and admin commands that act on a quiet queue).
        """
        if not self._active():
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    # Scanning

    def _read_spool(self, known):
        """In a thread: the spool's ids and the envelopes not yet C{known}."""
        ids = self.spool.ids()
        new, unreadable = {}, {}
        for queue_id in ids:
            if queue_id in known:
                continue
            try:
                new[queue_id] = self.spool.load(queue_id)
            except FileNotFoundError:
                continue  # removed since the listing
            except (OSError, ValueError, TypeError, KeyError) as e:
                unreadable[queue_id] = e
        return ids, new, unreadable

    def _scanned(self, result):
        ids, new, unreadable = result
        present = set(ids)
        for queue_id in list(self._envelopes):
            if queue_id not in present and queue_id not in self._busy:
                del self._envelopes[queue_id]  # removed by someone else
        for queue_id, error in unreadable.items():
            if queue_id not in self._unreadable:
                self._unreadable.add(queue_id)
                log.error("queue {id}: cannot read its envelope, left alone: {error}",
                          id=queue_id, error=error)
        self._envelopes.update(new)
        self._dispatch()

    def _scan_done(self, _):
        self._scanning = False
        self._scan_if_asked()
        self._check_idle()

    def _scan_if_asked(self):
        """Make the scan L{wake} put off."""
        if self._rescan:
            self._rescan = False
            self.wake()

    # Requests from `mailsrv queue`

    def _control(self):
        """Act on the requests in the spool's ctl/, if any (docs/queue.md)."""
        if self._controlling or self._scanning or not any(self.spool.ctl.glob("*.json")):
            return
        self._controlling = True
        d = self.deferToThread(self.spool.requests)
        d.addCallback(self._act)
        d.addErrback(lambda f: log.failure("queue: requests failed", f))
        d.addBoth(self._control_done)

    def _control_done(self, _):
        self._controlling = False
        self._dispatch()
        self._scan_if_asked()
        self._check_idle()

    @defer.inlineCallbacks
    def _act(self, requests):
        """
        Apply each request to the envelopes held here, save them, then drop
        the request. A request for a message being delivered waits for the
        next look; one for a message not known yet makes a scan first.
        """
        for path, action, queue_id in requests:
            changed, note = [], "done"
            if action == "flush":
                changed = [e for i, e in self._envelopes.items() if i not in self._busy]
                for envelope in changed:
                    for recipient in envelope.pending():
                        recipient.next_attempt = 0.0
            elif action in ("remove", "hold", "release"):
                if queue_id in self._busy:
                    continue
                envelope = self._envelopes.get(queue_id)
                if envelope is None:
                    if queue_id in (yield self.deferToThread(self.spool.ids)):
                        self.wake()
                        continue
                    note = "not queued, nothing done"
                elif action == "remove":
                    self._forget(queue_id)  # first: no delivery may start while its files go
                    yield self.deferToThread(self.spool.remove, queue_id)
                else:
                    envelope.held = action == "hold"
                    if not envelope.held:  # released: due now
                        for recipient in envelope.pending():
                            recipient.next_attempt = 0.0
                    changed = [envelope]
            else:
                note = "unknown request, dropped"
            for envelope in changed:
                yield self.deferToThread(self.spool.save, envelope)
            yield self.deferToThread(path.unlink, missing_ok=True)
            log.info("queue {id}: {action} by mailsrv queue: {note}",
                     id=queue_id or "*", action=action or path.name, note=note)

    # Dispatching

    def _dispatch(self):
        """
        Start jobs for messages with recipients due now; time the next.
        A job that ends while this runs (its courier answered at once) asks
        for another pass instead of nesting one.
        """
        if self._dispatching:
            self._redispatch = True
            return
        self._dispatching = True
        try:
            self._redispatch = True
            while self._redispatch and self.running:
                self._redispatch = False
                self._dispatch_once()
        finally:
            self._dispatching = False

    def _dispatch_once(self):
        now = self.clock.seconds()
        next_due = None
        for queue_id, envelope in list(self._envelopes.items()):
            if queue_id in self._busy or envelope.held:
                continue
            due, later = self._due(envelope, now)
            if later is not None and (next_due is None or later < next_due):
                next_due = later
            if due:
                if len(self._busy) >= self.max_deliveries:
                    return  # a finishing job dispatches again
                self._busy.add(queue_id)
                self._deliver(envelope, due)
        self._set_timer(next_due, now)

    def _due(self, envelope, now):
        """
        @return: the recipients to try now, and the earliest later attempt
            (or L{None}).
        """
        due, later = [], None
        for recipient in envelope.pending():
            if recipient.next_attempt <= now:
                due.append(recipient)
            elif later is None or recipient.next_attempt < later:
                later = recipient.next_attempt
        return due, later

    def _set_timer(self, when, now):
        self._cancel_timer()
        if when is not None:
            self._timer = self.clock.callLater(max(0, when - now), self._timer_fired)

    def _timer_fired(self):
        self._timer = None
        self._dispatch()

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # Delivering

    @defer.inlineCallbacks
    def _deliver(self, envelope, due):
        """
        One job: every destination of one message, one after another; a
        message with more than C{[delivery] max_received} Received headers
        is a loop and fails at once (5.4.6).
        """
        try:
            path = self.spool.message_path(envelope.id)
            try:
                headers = yield self.deferToThread(read_headers, path)
            except OSError:
                headers = b""  # the courier reports it
            received = count_received(headers)
            if received > self.delivery.max_received:
                text = f"5.4.6 mail loop: {received} Received headers, more than " \
                       f"{self.delivery.max_received}"
                yield self._record(envelope, headers, [
                    (r, Result(r.address, PERMANENT, 554, text), "local") for r in due
                ])
                return
            for route, recipients in group_by_route(due, self.delivery).items():
                started = self.clock.seconds()
                outcome = yield self._try_route(envelope, path, route,
                                                [r.address for r in recipients])
                metrics.DELIVERY_SECONDS.observe(self.clock.seconds() - started)
                yield self._record(envelope, headers, [
                    (recipient, result, relay)
                    for recipient, (result, relay) in zip(recipients, outcome)
                ])
        except Exception:
            log.failure("queue {id}: delivery job failed", id=envelope.id, queue_id=envelope.id)
        finally:
            self._busy.discard(envelope.id)
            self._dispatch()
            self._check_idle()

    @defer.inlineCallbacks
    def _record(self, envelope, headers, outcome):
        """
        Record, log and save what one route answered, bouncing the
        recipients that failed and sending a "delayed" notice for those
        deferred past C{[delivery] delay_warning} (before the state is
        saved: a crash makes a duplicate notice, not a lost one).

        @param outcome: C{(RecipientState, Result, relay)} triples; C{relay}
            names the hop that gave the result.
        """
        now = self.clock.seconds()
        for recipient, result, relay in outcome:
            record_result(recipient, result, relay, now, envelope.created,
                          self.delivery, self.random)
            self._log_result(envelope, recipient, result, relay)
        recipients = [recipient for recipient, _, _ in outcome]
        failed = [r for r in recipients if r.state == FAILED]
        if failed:
            yield self._bounce(envelope, headers, failed)
        delayed = self._newly_delayed(envelope, recipients, now)
        if delayed:
            yield self._bounce(envelope, headers, delayed,
                               retry_until=envelope.created + self.delivery.max_age)
        yield self._persist(envelope)

    def _newly_delayed(self, envelope, recipients, now):
        """
        The deferred recipients of a message from a real sender that has
        waited C{[delivery] delay_warning} seconds, not yet noticed (and
        now marked as noticed).
        """
        warning = self.delivery.delay_warning
        if not warning or not envelope.sender or now - envelope.created < warning:
            return []
        delayed = [r for r in recipients if r.state == DEFERRED and not r.warned]
        for recipient in delayed:
            recipient.warned = True
        return delayed

    @defer.inlineCallbacks
    def _try_route(self, envelope, path, route, addresses):
        """
        Try the next hops of a route in order (docs/queue.md, "Routes and
        failover"): a recipient goes on to the next hop while its result is
        temporary; a 2xx or 5xx is final. An L{MXLookup} becomes its hosts
        when it is reached.

        @return: a Deferred of a C{(Result, relay)} per address, in order;
            C{relay} names the hop that gave the result.
        """
        outcome = {}
        waiting = list(addresses)
        deferred_by = None  # (hop or MX lookup, error) that left recipients to the next
        for entry in route:
            if not waiting:
                break
            if isinstance(entry, MXLookup):
                try:
                    hops = yield mx_hops(self.resolver, entry, self.random)
                except NoRoute as e:
                    relay = f"MX {entry.domain}"
                    for address in waiting:
                        outcome[address] = (Result(address, e.status, e.code, e.text), relay)
                    if e.status == PERMANENT:
                        break
                    deferred_by = relay, e.text
                    continue
            else:
                hops = (entry,)
            for hop in hops:
                if not waiting:
                    break
                if deferred_by is not None:
                    log.info("queue {id}: {hop} deferred {n} recipient(s) ({error}); "
                             "trying {next}", id=envelope.id, queue_id=envelope.id,
                             hop=deferred_by[0],
                             n=len(waiting), error=deferred_by[1], next=hop)
                    deferred_by = None
                results = yield self.courier.deliver(envelope, path, waiting, hop)
                for result in results:
                    outcome[result.address] = (result, str(hop))
                waiting = [r.address for r in results if r.status == TEMPORARY]
                if all(r.host_failed for r in results):
                    log.info("queue {id}: {hop} unavailable: {error}",
                             id=envelope.id, queue_id=envelope.id, hop=hop, error=results[0].text)
                elif waiting:
                    deferred_by = hop, _reply_text(outcome[waiting[0]][0])
        return [outcome[address] for address in addresses]

    def bounce_refused(self, queue_id, sender, addresses, error, headers, client_ip="",
                       helo=""):
        """
        A DSN for recipients whose copy of a message the filters refused
        while its other copies were accepted (one reply cannot say both:
        mailsrv.smtp.reception.SplitReception).

        @param error: the refusal, C{"mailsrv: 550 5.7.1 TEXT"} (the DSN's
            status is its enhanced code).
        @param headers: the message's header section.
        @return: a Deferred that fires once the DSN is on disk (or logged as lost).
        """
        envelope = Envelope(id=queue_id, sender=sender, created=self.clock.seconds(),
                            client_ip=client_ip, helo=helo,
                            recipients=[RecipientState(a, FAILED, last_error=error)
                                        for a in addresses])
        return self._bounce(envelope, headers, envelope.recipients)

    @defer.inlineCallbacks
    def _bounce(self, envelope, headers, failed, retry_until=None):
        """
        Send a DSN for C{failed} recipients (mailsrv/queue/bounce.py), into
        local Maildirs or the queue, through intake like received mail. A
        problem here is logged; the recipients stay failed.

        @param retry_until: see L{dsn_message}: a "delayed" notice.
        """
        target = bounce_target(envelope, self.postmaster)
        if target is None:
            log.info("queue {id}: no bounce for a null-sender message", id=envelope.id,
                     queue_id=envelope.id)
            return
        to, kind = target
        destination = self.local_delivery.route(to)
        if destination is None and kind == DSN:
            log.warn("queue {id}: cannot bounce to <{to}>: no such local address; "
                     "to the postmaster instead", id=envelope.id, queue_id=envelope.id, to=to)
            to, kind = self.postmaster, POSTMASTER
            destination = self.local_delivery.route(to)
        if destination is None:
            log.error("queue {id}: no bounce: <{to}> is no local address",
                      id=envelope.id, queue_id=envelope.id, to=to)
            return
        try:
            message = dsn_message(envelope, failed, headers, self.settings.hostname, to,
                                  self.clock.seconds(), retry_until)
            if destination.remote:
                message = self._signed(message, envelope)
            incoming = self.spool.incoming()
            incoming.write(message)
            queue_id = yield self.local_delivery.deliver(
                incoming, {"sender": "", "bounce": kind}, destination)
        except (OSError, intake.NoDestination) as e:
            log.error("queue {id}: cannot make a bounce: {error}", id=envelope.id,
                      queue_id=envelope.id, error=e)
            return
        log.info("queue {id}: {what} {bounce} to <{to}>: {where}", id=envelope.id,
                 queue_id=envelope.id,
                 what="bounce" if retry_until is None else "delay notice",
                 bounce=queue_id, to=to, where="queued" if destination.remote else "delivered")
        if destination.remote:
            self.wake()

    def _signed(self, message, envelope):
        """
        A DSN that leaves, with the DKIM signatures of its From: domain (our
        hostname's, or a parent's: docs/dkim.md): small, so signed at once.
        A signing error is logged and the DSN goes unsigned.
        """
        if self.signer is None:
            return message
        try:
            return self.signer.signature(message) + message
        except Exception as e:  # (never a lost bounce for want of a signature)
            log.error("queue {id}: bounce not signed: {error}", id=envelope.id,
                      queue_id=envelope.id, error=e)
            return message

    def _log_result(self, envelope, recipient, result, relay):
        words = {DELIVERED: "sent", DEFERRED: "deferred", FAILED: "failed"}
        metrics.DELIVERIES.labels(words[recipient.state]).inc()
        text = _reply_text(result)
        note = ""
        if recipient.state == DEFERRED:
            note = f", attempt {recipient.attempts}, next in " \
                   f"{int(recipient.next_attempt - self.clock.seconds())} s"
        log.info(
            "queue {id}: from=<{sender}> to=<{to}> relay={relay} status={status} "
            "({text}){note}",
            id=envelope.id, queue_id=envelope.id, sender=envelope.sender, to=recipient.address,
            relay=relay, status=words[recipient.state], text=text, note=note,
        )

    def _persist(self, envelope):
        """Save the envelope, or remove the entry when nobody is left to try."""
        if envelope.pending():
            return self.deferToThread(self.spool.save, envelope)
        d = self.deferToThread(self.spool.remove, envelope.id)
        d.addCallback(lambda _: self._forget(envelope.id))
        return d

    def _forget(self, queue_id):
        self._envelopes.pop(queue_id, None)

    def _active(self):
        return self._starting or self._scanning or self._controlling or bool(self._busy)

    def _check_idle(self):
        if self._active():
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for d in waiters:
            d.callback(None)
