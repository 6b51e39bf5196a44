"""
[server] workers: the parent's supervision (mailsrv/workers.py) on a Clock
with processes that are not spawned; tests/integration/test_scale_out.py
runs real workers.
"""

from pathlib import Path
from types import SimpleNamespace

from twisted.internet import task
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailsrv import config
from mailsrv.workers import RESTART_DELAYS, STOP_TIMEOUT, YOUNG, Workers
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
            (["worker", "-n", str(n)], {0: "w", 1: 1, 2: 2, 3: 7, 4: 9}) for n in (1, 2)])
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
