"""
Builds the one MultiService that runs every listener, the queue runner and
the shared state, from validated settings.
"""

import sys
from collections import Counter
from pathlib import Path

from twisted.application import service
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.protocols import policies
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import alsoProvides

from mailsrv import config, dns, logs, metrics, metricsweb, tls
from mailsrv.context import MailServer
from mailsrv.control import SOCKET_NAME, ControlFactory, ControlService
from mailsrv.datadir_lock import DataDirLock
from mailsrv.directory import AliasMap, Directory, UserDB
from mailsrv.directory.checker import UserPasswordChecker
from mailsrv.directory.ldapsource import (
    LDAPAddressBook,
    LDAPConnections,
    LDAPSource,
    read_bind_password,
)
from mailsrv.directory.listfile import ListFileError
from mailsrv.directory.smtpsource import SMTPSource
from mailsrv.logtext import literal
from mailsrv.netaddr import IPList, ListedClients, peer_ip
from mailsrv.policy import dkimverify, hooks, spfeval
from mailsrv.policy.checks.connect import ListenerAccess
from mailsrv.policy.hooks import Peer
from mailsrv.preflight import (
    USERS_FILE_HINT,
    dkim_signer,
    file_problem,
    list_files,
    preflight,
)
from mailsrv.privileges import DropPrivileges, give_made_files
from mailsrv.proxyprotocol import ProxyProtocolFactory
from mailsrv.reload import Reloader
from mailsrv.queue.courier import SMTPCourier
from mailsrv.queue.intake import LocalDelivery
from mailsrv.queue.runner import QueueRunner
from mailsrv.queue.spool import Spool
from mailsrv.redis.events import NewMailEvents
from mailsrv.redis.link import RedisLink
from mailsrv.redis.nodes import NodeLease
from mailsrv.sessions import MemorySessionStore
from mailsrv.redis.sessions import RedisSessionStore
from mailsrv.store.importer import IMPORT_REQUESTS, ImportRequests
from mailsrv.store.mailstore import MailStore
from mailsrv.workers import ParentWatch, Workers, inherited_port

log = Logger()

# What a client is told when a connection limit refuses it, per protocol.
BUSY_REPLIES = {
    "smtp": b"421 4.7.0 Too many connections, try again later\r\n",
    "pop3": b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
    "imap": b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
}
# ... when the listener's connect hook refuses it (%s: its IP) ...
DENIED_REPLIES = {
    "smtp": b"554 5.7.1 Access denied for %s\r\n",
    "pop3": b"-ERR Access denied for %s\r\n",
    "imap": b"* BYE Access denied for %s\r\n",
}
# ... and when a lookup the connect hook needs failed.
LATER_REPLIES = {
    "smtp": b"421 4.4.3 Cannot check your address now, try again later\r\n",
    "pop3": b"-ERR [SYS/TEMP] Cannot check your address now, try again later\r\n",
    "imap": b"* BYE [UNAVAILABLE] Cannot check your address now, try again later\r\n",
}

# How long a thread keeps the interpreter lock while another waits for it
# (CPython's default: 5 ms). The reactor thread lets the lock go at every
# system call; while a big message is judged in a thread, the default made
# it wait up to 5 ms for each of them, and other clients' rate fell to a
# third (bench/content_speed.py, docs/performance.md).
SWITCH_INTERVAL = 0.0005


def _factory_builders():
    from mailsrv.imap.server import build_factory as imap
    from mailsrv.pop3.server import build_factory as pop3
    from mailsrv.smtp.server import build_factory as smtp

    return {"smtp": smtp, "pop3": pop3, "imap": imap}


def make_service_or_exit(config_path, worker=0):
    """
    For the twistd plugin: a bad config, or a file it names that start-up
    cannot use (the preflight C{mailsrv check-config} runs too), prints one
    line naming the file, key and problem, and exits non-zero (no traceback).
    The data_dir lock is taken before anything reads the spool.

    @param worker: 0, or the number of the worker of [server] workers this
        process is (mailsrv/workers.py); with workers > 1, process 0 is
        their parent.
    """
    try:
        settings = config.load(config_path, worker)
        preflight(settings, reactor, warnings=False)  # make_service logs them
        if settings.workers > 1 and not worker:
            # once, before the workers look for it, and theirs once they drop privileges
            if tls.generate_if_missing(settings):
                give_made_files(settings, (settings.tls.cert, settings.tls.key))
            return make_parent_service(settings)
        lock = DataDirLock(settings)
        lock.acquire()
        generated = tls.pair_missing(settings)  # (make_service makes the pair)
        top = make_service(settings, worker)
    except config.ConfigError as e:
        sys.stderr.write(f"mailsrv: {e}\n")
        sys.exit(1)
    lock.setServiceParent(top)
    if worker:
        ParentWatch(reactor).setServiceParent(top)
    # Last: the listeners have bound their ports (privilegedStartService)
    made = (settings.tls.cert, settings.tls.key) if generated else ()
    DropPrivileges(settings, _files_read_later(settings), made).setServiceParent(top)
    return top


def _files_read_later(settings):
    """The files outside data_dir the server reads again while it runs."""
    files = [listed.path for listed in list_files(settings, reactor)]
    files += [settings.tls.cert, settings.tls.key, settings.tls.client_ca]
    files += [entry.key for entry in settings.dkim.sign]  # (read again on reload)
    files += [path for domain in settings.per_domain for path in (domain.tls_cert,
                                                                   domain.tls_key)]
    auth = settings.auth
    if auth.ldap is not None:
        files += [auth.ldap.bind_password_file, auth.ldap.ca_file]
    if auth.smtp is not None:
        files.append(auth.smtp.ca_file)
    sessions = settings.sessions  # (a reload's preflight reads the Redis TLS files again)
    files += [sessions.redis_ca, sessions.redis_cert, sessions.redis_key]
    data_dir = settings.data_dir.absolute()
    return [path for path in files
            if path is not None and data_dir not in Path(path).absolute().parents]


def build_mail_server(settings, clock=reactor):
    """
    The shared state of one process. Raises ConfigError for unusable files.

    @param clock: the reactor (a Clock in tests): every object's clock, and
        what the queue's courier connects with.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        users = UserDB(settings.users_file, clock)  # bad lines are skipped and logged
    except OSError as e:
        raise config.ConfigError(settings.path, "[users] file",
                                 file_problem(e, settings.users_file), USERS_FILE_HINT)
    try:
        aliases = AliasMap(settings.aliases_file, clock)
    except (ListFileError, OSError) as e:
        raise config.ConfigError(settings.path, "[aliases] file",
                                 file_problem(e, settings.aliases_file))
    source, book = _password_source(settings, clock)
    directory = Directory(settings.local_domains, users, aliases, book)
    groups = [antispam for _, antispam in settings.antispam_groups()]
    spf_sections = [a.spf for a in groups if a.spf is not None]
    if spf_sections or any(a.dmarc is not None for a in groups):
        # pyspf's DNS and limits are its module's, one set per process: set here,
        # once (a domain's [antispam.spf] cannot set the limits: config.py)
        limits = spf_sections[0] if spf_sections else config.SPFSettings(())
        spfeval.install_lookup(settings.dns, limits.max_lookups, limits.max_void_lookups)
    dkimverify.use_openssl()  # (dkimpy's RSA check, for [antispam.dkim] and DMARC)
    window = settings.pop_before_smtp.window if settings.pop_before_smtp.enabled else 0
    redis = None
    if settings.sessions.backend == "redis":
        redis = RedisLink(settings.sessions.redis_url, settings.sessions.redis_timeout, clock,
                          tls=tls.redis_client_tls(settings))
        sessions = RedisSessionStore(redis, window, clock, settings.auth)
    else:
        sessions = MemorySessionStore(window, clock, settings.auth)
    server_tls = tls.ServerTLS(settings)
    store = MailStore(settings.data_dir / "mail", clock)
    resolvers = dns.Resolvers(clock, settings.dns)
    spool = Spool(settings.node_dir / "queue")
    delivery = LocalDelivery(spool, store, directory)
    signer = dkim_signer(settings)
    return MailServer(
        settings=settings,
        directory=directory,
        checker=UserPasswordChecker(directory, sessions, clock, settings.auth.cache_ttl,
                                    source=source),
        sessions=sessions,
        redis=redis,
        store=store,
        spool=spool,
        delivery=delivery,
        queue_runner=QueueRunner(spool, settings, clock, resolvers(settings.dns),
                                 SMTPCourier.from_settings(settings, clock),
                                 local_delivery=delivery, signer=signer),
        listener_access={listener.index: ListenerAccess(listener.access,
                                                        resolvers(settings.dns), clock)
                         for listener in settings.listeners},
        trusted=_trusted_clients(settings, resolvers, clock),
        tls_context=server_tls.context(),
        tls=server_tls,
        clock=clock,
        resolvers=resolvers,
        signer=signer,
    )


def _password_source(settings, clock):
    """
    [auth] source: the checker's password source (L{None}: the users file)
    and, for LDAP, the book of the directory's addresses (else L{None}).
    """
    auth = settings.auth
    if auth.source == "smtp":
        return SMTPSource(auth.smtp, settings.hostname), None
    if auth.source != "ldap":
        return None, None
    password = ""
    if auth.ldap.bind_password_file is not None:
        try:
            password = read_bind_password(auth.ldap.bind_password_file)
        except OSError as e:
            raise config.ConfigError(settings.path, "[auth.ldap] bind_password_file",
                                     file_problem(e, auth.ldap.bind_password_file))
    connections = LDAPConnections(auth.ldap, password)
    return LDAPSource(connections), LDAPAddressBook(connections, settings.local_domains,
                                                    auth.ldap.refresh, clock)


def _trusted_clients(settings, resolvers, clock):
    """
    The clients of C{[relay] trusted} and C{trusted_file} (the file re-read
    when it changes).
    """
    path = settings.relay.trusted_file
    if path is not None and not path.exists():
        raise config.ConfigError(settings.path, "[relay] trusted_file",
                                 f"{path} does not exist")
    try:
        return ListedClients(settings.relay.trusted, path, resolvers(settings.dns), clock)
    except (ListFileError, OSError) as e:
        raise config.ConfigError(settings.path, "[relay] trusted_file", str(e))


def make_parent_service(settings):
    """
    The parent of [server] workers: the listening sockets, bound once, and
    the workers that accept on them (mailsrv/workers.py).
    """
    top = MailService(settings.log)
    ports = [ListenerService(listener, settings, protocol.Factory())
             for listener in settings.listeners]
    for port in ports:
        port.setServiceParent(top)
    Workers(settings, ports, reactor).setServiceParent(top)
    if settings.metrics.endpoint:
        sockets = {node.node: node.node_dir / SOCKET_NAME for node in settings.nodes_here()}
        metricsweb.MetricsService(
            settings.metrics.listen_endpoint,
            metricsweb.WorkersReadiness(sockets, reactor, ports), reactor,
            metrics=metricsweb.WorkersMetrics(sockets, reactor)).setServiceParent(top)
    return top


def make_service(settings, worker=0):
    """
    @param worker: as for L{make_service_or_exit}: a worker listens on the
        sockets its parent bound, and its parent serves [metrics].
    """
    sys.setswitchinterval(SWITCH_INTERVAL)
    server = build_mail_server(settings)
    top = MailService(settings.log, worker=bool(worker))
    StartupNotes(settings, server.directory).setServiceParent(top)
    TrustedResolver(server.trusted).setServiceParent(top)
    builders = _factory_builders()
    per_ip = Counter()
    listening, limits = [], []
    reloader = Reloader(server, limits, builders, server.tls.reload, reactor, _trusted_clients,
                        worker)
    tls.CertificateWatch(server.tls, server.clock, reloader.on_hangup).setServiceParent(top)
    if server.redis is not None:
        server.redis.setServiceParent(top)
        events = NewMailEvents(server.redis, server.store, server.sessions.token)
        server.store.publish = events.publish
        events.setServiceParent(top)
    server.queue_runner.setServiceParent(top)
    if server.redis is not None:  # (after the runner: a taken-over queue wakes it)
        NodeLease(server.redis, settings, server.spool, server.queue_runner.wake, server.clock,
                  server.sessions.token).setServiceParent(top)
    if server.directory.book is not None:
        server.directory.book.setServiceParent(top)
    readiness = metricsweb.Readiness(listening, server.spool.root, settings.data_dir,
                                     settings.metrics.min_free)
    ControlService(settings.node_dir / SOCKET_NAME,
                   ControlFactory(server.sessions, reloader.reload, readiness),
                   reactor).setServiceParent(top)
    ImportRequests(settings.node_dir / IMPORT_REQUESTS, server.store,
                   server.clock).setServiceParent(top)
    for listener in settings.listeners:
        factory = builders[listener.protocol](server, listener)
        factory = ConnectionLimits(
            factory,
            busy_reply=BUSY_REPLIES[listener.protocol],
            max_connections=listener.max_connections,
            max_per_ip=settings.access.max_connections_per_ip,
            per_ip=per_ip,
            stress_connections=listener.timeouts.stress_connections,
            access=server.access_for(listener),
            denied_reply=DENIED_REPLIES[listener.protocol],
            later_reply=LATER_REPLIES[listener.protocol],
            name=listener.name,
        )
        limits.append(factory)
        if listener.tls == "implicit":
            factory = TLSMemoryBIOFactory(server.tls_context_for(listener), False, factory)
            factory.noisy = False
        if listener.proxy_protocol:  # outermost: nothing starts before the header
            factory = ProxyProtocolFactory(factory, IPList(listener.proxy_from), server.clock,
                                           listener.name)
        listening.append(ListenerService(listener, settings, factory, inherited=bool(worker)))
        listening[-1].setServiceParent(top)
    runner = server.queue_runner
    metrics.QUEUE_MESSAGES.set_function(lambda: runner.queued()[0])
    metrics.QUEUE_OLDEST.set_function(lambda: runner.queued()[1])
    if settings.metrics.endpoint and not worker:  # (the workers' parent serves theirs)
        metricsweb.MetricsService(settings.metrics.listen_endpoint, readiness,
                                  reactor).setServiceParent(top)
    return top


class MailService(service.MultiService):
    """
    The whole server. Given to twistd's application, it hands it the log
    observer [log] asks for (twistd uses an application's ILogObserver).
    """

    def __init__(self, log_settings, worker=False):
        """@param worker: a worker of [server] workers logs to its parent."""
        super().__init__()
        self.log_settings = log_settings
        self.worker = worker

    def setServiceParent(self, parent):
        if hasattr(parent, "setComponent"):  # (twistd's Application, a Componentized)
            logs.give_to(parent, self.log_settings, self.worker)
        super().setServiceParent(parent)


class StartupNotes(service.Service):
    """Log, at every start, what an admin must not miss."""

    def __init__(self, settings, directory):
        self.settings = settings
        self.directory = directory

    def startService(self):
        super().startService()
        s = self.settings
        log.info("mailsrv starting as {hostname}, local domains: {domains}",
                 hostname=s.hostname, domains=", ".join(s.local_domains) or "(none)")
        if s.relay.mode == "anyone":
            log.critical(
                "WARNING: [relay] mode = \"anyone\": this server is an OPEN RELAY "
                "and will be abused by spammers; use \"trusted\" or \"none\""
            )
        for problem in self.directory.alias_problems():
            log.warn("aliases: {problem} (mailsrv lists check)", problem=problem)


class TrustedResolver(service.Service):
    """Resolve host names in [relay] trusted at start (off the reactor thread)."""

    def __init__(self, iplist):
        self.iplist = iplist

    def startService(self):
        super().startService()
        self.iplist.resolve()


class ListenerService(service.Service):
    """
    Listens on one [[listen]] endpoint; a port that cannot be bound stops
    start-up with a line naming the listener.
    """

    def __init__(self, listener, settings, factory, inherited=False):
        """
        @param inherited: listen on the socket the parent of [server]
            workers bound (L{mailsrv.workers.inherited_port}).
        """
        self.listener = listener
        self.settings = settings
        self.factory = factory
        self.inherited = inherited
        self.port = None

    def privilegedStartService(self):
        super().privilegedStartService()
        if self.inherited:
            self.port = inherited_port(self.listener.index, self.factory, reactor)
            log.info("listening: {name} (the socket of the workers' parent)",
                     name=self.listener.name)
            return
        endpoint = endpoints.serverFromString(reactor, self.listener.listen_endpoint)
        result = []
        endpoint.listen(self.factory).addBoth(result.append)
        if not result:
            raise RuntimeError(f"{self.listener.name}: endpoint did not listen at once")
        if isinstance(result[0], Failure):
            error = result[0].value
            reason = error.socketError if isinstance(error, CannotListenError) else error
            sys.stderr.write(
                f"mailsrv: {self.settings.path}: [[listen]] #{self.listener.index + 1} "
                f"({self.listener.name}): cannot listen: {reason}\n"
            )
            raise SystemExit(1)
        self.port = result[0]
        log.info("listening: {name}", name=self.listener.name)

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()


class ConnectionLimits(policies.WrappingFactory):
    """
    Caps connections per listener and per client IP (counted across all
    listeners), answering the protocol's own "busy" line before closing,
    and runs the listener's connect hook (L{mailsrv.policy.checks.connect}) before the
    protocol sees the client: a refused client gets the protocol's "denied"
    line. Also turns on TCP_NODELAY: without it small replies wait ~40 ms
    on Nagle and the client's delayed ACK.

    Slow clients must not lock others out (issue 13): from
    C{stress_connections} open connections on, the listener is under stress
    and every connection's deadlines shrink (L{mailsrv.deadline}); when it
    is full, a new client takes the place of a connection that has not
    logged in, from the address holding the most connections, the one that
    made no progress for longest (Dovecot's "Connection queue full").
    The wrapped factory's C{load} is set to this object.

    @ivar active: connections counted against C{max_connections}.
    """

    def __init__(self, wrapped, busy_reply, max_connections, max_per_ip, per_ip,
                 access=None, denied_reply=b"", later_reply=b"", stress_connections=None,
                 name="-"):
        super().__init__(wrapped)
        self.name = name  # (the listener's, for the metrics)
        # One "listening:" line per listener says enough; no per-factory chatter.
        self.noisy = wrapped.noisy = False
        self.access = access
        self.denied_reply = denied_reply
        self.later_reply = later_reply
        self.busy_reply = busy_reply
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.per_ip = per_ip
        self.stress_connections = stress_connections
        self.active = 0
        # the _LimitedProtocols counted in active, oldest first (a dict keeps
        # the order, so of equally idle connections the oldest is evicted)
        self.connections = {}
        wrapped.load = self

    def buildProtocol(self, addr):
        return _LimitedProtocol(self, self.wrappedFactory.buildProtocol(addr))

    @property
    def stressed(self):
        return self.stress_connections is not None and self.active >= self.stress_connections

    def admit(self, connection):
        """
        Count a new connection, or return False when there is no room. The
        last slot taken puts the listener under stress: the open connections
        get their shorter deadlines at once.
        """
        if self.active >= self.max_connections and not self._evict():
            return False
        was_stressed = self.stressed
        self.active += 1
        metrics.CONNECTIONS.labels(self.name).inc()
        metrics.OPEN_CONNECTIONS.labels(self.name).inc()
        self.per_ip[connection.counted_ip] += 1
        self.connections[connection] = None
        if self.stressed and not was_stressed:
            for other in list(self.connections):
                if other.deadline is not None:
                    other.deadline.refresh()
        return True

    def release(self, connection):
        if connection not in self.connections:
            return
        del self.connections[connection]
        self.active -= 1
        metrics.OPEN_CONNECTIONS.labels(self.name).dec()
        ip = connection.counted_ip
        self.per_ip[ip] -= 1
        if not self.per_ip[ip]:
            del self.per_ip[ip]

    def _evict(self):
        """Close the least useful connection that has not logged in; False if none may go."""
        candidates = [c for c in self.connections
                      if c.deadline is not None and c.deadline.evictable]
        if not candidates:
            return False
        victim = max(candidates, key=lambda c: (self.per_ip[c.counted_ip],
                                                -c.deadline.last_progress))
        self.release(victim)
        victim.deadline.evict()
        return True


class _LimitedProtocol(policies.ProtocolWrapper):
    counted_ip = None
    _held = None  # input that arrived while the connect hook decides

    @property
    def deadline(self):
        """The wrapped protocol's L{mailsrv.deadline.Deadline}, once it has one."""
        return getattr(self.wrappedProtocol, "deadline", None)

    def makeConnection(self, transport):
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)
        limits = self.factory
        ip = peer_ip(transport.getPeer())
        self.counted_ip = ip
        if limits.per_ip[ip] >= limits.max_per_ip or not limits.admit(self):
            log.info("refused connection from {ip}: connection limit", ip=ip)
            metrics.CONNECTIONS_REFUSED.labels(limits.name, "busy").inc()
            # Not handed to the wrapped protocol at all: only the busy line.
            self.counted_ip = None
            self.transport = transport
            self.connected = 1
            transport.write(limits.busy_reply)
            transport.loseConnection()
            return
        log.info(literal(f"connect from {ip} to {limits.name}"), ip=ip, listener=limits.name)
        if limits.access is None or not limits.access.settings.restricted:
            return super().makeConnection(transport)
        # Held until the connect hook decides: input waits, unread.
        self.transport = transport
        self.connected = 1
        self._held = []
        local = peer_ip(transport.getHost())
        verdict = hooks.run([limits.access], Peer(ip, local), None, None)
        if isinstance(verdict, defer.Deferred):
            verdict.addCallback(self._decided, transport, ip)
        else:
            self._decided(verdict, transport, ip)

    def _decided(self, verdict, transport, ip):
        held, self._held = self._held, None
        if not self.connected:
            return
        if not verdict.accepted:
            log.info("refused connection from {ip}: {reason}", ip=ip, reason=verdict.reason)
            limits = self.factory
            metrics.CONNECTIONS_REFUSED.labels(
                limits.name, "later" if verdict.temporary else "denied").inc()
            transport.write(limits.later_reply if verdict.temporary
                            else limits.denied_reply.replace(b"%s", ip.encode()))
            limits.release(self)
            self.counted_ip = None
            transport.loseConnection()
            return
        super().makeConnection(transport)
        for data in held:
            super().dataReceived(data)

    def startTLS(self, context_factory, *args):
        """STARTTLS: the wrapper must say it is secure too, as the TCP transport does."""
        self.transport.startTLS(context_factory, *args)
        alsoProvides(self, ISSLTransport)

    def dataReceived(self, data):
        if self._held is not None:
            self._held.append(data)
        elif self.counted_ip is not None:
            super().dataReceived(data)

    def connectionLost(self, reason):
        self.connected = 0
        if self.counted_ip is None:
            return
        self.factory.release(self)
        if self._held is None:
            super().connectionLost(reason)
