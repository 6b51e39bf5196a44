"""
Real redis-servers of our own (Debian's package), for the [sessions]
backend = "redis" tests, persisting nothing (`--save ""`, no AOF), each
in a temporary folder, stopped by its PID (L{tests.daemon}), never the
system's Redis:

- L{RedisServer}: on a UNIX socket (no TCP port: `--port 0`); or on a
  loopback TCP port, as a replica of another if asked (Sentinel's
  servers: sentinels watch TCP addresses); or over TLS only
  (`--tls-port`, `--port 0`) with a certificate for "localhost" from a
  CA of the test's. It can be stopped and started again on the same
  address, for the "Redis away" tests; what it held is then gone, as
  after a restart of a Redis without persistence.
- L{RedisSentinel}: `redis-server --sentinel` (the same binary) watching
  one master.
"""

import socket
import ssl
import textwrap
from pathlib import Path

from twisted.trial import unittest

from tests import certs
from tests.daemon import Daemon

REDIS_SERVER = "/usr/bin/redis-server"


def redis_missing():
    """Why no redis-server can run here, or L{None}."""
    if not Path(REDIS_SERVER).exists():
        return (f"{REDIS_SERVER} is missing (Debian: apt-get install redis-server; "
                ".ci/run installs it)")
    return None


def started(testcase, server_class=None, **kwargs):
    """
    A redis-server (or a C{server_class} of C{kwargs}) started for
    C{testcase}, stopped when it ends; the test is skipped, saying why,
    where none can run.
    """
    missing = redis_missing()
    if missing:
        raise unittest.SkipTest(missing)
    server = (server_class or RedisServer)(**kwargs)
    testcase.addCleanup(server.cleanup)
    server.start()
    return server


class TLSFiles:
    """
    A CA, a certificate for "localhost" and 127.0.0.1 it issued (the
    servers'), and one for a client, written into C{directory}.

    @ivar ca: the CA's PEM file.
    @ivar cert: the server's (C{key}: its key).
    @ivar client_cert: the client's (C{client_key}: its key).
    """

    def __init__(self, directory):
        authority = certs.make("mailsrv test Redis CA", ca=True)
        self.ca, _ = authority.write(directory, "ca")
        self.cert, self.key = certs.make("localhost", issuer=authority, names=("localhost",),
                                         ips=("127.0.0.1",)).write(directory, "redis")
        self.client_cert, self.client_key = certs.make("mailsrv", issuer=authority).write(
            directory, "client")


class RedisServer(Daemon):
    """
    One redis-server.

    @ivar url: for [sessions] redis_url: C{unix://SOCKET?db=0},
        C{redis://127.0.0.1:PORT/0}, or C{rediss://localhost:PORT/0}.
    @ivar tls: the L{TLSFiles} of a server over TLS, else L{None}.
    """

    name = "redis"

    def __init__(self, port=None, tls=False, client_certificates=False, replica_of=None,
                 user=None):
        """
        @param port: a TCP port on 127.0.0.1 (L{None}: a UNIX socket).
        @param user: C{(name, password)} of the only account that may log
            in (an ACL user of Redis 6; the default user is off).
        @param tls: whether the port speaks TLS, and only TLS (true: with
            L{TLSFiles} of its own; or the L{TLSFiles} to use), replicating
            over TLS too.
        @param client_certificates: whether clients must show a certificate
            from the test's CA (C{tls-auth-clients yes}).
        @param replica_of: the port of the master to replicate.
        """
        super().__init__()
        self.port = port
        self.replica_of = replica_of
        self.client_certificates = client_certificates
        self.user = user
        self.tls = (TLSFiles(self.dir) if tls is True else tls) or None
        self.socket = self.dir / "redis.sock"
        if port is None:
            self.url = f"unix://{self.socket}?db=0"
        elif tls:
            self.url = f"rediss://localhost:{port}/0"
        else:
            self.url = f"redis://127.0.0.1:{port}/0"

    def argv(self):
        argv = [REDIS_SERVER, "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                "--daemonize", "no", "--bind", "127.0.0.1"]
        if self.port is None:
            argv += ["--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        elif self.tls:
            argv += ["--port", "0", "--tls-port", str(self.port), "--tls-replication", "yes",
                     "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                     "--tls-ca-cert-file", str(self.tls.ca),
                     "--tls-auth-clients", "yes" if self.client_certificates else "no"]
        else:
            argv += ["--port", str(self.port)]
        if self.replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        if self.user is not None:
            name, password = self.user
            argv += ["--user", "default", "off", "--user", name, "on", f">{password}", "~*",
                     "&*", "+@all"]
        return argv

    def connection(self):
        """
        A socket connected to it (over TLS for a TLS server, showing the
        client's certificate), logged in as C{user} if it has one.
        """
        if self.port is None:
            client = socket.socket(socket.AF_UNIX)
            client.settimeout(5)
            client.connect(str(self.socket))
        else:
            client = socket.create_connection(("127.0.0.1", self.port), 5)
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
            client = context.wrap_socket(client, server_hostname="localhost")
        if self.user is not None:
            client.sendall(_request(("AUTH",) + self.user))
            client.recv(64)
        return client

    def answers(self):
        try:
            with self.connection() as client:
                client.settimeout(0.5)
                client.sendall(b"PING\r\n")
                return client.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *words):
        """One command over a fresh connection (the tests' own look at Redis): its raw reply."""
        with self.connection() as client:
            client.sendall(_request(words))
            return client.recv(65536)


class RedisSentinel(Daemon):
    """
    One sentinel on 127.0.0.1:C{port} watching the master C{name} at
    127.0.0.1:C{master_port}: a quorum of 1, the master down after
    C{down_after} ms without an answer, a failover given 5 s. With C{tls}
    (L{TLSFiles}), it speaks only TLS, to its clients and to the servers.

    @ivar url: C{redis+sentinel://127.0.0.1:PORT/NAME/0}, or
        C{rediss+sentinel://localhost:PORT/NAME/0}.
    """

    name = "sentinel"

    def __init__(self, port, name, master_port, down_after=1000, tls=None):
        super().__init__()
        self.port = port
        self.tls = tls
        self.url = (f"rediss+sentinel://localhost:{port}/{name}/0" if tls
                    else f"redis+sentinel://127.0.0.1:{port}/{name}/0")
        listen = f"port {port}" if tls is None else textwrap.dedent(f"""\
            port 0
            tls-port {port}
            tls-replication yes
            tls-auth-clients no
            tls-cert-file {tls.cert}
            tls-key-file {tls.key}
            tls-ca-cert-file {tls.ca}""")
        self.config = self.dir / "sentinel.conf"  # (a sentinel rewrites its config)
        self.config.write_text(listen + "\n" + textwrap.dedent(f"""\
            bind 127.0.0.1
            dir {self.dir}
            sentinel monitor {name} 127.0.0.1 {master_port} 1
            sentinel down-after-milliseconds {name} {down_after}
            sentinel failover-timeout {name} 5000
            sentinel parallel-syncs {name} 1
            """))

    def argv(self):
        return [REDIS_SERVER, str(self.config), "--sentinel", "--daemonize", "no"]

    def answers(self):
        try:
            return self.command("PING").startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *words):
        client = socket.create_connection(("127.0.0.1", self.port), 5)
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            client = context.wrap_socket(client, server_hostname="localhost")
        with client:
            client.sendall(_request(words))
            return client.recv(65536)


def _request(words):
    return b"*%d\r\n" % len(words) + b"".join(
        b"$%d\r\n%s\r\n" % (len(w), w) for w in (str(w).encode() for w in words))
