"""
[server] workers: the parent's supervision (mailsrv/workers.py) on a Clock
with processes that are not spawned; tests/integration/test_scale_out.py
runs real workers.
"""

import json
import os
import re
import select
import socket
from pathlib import Path
from types import SimpleNamespace

from twisted.internet import reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.logger import Logger, formatEvent, formatEventAsClassicLogText
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailsrv import config, logs
from mailsrv.workers import RESTART_DELAYS, STOP_TIMEOUT, YOUNG, Workers, adopted_port
from tests.helpers import log_lines


class FakeProcess:
    def __init__(self, pid):
        self.pid = pid
        self.signals = []

    def signalProcess(self, name):
        self.signals.append(name)


class FakeReactor(task.Clock):
    """A Clock that records spawnProcess (PIDs from 100)."""

    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, protocol, executable, args, env, childFDs):
        process = FakeProcess(100 + len(self.spawned))
        protocol.makeConnection(process)
        self.spawned.append((protocol, args, childFDs))
        return process


class FakePort:
    def __init__(self, index, fd):
        self.listener = SimpleNamespace(index=index)
        self.port = SimpleNamespace(fileno=lambda: fd, stopReading=self.stop_reading)
        self.reading = True

    def stop_reading(self):
        self.reading = False


class WorkersTests(unittest.TestCase):
    def setUp(self):
        settings = config.parse({"server": {"node": "mx", "workers": 2},
                                 "sessions": {"backend": "redis"}}, Path("/etc/m/c.toml"))
        self.reactor = FakeReactor()
        self.ports = [FakePort(0, 7), FakePort(1, 9)]
        self.log = log_lines(self)
        self.workers = Workers(settings, self.ports, self.reactor, command=["worker", "-n"])
        self.ended = set()
        self.workers.startService()
        self.addCleanup(self.stop)

    def stop(self):
        if self.workers.running:
            self.workers.stopService()
            for protocol, args, _ in self.reactor.spawned:
                if protocol not in self.ended:
                    self.end(int(args[-1]), ProcessDone(0))

    def end(self, number, reason):
        protocol = [p for p, args, _ in self.reactor.spawned if args[-1] == str(number)][-1]
        self.ended.add(protocol)
        protocol.processEnded(Failure(reason))

    def test_each_worker_gets_the_sockets_the_parent_stopped_reading(self):
        self.assertEqual([(args, fds) for _, args, fds in self.reactor.spawned], [
            (["worker", "-n", str(n)], {0: "w", 1: "r", 2: "r", 3: 7, 4: 9}) for n in (1, 2)])
        self.assertEqual([port.reading for port in self.ports], [False, False])
        self.assertIn("worker 2 started: node mx-2, PID 101", self.log)

    def test_a_worker_that_dies_is_started_again_later_while_it_dies_young(self):
        self.end(1, ProcessTerminated(signal=9))
        self.assertIn("worker 1 (PID 100) ended (killed by signal 9); starting it again in "
                      "0.5 s", self.log)
        self.reactor.advance(RESTART_DELAYS[0])
        self.assertEqual(len(self.reactor.spawned), 3)
        self.end(1, ProcessTerminated(exitCode=1))
        self.assertIn("worker 1 (PID 102) ended (exit status 1); starting it again in 1 s",
                      self.log)
        self.reactor.advance(RESTART_DELAYS[1])
        self.assertEqual(len(self.reactor.spawned), 4)

    def test_one_that_lived_long_is_started_again_soon(self):
        self.end(2, ProcessTerminated(signal=9))
        self.reactor.advance(RESTART_DELAYS[0])
        self.patch(self.reactor.spawned[-1][0], "age", lambda: YOUNG + 1)
        self.end(2, ProcessTerminated(signal=9))
        self.assertIn("worker 2 (PID 102) ended (killed by signal 9); starting it again in "
                      "0.5 s", self.log)

    def test_a_workers_log_is_the_parents_under_its_node_name(self):
        worker = self.reactor.spawned[1][0]
        events = []
        Logger(namespace="mailsrv.smtp.reception", observer=events.append).info(
            "accepted {queue_id}", queue_id="Q1")
        line = logs._event_as_json_line(events[0]).encode("utf-8")
        worker.childDataReceived(1, line[:10])
        worker.childDataReceived(1, line[10:] + b"Traceback? no: a stray line\n")
        worker.childDataReceived(2, b"mailsrv: c.toml: [server] bad")
        self.end(2, ProcessDone(0))
        self.assertIn("accepted Q1", self.log)
        self.assertIn("mx-2: Traceback? no: a stray line", self.log)
        self.assertIn("mx-2: mailsrv: c.toml: [server] bad", self.log)

    def test_stopping_ends_every_worker_then_kills_the_slow(self):
        stopped = self.workers.stopService()
        processes = [protocol.transport for protocol, _, _ in self.reactor.spawned]
        self.assertEqual([p.signals for p in processes], [["TERM"], ["TERM"]])
        self.end(1, ProcessDone(0))
        self.assertNoResult(stopped)
        self.reactor.advance(STOP_TIMEOUT)
        self.assertEqual(processes[1].signals, ["TERM", "KILL"])
        self.end(2, ProcessTerminated(signal=9))
        self.successResultOf(stopped)
        self.assertEqual(len(self.reactor.spawned), 2)  # none started again


class WorkerLogTests(unittest.TestCase):
    """The parent's end of a worker's log (mailsrv/logs.py)."""

    def setUp(self):
        self.events = []
        self.relay = logs.WorkerLog("mx1-2", self.events.append)

    def relayed(self, log_call, **fields):
        emitted = []
        log_call(Logger(namespace="mailsrv.smtp.reception", observer=emitted.append))
        self.relay.received(1, logs._event_as_json_line(emitted[0]).encode("utf-8"))
        return self.events[-1]

    def test_text_and_json_lines_name_the_worker(self):
        event = self.relayed(lambda log: log.warn("refused {ip}", ip="192.0.2.1"))
        self.assertRegex(formatEventAsClassicLogText(event),
                         r"\[mx1-2 mailsrv.smtp.reception#warn\] refused 192.0.2.1\n$")
        record = json.loads(logs.json_line(event))
        self.assertEqual((record["system"], record["level"], record["node"], record["ip"],
                          record["text"]),
                         ("mailsrv.smtp.reception", "warn", "mx1-2", "192.0.2.1",
                          "refused 192.0.2.1"))

    def test_a_failure_keeps_its_traceback_and_message(self):
        def fail(log):
            try:
                1 / 0
            except ZeroDivisionError:
                log.failure("delivery failed")
        event = self.relayed(fail)
        text = formatEventAsClassicLogText(event)
        self.assertIn("delivery failed", text)
        self.assertIn("ZeroDivisionError: division by zero", text)
        self.assertIn("ZeroDivisionError: division by zero",
                      json.loads(logs.json_line(event))["traceback"])

    def test_a_line_past_the_limit_is_cut_not_held(self):
        self.patch(logs.WorkerLog, "MAX_LINE", 100)
        self.relay.received(2, b"x" * 250)
        self.relay.received(2, b"y" * 10 + b"\n")
        texts = [formatEvent(e) for e in self.events]
        self.assertEqual(texts, ["mx1-2: " + "x" * 100 + " [cut]", "mx1-2: " + "y" * 10])

    def test_what_is_not_an_event_is_a_warning_line(self):
        self.relay.received(1, b'{"not": "an event"}\n\n[1, 2]\n')
        self.assertEqual([formatEvent(e) for e in self.events],
                         ['mx1-2: {"not": "an event"}', "mx1-2: [1, 2]"])


class AdoptedPortTests(unittest.TestCase):
    """A worker's listening port (the real reactor): one accept a wake-up, one worker woken."""

    def setUp(self):
        self.listening = socket.socket()
        self.addCleanup(self.listening.close)
        self.listening.bind(("127.0.0.1", 0))
        self.listening.listen(8)
        self.factory = Factory.forProtocol(Protocol)
        self.built = []
        self.factory.buildProtocol = lambda addr: self.built.append(addr) or Protocol()
        self.port = adopted_port(os.dup(self.listening.fileno()), self.factory, reactor)
        self.addCleanup(self.port.stopListening)

    def test_one_connection_per_wake_up(self):
        clients = [socket.create_connection(self.listening.getsockname()) for _ in range(3)]
        for client in clients:
            self.addCleanup(client.close)
        self.port.doRead()
        self.assertEqual(len(self.built), 1)
        self.port.doRead()
        self.assertEqual(len(self.built), 2)

    def test_registered_in_epoll_as_exclusive(self):
        poller = getattr(reactor, "_poller", None)
        if not isinstance(poller, select.epoll) or not hasattr(select, "EPOLLEXCLUSIVE"):
            raise unittest.SkipTest("not the epoll reactor")
        info = Path(f"/proc/self/fdinfo/{poller.fileno()}").read_text()
        mask = re.search(rf"tfd:\s+{self.port.fileno()}\s+events:\s*([0-9a-f]+)", info)
        self.assertTrue(int(mask.group(1), 16) & select.EPOLLEXCLUSIVE, info)
