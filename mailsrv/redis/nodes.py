"""
Queue ownership between nodes: each node delivers the spool of its own
C{data_dir/nodes/NODE/}, and holds a lease in Redis (C{mailsrv:node:NODE})
that it renews while it runs. When a node dies its lease lapses, and
another node takes its queue over: it moves the dead node's entries into
its own spool (L{mailsrv.queue.spool.Spool.adopt}) and delivers them.

A takeover needs three things: the dead node's lease gone while Redis has
been up, as this node saw it, for a whole lease (after a Redis restart,
which forgets every lease, the living nodes renew theirs first); the
takeover key C{mailsrv:takeover:NODE} (one node takes a queue over, not
two); and the dead node's own lock (C{data_dir/nodes/NODE/mailsrv.lock}),
which no running process holds. While Redis is away nothing is taken
over: each node goes on delivering its own queue.
"""

import fcntl
import os

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from mailsrv.datadir_lock import LOCK_FILE
from mailsrv.queue.spool import Spool
from mailsrv.redis.link import RedisUnavailable
from mailsrv.redis.sessions import LEASE, PREFIX, RENEW, RENEW_LEASE

log = Logger()


class NodeLease(service.Service):
    """
    @ivar redis: the L{mailsrv.redis.link.RedisLink}.
    @ivar spool: this node's L{Spool}, which taken-over entries join.
    @ivar wake: tells the queue runner that the spool has new entries.
    """

    deferToThread = staticmethod(threads.deferToThread)

    def __init__(self, redis, settings, spool, wake, clock, token):
        self.redis = redis
        self.node = settings.node
        self.nodes_dir = settings.data_dir / "nodes"
        self.spool = spool
        self.wake = wake
        self.clock = clock
        self.token = token
        self._up_since = clock.seconds() if redis.up else None
        self._loop = None
        redis.observe(self._redis_changed)

    def _redis_changed(self, up):
        if not up:
            self._up_since = None
        elif self._up_since is None:
            self._up_since = self.clock.seconds()

    def startService(self):
        super().startService()
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(RENEW, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    @defer.inlineCallbacks
    def tick(self):
        """Renew this node's lease, then take over the queues of dead nodes."""
        try:
            yield self.redis.eval(RENEW_LEASE, [PREFIX + "node:" + self.node],
                                  [self.token, LEASE * 1000])
            if self._up_since is None or self.clock.seconds() - self._up_since < LEASE:
                return
            others = yield self.deferToThread(self._queued_nodes)
            for other in others:
                if not (yield self.redis.execute("EXISTS", PREFIX + "node:" + other)):
                    yield self._take_over(other)
        except RedisUnavailable:
            pass  # (the link has logged the outage)
        except Exception:
            log.failure("queue: looking for the queues of dead nodes")

    def _queued_nodes(self):
        """The other nodes whose spool holds entries."""
        try:
            names = sorted(path.name for path in self.nodes_dir.iterdir())
        except FileNotFoundError:
            return []
        return [name for name in names if name != self.node
                and any((self.nodes_dir / name / "queue" / "env").glob("*.json"))]

    @defer.inlineCallbacks
    def _take_over(self, other):
        taken = yield self.redis.execute("SET", PREFIX + "takeover:" + other, self.token,
                                         "NX", "PX", LEASE * 1000)
        if taken is None:
            return  # another node is at it
        moved = yield self.deferToThread(self._adopt, other)
        if not moved:
            return
        log.warn("queue: took over {n} message(s) of node {node}, whose lease lapsed "
                 "(a message it was delivering when it died may be delivered again)",
                 n=len(moved), node=other)
        self.wake()

    def _adopt(self, other):
        """
        The dead node's entries moved into our spool, holding its lock; or
        L{None} when a process holds that lock (it runs after all).
        """
        fd = os.open(self.nodes_dir / other / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
            return self.spool.adopt(Spool(self.nodes_dir / other / "queue"))
        finally:
            os.close(fd)
