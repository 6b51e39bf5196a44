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

With Sentinel (redis+sentinel://) the link finds the master before each
connection: it asks the sentinels in turn (C{SENTINEL
get-master-addr-by-name}), from the one that answered last, connects to
the address the first that knows the master names, and counts Redis as up
only once that server's C{ROLE} says master (right after a failover a
sentinel may still name the old master, now a replica, where every write
would fail). A lost connection, a command past its deadline or a
C{READONLY} reply (the master was demoted) makes it ask again. Sentinels
get no AUTH: the URL's credentials are the master's.
"""

import functools

from OpenSSL import SSL
from twisted.application import service
from twisted.internet import defer, endpoints, error, protocol, ssl
from twisted.logger import Logger
from txredisapi import ConnectionError as RedisConnectionError
from txredisapi import RedisProtocol, ResponseError, SubscriberProtocol

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
    @ivar timeout: seconds for one command, for connecting, and for asking
        one sentinel.
    @ivar up: whether Redis answers: L{None} before the first attempt ends.
    @ivar master: with Sentinel, the C{(host, port)} the sentinels named
        last; else L{None}.
    """

    def __init__(self, address, timeout, reactor, endpoint=None, on_message=None, tls=None):
        """
        @param endpoint: C{endpoint(host, port)}, the client endpoint to reach
            a Redis or a sentinel with (tests); by default TCP (TLS for
            rediss://) or the UNIX socket C{address} names.
        @param on_message: makes this a subscriber's connection (pub/sub
            needs one of its own): C{on_message(channel, message)} is
            called for each message of the channels it SUBSCRIBEs to. Its
            outages are not logged: the main link's line says them.
        @param tls: for rediss://, C{tls(host)}: the client TLS options for
            a server that must prove it is C{host}
            (L{mailsrv.tls.redis_client_tls}); by default the system's CAs
            and no client certificate.
        """
        self.address = address
        self.on_message = on_message
        self.timeout = timeout
        self.reactor = reactor
        self.tls = tls or ssl.optionsForClientTLS
        self.endpoint = endpoint or functools.partial(_endpoint, self)
        self.up = None
        self.master = None
        self._protocol = None
        self._connecting = None
        self._first_sentinel = 0  # (the one that answered last)
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
        if self._connecting is not None:
            self._connecting.cancel()  # (a no-op once connected)
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
        elif failure.check(RedisConnectionError):
            reason = failure.getErrorMessage()
        elif self.address.sentinels and _demoted(failure):
            reason = f"{_host_port(self.master)} is no longer the master ({failure.value})"
        else:
            return failure  # Redis answered (an error reply): not an outage
        self._down(reason)
        connection.transport.abortConnection()  # (a late reply must not answer the next)
        raise RedisUnavailable(f"Redis is away ({self.address}): {reason}")

    def _connect(self):
        self._retry = None
        if self.address.sentinels:
            d = self._ask_sentinels(self._sentinel_order(), [])
        else:
            d = defer.succeed((self.address.host, self.address.port))
        d.addCallback(self._reach)
        d.addCallbacks(self._connected, self._not_connected)
        self._connecting = d

    def _reach(self, where):
        if self.address.sentinels:
            self.master = where
        return self.endpoint(*where).connect(_Factory(self.on_message, self.reactor))

    def _sentinel_order(self):
        count = len(self.address.sentinels)
        return [(self._first_sentinel + n) % count for n in range(count)]

    def _ask_sentinels(self, order, problems):
        """
        The master's C{(host, port)} as the first of the sentinels C{order}
        (indexes) that knows it names it; failing with what each said.
        """
        if not order:
            return defer.fail(RedisConnectionError(
                f"no sentinel named master {self.address.master!r} ({'; '.join(problems)})"))
        index = order[0]
        sentinel = self.address.sentinels[index]
        d = self._ask_sentinel(sentinel)

        def answered(master):
            self._first_sentinel = index
            return master

        def failed(failure):
            if failure.check(defer.CancelledError):  # (stopped)
                return failure
            problems.append(f"{_host_port(sentinel)}: {_problem(failure, self.timeout)}")
            return self._ask_sentinels(order[1:], problems)
        d.addCallbacks(answered, failed)
        return d

    def _ask_sentinel(self, sentinel):
        """One sentinel's answer, within the deadline: the master's C{(host, port)}."""
        d = self.endpoint(*sentinel).connect(_Factory(None, self.reactor))

        def ask(connection):
            asked = connection.execute_command("SENTINEL", "get-master-addr-by-name",
                                               self.address.master)

            def close(result):
                connection.transport.loseConnection()
                return result

            def lost(failure):  # (say why: a TLS handshake's failure, say)
                failure.trap(RedisConnectionError)
                raise RedisConnectionError(_lost_reason(connection.lost_reason))
            return asked.addBoth(close).addErrback(lost)
        d.addCallback(ask)
        d.addTimeout(self.timeout, self.reactor)
        d.addCallback(self._named)
        return d

    def _named(self, reply):
        if not reply:
            raise RedisConnectionError(f"knows no master {self.address.master!r}")
        host, port = reply
        return host, int(port)

    def _connected(self, connection):
        """
        Log in and choose the database, then count Redis as up once it
        answers PING (with Sentinel: once its ROLE says master).
        """
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
        if address.sentinels:
            d.addCallback(lambda _: connection.execute_command("ROLE"))
            d.addCallback(self._check_role)
        else:
            d.addCallback(lambda _: connection.execute_command("PING"))
        d.addTimeout(self.timeout, self.reactor)

        def answered(_):
            self._attempts = 0
            self._up()

        def refused(failure):
            if self.running:
                self._down(_problem(failure, self.timeout))
            connection.transport.abortConnection()
        d.addCallbacks(answered, refused)

    def _check_role(self, reply):
        role = reply[0] if isinstance(reply, list) and reply else reply
        if role != "master":
            raise RedisConnectionError(
                f"{_host_port(self.master)}, named by the sentinels, is a {role}, not the "
                "master (a failover under way?)")

    def _not_connected(self, failure):
        if not self.running:  # (stopped while connecting)
            return
        self._down(failure.getErrorMessage())
        self._schedule()

    def _lost(self, connection):
        if connection is not self._protocol:
            return
        self._protocol = None
        if self.running:  # (else we closed it: no outage)
            self._down(_lost_reason(connection.lost_reason))
            self._schedule()

    def _schedule(self):
        if not self.running or self._retry is not None:
            return
        delay = RETRY_DELAYS[min(self._attempts, len(RETRY_DELAYS) - 1)]
        self._attempts += 1
        self._retry = self.reactor.callLater(delay, self._connect)

    def _where(self):
        """The address for the log: with Sentinel, and the master reached or last tried."""
        if self.master is None:
            return str(self.address)
        return f"{self.address} (master {_host_port(self.master)})"

    def _up(self):
        if self.up:
            return
        if self.on_message is None:  # (a subscriber's: the main link's lines say it)
            log.info("Redis is back: {address}" if self.up is False
                     else "Redis connected: {address}", address=self._where())
        self._changed(True)

    def _down(self, reason):
        if self.up is False:
            return
        if self.on_message is None:  # (a subscriber's: the main link's lines say it)
            log.warn("Redis went away: {address}: {reason}; reconnecting; until it is back, "
                     "{consequences}" if self.up else
                     "Redis unreachable: {address}: {reason}; retrying; until it answers, "
                     "{consequences}", address=self._where(), reason=reason,
                     consequences=CONSEQUENCES)
        self._changed(False)

    def _changed(self, up):
        self.up = up
        for changed in list(self._observers):  # (an observer may add one)
            changed(up)


def _demoted(failure):
    """Whether a command failed because the server is a replica now (READONLY)."""
    return failure.check(ResponseError) and str(failure.value).startswith("READONLY")


def _problem(failure, timeout):
    """The log's words for why asking a server failed."""
    if failure.check(defer.TimeoutError):
        return f"no answer within {timeout:g} s"
    return failure.getErrorMessage()


def _lost_reason(reason):
    """The log's words for why a connection ended: a TLS handshake's failure says why."""
    if reason is not None and reason.check(SSL.Error):
        try:
            words = "; ".join(entry[-1] for entry in reason.value.args[0])
        except (IndexError, TypeError):
            words = reason.getErrorMessage()
        return f"TLS failed: {words}"
    if reason is None or reason.check(error.ConnectionDone, error.ConnectionLost):
        return "connection lost"
    return f"connection lost: {reason.getErrorMessage()}"


def _host_port(where):
    host, port = where
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Factory(protocol.ClientFactory):
    """
    Builds txredisapi's protocol, its timers on the link's clock (it
    pauses on bulk replies); the link sends AUTH and SELECT itself.
    """

    noisy = False

    def __init__(self, on_message, clock):
        self.on_message = on_message
        self.clock = clock

    def buildProtocol(self, addr):
        if self.on_message is None:
            built = _Redis(charset="utf-8", convertNumbers=False)
        else:
            built = _Subscriber(charset="utf-8", convertNumbers=False)
        built.factory = self
        built.callLater = self.clock.callLater
        return built


class _KeepsLostReason:
    """Keeps why the connection ended, for the log line (a TLS failure's own words)."""

    lost_reason = None

    def connectionLost(self, reason):
        self.lost_reason = reason
        super().connectionLost(reason)


class _Redis(_KeepsLostReason, RedisProtocol):
    pass


class _Subscriber(_KeepsLostReason, SubscriberProtocol):
    def messageReceived(self, pattern, channel, message):
        self.factory.on_message(channel, message)


def _endpoint(link, host, port):
    """The client endpoint to C{host}:C{port}, or to the link's UNIX socket."""
    address = link.address
    if address.path:
        return endpoints.UNIXClientEndpoint(link.reactor, address.path, timeout=link.timeout)
    tcp = endpoints.HostnameEndpoint(link.reactor, host, port, timeout=link.timeout)
    if address.tls:
        return endpoints.wrapClientTLS(link.tls(host), tcp)
    return tcp
