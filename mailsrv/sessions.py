"""
The session store all listeners share: who logged in, from where, when, and
who failed to.

It answers two questions: "may this IP relay because a user logged in over
POP3 or IMAP from it recently?" (POP-before-SMTP), and "is this login
refused for now because of earlier failures?" (login throttling, counted
across SMTP, POP3 and IMAP); and it holds the POP3 maildrop locks (one
POP3 session per maildrop, RFC 1939). The interface returns Deferreds so
the shared backend (L{mailsrv.redis.sessions}) can replace the in-memory
one when several nodes serve one domain ([sessions] backend).
"""

from collections import OrderedDict

from twisted.internet import defer
from zope.interface import Interface, implementer

from mailsrv.netaddr import normalise_ip


class ISessionStore(Interface):
    def record_login(user, ip, protocol):
        """
        Note a successful login. POP3 and IMAP logins open a
        POP-before-SMTP window for C{ip}.

        @return: a Deferred that fires when it is recorded.
        """

    def window_user(ip):
        """
        @return: a Deferred of the user whose POP-before-SMTP window is open
            for C{ip}, or of L{None} if none is.
        """

    def login_refused(ip, user):
        """
        @return: a Deferred of the key (C{"ip"} or C{"ip/user"}) that is
            locked out and refuses this login, or of L{None}.
        """

    def record_failure(ip, user, fingerprint):
        """
        Count a wrong password for C{(ip, user)} and for C{ip}, once per
        distinct C{fingerprint} (an HMAC of the password, never the
        password) within the failure window.

        @return: a Deferred of the list of keys this failure locked out.
        """

    def clear_failures(ip, user):
        """
        Forget the failures of C{(ip, user)} after a successful login (and
        only those: the IP's count stays).

        @return: a Deferred that fires when done.
        """

    def locked():
        """
        @return: a Deferred of the locked-out keys, C{[(key, seconds
            left)]}, soonest to end first (`mailsrv auth locked`).
        """

    def unlock(target):
        """
        End the lockouts (and forget the failures) of C{target}: an IP (its
        own key and every C{ip/user} of it), a user (every C{ip/user} of
        that user), or a key as L{locked} shows it.

        @return: a Deferred of the keys unlocked.
        """

    def lock_maildrop(user):
        """
        Take C{user}'s POP3 maildrop lock for one POP3 session.

        @return: a Deferred of whether it was free.
        """

    def unlock_maildrop(user):
        """
        Release the lock L{lock_maildrop} took (when its session ends).

        @return: a Deferred that fires when it is released; it does not fail.
        """


WINDOW_PROTOCOLS = ("pop3", "imap")


class ExpiringMap:
    """
    A mapping whose entries live C{lifetime} seconds from when they were
    last set. One lifetime for every entry keeps insertion order equal to
    expiry order, so expiring is popping from the front: memory follows
    recent activity, never history.
    """

    def __init__(self, lifetime, clock):
        self.lifetime = lifetime
        self.clock = clock
        self._entries = OrderedDict()  # key -> (expiry, value)

    def _expire(self):
        now = self.clock.seconds()
        while self._entries:
            expiry, _ = next(iter(self._entries.values()))
            if expiry > now:
                return
            self._entries.popitem(last=False)

    def set(self, key, value):
        self._expire()
        self._entries.pop(key, None)
        self._entries[key] = (self.clock.seconds() + self.lifetime, value)

    def get(self, key):
        self._expire()
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def pop(self, key):
        self._entries.pop(key, None)

    def items(self):
        """C{(key, seconds left)} of the live entries, soonest to expire first."""
        self._expire()
        now = self.clock.seconds()
        return [(key, expiry - now) for key, (expiry, _) in self._entries.items()]

    def __contains__(self, key):
        return self.get(key) is not None

    def __len__(self):
        self._expire()
        return len(self._entries)


@implementer(ISessionStore)
class MemorySessionStore:
    """
    @ivar window: seconds a POP3/IMAP login lets its IP relay; 0 turns
        POP-before-SMTP off.
    @ivar limits: the L{mailsrv.config.AuthSettings} (max_failures,
        max_failures_per_ip, failure_window, lockout), or L{None} to count
        no failures at all.
    """

    def __init__(self, window, clock, limits=None):
        self.window = window
        self.clock = clock
        self.limits = limits
        self._windows = ExpiringMap(window, clock)  # normalised IP -> user
        self._maildrops = set()  # users whose maildrop a POP3 session holds
        if limits is not None:
            # key -> ExpiringMap of the fingerprints of its counted failures
            self._failures = ExpiringMap(limits.failure_window, clock)
            self._locked = ExpiringMap(limits.lockout, clock)  # key -> True

    def record_login(self, user, ip, protocol):
        if self.window and protocol in WINDOW_PROTOCOLS:
            self._windows.set(window_key(ip), user)
        return defer.succeed(None)

    def window_user(self, ip):
        try:
            key = window_key(ip)
        except ValueError:
            return defer.succeed(None)
        return defer.succeed(self._windows.get(key))

    def login_refused(self, ip, user):
        if self.limits is None:
            return defer.succeed(None)
        for key in lockout_keys(ip, user):
            if key in self._locked:
                return defer.succeed(key)
        return defer.succeed(None)

    def record_failure(self, ip, user, fingerprint):
        if self.limits is None:
            return defer.succeed([])
        ip_key, pair_key = lockout_keys(ip, user)
        pair = self._failures.get(pair_key)
        if pair is not None and fingerprint in pair:
            return defer.succeed([])  # a client retrying the same password
        locked = []
        for key, limit in (
            (pair_key, self.limits.max_failures),
            (ip_key, self.limits.max_failures_per_ip),
        ):
            if self._count(key, fingerprint) >= limit:
                # A lockout starts a fresh count for when it ends.
                self._failures.pop(key)
                self._locked.set(key, True)
                locked.append(key)
        return defer.succeed(locked)

    def _count(self, key, fingerprint):
        """Add one failure to C{key}; the number in its window now."""
        fingerprints = self._failures.get(key)
        if fingerprints is None:
            fingerprints = ExpiringMap(self.limits.failure_window, self.clock)
        fingerprints.set(fingerprint, True)
        self._failures.set(key, fingerprints)  # kept while any entry lives
        return len(fingerprints)

    def clear_failures(self, ip, user):
        if self.limits is not None:
            self._failures.pop(lockout_keys(ip, user)[1])
        return defer.succeed(None)

    def locked(self):
        return defer.succeed([] if self.limits is None else self._locked.items())

    def unlock(self, target):
        if self.limits is None:
            return defer.succeed([])
        target = unlock_target(target)
        unlocked = [key for key, _ in self._locked.items() if lockout_matches(key, target)]
        for key in unlocked:
            self._locked.pop(key)
        for key in [key for key, _ in self._failures.items()
                    if lockout_matches(key, target)]:
            self._failures.pop(key)
        return defer.succeed(unlocked)

    def lock_maildrop(self, user):
        if user in self._maildrops:
            return defer.succeed(False)
        self._maildrops.add(user)
        return defer.succeed(True)

    def unlock_maildrop(self, user):
        self._maildrops.discard(user)
        return defer.succeed(None)


def window_key(ip):
    """
    The key of C{ip}'s POP-before-SMTP window: IPv4-mapped IPv6 folded to IPv4.

    @raise ValueError: C{ip} is no IP address.
    """
    return str(normalise_ip(ip))


def unlock_target(target):
    """What L{ISessionStore.unlock} compares keys with: an IP normalised, else lower case."""
    try:
        return str(normalise_ip(target))
    except ValueError:
        return target.lower()


def lockout_matches(key, target):
    """Whether lockout C{key} (C{ip} or C{ip/user}) is C{target}'s: the key, its IP or its user."""
    ip, _, user = key.partition("/")
    return target in (key, ip, user)


def lockout_keys(ip, user):
    """
    The two keys a login counts under: the IP (IPv4-mapped IPv6 folded to
    IPv4) and C{ip/user}. A peer that is no IP (a UNIX socket) is its own key.
    """
    try:
        ip = str(normalise_ip(ip))
    except ValueError:
        pass
    return ip, f"{ip}/{user}"
