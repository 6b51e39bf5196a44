"""
The session store all listeners share: who logged in, from where, when.

It answers one question for now: "may this IP relay because a user logged in
over POP3 or IMAP from it recently?" (POP-before-SMTP). The interface returns
Deferreds so a shared backend (Redis) can replace the in-memory one when
several nodes serve one domain.
"""

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


WINDOW_PROTOCOLS = ("pop3", "imap")


@implementer(ISessionStore)
class MemorySessionStore:
    """
    @ivar window: seconds a POP3/IMAP login lets its IP relay; 0 turns
        POP-before-SMTP off.
    """

    def __init__(self, window, clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.window = window
        self.clock = clock
        self._windows = {}  # normalised IP -> (expiry, user)

    def record_login(self, user, ip, protocol):
        if self.window and protocol in WINDOW_PROTOCOLS:
            now = self.clock.seconds()
            self._expire(now)
            self._windows[normalise_ip(ip)] = (now + self.window, user)
        return defer.succeed(None)

    def window_user(self, ip):
        try:
            key = normalise_ip(ip)
        except ValueError:
            return defer.succeed(None)
        entry = self._windows.get(key)
        if entry is None or entry[0] <= self.clock.seconds():
            return defer.succeed(None)
        return defer.succeed(entry[1])

    def _expire(self, now):
        """Drop closed windows, so the table grows only with active IPs."""
        for ip in [ip for ip, (expiry, _) in self._windows.items() if expiry <= now]:
            del self._windows[ip]
