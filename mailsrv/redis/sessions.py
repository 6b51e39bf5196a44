"""
The session store in Redis ([sessions] backend = "redis"): every node that
uses the same Redis shares POP-before-SMTP windows, login failures and
lockouts, and POP3 maildrop locks (docs/scale-out.md).

Expiry is decided by the time of the node that asks (its clock, in
milliseconds, stored with each window and lockout and as the scores of
failures), as the memory store decides it, so one set of rules and tests
serves both; nodes' clocks are NTP-close, and a second of skew is nothing
against windows of minutes. Redis's own TTLs only clean up after that.
When Redis is away (L{RedisUnavailable}) relay windows fail
closed (no window), login throttling fails open (nothing locked, nothing
counted), and a maildrop lock holds on this node only; the link logs the
outage once. Keys (all under C{mailsrv:}):

  - C{window:IP}: C{"END USER"}: the user whose POP3/IMAP login opened
    IP's window, and when it ends;
  - C{failures:KEY}: a sorted set of the fingerprints of KEY's distinct
    wrong passwords, each scored with the time it stops counting;
  - C{locked:KEY}: when the lockout of KEY (C{IP} or C{IP/user}) ends;
  - C{lockouts}, C{failing}: the KEYs locked out and failing, scored with
    their end, for `mailsrv auth locked` and `unlock` (no SCAN of the
    whole database);
  - C{maildrop:USER}: the token of the node whose POP3 session holds the
    maildrop, with a lease that the node renews while the session lives.
"""

import os
import socket

from twisted.internet import defer, task
from twisted.logger import Logger
from zope.interface import implementer

from mailsrv.redis.link import RedisUnavailable
from mailsrv.sessions import (WINDOW_PROTOCOLS, ISessionStore, lockout_keys, lockout_matches,
                              unlock_target, window_key)

log = Logger()

PREFIX = "mailsrv:"
LOCKOUTS = PREFIX + "lockouts"
FAILING = PREFIX + "failing"

# A maildrop lock outlives a node that died by at most LEASE seconds; a
# living node renews it every RENEW seconds, so two renewals may fail
# (Redis slow, a pause) before it can lapse.
LEASE = 30
RENEW = 10

# KEYS: failures of ip/user, of ip; locked: of ip/user, of ip; LOCKOUTS, FAILING.
# ARGV: fingerprint, max_failures, max_failures_per_ip, window ms, lockout ms,
# ip/user, ip, now ms. Returns the keys this failure locked out (as the
# memory store; a lockout of 0 s counts but locks nothing out).
RECORD_FAILURE = """
local fingerprint, window, lockout = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])
local now = tonumber(ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
local seen = redis.call('ZSCORE', KEYS[1], fingerprint)
if seen and tonumber(seen) > now then
  return {}
end
local limits, names, locked = {tonumber(ARGV[2]), tonumber(ARGV[3])}, {ARGV[6], ARGV[7]}, {}
for i = 1, 2 do
  local failures = KEYS[i]
  redis.call('ZREMRANGEBYSCORE', failures, '-inf', now)
  redis.call('ZADD', failures, now + window, fingerprint)
  redis.call('PEXPIRE', failures, math.max(window, 1))
  if redis.call('ZCARD', failures) >= limits[i] then
    redis.call('DEL', failures)
    redis.call('ZREM', KEYS[6], names[i])
    if lockout > 0 then
      redis.call('SET', KEYS[i + 2], now + lockout, 'PX', lockout)
      redis.call('ZADD', KEYS[5], now + lockout, names[i])
    end
    table.insert(locked, names[i])
  else
    redis.call('ZADD', KEYS[6], now + window, names[i])
  end
end
return locked
"""

# KEYS: LOCKOUTS, FAILING. ARGV: now ms. Returns {lockout, end, lockout,
# end, ..., "", failing, failing, ...}: what is live, soonest to end first.
LIVE = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local answer = {}
for _, v in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')) do
  table.insert(answer, v)
end
table.insert(answer, '')
for _, v in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  table.insert(answer, v)
end
return answer
"""

# KEYS: LOCKOUTS, FAILING, then locked:K and failures:K of each K in ARGV.
FORGET = """
for i, name in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], name)
  redis.call('ZREM', KEYS[2], name)
  redis.call('DEL', KEYS[2 + 2 * i - 1], KEYS[2 + 2 * i])
end
return 1
"""

# KEYS: maildrop:USER. ARGV: token, lease ms. 1 while ours (taken again
# when Redis lost it), 0 when another node holds it.
RENEW_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: maildrop:USER. ARGV: token. Deletes the lock only if it is ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@implementer(ISessionStore)
class RedisSessionStore:
    """
    @ivar redis: the L{mailsrv.redis.link.RedisLink}.
    @ivar window: seconds a POP3/IMAP login lets its IP relay; 0 turns
        POP-before-SMTP off.
    @ivar limits: the L{mailsrv.config.AuthSettings}, or L{None} to count
        no failures at all.
    """

    def __init__(self, redis, window, clock, limits=None):
        self.redis = redis
        self.window = window
        self.limits = limits
        self.clock = clock
        self.token = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(6).hex()}"
        self._maildrops = set()  # users whose maildrop a POP3 session here holds
        self._contested = set()  # of those, the ones another node took meanwhile (logged)
        self._renewal = task.LoopingCall(self._renew)
        self._renewal.clock = clock

    def record_login(self, user, ip, protocol):
        if not (self.window and protocol in WINDOW_PROTOCOLS):
            return defer.succeed(None)
        window = self.window * 1000
        d = self.redis.execute("SET", PREFIX + "window:" + window_key(ip),
                               f"{self._now() + window} {user}", "PX", window)
        return _unless_away(d.addCallback(lambda _: None), None)

    def window_user(self, ip):
        try:
            key = window_key(ip)
        except ValueError:
            return defer.succeed(None)

        def open_for(value):
            if value is None:
                return None
            end, _, user = value.partition(" ")
            return user if int(end) > self._now() else None
        d = self.redis.execute("GET", PREFIX + "window:" + key).addCallback(open_for)
        return _unless_away(d, None)

    def login_refused(self, ip, user):
        if self.limits is None:
            return defer.succeed(None)
        keys = lockout_keys(ip, user)
        d = self.redis.execute("MGET", *(PREFIX + "locked:" + key for key in keys))

        def refusing(ends):
            now = self._now()
            return next((key for key, end in zip(keys, ends)
                         if end is not None and int(end) > now), None)
        return _unless_away(d.addCallback(refusing), None)

    def _now(self):
        """This node's time in milliseconds, as the keys store it."""
        return int(self.clock.seconds() * 1000)

    def record_failure(self, ip, user, fingerprint):
        if self.limits is None:
            return defer.succeed([])
        ip_key, pair_key = lockout_keys(ip, user)
        limits = self.limits
        d = self.redis.eval(
            RECORD_FAILURE,
            [PREFIX + "failures:" + pair_key, PREFIX + "failures:" + ip_key,
             PREFIX + "locked:" + pair_key, PREFIX + "locked:" + ip_key, LOCKOUTS, FAILING],
            [fingerprint.hex(), limits.max_failures, limits.max_failures_per_ip,
             limits.failure_window * 1000, limits.lockout * 1000, pair_key, ip_key,
             self._now()])
        return _unless_away(d.addCallback(list), [])

    def clear_failures(self, ip, user):
        if self.limits is None:
            return defer.succeed(None)
        d = self.redis.execute("DEL", PREFIX + "failures:" + lockout_keys(ip, user)[1])
        return _unless_away(d.addCallback(lambda _: None), None)

    def _live(self):
        """A Deferred of C{([(lockout, seconds left)], [failing key])}."""
        now = self._now()

        def split(rest):
            end = rest.index("")
            pairs = rest[:end]
            locked = [(pairs[i], (float(pairs[i + 1]) - now) / 1000)
                      for i in range(0, len(pairs), 2)]
            return locked, rest[end + 1:]
        return self.redis.eval(LIVE, [LOCKOUTS, FAILING], [now]).addCallback(split)

    def locked(self):
        if self.limits is None:
            return defer.succeed([])
        return self._live().addCallback(lambda live: live[0])

    def unlock(self, target):
        """As the memory store's; fails with L{RedisUnavailable} while Redis is away."""
        if self.limits is None:
            return defer.succeed([])
        target = unlock_target(target)

        def forget(live):
            locked, failing = live
            unlocked = [key for key, _ in locked if lockout_matches(key, target)]
            names = sorted(set(unlocked) | {key for key in failing
                                            if lockout_matches(key, target)})
            if not names:
                return unlocked
            keys = [LOCKOUTS, FAILING]
            for name in names:
                keys += [PREFIX + "locked:" + name, PREFIX + "failures:" + name]
            return self.redis.eval(FORGET, keys, names).addCallback(lambda _: unlocked)
        return self._live().addCallback(forget)

    def lock_maildrop(self, user):
        """
        Free only if no POP3 session holds it here nor on another node;
        while Redis is away, this node's own locks alone decide.
        """
        if user in self._maildrops:
            return defer.succeed(False)
        self._maildrops.add(user)
        if not self._renewal.running:
            self._renewal.start(RENEW, now=False)
        d = self.redis.execute("SET", PREFIX + "maildrop:" + user, self.token,
                               "NX", "PX", LEASE * 1000)

        def answered(reply):
            if reply is None:  # another node's
                self.unlock_maildrop(user)
                return False
            return True
        d.addCallback(answered)
        return _unless_away(d, True)

    def unlock_maildrop(self, user):
        if user not in self._maildrops:
            return defer.succeed(None)
        self._maildrops.discard(user)
        self._contested.discard(user)
        if not self._maildrops and self._renewal.running:
            self._renewal.stop()
        d = self.redis.eval(RELEASE, [PREFIX + "maildrop:" + user], [self.token])
        return _unless_away(d.addCallback(lambda _: None), None)  # (away: the lease lapses)

    def _renew(self):
        """
        Extend the lease of every maildrop held here; take again those a
        restarted Redis forgot.
        """
        for user in list(self._maildrops):
            d = self.redis.eval(RENEW_LEASE, [PREFIX + "maildrop:" + user],
                                [self.token, LEASE * 1000])
            d.addCallback(self._renewed, user)
            _unless_away(d, None)

    def _renewed(self, ours, user):
        if not ours and user in self._maildrops and user not in self._contested:
            self._contested.add(user)
            log.warn("maildrop lock of {user}: another node took it while Redis was away; "
                     "two POP3 sessions may serve it until one ends", user=user)


def _unless_away(d, value):
    """C{d}, or C{value} when Redis is away (the link has logged the outage once)."""
    def away(failure):
        failure.trap(RedisUnavailable)
        return value
    return d.addErrback(away)
