"""
[server] workers = N: N reactor processes on one machine, one per core
(docs/scale-out.md, "Several processes on one machine").

The parent, twistd's own process, binds every [[listen]] socket once (as
root if it must, before anyone drops privileges) and never accepts on
them: it starts N workers, each `twistd -n mailsrv --worker K` of the same
config, handing them the listening sockets as inherited file descriptors
(3, 4, ... in [[listen]] order). Every worker accepts on the same sockets;
the kernel gives each connection to one of the workers waiting. Each
worker is a node of its own, C{NODE-K} (its spool, locks and control
socket in C{data_dir/nodes/NODE-K/}), sharing sessions, queue ownership
and new-mail events with the others through Redis.

Why the parent binds rather than SO_REUSEPORT in each worker: the ports
are bound once, by the one process that may need root for port 25; a
worker that dies loses no connection waiting in the queue (the socket's
backlog is the parent's, with SO_REUSEPORT it dies with the worker's own
socket); and any endpoint a [[listen]] table may name works the same.

The parent restarts a worker that ends (after 0.5 s, longer while it
keeps dying young), passes SIGHUP on to the workers, and on SIGTERM stops
them all (SIGTERM, then SIGKILL after L{STOP_TIMEOUT} s). A worker whose
parent is gone stops by itself.
"""

import functools
import os
import select
import signal
import socket
import sys
import time

from twisted.application import service
from twisted.internet import defer, protocol, task
from twisted.logger import Logger

from mailsrv.logs import WorkerLog

log = Logger()

# Seconds before a worker that ended is started again; one that lived less
# than YOUNG seconds waits the next delay, the last repeats.
RESTART_DELAYS = (0.5, 1, 2, 5, 10, 30)
YOUNG = 60
# Seconds the workers get to stop before SIGKILL.
STOP_TIMEOUT = 20
# The first inherited listening socket.
FIRST_FD = 3


class Workers(service.Service):
    """
    The parent: supervises the workers, started once its listening ports
    (L{mailsrv.service.ListenerService}s, bound and not reading) are.

    @ivar ports: the listeners' bound ports, in [[listen]] order.
    """

    def __init__(self, settings, ports, reactor, command=None):
        """
        @param ports: L{mailsrv.service.ListenerService}s.
        @param command: the worker's command line but its number (tests);
            by default this Python running twistd with the parent's config.
        """
        self.settings = settings
        self.ports = ports
        self.reactor = reactor
        self.command = command or [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "--nodaemon", "--pidfile=", "mailsrv", "--config", str(settings.path.absolute()),
            "--worker"]
        self._running = {}  # number -> _Worker
        self._deaths = {}  # number -> quick deaths in a row
        self._stopped = None
        self._previous_hangup = None

    def startService(self):
        super().startService()
        for port in self.ports:
            port.port.stopReading()  # (the workers accept)
        for number in range(1, self.settings.workers + 1):
            self._start(number)
        self._previous_hangup = signal.signal(signal.SIGHUP, self._sighup)

    def stopService(self):
        super().stopService()
        signal.signal(signal.SIGHUP, self._previous_hangup)
        if not self._running:
            return None
        self._stopped = defer.Deferred()
        self._signal("TERM")
        killing = self.reactor.callLater(STOP_TIMEOUT, self._signal, "KILL")
        self._stopped.addBoth(lambda result: killing.active() and killing.cancel())
        return self._stopped

    def _start(self, number):
        fds = {0: "w", 1: "r", 2: "r"}  # (their log comes to ours: mailsrv/logs.py)
        for port in self.ports:
            fds[FIRST_FD + port.listener.index] = port.port.fileno()
        worker = _Worker(self, number)
        self.reactor.spawnProcess(worker, self.command[0], self.command + [str(number)],
                                  env=os.environ.copy(), childFDs=fds)
        self._running[number] = worker
        log.info("worker {number} started: node {node}, PID {pid}", number=number,
                 node=self.settings.worker(number).node, pid=worker.transport.pid)

    def _ended(self, worker, reason):
        del self._running[worker.number]
        if not self.running:
            if not self._running and self._stopped is not None:
                self._stopped.callback(None)
            return
        quick = self._deaths.get(worker.number, 0) if worker.age() < YOUNG else 0
        self._deaths[worker.number] = quick + 1
        delay = RESTART_DELAYS[min(quick, len(RESTART_DELAYS) - 1)]
        log.warn("worker {number} (PID {pid}) ended ({why}); starting it again in "
                 "{delay:g} s", number=worker.number, pid=worker.pid, delay=delay,
                 why=_why(reason.value))
        self.reactor.callLater(delay, self._restart, worker.number)

    def _restart(self, number):
        if self.running and number not in self._running:
            self._start(number)

    def _signal(self, name):
        for worker in list(self._running.values()):
            try:
                worker.transport.signalProcess(name)
            except OSError:
                pass  # (it ended meanwhile)

    def _sighup(self, signum, frame):
        # (a signal handler may run in the middle of any reactor code)
        self.reactor.callFromThread(self._signal, "HUP")


class _Worker(protocol.ProcessProtocol):
    def __init__(self, workers, number):
        self.workers = workers
        self.number = number
        self.pid = None
        self._started = time.monotonic()
        self.log = WorkerLog(workers.settings.worker(number).node)

    def childDataReceived(self, fd, data):
        self.log.received(fd, data)

    def connectionMade(self):
        self.pid = self.transport.pid

    def age(self):
        return time.monotonic() - self._started

    def processEnded(self, reason):
        self.log.ended()
        self.workers._ended(self, reason)


def _why(ended):
    """A process's end (L{ProcessDone} or L{ProcessTerminated}) in a few words."""
    if getattr(ended, "signal", None) is not None:
        return f"killed by signal {ended.signal}"
    return f"exit status {ended.exitCode}"


def inherited_port(index, factory, reactor):
    """
    In a worker: listen with C{factory} on the socket of [[listen]] table
    C{index} (from 0) that the parent handed down.
    """
    return adopted_port(FIRST_FD + index, factory, reactor)


def adopted_port(fd, factory, reactor):
    """Listen with C{factory} on the listening socket C{fd} (closed: the port has its own)."""
    family = socket.socket(fileno=os.dup(fd))
    try:
        kind = family.family
    finally:
        family.close()
    port = reactor.adoptStreamPort(fd, kind, factory)
    os.close(fd)  # (adoptStreamPort took a copy)
    port.doRead = functools.partial(_accept_one, port)
    _wake_one(reactor, port.fileno())
    return port


def _wake_one(reactor, fd):
    """
    Register the listening socket in epoll with EPOLLEXCLUSIVE (Linux 4.5),
    which Twisted's epoll reactor does not offer: a new connection then
    wakes one idle worker, the one that waited longest, rather than all.
    """
    poller = getattr(reactor, "_poller", None)  # (Twisted's epoll object, a private)
    exclusive = getattr(select, "EPOLLEXCLUSIVE", None)
    if exclusive is None or not isinstance(poller, select.epoll):
        return
    poller.unregister(fd)
    poller.register(fd, select.EPOLLIN | exclusive)


def _accept_one(port):
    """
    Take one waiting connection per wake-up, not Twisted's batch of up to
    all of them: a burst of connections then spreads over the workers (the
    idle ones take the rest) instead of piling on the one that woke first.
    """
    port.numberAccepts = 1
    type(port).doRead(port)


class ParentWatch(service.Service):
    """A worker stops when its parent is gone (killed with SIGKILL, say)."""

    def __init__(self, reactor, interval=1):
        self.reactor = reactor
        self.parent_pid = os.getppid()
        self._loop = task.LoopingCall(self._look)
        self._loop.clock = reactor
        self.interval = interval

    def startService(self):
        super().startService()
        self._loop.start(self.interval, now=False)

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _look(self):
        if os.getppid() != self.parent_pid:
            log.warn("worker: the parent process (PID {pid}) is gone; stopping",
                     pid=self.parent_pid)
            self._loop.stop()
            self.reactor.stop()
