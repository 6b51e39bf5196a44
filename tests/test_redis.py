"""
[sessions] backend = "redis": the connection (RedisLink, on a Clock with a
fake endpoint: its outages, their one log line each, the command deadline)
and the session store against a real redis-server (tests/redisserver.py):
the same rules as the memory store, shared by two stores as by two nodes,
and what each part does while Redis is away.
"""

import os
from pathlib import Path

from OpenSSL import SSL
from twisted.internet import defer, error, reactor, task
from twisted.python import failure
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from mailsrv import tls
from mailsrv.config import parse_redis_url
from mailsrv.redis.events import NewMailEvents
from mailsrv.redis.link import RETRY_DELAYS, RedisLink, RedisUnavailable
from mailsrv.datadir_lock import DataDirLock
from mailsrv.queue.spool import Envelope, RecipientState, Spool
from mailsrv.redis.nodes import NodeLease
from mailsrv.redis.sessions import LEASE, RENEW, RedisSessionStore
from tests.helpers import log_lines, make_settings
from tests import certs, redisserver
from tests.integration.harness import free_port
from tests.test_sessions import ALICE, BOB, Limits


class FakeNetwork:
    """
    The link's C{endpoint(host, port)}: each connects at once (over a
    L{ClosingTransport} on C{clock}), refuses (C{self.refuse}: all;
    C{self.down}: those C{(host, port)}s), or never answers (C{self.silent}).
    """

    def __init__(self, clock):
        self.clock = clock
        self.refuse = False
        self.down = set()
        self.silent = set()
        self.connections = []  # protocols, in order
        self.reached = []  # the (host, port) of each

    def __call__(self, host, port):
        return _FakeEndpoint(self, (host, port))


class _FakeEndpoint:
    def __init__(self, network, where):
        self.network = network
        self.where = where

    def connect(self, factory):
        if self.network.refuse or self.where in self.network.down:
            return defer.fail(ConnectionRefusedError("refused"))
        if self.where in self.network.silent:
            return defer.Deferred()
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(ClosingTransport(protocol, self.network.clock))
        self.network.connections.append(protocol)
        self.network.reached.append(self.where)
        return defer.succeed(protocol)


class ClosingTransport(StringTransport):
    """A StringTransport whose closing ends the connection at the clock's next turn."""

    def __init__(self, protocol, clock):
        super().__init__()
        self.protocol = protocol
        self.clock = clock

    def loseConnection(self):
        if not self.disconnecting:
            super().loseConnection()
            self.clock.callLater(0, self.protocol.connectionLost,
                                 failure.Failure(error.ConnectionDone()))

    def resumeProducing(self):
        if not self.disconnecting:  # (a reactor's transport lets the reader resume too)
            super().resumeProducing()

    abortConnection = loseConnection


class RedisLinkTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.endpoint = FakeNetwork(self.clock)
        self.log = log_lines(self)
        self.link = RedisLink(parse_redis_url("redis://:pw@cache/2"), 2, self.clock,
                              self.endpoint)
        self.changes = []
        self.link.observe(self.changes.append)

    def connection(self):
        return self.endpoint.connections[-1]

    def answer(self, *replies):
        for reply in replies:
            self.connection().dataReceived(reply)
        self.clock.advance(0)  # (what the replies closed is closed)

    def start(self):
        self.link.startService()
        self.addCleanup(self.link.stopService)
        self.answer(b"+OK\r\n", b"+OK\r\n", b"+PONG\r\n")

    def test_logs_in_chooses_the_database_then_is_up(self):
        self.start()
        self.assertEqual(self.connection().transport.value(),
                         b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"
                         b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n*1\r\n$4\r\nPING\r\n")
        self.assertTrue(self.link.up)
        self.assertEqual(self.changes, [True])
        self.assertEqual(self.log, ["Redis connected: redis://cache:6379/2"])

    def test_a_command_and_its_reply(self):
        self.start()
        d = self.link.execute("GET", "k")
        self.answer(b"$1\r\nv\r\n")
        self.assertEqual(self.successResultOf(d), "v")

    def test_an_error_reply_is_no_outage(self):
        self.start()
        d = self.link.execute("BOGUS")
        self.answer(b"-ERR unknown command\r\n")
        self.failureResultOf(d)
        self.assertTrue(self.link.up)

    def test_one_line_when_it_goes_away_and_one_when_it_is_back(self):
        self.start()
        self.endpoint.refuse = True
        self.connection().transport.loseConnection()
        self.clock.advance(0)
        self.assertFalse(self.link.up)
        # commands fail at once, without waiting for a timeout
        self.failureResultOf(self.link.execute("GET", "k"), RedisUnavailable)
        for delay in RETRY_DELAYS * 3:  # every attempt refused: no more lines
            self.clock.advance(delay)
        self.endpoint.refuse = False
        self.clock.advance(RETRY_DELAYS[-1])
        self.answer(b"+OK\r\n", b"+OK\r\n", b"+PONG\r\n")
        self.assertTrue(self.link.up)
        self.assertEqual(self.changes, [True, False, True])
        lines = self.log
        self.assertEqual(len(lines), 3, lines)
        self.assertTrue(lines[1].startswith(
            "Redis went away: redis://cache:6379/2: connection lost; reconnecting;"), lines[1])
        self.assertIn("POP-before-SMTP windows are closed", lines[1])
        self.assertEqual(lines[2], "Redis is back: redis://cache:6379/2")

    def test_no_answer_in_time_is_an_outage(self):
        self.start()
        d = self.link.execute("GET", "k")
        self.clock.advance(2)
        self.assertIn("no answer within 2 s", str(self.failureResultOf(d, RedisUnavailable).value))
        self.assertFalse(self.link.up)
        self.assertTrue(self.connection().transport.disconnecting)

    def test_unreachable_at_start(self):
        self.endpoint.refuse = True
        self.link.startService()
        self.addCleanup(self.link.stopService)
        self.assertFalse(self.link.up)
        self.assertEqual(len(self.log), 1)
        self.assertTrue(self.log[0].startswith("Redis unreachable: redis://cache:6379/2: "))

    def test_stopping_is_no_outage(self):
        self.start()
        self.link.stopService()
        self.assertTrue(self.connection().transport.disconnecting)
        self.assertEqual(self.changes, [True])
        self.assertEqual(len(self.log), 1)

    def test_stopping_stops_retrying(self):
        self.endpoint.refuse = True
        self.link.startService()
        self.link.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


def bulk(*words):
    """A RESP array of bulk strings, as a sentinel names a master."""
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


MASTER_ROLE = b"*3\r\n$6\r\nmaster\r\n:42\r\n*0\r\n"
REPLICA_ROLE = (b"*5\r\n$5\r\nslave\r\n$8\r\n10.0.0.2\r\n:6379\r\n"
                b"$9\r\nconnected\r\n:42\r\n")


class SentinelLinkTests(unittest.TestCase):
    """redis+sentinel://: the link asks the sentinels for the master, on a Clock."""

    URL = "redis+sentinel://:pw@s1:26379,s2:26380/mymaster/2"

    def setUp(self):
        self.clock = task.Clock()
        self.network = FakeNetwork(self.clock)
        self.log = log_lines(self)
        self.link = RedisLink(parse_redis_url(self.URL), 2, self.clock, self.network)
        self.changes = []
        self.link.observe(self.changes.append)

    def connection(self):
        return self.network.connections[-1]

    def answer(self, *replies):
        for reply in replies:
            self.connection().dataReceived(reply)
        self.clock.advance(0)  # (what the replies closed is closed)

    def sentinel_names(self, host, port):
        """The sentinel connected to last names C{host:port}: the link connects there."""
        self.assertEqual(self.connection().transport.value(),
                         b"*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n"
                         b"$8\r\nmymaster\r\n")
        self.answer(bulk(host, port))

    def master_answers(self, role=MASTER_ROLE):
        self.answer(b"+OK\r\n", b"+OK\r\n", role)

    def start(self):
        self.link.startService()
        self.addCleanup(self.link.stopService)

    def test_asks_a_sentinel_then_logs_in_to_the_master_it_names(self):
        self.start()
        self.assertEqual(self.network.reached, [("s1", 26379)])
        self.sentinel_names(b"10.0.0.1", b"6379")
        self.assertTrue(self.network.connections[0].transport.disconnecting)
        self.assertEqual(self.network.reached[-1], ("10.0.0.1", 6379))
        self.master_answers()
        # the password is the master's: the sentinel got none
        self.assertEqual(self.connection().transport.value(),
                         b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"
                         b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n*1\r\n$4\r\nROLE\r\n")
        self.assertTrue(self.link.up)
        self.assertEqual(self.log, ["Redis connected: redis+sentinel://s1:26379,s2:26380/"
                                    "mymaster/2 (master 10.0.0.1:6379)"])

    def test_a_sentinel_down_or_silent_the_next_is_asked_and_then_asked_first(self):
        self.network.down.add(("s1", 26379))
        self.start()
        self.assertEqual(self.network.reached, [("s2", 26380)])
        self.sentinel_names(b"10.0.0.1", b"6379")
        self.master_answers()
        self.connection().transport.loseConnection()
        self.clock.advance(0)
        self.network.down.clear()
        self.clock.advance(RETRY_DELAYS[0])
        self.assertEqual(self.network.reached[-1], ("s2", 26380))  # the one that answered
        self.network.silent.add(("s2", 26380))
        self.sentinel_names(b"10.0.0.1", b"6379")
        self.master_answers()
        self.connection().transport.loseConnection()
        self.clock.advance(0)
        self.clock.advance(RETRY_DELAYS[0])
        self.clock.advance(2)  # s2 never answers: s1 is asked after the deadline
        self.assertEqual(self.network.reached[-1], ("s1", 26379))
        self.sentinel_names(b"10.0.0.3", b"6379")
        self.master_answers()
        self.assertTrue(self.link.up)
        self.assertEqual(self.log[-1], "Redis is back: redis+sentinel://s1:26379,s2:26380/"
                                       "mymaster/2 (master 10.0.0.3:6379)")

    def test_no_sentinel_names_it_one_line_saying_what_each_said(self):
        self.network.down.add(("s1", 26379))
        self.start()
        self.answer(b"*-1\r\n")  # s2 does not know the master
        self.assertFalse(self.link.up)
        self.assertEqual(len(self.log), 1, self.log)
        self.assertTrue(self.log[0].startswith(
            "Redis unreachable: redis+sentinel://s1:26379,s2:26380/mymaster/2: no sentinel "
            "named master 'mymaster' (s1:26379: refused; s2:26380: knows no master "
            "'mymaster'); retrying;"), self.log[0])
        self.network.down.clear()
        self.clock.advance(RETRY_DELAYS[0])
        self.sentinel_names(b"10.0.0.1", b"6379")
        self.master_answers()
        self.assertTrue(self.link.up)

    def test_a_sentinel_whose_tls_fails_is_named_with_the_reason(self):
        self.start()
        self.connection().connectionLost(failure.Failure(
            SSL.Error([("SSL routines", "", "certificate verify failed")])))
        self.answer(b"*-1\r\n")  # s2
        self.assertEqual(len(self.log), 1, self.log)
        self.assertIn(": no sentinel named master 'mymaster' (s1:26379: TLS failed: certificate "
                      "verify failed; s2:26380: knows no master 'mymaster'); retrying;",
                      self.log[0])

    def test_the_named_master_says_it_is_a_replica_the_sentinels_are_asked_again(self):
        self.start()
        self.sentinel_names(b"10.0.0.1", b"6379")
        self.master_answers(REPLICA_ROLE)
        self.assertFalse(self.link.up)
        self.assertTrue(self.connection().transport.disconnecting)
        self.assertIn("10.0.0.1:6379, named by the sentinels, is a slave, not the master",
                      self.log[0])
        self.clock.advance(RETRY_DELAYS[0])
        self.sentinel_names(b"10.0.0.2", b"6379")
        self.master_answers()
        self.assertTrue(self.link.up)
        self.assertEqual(self.network.reached[-1], ("10.0.0.2", 6379))

    def test_readonly_is_an_outage_and_the_new_master_is_found(self):
        self.start()
        self.sentinel_names(b"10.0.0.1", b"6379")
        self.master_answers()
        d = self.link.execute("SET", "k", "v")
        self.answer(b"-READONLY You can't write against a read only replica.\r\n")
        self.assertIn("10.0.0.1:6379 is no longer the master",
                      str(self.failureResultOf(d, RedisUnavailable).value))
        self.assertFalse(self.link.up)
        self.assertTrue(self.log[1].startswith(
            "Redis went away: redis+sentinel://s1:26379,s2:26380/mymaster/2 (master "
            "10.0.0.1:6379): 10.0.0.1:6379 is no longer the master (READONLY"), self.log[1])
        self.clock.advance(RETRY_DELAYS[0])
        self.sentinel_names(b"10.0.0.2", b"6379")
        self.master_answers()
        self.assertEqual(self.changes, [True, False, True])
        self.assertEqual(self.log[2], "Redis is back: redis+sentinel://s1:26379,s2:26380/"
                                      "mymaster/2 (master 10.0.0.2:6379)")

    def test_other_error_replies_are_no_outage(self):
        self.start()
        self.sentinel_names(b"10.0.0.1", b"6379")
        self.master_answers()
        d = self.link.execute("BOGUS")
        self.answer(b"-ERR unknown command\r\n")
        self.failureResultOf(d)
        self.assertTrue(self.link.up)

    def test_stopping_while_asking_leaves_nothing_behind(self):
        self.network.silent.add(("s1", 26379))
        self.start()
        self.link.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.log, [])

    def test_a_plain_redis_url_never_asks_role(self):
        link = RedisLink(parse_redis_url("redis://cache"), 2, self.clock, self.network)
        link.startService()
        self.addCleanup(link.stopService)
        self.assertEqual(self.network.reached, [("cache", 6379)])
        self.assertEqual(self.connection().transport.value(), b"*1\r\n$4\r\nPING\r\n")


class RealRedisTestCase(unittest.TestCase):
    """A redis-server for each test, and stores on it whose time is a Clock."""

    def setUp(self):
        self.redis = redisserver.started(self)
        self.clock = task.Clock()
        self.log = log_lines(self)

    @defer.inlineCallbacks
    def link(self):
        """A RedisLink to the server, up."""
        link = RedisLink(parse_redis_url(self.redis.url), 2, reactor)
        up = defer.Deferred()
        link.observe(lambda is_up: is_up and not up.called and up.callback(None))
        link.startService()
        self.addCleanup(link.stopService)
        yield up
        return link

    @defer.inlineCallbacks
    def store(self, window=1800, limits=Limits()):
        return RedisSessionStore((yield self.link()), window, self.clock, limits)

    def went_away(self, link):
        d = defer.Deferred()
        link.observe(lambda is_up: not is_up and not d.called and d.callback(None))
        self.redis.stop()
        return d


class RedisWindowTests(RealRedisTestCase):
    @defer.inlineCallbacks
    def test_a_login_on_one_node_opens_the_window_on_the_other(self):
        a, b = (yield self.store()), (yield self.store())
        yield a.record_login(ALICE, "::ffff:127.0.0.2", "imap")
        yield a.record_login(BOB, "127.0.0.3", "smtp")  # no window
        self.assertEqual((yield b.window_user("127.0.0.2")), ALICE)
        self.assertIsNone((yield b.window_user("127.0.0.3")))
        self.assertIsNone((yield b.window_user("not an ip")))
        self.clock.advance(1799)
        self.assertEqual((yield b.window_user("127.0.0.2")), ALICE)
        self.clock.advance(1)
        self.assertIsNone((yield b.window_user("127.0.0.2")))

    @defer.inlineCallbacks
    def test_redis_lets_it_go_with_the_window(self):
        store = yield self.store(window=60)
        yield store.record_login(ALICE, "127.0.0.2", "pop3")
        ttl = int(self.redis.command("PTTL", "mailsrv:window:127.0.0.2")[1:-2])
        self.assertTrue(0 < ttl <= 60000, ttl)

    @defer.inlineCallbacks
    def test_while_redis_is_away_windows_are_closed_and_logins_recorded_nowhere(self):
        store = yield self.store()
        yield store.record_login(ALICE, "127.0.0.2", "pop3")
        yield self.went_away(store.redis)
        self.assertIsNone((yield store.window_user("127.0.0.2")))
        self.assertIsNone((yield store.record_login(BOB, "127.0.0.3", "pop3")))


class RedisThrottlingTests(RealRedisTestCase):
    @defer.inlineCallbacks
    def test_five_wrong_passwords_on_one_node_lock_out_on_the_other(self):
        a, b = (yield self.store()), (yield self.store())
        ip, pair = "198.51.100.7", "198.51.100.7/" + ALICE
        for n in range(20):  # one password repeated counts once
            self.assertEqual((yield a.record_failure(ip, ALICE, b"same")), [])
        for n in range(3):
            self.assertEqual((yield b.record_failure(ip, ALICE, b"guess-%d" % n)), [])
        self.assertIsNone((yield b.login_refused(ip, ALICE)))
        self.assertEqual((yield a.record_failure(ip, ALICE, b"guess-last")), [pair])
        self.assertEqual((yield b.login_refused(ip, ALICE)), pair)
        self.assertIsNone((yield b.login_refused(ip, BOB)))
        self.assertIsNone((yield b.login_refused("198.51.100.8", ALICE)))
        self.assertEqual((yield b.locked()), [(pair, 900.0)])
        self.clock.advance(900)
        self.assertIsNone((yield b.login_refused(ip, ALICE)))
        self.assertEqual((yield b.locked()), [])
        # a fresh count
        self.assertEqual((yield a.record_failure(ip, ALICE, b"after")), [])

    @defer.inlineCallbacks
    def test_failures_expire_with_the_window(self):
        store = yield self.store()
        for n in range(4):
            yield store.record_failure("198.51.100.7", ALICE, b"old-%d" % n)
        self.clock.advance(600)
        for n in range(4):
            self.assertEqual((yield store.record_failure("198.51.100.7", ALICE, b"new-%d" % n)),
                             [])

    @defer.inlineCallbacks
    def test_per_ip_limit_and_a_success_clears_only_its_own_key(self):
        store = yield self.store(limits=type("Tight", (Limits,), {"max_failures_per_ip": 7})())
        ip = "198.51.100.7"
        for n in range(4):
            yield store.record_failure(ip, ALICE, b"a-%d" % n)
        yield store.record_failure(ip, BOB, b"b-0")
        yield store.clear_failures(ip, BOB)
        self.assertEqual((yield store.record_failure(ip, ALICE, b"a-4")), [f"{ip}/{ALICE}"])
        self.assertEqual((yield store.record_failure(ip, BOB, b"b-1")), [ip])
        self.assertEqual((yield store.login_refused(ip, "carol@example.test")), ip)

    @defer.inlineCallbacks
    def test_unlock_by_ip_user_or_key(self):
        store = yield self.store()
        for ip in ("198.51.100.7", "198.51.100.8"):
            for user in (ALICE, BOB):
                for n in range(5):
                    yield store.record_failure(ip, user, b"%d" % n)
        yield store.record_failure("198.51.100.9", ALICE, b"x")  # failing, not locked
        self.assertEqual(sorted((yield store.unlock("198.51.100.7"))),
                         [f"198.51.100.7/{ALICE}", f"198.51.100.7/{BOB}"])
        self.assertEqual((yield store.unlock(BOB.upper())), [f"198.51.100.8/{BOB}"])
        self.assertEqual((yield store.unlock(f"198.51.100.8/{ALICE}")),
                         [f"198.51.100.8/{ALICE}"])
        self.assertEqual((yield store.locked()), [])
        self.assertEqual((yield store.unlock(ALICE)), [])
        # the failing key was forgotten too: four more do not lock it out
        for n in range(4):
            self.assertEqual((yield store.record_failure("198.51.100.9", ALICE, b"y%d" % n)), [])

    @defer.inlineCallbacks
    def test_lockout_zero_counts_but_never_refuses(self):
        store = yield self.store(limits=type("Off", (Limits,), {"lockout": 0})())
        for n in range(10):
            yield store.record_failure("198.51.100.7", ALICE, b"guess-%d" % n)
        self.assertIsNone((yield store.login_refused("198.51.100.7", ALICE)))

    @defer.inlineCallbacks
    def test_while_redis_is_away_throttling_fails_open(self):
        store = yield self.store()
        for n in range(5):
            yield store.record_failure("198.51.100.7", ALICE, b"%d" % n)
        yield self.went_away(store.redis)
        self.assertIsNone((yield store.login_refused("198.51.100.7", ALICE)))
        self.assertEqual((yield store.record_failure("198.51.100.7", ALICE, b"9")), [])
        self.assertIsNone((yield store.clear_failures("198.51.100.7", ALICE)))
        # the admin's commands say so
        yield self.assertFailure(store.locked(), RedisUnavailable)
        yield self.assertFailure(store.unlock(ALICE), RedisUnavailable)
        lines = [line for line in self.log if "Redis" in line]
        self.assertEqual(len(lines), 2, lines)  # connected, went away: once

    @defer.inlineCallbacks
    def test_recovery_without_restart(self):
        store = yield self.store()
        yield self.went_away(store.redis)
        back = defer.Deferred()
        store.redis.observe(lambda up: up and not back.called and back.callback(None))
        self.redis.start()
        yield back
        yield store.record_login(ALICE, "127.0.0.2", "pop3")
        self.assertEqual((yield store.window_user("127.0.0.2")), ALICE)
        self.assertIn("Redis is back: " + str(store.redis.address), self.log)


class RedisMaildropLockTests(RealRedisTestCase):
    @defer.inlineCallbacks
    def test_one_pop3_session_per_maildrop_across_nodes(self):
        a, b = (yield self.store()), (yield self.store())
        self.assertTrue((yield a.lock_maildrop(ALICE)))
        self.assertFalse((yield a.lock_maildrop(ALICE)))
        self.assertFalse((yield b.lock_maildrop(ALICE)))
        self.assertTrue((yield b.lock_maildrop(BOB)))
        yield a.unlock_maildrop(ALICE)
        yield b.unlock_maildrop(BOB)
        self.assertTrue((yield b.lock_maildrop(ALICE)))
        yield b.unlock_maildrop(ALICE)

    @defer.inlineCallbacks
    def test_the_lease_is_renewed_while_the_session_lives(self):
        store = yield self.store()
        yield store.lock_maildrop(ALICE)
        self.addCleanup(store.unlock_maildrop, ALICE)
        key = "mailsrv:maildrop:" + ALICE
        self.redis.command("PEXPIRE", key, 5000)
        self.clock.advance(RENEW)
        yield task.deferLater(reactor, 0.05, lambda: None)
        ttl = int(self.redis.command("PTTL", key)[1:-2])
        self.assertTrue(5000 < ttl <= LEASE * 1000, ttl)

    @defer.inlineCallbacks
    def test_a_dead_nodes_lock_lapses(self):
        a, b = (yield self.store()), (yield self.store())
        yield a.lock_maildrop(ALICE)
        a._renewal.stop()  # (a is killed: nothing renews, nothing releases)
        self.redis.command("PEXPIRE", "mailsrv:maildrop:" + ALICE, 1)  # (the lease ends)
        yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertTrue((yield b.lock_maildrop(ALICE)))
        b.unlock_maildrop(ALICE)

    @defer.inlineCallbacks
    def test_while_redis_is_away_this_nodes_locks_still_hold(self):
        store = yield self.store()
        yield self.went_away(store.redis)
        self.assertTrue((yield store.lock_maildrop(ALICE)))
        self.assertFalse((yield store.lock_maildrop(ALICE)))
        yield store.unlock_maildrop(ALICE)
        self.assertTrue((yield store.lock_maildrop(ALICE)))
        yield store.unlock_maildrop(ALICE)



class NodeLeaseTests(RealRedisTestCase):
    """Node a takes over the queue of node b once b's lease has lapsed."""

    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        tmp = self.mktemp()
        self.settings = {name: make_settings(tmp, server={"node": name},
                                             sessions={"backend": "redis"})
                         for name in ("a", "b")}
        self.spool = Spool(self.settings["a"].node_dir / "queue")
        self.dead = Spool(self.settings["b"].node_dir / "queue")
        self.dead.save(Envelope(id="E1", sender="x@example.test",
                                recipients=[RecipientState("y@remote.test")]))
        self.dead.message_path("E1").write_bytes(b"Subject: x\r\n\r\nx\r\n")
        self.woken = []
        self.lease = NodeLease((yield self.link()), self.settings["a"], self.spool,
                               lambda: self.woken.append(True), self.clock, "token-a")
        self.lease.deferToThread = lambda f, *a: defer.maybeDeferred(f, *a)

    @defer.inlineCallbacks
    def test_renews_its_own_lease(self):
        yield self.lease.tick()
        self.assertEqual(self.redis.command("GET", "mailsrv:node:a"), b"$7\r\ntoken-a\r\n")

    @defer.inlineCallbacks
    def test_takes_over_a_dead_nodes_queue(self):
        self.clock.advance(LEASE - 1)
        yield self.lease.tick()
        self.assertEqual(self.spool.ids(), [])  # Redis not up for a whole lease yet
        self.clock.advance(1)
        yield self.lease.tick()
        self.assertEqual((self.spool.ids(), self.dead.ids()), (["E1"], []))
        self.assertEqual(self.woken, [True])
        self.assertIn("queue: took over 1 message(s) of node b, whose lease lapsed "
                      "(a message it was delivering when it died may be delivered again)",
                      self.log)

    @defer.inlineCallbacks
    def test_a_living_node_keeps_its_queue(self):
        self.redis.command("SET", "mailsrv:node:b", "token-b")
        self.clock.advance(LEASE)
        yield self.lease.tick()
        self.assertEqual(self.dead.ids(), ["E1"])

    @defer.inlineCallbacks
    def test_a_node_that_holds_its_lock_keeps_its_queue(self):
        lock = DataDirLock(self.settings["b"])
        lock.acquire()
        self.addCleanup(lambda: [os.close(fd) for fd in (lock._fd, lock._shared_fd)])
        self.clock.advance(LEASE)
        yield self.lease.tick()
        self.assertEqual(self.dead.ids(), ["E1"])

    @defer.inlineCallbacks
    def test_nothing_is_taken_over_while_redis_is_away(self):
        yield self.went_away(self.lease.redis)
        self.clock.advance(LEASE)
        yield self.lease.tick()
        self.assertEqual(self.dead.ids(), ["E1"])


class DeliveryRecorder:
    """A store that records what other nodes delivered and what it synced."""

    def __init__(self):
        self.delivered = []
        self.synced = 0
        self.got = defer.Deferred()

    def delivered_elsewhere(self, user, folder, names):
        self.delivered.append((user, folder, names))
        if not self.got.called:
            self.got.callback(None)

    def sync_open_folders(self):
        self.synced += 1


class NewMailEventsTests(RealRedisTestCase):
    """Two nodes' L{NewMailEvents} on one redis-server."""

    @defer.inlineCallbacks
    def node(self, name):
        store = DeliveryRecorder()
        events = NewMailEvents((yield self.link()), store, "token-" + name)
        subscribed = self.subscribed(events)
        events.startService()
        self.addCleanup(events.stopService)
        yield subscribed
        return events, store

    def subscribed(self, events):
        """A Deferred that fires once C{events} is (again) subscribed."""
        d = defer.Deferred()
        events.subscriber.observe(
            lambda up: up and not d.called and reactor.callLater(0.05, d.callback, None))
        return d

    @defer.inlineCallbacks
    def test_a_delivery_on_one_node_reaches_the_other_not_itself(self):
        a, a_store = yield self.node("a")
        b, b_store = yield self.node("b")
        a.publish(ALICE, "INBOX", ["1700000000.M1P2.host,S=10"])
        yield b_store.got
        self.assertEqual(b_store.delivered, [(ALICE, "INBOX", ["1700000000.M1P2.host,S=10"])])
        self.assertEqual(a_store.delivered, [])

    @defer.inlineCallbacks
    def test_a_message_that_names_paths_is_ignored_with_a_line(self):
        _, b_store = yield self.node("b")
        for message in ('["token-x", "%s", "INBOX", ["../../etc/x"]]' % ALICE, "{"):
            self.redis.command("PUBLISH", "mailsrv:delivered:0", message)
        self.redis.command("PUBLISH", "mailsrv:delivered:0",
                           '["token-x", "%s", "INBOX", ["ok"]]' % ALICE)
        yield b_store.got
        self.assertEqual(b_store.delivered, [(ALICE, "INBOX", ["ok"])])
        self.assertEqual(sum("new-mail events: ignoring a message that does not parse" in line
                             for line in self.log), 2)

    @defer.inlineCallbacks
    def test_while_redis_is_away_publishing_fails_quietly_and_open_folders_sync_after(self):
        a, a_store = yield self.node("a")
        yield self.went_away(a.redis)
        a.publish(ALICE, "INBOX", ["x"])  # no error, no line of its own
        back = self.subscribed(a)
        self.redis.start()
        yield back
        self.assertEqual(a_store.synced, 1)
        self.assertFalse([line for line in self.log if "new-mail event" in line])


class RealTLSTests(unittest.TestCase):
    """rediss:// to a real redis-server that speaks only TLS, with a CA of the test's."""

    def setUp(self):
        self.log = log_lines(self)
        self.clock = task.Clock()

    def server(self, **kwargs):
        return redisserver.started(self, port=free_port(), tls=True, **kwargs)

    def link(self, server, url=None, **sessions):
        """A RedisLink made as start-up makes it, from [sessions] keys; started."""
        settings = make_settings(self.mktemp(), sessions={
            "backend": "redis", "redis_url": url or server.url, **sessions})
        link = RedisLink(settings.sessions.redis_url, 2, reactor,
                         tls=tls.redis_client_tls(settings))
        link.startService()
        self.addCleanup(link.stopService)
        return link

    def changed(self, link):
        """A Deferred of the link's next change: whether it is up."""
        d = defer.Deferred()
        link.observe(lambda up: not d.called and d.callback(up))
        return d

    @defer.inlineCallbacks
    def test_a_store_over_tls_with_a_client_certificate_and_an_acl_user(self):
        server = self.server(client_certificates=True, user=("mailsrv", "s3cret"))
        files = server.tls
        url = f"rediss://mailsrv:s3cret@localhost:{server.port}/0"
        links = [self.link(server, url, redis_ca=str(files.ca), redis_cert=str(files.client_cert),
                           redis_key=str(files.client_key)) for _ in range(2)]
        for link in links:
            if link.up is None:
                self.assertTrue((yield self.changed(link)))
        a, b = (RedisSessionStore(link, 1800, self.clock, Limits()) for link in links)
        yield a.record_login(ALICE, "127.0.0.2", "imap")
        self.assertEqual((yield b.window_user("127.0.0.2")), ALICE)
        self.assertIn(b"127.0.0.2", server.command("KEYS", "mailsrv:window:*"))
        self.assertIn(f"Redis connected: rediss://localhost:{server.port}/0", self.log)

    @defer.inlineCallbacks
    def test_a_certificate_from_another_ca_is_refused_with_one_clear_line(self):
        server = self.server()
        other = Path(self.mktemp()).absolute()
        other.mkdir(parents=True)
        ca, _ = certs.make("another CA", ca=True).write(other, "ca")
        link = self.link(server, redis_ca=str(ca))
        self.assertFalse((yield self.changed(link)))
        lines = [line for line in self.log if "Redis" in line]
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith(
            f"Redis unreachable: rediss://localhost:{server.port}/0: TLS failed: certificate "
            "verify failed; retrying;"), lines[0])

    @defer.inlineCallbacks
    def test_no_client_certificate_where_redis_wants_one(self):
        server = self.server(client_certificates=True)
        link = self.link(server, redis_ca=str(server.tls.ca))
        self.assertFalse((yield self.changed(link)))
        lines = [line for line in self.log if "Redis" in line]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(f"rediss://localhost:{server.port}/0: TLS failed: ", lines[0])
        self.assertIn("certificate required", lines[0])


class SentinelTestCase(unittest.TestCase):
    """A real master, its replica and one sentinel watching them (over TLS if C{tls})."""

    tls = None

    def setUp(self):
        self.log = log_lines(self)
        self.clock = task.Clock()
        self.master = redisserver.started(self, port=free_port(), tls=self.tls)
        self.replica = redisserver.started(self, port=free_port(), tls=self.tls,
                                           replica_of=self.master.port)
        self.sentinel = redisserver.started(
            self, redisserver.RedisSentinel, port=free_port(), name="m",
            master_port=self.master.port, tls=self.tls)

    def link(self):
        sessions = {"redis_url": self.sentinel.url}
        if self.tls is not None:
            sessions["redis_ca"] = str(self.tls.ca)
        settings = make_settings(self.mktemp(), sessions=sessions)
        link = RedisLink(settings.sessions.redis_url, 2, reactor,
                         tls=tls.redis_client_tls(settings))
        link.startService()
        self.addCleanup(link.stopService)
        return link

    @defer.inlineCallbacks
    def until(self, what, condition, timeout=30):
        """Poll C{condition()} (a Deferred or a value) every 0.1 s until it holds."""
        deadline = reactor.seconds() + timeout
        while True:
            try:
                if (yield defer.maybeDeferred(condition)):
                    return
            except RedisUnavailable:
                pass
            if reactor.seconds() > deadline:
                self.fail(f"{what}: not within {timeout} s")
            yield task.deferLater(reactor, 0.1, lambda: None)

    def replica_known(self):
        """Whether the sentinel knows a replica it could promote."""
        reply = self.sentinel.command("SENTINEL", "REPLICAS", "m")
        return b"\r\nslave\r\n" in reply and b"s_down" not in reply

    @defer.inlineCallbacks
    def failover(self):
        yield self.until("the sentinel knows the replica", self.replica_known)
        yield self.until("SENTINEL FAILOVER accepted", lambda: self.sentinel.command(
            "SENTINEL", "FAILOVER", "m").startswith(b"+OK"))



class RealSentinelTests(SentinelTestCase):
    """
    redis+sentinel://: the store works, then goes on working on the new
    master after a failover, without a restart.
    """

    @defer.inlineCallbacks
    def test_the_store_follows_the_master_through_a_failover(self):
        link = self.link()
        store = RedisSessionStore(link, 1800, self.clock, Limits())
        yield self.until("up", lambda: link.up)
        self.assertEqual(link.master, ("127.0.0.1", self.master.port))
        yield store.record_login(ALICE, "127.0.0.2", "imap")
        self.assertIn(b"127.0.0.2", self.master.command("KEYS", "*"))
        yield self.failover()

        @defer.inlineCallbacks
        def works_on_the_new_master():
            yield store.record_login(BOB, "127.0.0.3", "imap")
            return (link.master == ("127.0.0.1", self.replica.port)
                    and (yield store.window_user("127.0.0.3")) == BOB)
        yield self.until("the store works on the new master", works_on_the_new_master)
        self.assertIn(b"127.0.0.3", self.replica.command("KEYS", "*"))
        lines = [line for line in self.log if line.startswith("Redis")]
        self.assertEqual(lines[0], f"Redis connected: {self.sentinel.url} "
                                   f"(master 127.0.0.1:{self.master.port})")
        self.assertEqual(lines[-1], f"Redis is back: {self.sentinel.url} "
                                    f"(master 127.0.0.1:{self.replica.port})")
        self.assertTrue(lines[1].startswith(f"Redis went away: {self.sentinel.url} "
                                            f"(master 127.0.0.1:{self.master.port}): "), lines)

    @defer.inlineCallbacks
    def test_new_mail_events_follow_the_master_when_it_dies(self):
        nodes = []
        for name in ("a", "b"):
            store = DeliveryRecorder()
            events = NewMailEvents(self.link(), store, "token-" + name)
            events.startService()
            self.addCleanup(events.stopService)
            nodes.append((events, store))
        (a, _), (b, b_store) = nodes

        def subscribed(server):
            reply = server.command("PUBSUB", "NUMSUB", "mailsrv:delivered:0")
            return reply.endswith(b":2\r\n") and a.redis.up
        yield self.until("both subscribed", lambda: subscribed(self.master))
        yield self.until("the sentinel knows the replica", self.replica_known)
        self.master.kill()
        yield self.until("both subscribed to the new master", lambda: subscribed(self.replica))
        a.publish(ALICE, "INBOX", ["1700000000.M1P2.host,S=10"])
        yield b_store.got
        self.assertEqual(b_store.delivered, [(ALICE, "INBOX", ["1700000000.M1P2.host,S=10"])])
        self.assertEqual(a.redis.master, ("127.0.0.1", self.replica.port))


class RealTLSSentinelTests(SentinelTestCase):
    """rediss+sentinel://: TLS to the sentinel (named localhost) and to the masters (127.0.0.1)."""

    def setUp(self):
        files = Path(self.mktemp()).absolute()
        files.mkdir(parents=True)
        self.tls = redisserver.TLSFiles(files)
        super().setUp()

    @defer.inlineCallbacks
    def test_the_store_works_over_tls_and_after_the_master_died(self):
        link = self.link()
        store = RedisSessionStore(link, 1800, self.clock, Limits())
        yield self.until("up", lambda: link.up)
        yield store.record_login(ALICE, "127.0.0.2", "imap")
        yield self.until("the sentinel knows the replica", self.replica_known)
        self.master.kill()
        yield self.until("the store works on the new master", lambda: (
            link.up and link.master == ("127.0.0.1", self.replica.port)))
        yield store.record_login(BOB, "127.0.0.3", "imap")
        self.assertEqual((yield store.window_user("127.0.0.3")), BOB)
