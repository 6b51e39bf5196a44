"""
The queue runner: retry schedule, routing, and delivery to real Twisted SMTP
sinks on 127.0.0.1 (time is a task.Clock; the network is real).
"""

import email
import os
import time
from pathlib import Path

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.error import CannotListenError
from twisted.logger import globalLogPublisher
from twisted.mail import smtp
from twisted.trial import unittest
from zope.interface import implementer

from mailsrv import dns
from mailsrv.directory import Route
from mailsrv.queue.client import Hop
from mailsrv.queue.courier import OK, PERMANENT, TEMPORARY, Result, SMTPCourier
from mailsrv.queue.intake import LocalDelivery
from mailsrv.queue.mx import MXLookup, order_exchanges
from mailsrv.queue.retry import retry_delay
from mailsrv.queue.routing import route_for
from mailsrv.queue.runner import QueueRunner, record_result
from mailsrv.queue.spool import (
    DEFERRED, DELIVERED, FAILED, Envelope, RecipientState, Spool,
)
from tests.dnsserver import TinyDNSServer
from tests.helpers import make_settings

MESSAGE = (
    b"Received: from client (127.0.0.1)\r\nSubject: queued\r\n\r\n"
    b"body \xc3\xa9\r\n.leading dot\r\n..two\r\n\r\nend\r\n"
)
START = 1_700_000_000.0



class EveryAddressRemote:
    """A directory without local domains: bounces go out through the queue too."""

    def route(self, address):
        return Route(remote=(address,), is_local_domain=False)

class RetryDelayTests(unittest.TestCase):
    SCHEDULE = (300, 900, 3600)

    def test_table(self):
        for attempts, random, expected in [
            (1, 0.5, 300),
            (2, 0.5, 900),
            (3, 0.5, 3600),
            (4, 0.5, 3600),  # the last step repeats
            (50, 0.5, 3600),
            (0, 0.5, 300),
            (1, 0.0, 270),  # -10 %
            (1, 1.0, 330),  # +10 % (random() stays below 1)
            (3, 0.25, 3420),
        ]:
            self.assertAlmostEqual(
                retry_delay(attempts, self.SCHEDULE, random=lambda: random), expected,
                msg=(attempts, random),
            )

    def test_no_jitter(self):
        self.assertEqual(retry_delay(2, (10, 20), jitter=0), 20)


class RoutingTests(unittest.TestCase):
    def test_table(self):
        smart = make_settings(delivery={
            "smart_host": [{"host": "b.test", "port": 2525, "preference": 20},
                           {"host": "a.test", "port": 25, "preference": 10}],
            "transports": {"internal.test": "10.0.0.5:2526", "direct.test": "mx",
                           "v6.test": "[::1]:26",
                           "gateway.test": ["10.0.0.5", "[2001:db8::1]:2525",
                                            "mx:relay.test", "mx:other.test:26", "mx"]},
            "mx_port": 2500,
        }).delivery
        plain = make_settings(delivery={"transports": {"internal.test": "gw.test"}}
                              ).delivery
        mx_first = make_settings(delivery={"smart_host": ["mx:relay.test", "gw.test:26"]}
                                 ).delivery
        for delivery, address, expected in [
            (smart, "bob@remote.test", (("a.test", 25), ("b.test", 2525))),
            (smart, "bob@Internal.TEST", (("10.0.0.5", 2526),)),
            (smart, "bob@direct.test", (("MX", "direct.test", 2500, False),)),
            (smart, "bob@v6.test", (("::1", 26),)),
            (smart, "bob@sub.internal.test", (("a.test", 25), ("b.test", 2525))),
            (smart, "bob@gateway.test", (
                ("10.0.0.5", 25), ("2001:db8::1", 2525), ("MX", "relay.test", 2500, True),
                ("MX", "other.test", 26, True), ("MX", "gateway.test", 2500, False))),
            (plain, "bob@remote.test", (("MX", "remote.test", 25, False),)),
            (plain, "bob@internal.test", (("gw.test", 25),)),
            (mx_first, "bob@remote.test", (("MX", "relay.test", 25, True), ("gw.test", 26))),
        ]:
            route = tuple(
                ("MX", hop.domain, hop.port, hop.relay) if isinstance(hop, MXLookup)
                else (hop.host, hop.port) for hop in route_for(address, delivery))
            self.assertEqual(route, expected, address)

    def test_credentials_never_go_to_recipients_mx_hosts(self):
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "secret").write_text("pw\n")
        (directory / "secret").chmod(0o600)
        delivery = make_settings(directory, delivery={
            "smart_host": ["relay.test:587", "mx:provider.test", "mx"],
            "smart_host_username": "me", "smart_host_password_file": "secret",
        }).delivery
        relay, provider, own = route_for("bob@remote.test", delivery)
        self.assertEqual((relay.outbound.username, provider.outbound.username),
                         ("me", "me"))
        self.assertEqual(own.outbound, delivery.outbound)
        self.assertEqual(own.outbound.username, "")


class RecordResultTests(unittest.TestCase):
    delivery = make_settings(delivery={"retry": [60, 600], "max_age": 3600}).delivery

    def record(self, result, now=START + 10, attempts=0):
        recipient = RecipientState("bob@remote.test", attempts=attempts)
        record_result(recipient, result, "h:25", now, START, self.delivery,
                      lambda: 0.5)
        return recipient

    def test_ok(self):
        r = self.record(Result("bob@remote.test", OK, 250, "2.0.0 queued"))
        self.assertEqual((r.state, r.attempts, r.last_error), (DELIVERED, 1, ""))

    def test_temporary(self):
        r = self.record(Result("bob@remote.test", TEMPORARY, 451, "4.3.0 later"),
                        attempts=1)
        self.assertEqual(
            (r.state, r.attempts, r.next_attempt, r.last_error),
            (DEFERRED, 2, START + 10 + 600, "h:25: 451 4.3.0 later"),
        )

    def test_connection_failure_has_no_code(self):
        r = self.record(Result("bob@remote.test", TEMPORARY, -1, "refused", True))
        self.assertEqual(r.last_error, "h:25: refused")

    def test_permanent(self):
        r = self.record(Result("bob@remote.test", PERMANENT, 550, "5.1.1 unknown"))
        self.assertEqual((r.state, r.last_error), (FAILED, "h:25: 550 5.1.1 unknown"))

    def test_temporary_after_max_age_fails(self):
        r = self.record(Result("bob@remote.test", TEMPORARY, 451, "later"),
                        now=START + 3600)
        self.assertEqual((r.state, r.last_error),
                         (FAILED, "gave up after 3600 s: h:25: 451 later"))


@implementer(smtp.IMessage)
class SinkMessage:
    def __init__(self, sink, sender, recipient):
        self.sink, self.sender, self.recipient = sink, sender, recipient
        self.lines = []

    def lineReceived(self, line):
        self.lines.append(line)

    def eomReceived(self):
        self.sink.received.append(
            (self.sender, self.recipient, b"\r\n".join(self.lines) + b"\r\n")
        )
        return defer.succeed(None)

    def connectionLost(self):
        pass


@implementer(smtp.IMessageDelivery)
class SinkDelivery:
    def __init__(self, sink):
        self.sink = sink
        self.sender = None

    def receivedHeader(self, helo, origin, recipients):
        return None

    def validateFrom(self, helo, origin):
        self.sink.transactions += 1
        self.sender = str(origin)
        return origin

    def validateTo(self, user):
        address = str(user.dest)
        reply = self.sink.replies.get(address)
        if reply is not None:
            raise smtp.SMTPServerError(*reply)
        return lambda: SinkMessage(self.sink, self.sender, address)


class SinkESMTP(smtp.ESMTP):
    def connectionLost(self, reason):
        self.factory.open -= 1
        smtp.ESMTP.connectionLost(self, reason)


class Sink(protocol.ServerFactory):
    """
    A remote SMTP server: collects (sender, recipient, data); C{replies}
    maps a recipient to the (code, text) its RCPT gets instead of 250.
    """

    def __init__(self):
        self.received = []
        self.replies = {}
        self.connections = 0
        self.open = 0
        self.transactions = 0

    def all_closed(self):
        """A Deferred that fires once no connection is open (the courier has sent QUIT)."""
        return task.deferLater(reactor, 0.01, lambda: None).addCallback(
            lambda _: self.open and self.all_closed())

    def buildProtocol(self, addr):
        self.connections += 1
        self.open += 1
        proto = SinkESMTP()
        proto.host = b"sink.test"
        proto.delivery = SinkDelivery(self)
        proto.factory = self
        return proto


class RunnerFixture(unittest.TestCase):
    """A spool, a sink as the smart host, and runners on a clock."""

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(START)
        self.sink = Sink()
        port = reactor.listenTCP(0, self.sink, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.addCleanup(self.sink.all_closed)
        self.root = Path(self.mktemp())
        self.spool = Spool(self.root / "queue")
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.runners = []

    def settings(self, **delivery):
        delivery.setdefault("smart_host", f"127.0.0.1:{self.port}")
        delivery.setdefault("retry", [300, 900])
        return make_settings(self.root, delivery=delivery)

    def enqueue(self, recipients, sender="alice@example.test", data=MESSAGE):
        incoming = self.spool.incoming()
        incoming.write(data)
        incoming.finish()
        envelope = Envelope(
            id=incoming.queue_id, sender=sender, created=START,
            recipients=[r if isinstance(r, RecipientState) else RecipientState(r)
                        for r in recipients],
        )
        self.spool.enqueue(incoming, envelope)
        return envelope.id

    def runner(self, settings=None, **kwargs):
        settings = settings or self.settings()
        runner = QueueRunner(self.spool, settings, self.clock,
                             dns.Resolvers(self.clock)(settings.dns),
                             SMTPCourier.from_settings(settings, reactor), random=lambda: 0.5,
                             local_delivery=LocalDelivery(self.spool, None, EveryAddressRemote()),
                             **kwargs)
        runner.startService()
        self.runners.append(runner)
        self.addCleanup(lambda: runner.running and runner.stopService())
        return runner

    def logged(self, text):
        return [e["log_format"].format(**e) for e in self.events
                if text in e.get("log_format", "").format(**e)]


class RunnerTests(RunnerFixture):
    @defer.inlineCallbacks
    def test_delivers_to_smart_host_in_one_transaction(self):
        queue_id = self.enqueue(["bob@remote.test", "carol@remote.test"])
        runner = self.runner()
        yield runner.when_idle()
        self.assertEqual(sorted(self.sink.received), [
            ("alice@example.test", "bob@remote.test", MESSAGE),
            ("alice@example.test", "carol@remote.test", MESSAGE),
        ])
        self.assertEqual((self.sink.connections, self.sink.transactions), (1, 1))
        self.assertEqual(self.spool.ids(), [])
        self.assertFalse((self.root / "queue" / "msg" / queue_id).exists())
        [line] = self.logged("to=<bob@remote.test>")
        self.assertIn(f"relay=127.0.0.1:{self.port} status=sent (250 ", line)

    @defer.inlineCallbacks
    def test_null_sender_and_lf_message(self):
        self.enqueue(["bob@remote.test"], sender="", data=b"Subject: x\n\n.dot\nend")
        runner = self.runner()
        yield runner.when_idle()
        self.assertEqual(self.sink.received,
                         [("", "bob@remote.test", b"Subject: x\r\n\r\n.dot\r\nend\r\n")])

    @defer.inlineCallbacks
    def test_wake_delivers_new_mail(self):
        runner = self.runner()
        yield runner.when_idle()
        self.enqueue(["bob@remote.test"])
        runner.wake()
        yield runner.when_idle()
        self.assertEqual(len(self.sink.received), 1)

    @defer.inlineCallbacks
    def test_451_is_deferred_and_retried(self):
        self.sink.replies["bob@remote.test"] = (451, "4.3.0 Try later")
        queue_id = self.enqueue(["bob@remote.test", "carol@remote.test"])
        runner = self.runner()
        yield runner.when_idle()
        envelope = self.spool.load(queue_id)
        bob, carol = envelope.recipients
        self.assertEqual(carol.state, DELIVERED)
        self.assertEqual(
            (bob.state, bob.attempts, bob.next_attempt, bob.last_error),
            (DEFERRED, 1, START + 300, f"127.0.0.1:{self.port}: 451 4.3.0 Try later"),
        )
        self.clock.advance(299)
        yield runner.when_idle()
        self.assertEqual(self.sink.transactions, 1)
        del self.sink.replies["bob@remote.test"]
        self.clock.advance(1)
        yield runner.when_idle()
        self.assertEqual(sorted(r for _, r, _ in self.sink.received),
                         ["bob@remote.test", "carol@remote.test"])
        self.assertEqual(self.spool.ids(), [])

    @defer.inlineCallbacks
    def test_second_retry_uses_the_next_step(self):
        self.sink.replies["bob@remote.test"] = (421, "4.7.0 Busy")
        queue_id = self.enqueue(["bob@remote.test"])
        runner = self.runner()
        yield runner.when_idle()
        self.clock.advance(300)
        yield runner.when_idle()
        bob = self.spool.load(queue_id).recipients[0]
        self.assertEqual((bob.attempts, bob.next_attempt), (2, START + 300 + 900))

    @defer.inlineCallbacks
    def test_550_fails_without_retry(self):
        self.sink.replies["bob@remote.test"] = (550, "5.1.1 No such user")
        self.enqueue(["bob@remote.test"])
        runner = self.runner()
        yield runner.when_idle()
        [line] = self.logged("to=<bob@remote.test>")
        self.assertIn("status=failed (550 5.1.1 No such user)", line)
        [line] = self.logged(": bounce ")
        self.assertIn("to <alice@example.test>: queued", line)
        # the bounce went out through the same queue (every address is remote here)
        [(sender, recipient, data)] = self.sink.received
        self.assertEqual((sender, recipient), ("", "alice@example.test"))
        report = email.message_from_bytes(data)
        self.assertEqual(report.get_content_type(), "multipart/report")
        [status] = report.get_payload(1).get_payload()[1:]
        self.assertEqual(status["Status"], "5.1.1")
        self.assertEqual(self.spool.ids(), [])

    @defer.inlineCallbacks
    def test_bounce_of_a_refused_copy(self):
        """SplitReception: a copy refused by a domain's filters goes back to its sender."""
        runner = self.runner()
        yield runner.bounce_refused("Q1", "alice@example.test", ["dave@example.org"],
                                    "mailsrv: 550 5.7.1 Message refused as spam",
                                    b"Subject: offer\r\n", "192.0.2.10", "client.test")
        yield runner.when_idle()
        [(sender, recipient, data)] = self.sink.received
        self.assertEqual((sender, recipient), ("", "alice@example.test"))
        report = email.message_from_bytes(data)
        [status] = report.get_payload(1).get_payload()[1:]
        self.assertEqual((status["Final-Recipient"], status["Status"]),
                         ("rfc822; dave@example.org", "5.7.1"))
        self.assertIn("550 5.7.1 Message refused as spam", status["Diagnostic-Code"])
        self.assertIn("Subject: offer", report.get_payload(2).as_string())

    @defer.inlineCallbacks
    def test_delayed_notice_once_after_delay_warning(self):
        self.sink.replies["bob@remote.test"] = (451, "4.3.0 Try later")
        queue_id = self.enqueue(["bob@remote.test"])
        runner = self.runner(self.settings(retry=[600], delay_warning=1000,
                                           max_age=7200))
        yield runner.when_idle()
        self.clock.advance(600)  # second attempt, 600 s after queueing: too soon
        yield runner.when_idle()
        self.assertEqual(self.logged("delay notice"), [])
        self.clock.advance(600)  # third, at 1200 s: a notice
        yield runner.when_idle()
        self.clock.advance(600)  # fourth: no second notice
        yield runner.when_idle()
        [line] = self.logged("delay notice")
        self.assertIn("to <alice@example.test>: queued", line)
        [(sender, recipient, data)] = self.sink.received
        self.assertEqual((sender, recipient), ("", "alice@example.test"))
        report = email.message_from_bytes(data)
        self.assertEqual(report["Subject"], "Delayed Mail (still being retried)")
        [status] = report.get_payload(1).get_payload()[1:]
        self.assertEqual((status["Action"], status["Status"]), ("delayed", "4.3.0"))
        self.assertIn("Will-Retry-Until", status)
        bob = self.spool.load(queue_id).recipients[0]
        self.assertEqual((bob.state, bob.warned, bob.attempts), (DEFERRED, True, 4))

    @defer.inlineCallbacks
    def test_failed_bounce_goes_to_postmaster_once(self):
        self.sink.replies["bob@remote.test"] = (550, "5.1.1 No such user")
        self.sink.replies["alice@example.test"] = (550, "5.1.1 Gone")
        self.sink.replies["postmaster@example.test"] = (550, "5.1.1 Gone too")
        self.enqueue(["bob@remote.test"])
        runner = self.runner()
        yield runner.when_idle()
        self.assertEqual(self.sink.received, [])
        self.assertEqual(self.sink.transactions, 3)  # message, bounce, postmaster copy
        self.assertEqual(len(self.logged(": bounce ")), 2)
        self.assertEqual(len(self.logged("no bounce for a null-sender message")), 1)
        self.assertEqual(self.spool.ids(), [])

    @defer.inlineCallbacks
    def test_too_many_received_headers_is_a_loop(self):
        settings = self.settings(max_received=3)
        self.enqueue(["bob@remote.test"], data=b"Received: x\r\n" * 3 + MESSAGE)
        runner = self.runner(settings)
        yield runner.when_idle()
        [(sender, recipient, data)] = self.sink.received  # only the bounce
        self.assertEqual((sender, recipient), ("", "alice@example.test"))
        self.assertIn(b"Status: 5.4.6", data)
        [line] = self.logged("to=<bob@remote.test>")
        self.assertIn("relay=local status=failed (554 5.4.6 mail loop: 4 Received", line)
        self.enqueue(["bob@remote.test"], data=b"Received: x\r\n" * 2 + MESSAGE)
        runner.wake()
        yield runner.when_idle()
        self.assertEqual(self.sink.received[1][1], "bob@remote.test")

    @defer.inlineCallbacks
    def request(self, runner, action, queue_id=""):
        """What `mailsrv queue` does, then the runner's next look."""
        path = self.spool.request(action, queue_id)
        self.clock.advance(runner.control_interval)
        yield runner.when_idle()
        self.assertFalse(path.exists())

    @defer.inlineCallbacks
    def test_requests_hold_release_flush_remove(self):
        self.sink.replies["bob@remote.test"] = (451, "4.3.0 Try later")
        held = self.enqueue(["bob@remote.test"])
        self.enqueue(["bob@remote.test"])  # the other one, delivered by the flush
        runner = self.runner()
        yield runner.when_idle()
        self.assertEqual(self.sink.transactions, 2)
        del self.sink.replies["bob@remote.test"]
        yield self.request(runner, "hold", held)
        self.assertTrue(self.spool.load(held).held)
        yield self.request(runner, "flush")  # delivers the other one at once
        self.assertEqual(self.sink.transactions, 3)
        self.assertEqual(self.spool.ids(), [held])
        self.clock.advance(1000)  # past its retry time: held, so not tried
        yield runner.when_idle()
        self.assertEqual(self.sink.transactions, 3)
        yield self.request(runner, "release", held)
        self.assertEqual(self.sink.transactions, 4)
        self.assertEqual(self.spool.ids(), [])
        self.sink.replies["bob@remote.test"] = (451, "4.3.0 Try later")
        gone = self.enqueue(["bob@remote.test"])
        runner.wake()
        yield runner.when_idle()
        yield self.request(runner, "remove", gone)
        self.assertEqual(self.spool.ids(), [])
        self.assertFalse(self.spool.message_path(gone).exists())
        yield self.request(runner, "hold", gone)
        self.assertEqual(len(self.logged("not queued, nothing done")), 1)

    @defer.inlineCallbacks
    def test_remove_is_not_undone_by_a_delivery(self):
        """
        Regression: a message that came due while its removal was in a
        thread was delivered (and its envelope written back, deferred); so
        was one that a scan started meanwhile read back in before its file
        went.
        """
        self.sink.replies["bob@remote.test"] = (451, "4.3.0 Try later")
        gone = self.enqueue(["bob@remote.test"])
        runner = self.runner()
        yield runner.when_idle()
        tried = self.sink.transactions
        real = runner.deferToThread

        def hop(f, *args, **kwargs):
            if f == self.spool.remove:  # the retry timer and the scan fire meanwhile
                self.clock.advance(1000)
            if f == runner._read_spool:  # at once: before the removal's thread runs
                return defer.maybeDeferred(f, *args, **kwargs)
            return real(f, *args, **kwargs)

        runner.deferToThread = hop
        yield self.request(runner, "remove", gone)
        yield runner.when_idle()
        self.assertEqual((self.spool.ids(), self.sink.transactions), ([], tried))

    @defer.inlineCallbacks
    def test_no_bounce_for_null_sender(self):
        self.sink.replies["bob@remote.test"] = (550, "5.1.1 No such user")
        self.enqueue(["bob@remote.test"], sender="")
        runner = self.runner()
        yield runner.when_idle()
        self.assertEqual(self.sink.transactions, 1)
        self.assertEqual(len(self.logged("no bounce for a null-sender message")), 1)

    @defer.inlineCallbacks
    def test_restart_does_not_deliver_again(self):
        self.sink.replies["bob@remote.test"] = (451, "4.3.0 Try later")
        queue_id = self.enqueue(["bob@remote.test", "carol@remote.test"])
        first = self.runner()
        yield first.when_idle()
        first.stopService()
        self.assertEqual(len(self.sink.received), 1)
        del self.sink.replies["bob@remote.test"]
        self.clock.advance(300)
        second = self.runner()
        yield second.when_idle()
        self.assertEqual(sorted(r for _, r, _ in self.sink.received),
                         ["bob@remote.test", "carol@remote.test"])
        self.assertFalse((self.root / "queue" / "env" / f"{queue_id}.json").exists())

    @defer.inlineCallbacks
    def test_start_recovers_the_spool(self):
        crashed = time.time() - 60  # (what a crash left before this start)
        for leftover in ("tmp/half", "msg/orphan"):
            path = self.root / "queue" / leftover
            path.write_bytes(b"Subject: " + leftover.encode())
            os.utime(path, (crashed, crashed))
        self.enqueue(["bob@remote.test"])
        runner = self.runner()
        yield runner.when_idle()
        self.assertEqual(list((self.root / "queue" / "tmp").iterdir()), [])
        self.assertEqual(list((self.root / "queue" / "msg").iterdir()), [])
        self.assertEqual(len(self.sink.received), 1)

    @defer.inlineCallbacks
    def test_smart_hosts_in_preference_order(self):
        dead = reactor.listenTCP(0, protocol.ServerFactory(), interface="127.0.0.1")
        dead_port = dead.getHost().port
        yield dead.stopListening()  # nothing listens there now
        settings = self.settings(smart_host=[
            {"host": "127.0.0.1", "port": self.port, "preference": 20},
            {"host": "127.0.0.1", "port": dead_port, "preference": 10},
        ])
        self.enqueue(["bob@remote.test"])
        runner = self.runner(settings)
        yield runner.when_idle()
        self.assertEqual(len(self.sink.received), 1)
        self.assertTrue(self.logged(f"127.0.0.1:{dead_port} unavailable"))

    @defer.inlineCallbacks
    def test_unreachable_host_defers(self):
        dead = reactor.listenTCP(0, protocol.ServerFactory(), interface="127.0.0.1")
        dead_port = dead.getHost().port
        yield dead.stopListening()
        queue_id = self.enqueue(["bob@remote.test"])
        runner = self.runner(self.settings(smart_host=f"127.0.0.1:{dead_port}"))
        yield runner.when_idle()
        bob = self.spool.load(queue_id).recipients[0]
        self.assertEqual((bob.state, bob.attempts), (DEFERRED, 1))
        self.assertIn("refused", bob.last_error.lower())

    @defer.inlineCallbacks
    def test_transport_routes_a_domain(self):
        settings = self.settings(smart_host="",
                                 transports={"internal.test": f"127.0.0.1:{self.port}"})
        self.enqueue(["bob@internal.test"])
        runner = self.runner(settings)
        yield runner.when_idle()
        self.assertEqual(len(self.sink.received), 1)

    def mx_settings(self):
        dns = TinyDNSServer({
            ("remote.test", "MX"): ["10 mx1.remote.test.", "20 mx2.remote.test."],
            ("mx1.remote.test", "A"): ["127.0.0.2"],  # nothing listens there
            ("mx2.remote.test", "A"): ["127.0.0.1"],
            ("direct.test", "A"): ["127.0.0.1"],
            ("nullmx.test", "MX"): ["0 ."],
            ("lame.test", "MX"): ["10 nowhere.lame.test."],
        }, failing={"broken.test"})
        self.addCleanup(dns.close)
        return make_settings(self.root, delivery={"mx_port": self.port},
                             dns={"servers": [dns.address], "timeout": 2})

    @defer.inlineCallbacks
    def test_mx_delivery_tries_the_next_host(self):
        settings = self.mx_settings()
        self.enqueue(["bob@remote.test", "carol@direct.test"])
        runner = self.runner(settings)
        yield runner.when_idle()
        self.assertEqual(sorted(r for _, r, _ in self.sink.received),
                         ["bob@remote.test", "carol@direct.test"])
        self.assertEqual(self.sink.transactions, 2)  # one per domain
        self.assertTrue(self.logged(f"127.0.0.2:{self.port} unavailable"))
        self.assertEqual(self.spool.ids(), [])

    @defer.inlineCallbacks
    def test_mx_failures(self):
        settings = self.mx_settings()
        queue_id = self.enqueue([
            "a@nullmx.test", "b@nowhere.test", "c@broken.test", "d@lame.test",
        ])
        runner = self.runner(settings)
        yield runner.when_idle()
        states = {r.address: (r.state, r.last_error)
                  for r in self.spool.load(queue_id).recipients}
        self.assertEqual(states["a@nullmx.test"][0], FAILED, states)
        self.assertTrue(states["a@nullmx.test"][1].startswith("MX nullmx.test: 556 5.1.10"))
        self.assertEqual(states["b@nowhere.test"][0], FAILED)
        self.assertIn("5.1.2", states["b@nowhere.test"][1])
        self.assertEqual(states["c@broken.test"][0], DEFERRED)
        self.assertIn("4.4.3", states["c@broken.test"][1])
        self.assertEqual(states["d@lame.test"][0], DEFERRED)
        self.assertEqual(self.sink.received, [])


class Busy(protocol.Protocol):
    """A host that greets with 421 and hangs up."""

    def connectionMade(self):
        self.transport.write(b"421 4.3.2 busy, try another host\r\n")
        self.transport.loseConnection()


class FailoverTests(RunnerFixture):
    """
    A route of several next hops ([delivery.transports] lists, mx:domain):
    a recipient moves on while its result is temporary (docs/queue.md,
    "Routes and failover"). Bounces go to the default sink (the smart host).
    """

    def listen(self, factory, interface="127.0.0.1", port=0):
        listening = reactor.listenTCP(port, factory, interface=interface)
        self.addCleanup(listening.stopListening)
        if isinstance(factory, Sink):
            self.addCleanup(factory.all_closed)
        return listening.getHost().port

    @defer.inlineCallbacks
    def dead_port(self):
        listening = reactor.listenTCP(0, protocol.ServerFactory(), interface="127.0.0.1")
        port = listening.getHost().port
        yield listening.stopListening()  # nothing listens there now
        return port

    def deliver(self, recipients, **delivery):
        queue_id = self.enqueue(recipients)
        runner = self.runner(self.settings(**delivery))
        return runner.when_idle().addCallback(lambda _: {
            r.address: r for r in self.spool.load(queue_id).recipients
        } if queue_id in self.spool.ids() else {})

    @defer.inlineCallbacks
    def test_refused_connection_moves_on_to_the_next_hop(self):
        dead = yield self.dead_port()
        second = Sink()
        port = self.listen(second)
        left = yield self.deliver(["bob@remote.test"], transports={
            "remote.test": [f"127.0.0.1:{dead}", f"127.0.0.1:{port}"]})
        self.assertEqual(left, {})
        self.assertEqual([r for _, r, _ in second.received], ["bob@remote.test"])
        self.assertTrue(self.logged(f"127.0.0.1:{dead} unavailable: cannot connect"))
        [line] = self.logged("to=<bob@remote.test>")
        self.assertIn(f"relay=127.0.0.1:{port} status=sent", line)

    @defer.inlineCallbacks
    def test_421_greeting_moves_on_to_the_next_hop(self):
        busy = protocol.ServerFactory.forProtocol(Busy)
        busy_port = self.listen(busy)
        second = Sink()
        port = self.listen(second)
        yield self.deliver(["bob@remote.test"], transports={
            "remote.test": [f"127.0.0.1:{busy_port}", f"127.0.0.1:{port}"]})
        self.assertEqual([r for _, r, _ in second.received], ["bob@remote.test"])
        self.assertTrue(self.logged(
            f"127.0.0.1:{busy_port} unavailable: greeting: 4.3.2 busy, try another host"))

    @defer.inlineCallbacks
    def test_451_moves_only_that_recipient_on(self):
        first, second = Sink(), Sink()
        first.replies["bob@remote.test"] = (451, "4.3.0 Try later")
        first_port, second_port = self.listen(first), self.listen(second)
        yield self.deliver(["bob@remote.test", "carol@remote.test"], transports={
            "remote.test": [f"127.0.0.1:{first_port}", f"127.0.0.1:{second_port}"]})
        self.assertEqual([r for _, r, _ in first.received], ["carol@remote.test"])
        self.assertEqual([r for _, r, _ in second.received], ["bob@remote.test"])
        [line] = self.logged(f"127.0.0.1:{first_port} deferred 1 recipient(s)")
        self.assertIn(f"(451 4.3.0 Try later); trying 127.0.0.1:{second_port}", line)

    @defer.inlineCallbacks
    def test_550_bounces_without_trying_the_next_hop(self):
        first, second = Sink(), Sink()
        first.replies["bob@remote.test"] = (550, "5.1.1 No such user")
        first_port, second_port = self.listen(first), self.listen(second)
        left = yield self.deliver(["bob@remote.test"], transports={
            "remote.test": [f"127.0.0.1:{first_port}", f"127.0.0.1:{second_port}"]})
        self.assertEqual(left, {})
        self.assertEqual((first.received, second.connections), ([], 0))
        [line] = self.logged("to=<bob@remote.test>")
        self.assertIn(f"relay=127.0.0.1:{first_port} status=failed (550 5.1.1", line)
        [(sender, recipient, data)] = self.sink.received  # the bounce
        self.assertEqual((sender, recipient), ("", "alice@example.test"))
        self.assertIn(b"Status: 5.1.1", data)

    @defer.inlineCallbacks
    def test_all_hops_down_defers_with_the_last_error(self):
        dead = yield self.dead_port()
        busy_port = self.listen(protocol.ServerFactory.forProtocol(Busy))
        left = yield self.deliver(["bob@remote.test"], transports={
            "remote.test": [f"127.0.0.1:{dead}", f"127.0.0.1:{busy_port}"]})
        bob = left["bob@remote.test"]
        self.assertEqual((bob.state, bob.attempts, bob.next_attempt, bob.last_error), (
            DEFERRED, 1, START + 300,
            f"127.0.0.1:{busy_port}: 421 greeting: 4.3.2 busy, try another host"))
        self.assertEqual(len(self.logged(" unavailable: ")), 2)
        self.clock.advance(300)  # the next attempt starts at the first hop again
        yield self.runners[0].when_idle()
        self.assertEqual(len(self.logged(f"127.0.0.1:{dead} unavailable")), 2)

    def dns(self, records, **kwargs):
        server = TinyDNSServer(records, **kwargs)
        self.addCleanup(server.close)
        return {"servers": [server.address], "timeout": 2}

    @defer.inlineCallbacks
    def test_mx_domain_hosts_in_preference_order(self):
        """
        mx:relay.test is looked up as MX delivery is: its better host (the
        second record) first, the other when that one answers 451.
        """
        first, second = Sink(), Sink()
        port = self.listen(first)
        try:
            self.listen(second, "127.0.0.3", port)  # the same port, another address
        except CannotListenError:
            raise unittest.SkipTest(f"127.0.0.3:{port} is taken")
        first.replies["bob@remote.test"] = (451, "4.3.0 Try later")
        dead = yield self.dead_port()
        settings = make_settings(self.root, dns=self.dns({
            ("relay.test", "MX"): ["20 b.relay.test.", "10 a.relay.test."],
            ("a.relay.test", "A"): ["127.0.0.1"],
            ("b.relay.test", "A"): ["127.0.0.3"],
        }), delivery={"transports": {
            "remote.test": [f"127.0.0.1:{dead}", f"mx:relay.test:{port}"]}})
        self.enqueue(["bob@remote.test", "carol@remote.test"])
        yield self.runner(settings).when_idle()
        self.assertEqual([r for _, r, _ in first.received], ["carol@remote.test"])
        self.assertEqual([r for _, r, _ in second.received], ["bob@remote.test"])
        [line] = self.logged("to=<bob@remote.test>")
        self.assertIn(f"relay=127.0.0.3:{port} status=sent", line)

    @defer.inlineCallbacks
    def test_mx_domain_that_does_not_resolve_is_deferred_not_bounced(self):
        settings = make_settings(self.root, dns=self.dns({}), delivery={
            "smart_host": "mx:relay.test", "retry": [300]})
        queue_id = self.enqueue(["bob@remote.test"])
        yield self.runner(settings).when_idle()
        bob = self.spool.load(queue_id).recipients[0]
        self.assertEqual((bob.state, bob.last_error), (
            DEFERRED, "MX relay.test: 4.4.4 next hop mx:relay.test: "
                      "relay.test has no MX or address record"))

    @defer.inlineCallbacks
    def test_mx_domain_lookup_failure_moves_on_to_the_next_hop(self):
        settings = make_settings(self.root, dns=self.dns({}, failing={"relay.test"}),
                                 delivery={"smart_host": ["mx:relay.test",
                                                          f"127.0.0.1:{self.port}"]})
        self.enqueue(["bob@remote.test"])
        yield self.runner(settings).when_idle()
        self.assertEqual([r for _, r, _ in self.sink.received], ["bob@remote.test"])
        [line] = self.logged("MX relay.test deferred 1 recipient(s)")
        self.assertIn("(4.4.3 MX lookup failed: ", line)
        self.assertIn(f"; trying 127.0.0.1:{self.port}", line)


class OrderExchangesTests(unittest.TestCase):
    def test_preference_then_random_among_equals(self):
        records = [(20, "c"), (10, "b"), (10, "a"), (30, "d")]
        randoms = iter([0.9, 0.1, 0.5, 0.0])
        self.assertEqual(order_exchanges(records, lambda: next(randoms)),
                         ["b", "a", "c", "d"])
        randoms = iter([0.9, 0.9, 0.1, 0.0])
        self.assertEqual(order_exchanges(records, lambda: next(randoms)),
                         ["a", "b", "c", "d"])


class HeldCourier:
    """A courier whose deliveries finish when the test says so."""

    def __init__(self):
        self.calls = []

    def deliver(self, envelope, message_path, recipients, hop):
        d = defer.Deferred()
        self.calls.append((envelope.id, recipients, hop.host, hop.port, d))
        return d

    def stop(self):
        pass


class ConcurrencyTests(unittest.TestCase):
    def test_bounded_deliveries(self):
        clock = task.Clock()
        clock.advance(START)
        root = Path(self.mktemp())
        spool = Spool(root / "queue")
        for n in range(5):
            incoming = spool.incoming()
            incoming.write(MESSAGE)
            incoming.finish()
            spool.enqueue(incoming, Envelope(id=incoming.queue_id, sender="",
                                             recipients=[RecipientState(f"u{n}@r.test")]))
        courier = HeldCourier()
        settings = make_settings(root, delivery={"smart_host": "h.test:25"})
        runner = QueueRunner(spool, settings, clock, dns.Resolvers(clock)(settings.dns),
                             courier=courier, max_deliveries=2)
        runner.deferToThread = lambda f, *a: defer.maybeDeferred(f, *a)
        runner.startService()
        self.addCleanup(runner.stopService)
        self.assertEqual(len(courier.calls), 2)
        for done in range(5):
            _, recipients, host, port, d = courier.calls[done]
            self.assertEqual((host, port), ("h.test", 25))
            d.callback([Result(recipients[0], OK, 250, "ok")])
            self.assertEqual(len(courier.calls), min(done + 3, 5))
        self.assertEqual(spool.ids(), [])
        self.successResultOf(runner.when_idle())


class CourierTests(unittest.TestCase):

    def test_non_ascii_recipient_is_permanent(self):
        courier = SMTPCourier("mail.example.test", task.Clock())
        envelope = Envelope(id="X", sender="a@example.test", recipients=[])
        [result] = self.successResultOf(
            courier.deliver(envelope, "/nonexistent", ["j\xf6rg@r.test"], Hop("h", 25))
        )
        self.assertEqual(result.status, PERMANENT)
        self.assertIn("SMTPUTF8", result.text)
