"""
The real server behind a real HAProxy (Debian's package) sending PROXY
headers ([[listen]] proxy_protocol, docs/scale-out.md). On one machine
every address is loopback, so the three ends differ: HAProxy listens on
127.0.0.2 and connects to the server from 127.0.0.1 (proxy_from); clients
connect to HAProxy from 127.0.0.3 and others. The server must see the
client's address, never HAProxy's, in Received:, access rules, per-IP
limits, POP-before-SMTP windows and over implicit TLS; and close a direct
connection from an address not in proxy_from.
"""

import os
import shutil
import smtplib
import socket
import ssl

from twisted.trial import unittest

from tests import redisserver
from tests.daemon import Daemon
from tests.integration.harness import PASSWORD, MailServerProcess, free_port

ALICE = "alice@example.test"
FRONT = "127.0.0.2"  # where HAProxy listens
CLIENT = "127.0.0.3"
PROXIED = {"proxy_protocol": True, "proxy_from": ["127.0.0.1"]}


def haproxy_binary():
    return shutil.which("haproxy", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


class HAProxy(Daemon):
    """
    One haproxy in the foreground (-db) with a config of its own, stopped
    by its PID. C{routes}: frontend name -> (mailsrv port, server options).
    """

    name = "haproxy"

    def __init__(self, routes):
        super().__init__()
        self.ports = {name: free_port() for name in routes}
        lines = ["global", "    maxconn 200", "defaults", "    mode tcp",
                 "    timeout connect 5s", "    timeout client 30s", "    timeout server 30s"]
        for name, (port, options) in routes.items():
            lines += [f"frontend {name}", f"    bind {FRONT}:{self.ports[name]}",
                      f"    default_backend {name}",
                      f"backend {name}", f"    server mailsrv 127.0.0.1:{port} {options}"]
        (self.dir / "haproxy.cfg").write_text("\n".join(lines) + "\n")

    def argv(self):
        return [haproxy_binary(), "-f", str(self.dir / "haproxy.cfg"), "-db"]

    def answers(self):
        """Every frontend accepts connections."""
        for port in self.ports.values():
            try:
                socket.create_connection((FRONT, port), 1).close()
            except OSError:
                return False
        return True

    def address(self, name):
        return FRONT, self.ports[name]


class ProxiedTestCase(unittest.TestCase):
    def setUp(self):
        if haproxy_binary() is None:
            raise unittest.SkipTest("haproxy is not installed (Debian: apt-get install "
                                    "haproxy; .ci/run installs it)")

    def start_haproxy(self, routes):
        self.haproxy = HAProxy(routes)
        self.addCleanup(self.haproxy.cleanup)
        self.haproxy.start()

    def smtp(self, front, source=CLIENT):
        host, port = self.haproxy.address(front)
        return smtplib.SMTP(host, port, "client.test", timeout=30, source_address=(source, 0))

    def imap_login(self, front, tls=False, source=CLIENT):
        """Log alice in over IMAP through HAProxy's C{front}: the tagged reply."""
        connection = socket.create_connection(self.haproxy.address(front), 10,
                                              source_address=(source, 0))
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            connection = context.wrap_socket(connection, server_hostname="mail.example.test")
        with connection:
            reader = connection.makefile("rb")
            self.assertTrue(reader.readline().startswith(b"* OK"))
            connection.sendall(b'a LOGIN %s "%s"\r\n' % (ALICE.encode(), PASSWORD.encode()))
            reply = reader.readline()
            connection.sendall(b"b LOGOUT\r\n")
            return reply


class BehindHAProxyTests(ProxiedTestCase):
    def setUp(self):
        super().setUp()
        self.server = MailServerProcess(
            extra={"access": {"max_connections_per_ip": 2}, "pop_before_smtp": {"window": 60}},
            listeners={"smtp": {**PROXIED, "deny": ["127.0.0.4"]},
                       "imap": PROXIED, "imaps": PROXIED})
        self.server.start()
        self.addCleanup(self.server.cleanup)
        port = self.server.ports
        self.start_haproxy({
            "smtp_v1": (port["smtp"], "send-proxy"),
            # HAProxy's health checks send LOCAL, answered as a connection from it
            "smtp_v2": (port["smtp"], "send-proxy-v2 check check-send-proxy inter 300ms"),
            "imap_v1": (port["imap"], "send-proxy"),
            "imaps_v2": (port["imaps"], "send-proxy-v2"),
        })

    def test_received_names_the_client_with_v1_and_v2(self):
        for front in ("smtp_v1", "smtp_v2"):
            with self.smtp(front) as client:
                self.assertEqual(client.sendmail("x@remote.test", [ALICE],
                                                 f"Subject: {front}\r\n\r\nhi\r\n"), {})
        messages = [path.read_bytes() for path in self.server.maildir_files()]
        self.assertEqual(len(messages), 2)
        for message in messages:
            head = message.split(b"\r\n\r\n")[0]
            self.assertIn(b"[127.0.0.3]", head)
            self.assertNotIn(b"127.0.0.1", head)
            self.assertNotIn(b"127.0.0.2", head)
        self.server.wait_for_log("connect from 127.0.0.3 to smtp/mx")
        # the health checks' LOCAL header: HAProxy's own address, no refusal
        self.server.wait_for_log("connect from 127.0.0.1 to smtp/mx")
        self.assertNotIn("bad PROXY header", self.server.log_text())

    def test_deny_list_keys_on_the_client(self):
        host, port = self.haproxy.address("smtp_v2")
        with socket.create_connection((host, port), 10,
                                      source_address=("127.0.0.4", 0)) as s:
            self.assertEqual(s.makefile("rb").readline(),
                             b"554 5.7.1 Access denied for 127.0.0.4\r\n")
        self.server.wait_for_log("refused connection from 127.0.0.4: deny list")
        with self.smtp("smtp_v2", source="127.0.0.5") as client:
            self.assertEqual(client.noop()[0], 250)

    def test_per_ip_limit_keys_on_the_client(self):
        # max_connections_per_ip = 2: a third from 127.0.0.3 is refused, while
        # 127.0.0.5 still gets in (all four come from HAProxy's 127.0.0.1)
        host, port = self.haproxy.address("smtp_v1")
        held, first_lines = [], []
        self.addCleanup(lambda: [s.close() for s in held])
        for source in (CLIENT, CLIENT, CLIENT, "127.0.0.5"):
            held.append(socket.create_connection((host, port), 10,
                                                 source_address=(source, 0)))
            first_lines.append(held[-1].makefile("rb").readline()[:4])
        self.assertEqual(first_lines, [b"220 ", b"220 ", b"421 ", b"220 "])

    def test_pop_before_smtp_window_is_the_clients(self):
        def relay(source):
            """MAIL FROM alice, RCPT TO a remote address: the reply codes."""
            with self.smtp("smtp_v1", source=source) as client:
                client.ehlo()
                mail = client.mail(ALICE)[0]
                return mail, client.rcpt("friend@elsewhere.test")[0] if mail == 250 else None

        self.assertEqual(relay(CLIENT), (553, None))
        self.assertTrue(self.imap_login("imap_v1").startswith(b"a OK"))
        self.assertEqual(relay(CLIENT), (250, 250))
        self.assertEqual(relay("127.0.0.5"), (553, None))  # the window is not HAProxy's

    def test_implicit_tls_behind_v2(self):
        self.assertTrue(self.imap_login("imaps_v2", tls=True).startswith(b"a OK"))
        self.server.wait_for_log("connect from 127.0.0.3 to imap tcp:")

    def test_direct_connection_from_outside_proxy_from_is_closed(self):
        with socket.create_connection(self.server.address("smtp"), 10,
                                      source_address=("127.0.0.6", 0)) as s:
            s.settimeout(10)
            self.assertEqual(s.recv(100), b"")
        self.server.wait_for_log(f"refused connection from 127.0.0.6 to smtp/mx "
                                 f"tcp:{self.server.ports['smtp']}:interface=127.0.0.1: "
                                 "not in proxy_from")


class WorkersBehindHAProxyTests(ProxiedTestCase):
    """[server] workers = 2 listen on the parent's sockets: the wrapper holds there too."""

    def test_each_worker_sees_the_client(self):
        redis = redisserver.started(self)
        server = MailServerProcess(
            extra={"server": {"node": "w", "workers": 2},
                   "sessions": {"backend": "redis", "redis_url": redis.url}},
            listeners={"smtp": PROXIED})
        self.addCleanup(server.cleanup)
        server.start()
        self.start_haproxy({"smtp_v2": (server.ports["smtp"], "send-proxy-v2")})
        for n in range(6):
            with self.smtp("smtp_v2") as client:
                self.assertEqual(client.sendmail("x@remote.test", [ALICE],
                                                 f"Subject: {n}\r\n\r\nhi\r\n"), {})
        for path in server.maildir_files():
            self.assertIn(b"[127.0.0.3]", path.read_bytes().split(b"\r\n\r\n")[0])
        self.assertEqual(len(server.maildir_files()), 6)
