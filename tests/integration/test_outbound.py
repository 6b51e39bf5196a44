"""
Outbound mail through the real server: MX lookup on a test DNS server
(tests/dnsserver.py) pointing at sinks on high loopback ports, and the
bounce a local sender gets when the far side refuses.
"""

import email
import signal
import smtplib
import socket
import socketserver
import ssl
import threading
import time
from email import policy

from twisted.trial import unittest

from tests.dnsserver import TinyDNSServer
from tests.integration.harness import (
    PASSWORD, MailServerProcess, SinkServer, free_port,
)

ALICE = "alice@example.test"


class ScriptedSink:
    """
    A remote SMTP server: every RCPT gets C{rcpt_reply}; while C{running}
    is clear, a transaction stalls after the data (no reply to the final
    dot) and never completes. C{messages} holds the acknowledged ones.

    @param extensions: EHLO keywords to offer.
    @param break_tls: answer STARTTLS with 220, then garbage instead of a
        TLS handshake.
    @ivar connections: sessions so far; C{most_at_once}: the most open at
        one time.
    """

    def __init__(self, rcpt_reply="250 2.1.5 ok", extensions=(), break_tls=False):
        self.port = free_port()
        self.rcpt_reply = rcpt_reply.encode() + b"\r\n"
        self.ehlo_reply = "".join(f"250-{e}\r\n" for e in ("sink.test", *extensions)
                                  )[:-2].rpartition("250-")
        self.ehlo_reply = (self.ehlo_reply[0] + "250 " + self.ehlo_reply[2] + "\r\n").encode()
        self.running = threading.Event()
        self.running.set()
        self.stalled = 0
        self.messages = []
        self.connections = self.open = self.most_at_once = 0
        lock = threading.Lock()
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                with lock:
                    sink.connections += 1
                    sink.open += 1
                    sink.most_at_once = max(sink.most_at_once, sink.open)
                try:
                    self.session()
                finally:
                    with lock:
                        sink.open -= 1

            def session(self):
                self.wfile.write(b"220 sink.test ESMTP\r\n")
                recipients = []
                for line in self.rfile:
                    verb = line[:4].upper()
                    if verb == b"EHLO":
                        self.wfile.write(sink.ehlo_reply)
                    elif verb == b"STAR" and break_tls:
                        self.wfile.write(b"220 go ahead\r\n" + b"garbage\r\n" * 10)
                        return
                    elif verb == b"MAIL":
                        recipients = []
                        self.wfile.write(b"250 2.1.0 ok\r\n")
                    elif verb == b"RCPT":
                        recipients.append(line.decode().split(":", 1)[1].strip())
                        self.wfile.write(sink.rcpt_reply)
                    elif verb == b"DATA":
                        self.wfile.write(b"354 go\r\n")
                        data = b"".join(iter(self.rfile.readline, b".\r\n"))
                        if not sink.running.is_set():
                            sink.stalled += 1
                            sink.running.wait()
                            return
                        sink.messages.append((recipients, data))
                        self.wfile.write(b"250 2.0.0 ok\r\n")
                    elif verb == b"QUIT":
                        self.wfile.write(b"221 bye\r\n")
                        return
                    else:
                        self.wfile.write(b"250 sink.test\r\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.running.set()
        self.server.shutdown()
        self.server.server_close()


def submission(server, user):
    """A client logged in as C{user} on the submission port, after STARTTLS."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client = smtplib.SMTP("127.0.0.1", server.ports["submission"], timeout=30)
    client.starttls(context=context)
    client.login(user, PASSWORD)
    return client


def wait_until(condition, timeout=20):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


class OutboundTests(unittest.TestCase):
    def start(self, sink, files=None, **extra):
        self.addCleanup(sink.close)
        self.start_with(sink.port, files, **extra)

    def start_with(self, mx_port, files=None, **extra):
        """
        The server, remote.test's MX on C{mx_port}; C{extra} config tables,
        C{files} beside the config (name: text).
        """
        dns = TinyDNSServer({
            ("remote.test", "MX"): ["10 mx.remote.test."],
            ("mx.remote.test", "A"): ["127.0.0.1"],
        })
        self.addCleanup(dns.close)
        self.server = MailServerProcess(extra={
            "dns": {"servers": [dns.address], "timeout": 2},
            "delivery": {"mx_port": mx_port, "retry": [1]}, **extra,
        })
        for name, text in (files or {}).items():
            (self.server.dir / name).write_text(text)
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def submit(self, recipients, message, user=ALICE):
        """As a user: submission, STARTTLS, AUTH, one message."""
        with submission(self.server, user) as client:
            self.assertEqual(client.sendmail(user, recipients, message), {})

    def test_delivery_by_mx(self):
        sink = SinkServer()
        self.start(sink)
        self.submit(["friend@remote.test"], b"Subject: by MX\r\n\r\nhello\r\n")
        (sender, recipients, data), = sink.wait_for(1)
        self.assertEqual((sender, recipients), (f"<{ALICE}>", ["<friend@remote.test>"]))
        self.assertIn(b"Subject: by MX", data)
        self.server.wait_for_log(f"relay=127.0.0.1:{sink.port} status=sent")

    def test_refused_recipient_bounces_to_the_senders_maildir(self):
        self.start(ScriptedSink("550 5.1.1 <nobody@remote.test>: No such user"))
        self.submit(["nobody@remote.test"],
                    b"Subject: lost\r\nMessage-ID: <lost@example.test>\r\n\r\nhello\r\n")
        self.server.wait_for_log("to <alice@example.test>: delivered")
        [path] = self.server.maildir_files(ALICE)
        report = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        self.assertEqual(report.get_content_type(), "multipart/report")
        self.assertIn("MAILER-DAEMON@mail.example.test", report["From"])
        text, status, headers = report.get_payload()
        [_, recipient] = status.get_payload()
        self.assertEqual(recipient["Final-Recipient"], "rfc822; nobody@remote.test")
        self.assertEqual((recipient["Action"], recipient["Status"]), ("failed", "5.1.1"))
        self.assertTrue(recipient["Diagnostic-Code"].startswith("smtp; 550 5.1.1"))
        self.assertIn("Message-ID: <lost@example.test>", headers.get_payload())

    def test_bounce_reaches_an_idle_client_at_once(self):
        """As local mail does: not at the IDLE's next folder scan (15 s later)."""
        self.start(ScriptedSink("550 5.1.1 <nobody@remote.test>: No such user"))
        imap = self.server.imap()
        self.addCleanup(imap.shutdown)
        imap.login(ALICE, PASSWORD)
        imap.select("INBOX")
        imap.send(b"t IDLE\r\n")
        self.assertTrue(imap.readline().startswith(b"+ "))
        self.submit(["nobody@remote.test"], b"Subject: lost\r\n\r\nhello\r\n")
        self.server.wait_for_log("to <alice@example.test>: delivered")
        delivered = time.monotonic()
        imap.sock.settimeout(10)
        self.assertEqual(imap.readline(), b"* 1 EXISTS\r\n")
        self.assertLess(time.monotonic() - delivered, 1)

    def test_queue_commands_on_the_running_server(self):
        self.start_with(free_port())  # nothing listens: deferred, retried every second
        self.submit(["friend@remote.test"], b"Subject: waiting\r\n\r\nhello\r\n")
        self.server.wait_for_log("status=deferred")
        listing = self.server.admin("queue", "list").stdout
        queue_id = listing.split()[0]
        self.assertIn(f"<{ALICE}>", listing)
        self.assertIn("deferred  friend@remote.test  (127.0.0.1:", listing)
        self.assertEqual(self.server.admin("queue", "hold", queue_id).stdout,
                         f"hold {queue_id}: done\n")
        self.assertIn("HELD", self.server.admin("queue", "list").stdout)
        self.assertEqual(self.server.admin("queue", "release", queue_id).stdout,
                         f"release {queue_id}: done\n")
        self.assertEqual(self.server.admin("queue", "flush").stdout, "flush: done\n")
        self.assertEqual(self.server.admin("queue", "remove", queue_id).stdout,
                         f"remove {queue_id}: done\n")
        self.assertEqual(self.server.admin("queue", "list").stdout, "0 queued\n")
        missing = self.server.admin("queue", "remove", queue_id, check=False)
        self.assertNotEqual(missing.returncode, 0)
        self.assertIn(f"no queued message {queue_id}", missing.stderr)

    def test_outbound_spam_is_held_until_an_admin_releases_it(self):
        """[antispam] outbound: `mailsrv queue` shows the held message; release sends it."""
        sink = SinkServer()
        self.start(sink, {"phrase-list.txt": "cheap pills\n"}, antispam={"outbound": True},
                   **{"antispam.phrases": {"action": "move:Junk"}})
        with submission(self.server, ALICE) as client:
            self.assertEqual(client.sendmail(ALICE, ["friend@remote.test"],
                                             b"Subject: hi\r\n\r\ncheap pills here\r\n"), {})
            self.assertEqual(client.sendmail(ALICE, ["friend@remote.test"],
                                             b"Subject: lunch\r\n\r\nat noon\r\n"), {})
        (_, _, data), = sink.wait_for(1)  # the good one
        self.assertIn(b"Subject: lunch", data)
        self.server.wait_for_log("action=hold")
        listing = self.server.admin("queue", "list").stdout
        self.assertIn("HELD", listing)
        queue_id = listing.split()[0]
        self.assertEqual(self.server.admin("queue", "release", queue_id).stdout,
                         f"release {queue_id}: done\n")
        (_, _, _), (_, recipients, data) = sink.wait_for(2)
        self.assertEqual(recipients, ["<friend@remote.test>"])
        self.assertIn(b"X-Mailsrv-Spam: yes; reasons=phrase cheap pills", data)

    def test_starttls_when_the_next_hop_offers_it(self):
        """Another mailsrv as the smart host: its Received header says ESMTPS."""
        far = MailServerProcess().start()
        self.addCleanup(far.cleanup)
        self.server = MailServerProcess(users=("carol@a.test",), extra={
            "domains": {"local": ["a.test"]},
            "delivery": {"smart_host": "127.0.0.1:%d" % far.ports["smtp"]},
        }).start()
        self.addCleanup(self.server.cleanup)
        self.submit(["bob@example.test"], b"Subject: over TLS\r\n\r\nhello\r\n",
                    user="carol@a.test")
        far.wait_for_log("bob@example.test")
        self.server.wait_for_log("status=sent")
        [path] = far.maildir_files("bob@example.test")
        self.assertIn(b"by mail.example.test (mailsrv) with ESMTPS id", path.read_bytes())

    def test_kill_9_during_delivery_loses_nothing_and_repeats_nothing(self):
        one, two = ScriptedSink(), ScriptedSink()
        for sink in (one, two):
            self.addCleanup(sink.close)
        two.running.clear()  # two.test's host stalls after the data
        self.server = MailServerProcess()
        self.addCleanup(self.server.cleanup)
        with open(self.server.config, "a") as config:  # the harness writes no subtables
            config.write(f'\n[delivery.transports]\n"one.test" = "127.0.0.1:{one.port}"\n'
                         f'"two.test" = "127.0.0.1:{two.port}"\n')
        self.server.start()
        self.submit(["x@one.test", "y@two.test"], b"Subject: crash\r\n\r\nhello\r\n")
        wait_until(lambda: two.stalled == 1)  # one.test has acknowledged x
        self.server.stop(signal.SIGKILL)
        two.running.set()
        self.server.start()
        wait_until(lambda: two.messages)
        self.server.wait_for_log(f"relay=127.0.0.1:{two.port} status=sent")
        wait_until(lambda: self.server.admin("queue", "list").stdout == "0 queued\n")
        self.assertEqual([r for r, _ in one.messages], [["<x@one.test>"]])
        self.assertEqual([r for r, _ in two.messages], [["<y@two.test>"]])


class NextHopListTests(unittest.TestCase):
    def test_first_next_hop_down_the_second_takes_the_mail(self):
        """
        A relay domain with two next hops, the first a sink that has shut
        down, the second named by mx: and looked up through [dns] servers.
        """
        first, second = SinkServer(), SinkServer()
        first.close()
        self.addCleanup(second.close)
        dns = TinyDNSServer({
            ("relay.test", "MX"): ["10 mx.relay.test."],
            ("mx.relay.test", "A"): ["127.0.0.1"],
        })
        self.addCleanup(dns.close)
        self.server = MailServerProcess(extra={
            "dns": {"servers": [dns.address], "timeout": 2},
            "delivery.transports": {'"internal.test"': [
                f"127.0.0.1:{first.port}", f"mx:relay.test:{second.port}"]},
        }).start()
        self.addCleanup(self.server.cleanup)
        OutboundTests.submit(self, ["bob@internal.test"], b"Subject: failover\r\n\r\nhi\r\n")
        (sender, recipients, data), = second.wait_for(1)
        self.assertEqual((sender, recipients), (f"<{ALICE}>", ["<bob@internal.test>"]))
        self.assertIn(b"Subject: failover", data)
        self.server.wait_for_log(f"relay=127.0.0.1:{second.port} status=sent")
        self.assertIn(f"127.0.0.1:{first.port} unavailable: cannot connect",
                      self.server.log_text())
        self.assertEqual(first.messages, [])


class SmartHostTests(unittest.TestCase):
    """
    Another mailsrv plays a provider's submission server: STARTTLS, then
    AUTH, then relay.
    """

    def setUp(self):
        self.far = MailServerProcess(extra={
            "server": {"hostname": "localhost"},
            "access": {"sender_must_be_owned": False},
        }).start()
        self.addCleanup(self.far.cleanup)

    def start(self, password=PASSWORD, **delivery):
        secret = self.far.dir / "relay.secret"
        secret.write_text(password + "\n")
        secret.chmod(0o600)
        self.server = MailServerProcess(users=("carol@a.test",), extra={
            "domains": {"local": ["a.test"]},
            "delivery": {"smart_host_username": "bob@example.test",
                         "smart_host_password_file": str(secret), **delivery},
        }).start()
        self.addCleanup(self.server.cleanup)
        OutboundTests.submit(self, ["bob@example.test"],
                             b"Subject: via the provider\r\n\r\nhello\r\n",
                             user="carol@a.test")

    def test_auth_over_starttls(self):
        self.start(smart_host=f"127.0.0.1:{self.far.ports['submission']}")
        self.server.wait_for_log("status=sent")
        [path] = self.far.maildir_files("bob@example.test")
        data = path.read_bytes()
        self.assertIn(b"Subject: via the provider", data)
        self.assertIn(b"by localhost (mailsrv) with ESMTPSA id", data)

    def test_wrong_password_defers(self):
        self.start(password="wrong", smart_host=f"127.0.0.1:{self.far.ports['submission']}")
        self.server.wait_for_log("status=deferred")
        self.assertIn("status=deferred (535 authentication as bob@example.test failed",
                      self.server.log_text())
        self.assertEqual(self.far.maildir_files("bob@example.test"), [])

    def test_verified_certificate(self):
        self.start(smart_host=f"localhost:{self.far.ports['submission']}",
                   smart_host_tls="verify", tls_ca_file=str(self.far.dir / "tls/cert.pem"))
        self.server.wait_for_log("status=sent")
        self.assertEqual(len(self.far.maildir_files("bob@example.test")), 1)

    def test_certificate_for_another_name_is_refused(self):
        self.start(smart_host=f"127.0.0.1:{self.far.ports['submission']}",
                   smart_host_tls="verify", tls_ca_file=str(self.far.dir / "tls/cert.pem"))
        self.server.wait_for_log("status=deferred")
        log = self.server.log_text()
        self.assertIn("TLS handshake failed", log)
        self.assertNotIn("trying again without TLS", log)
        self.assertEqual(self.far.maildir_files("bob@example.test"), [])


class ConnectionTests(unittest.TestCase):
    def start(self, sink, **delivery):
        self.addCleanup(sink.close)
        self.server = MailServerProcess(extra={
            "delivery": {"smart_host": f"127.0.0.1:{sink.port}", **delivery},
        }).start()
        self.addCleanup(self.server.cleanup)

    def test_plain_text_after_a_failed_tls_handshake(self):
        sink = ScriptedSink(extensions=["STARTTLS"], break_tls=True)
        self.start(sink)
        OutboundTests.submit(self, ["friend@remote.test"], b"Subject: x\r\n\r\nhi\r\n")
        wait_until(lambda: sink.messages)
        self.server.wait_for_log("status=sent")
        self.assertIn("TLS handshake failed", self.server.log_text())
        self.assertIn("trying again without TLS", self.server.log_text())
        self.assertEqual(sink.connections, 2)

    def test_a_stalling_host_times_out_and_the_next_one_takes_the_mail(self):
        stalling = socket.socket()
        stalling.bind(("127.0.0.1", 0))
        stalling.listen(8)  # connections complete, nothing is ever said
        self.addCleanup(stalling.close)
        stall_port = stalling.getsockname()[1]
        sink = ScriptedSink()
        self.start(sink, reply_timeout=2, smart_host=[
            {"host": "127.0.0.1", "port": stall_port, "preference": 10},
            {"host": "127.0.0.1", "port": sink.port, "preference": 20},
        ])
        OutboundTests.submit(self, ["friend@remote.test"], b"Subject: x\r\n\r\nhi\r\n")
        wait_until(lambda: sink.messages)
        self.server.wait_for_log(f"relay=127.0.0.1:{sink.port} status=sent")
        self.assertIn(f"127.0.0.1:{stall_port} unavailable: no reply in 2 s",
                      self.server.log_text())

    def test_sessions_reused_within_the_per_destination_limit(self):
        sink = ScriptedSink(extensions=["PIPELINING"])
        self.start(sink, max_connections_per_destination=2)
        with submission(self.server, ALICE) as client:
            for n in range(12):
                client.sendmail(ALICE, [f"friend{n}@remote.test"],
                                b"Subject: x\r\n\r\nhi\r\n")
        wait_until(lambda: len(sink.messages) == 12)
        self.assertLessEqual(sink.most_at_once, 2)
        self.assertLess(sink.connections, 12)
