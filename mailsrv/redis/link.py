"""
The one connection to Redis that every piece of shared state uses
([sessions] backend = "redis", docs/scale-out.md).

txredisapi speaks the protocol (RESP, EVALSHA with its script cache) on the
reactor thread; this module owns the connection around it: it reconnects by
itself with a short backoff, knows whether Redis is up, says so in ONE log
line when Redis goes away and one when it is back (never one per command),
and gives every command a deadline. While Redis is away a command fails at
once with L{RedisUnavailable}: callers decide what that means (relay
windows fail closed, throttling fails open) without waiting for a timeout
on each login.
"""

from twisted.application import service
from twisted.internet import defer, endpoints, protocol
from twisted.logger import Logger
from txredisapi import ConnectionError as RedisConnectionError
from txredisapi import RedisProtocol, SubscriberProtocol

log = Logger()

# Seconds between connection attempts while Redis is away; the last repeats.
# Short: an attempt on a LAN costs next to nothing, and every second away is
# a second without relay windows.
RETRY_DELAYS = (0.5, 1, 2)


# What an outage means, said in its one log line (docs/scale-out.md).
CONSEQUENCES = ("POP-before-SMTP windows are closed, login throttling is off, POP3 "
                "maildrop locks hold on this node only, and IDLE hears of other nodes' "
                "deliveries only at its next poll")


class RedisUnavailable(Exception):
    """Redis is away (not connected, or it did not answer in time)."""


class RedisLink(service.Service):
    """
    @ivar address: the L{mailsrv.config.RedisAddress}.
    @ivar timeout: seconds for one command, and for connecting.
    @ivar up: whether Redis answers: L{None} before the first attempt ends.
    """

    def __init__(self, address, timeout, reactor, endpoint=None, on_message=None):
        """
        @param endpoint: the client endpoint to connect with (tests); by
            default the TCP or UNIX endpoint C{address} names.
        @param on_message: makes this a subscriber's connection (pub/sub
            needs one of its own): C{on_message(channel, message)} is
            called for each message of the channels it SUBSCRIBEs to. Its
            outages are not logged: the main link's line says them.
        """
        self.address = address
        self.on_message = on_message
        self.timeout = timeout
        self.reactor = reactor
        self.endpoint = endpoint or _endpoint(address, timeout, reactor)
        self.up = None
        self._protocol = None
        self._attempts = 0
        self._retry = None
        self._observers = []

    def observe(self, changed):
        """Call C{changed(up)} each time Redis goes away or comes back."""
        self._observers.append(changed)

    def startService(self):
        super().startService()
        self._connect()

    def stopService(self):
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._protocol is not None:
            self._protocol.transport.loseConnection()

    def execute(self, *command):
        """
        Run one command.

        @return: a Deferred of its reply, failing with L{RedisUnavailable}
            at once while Redis is away, or when no reply comes in time
            (the connection is then dropped and made again).
        """
        return self._guarded(lambda connection: connection.execute_command(*command))

    def eval(self, script, keys, args):
        """Run a Lua script (by its SHA1 after the first time), as L{execute}."""
        return self._guarded(lambda connection: connection.eval(script, keys, args))

    def _guarded(self, send):
        if not self.up:
            return defer.fail(RedisUnavailable(f"Redis is away ({self.address})"))
        connection = self._protocol
        d = defer.maybeDeferred(send, connection)
        d.addTimeout(self.timeout, self.reactor)
        d.addErrback(self._failed, connection)
        return d

    def _failed(self, failure, connection):
        if failure.check(defer.TimeoutError):
            reason = f"no answer within {self.timeout:g} s"
            connection.transport.abortConnection()  # a late reply must not answer the next
        elif failure.check(RedisConnectionError):
            reason = failure.getErrorMessage()
        else:
            return failure  # Redis answered (an error reply): not an outage
        self._down(reason)
        raise RedisUnavailable(f"Redis is away ({self.address}): {reason}")

    def _connect(self):
        self._retry = None
        d = self.endpoint.connect(_Factory(self.on_message))
        d.addCallbacks(self._connected, self._not_connected)

    def _connected(self, connection):
        """Log in and choose the database, then count Redis as up once it answers PING."""
        self._protocol = connection
        connection.whenDisconnected().addCallback(self._lost)
        address = self.address
        d = defer.succeed(None)
        if address.password:
            credentials = (address.username, address.password) if address.username else (
                address.password,)
            d.addCallback(lambda _: connection.execute_command("AUTH", *credentials))
        if address.db:
            d.addCallback(lambda _: connection.execute_command("SELECT", address.db))
        d.addCallback(lambda _: connection.execute_command("PING"))
        d.addTimeout(self.timeout, self.reactor)

        def answered(_):
            self._attempts = 0
            self._up()

        def refused(failure):
            connection.transport.abortConnection()
            self._down(failure.getErrorMessage()
                       if not failure.check(defer.TimeoutError)
                       else f"no answer within {self.timeout:g} s")
        d.addCallbacks(answered, refused)

    def _not_connected(self, failure):
        self._down(failure.getErrorMessage())
        self._schedule()

    def _lost(self, connection):
        if connection is not self._protocol:
            return
        self._protocol = None
        if self.running:  # (else we closed it: no outage)
            self._down("connection lost")
            self._schedule()

    def _schedule(self):
        if not self.running or self._retry is not None:
            return
        delay = RETRY_DELAYS[min(self._attempts, len(RETRY_DELAYS) - 1)]
        self._attempts += 1
        self._retry = self.reactor.callLater(delay, self._connect)

    def _up(self):
        if self.up:
            return
        if self.on_message is not None:  # (the main link's lines say it)
            pass
        elif self.up is False:
            log.info("Redis is back: {address}", address=str(self.address))
        else:
            log.info("Redis connected: {address}", address=str(self.address))
        self._changed(True)

    def _down(self, reason):
        if self.up is False:
            return
        if self.on_message is not None:  # (the main link's lines say it)
            pass
        elif self.up:
            log.warn("Redis went away: {address}: {reason}; reconnecting; until it is back, "
                     "{consequences}", address=str(self.address), reason=reason,
                     consequences=CONSEQUENCES)
        else:
            log.warn("Redis unreachable: {address}: {reason}; retrying; until it answers, "
                     "{consequences}", address=str(self.address), reason=reason,
                     consequences=CONSEQUENCES)
        self._changed(False)

    def _changed(self, up):
        self.up = up
        for changed in list(self._observers):  # (an observer may add one)
            changed(up)


class _Factory(protocol.ClientFactory):
    """Builds txredisapi's protocol; the link sends AUTH and SELECT itself."""

    noisy = False

    def __init__(self, on_message):
        self.on_message = on_message

    def buildProtocol(self, addr):
        if self.on_message is None:
            built = RedisProtocol(charset="utf-8", convertNumbers=False)
        else:
            built = _Subscriber(charset="utf-8", convertNumbers=False)
        built.factory = self
        return built


class _Subscriber(SubscriberProtocol):
    def messageReceived(self, pattern, channel, message):
        self.factory.on_message(channel, message)


def _endpoint(address, timeout, reactor):
    if address.path:
        return endpoints.UNIXClientEndpoint(reactor, address.path, timeout=timeout)
    return endpoints.HostnameEndpoint(reactor, address.host, address.port, timeout=timeout)
