"""
Two nodes on one data_dir sharing a real redis-server ([sessions] backend =
"redis", docs/scale-out.md): a login on node A opens a POP-before-SMTP
window on node B, wrong passwords on A lock out on B, one POP3 session per
maildrop across both, a delivery on A wakes an IDLE on B at once, two
nodes adding to one folder agree on every UID, 500 queued messages with
both runners on are each delivered once, [server] workers = 2 survives a
kill -9 of one worker, Redis stopped and started again mid-run (relay
windows closed, logins still working, all back without a restart), a
node killed with its queue: the other delivers it once the lease lapses,
and both nodes finding Redis through a sentinel and following it to the
new master when the old one dies.
"""

import imaplib
import json
import os
import poplib
import re
import signal
import smtplib
import threading
import time
import urllib.request

from twisted.trial import unittest

from mailsrv.redis.sessions import LEASE, RENEW
from tests.integration.harness import PASSWORD, MailServerProcess, SinkServer, free_port
from tests import redisserver

ALICE = "alice@example.test"
BOB = "bob@example.test"


class TwoNodesTestCase(unittest.TestCase):
    """Nodes a and b on one data_dir and one redis-server."""

    def setUp(self):
        self.redis = redisserver.started(self)
        self.a = self.node("a")
        self.b = self.node("b", data_dir=self.a.data_dir)

    def smart_host(self, name):
        """Where node C{name} hands remote mail: by default a port where nothing listens."""
        return f"127.0.0.1:{free_port()}"

    def node(self, name, data_dir=None):
        """
        Node C{name}; with C{data_dir} (node a's), it shares a's users file
        too, as nodes on shared storage do.
        """
        server, shared = {"node": name}, {}
        if data_dir is not None:
            server["data_dir"] = str(data_dir)
            shared = {"users": {"file": str(self.a.dir / "users")}}
        node = MailServerProcess(extra={
            "server": server,
            "sessions": {"backend": "redis", "redis_url": self.redis.url, "redis_timeout": 1},
            "relay": {"mode": "trusted", "trusted": ["127.0.0.9"]},
            "delivery": {"smart_host": self.smart_host(name)},
            **shared,
        }, users=() if shared else ("alice@example.test", "bob@example.test"))
        self.addCleanup(node.cleanup)
        node.start()
        node.wait_for_log(f"Redis connected: {self.redis.url.split('?')[0]}")
        return node

    def imap_login(self, node, source, user, password=PASSWORD):
        """C{"OK"}, or the server's reason for refusing."""
        client = node.imap(source)
        try:
            client.login(user, password)
        except imaplib.IMAP4.error as e:
            return str(e)
        finally:
            client.shutdown()
        return "OK"

    def session(self, node):
        """An IMAP client of C{node}, logged in as alice, in her INBOX (closed at the end)."""
        imap = node.imap()
        self.addCleanup(_quietly, imap.shutdown)
        imap.login(ALICE, PASSWORD)
        imap.select("INBOX")
        return imap

    def relay(self, node, source):
        """The reply to RCPT TO a remote address, over port 25 without AUTH."""
        with node.smtp(source=source) as client:
            client.ehlo("laptop.example.test")
            client.mail("laptop-user@elsewhere.test")
            reply = client.rcpt("someone@remote.test")
            client.rset()
            return reply[0]

    def pop3(self, node):
        """A POP3 client of C{node} that has sent USER for alice."""
        client = node.pop3()
        self.addCleanup(_quietly, client.close)
        client.user(ALICE)
        return client



class SentinelNodesTests(TwoNodesTestCase):
    """The two nodes find Redis through a sentinel (redis+sentinel://) and follow a failover."""

    def setUp(self):
        self.master = redisserver.started(self, port=free_port())
        self.replica = redisserver.started(self, port=free_port(), replica_of=self.master.port)
        self.redis = redisserver.started(self, redisserver.RedisSentinel, port=free_port(),
                                         name="m", master_port=self.master.port)
        self.a = self.node("a")
        self.b = self.node("b", data_dir=self.a.data_dir)

    def test_a_window_opened_on_a_works_on_b_before_and_after_the_master_dies(self):
        self.assertEqual(self.imap_login(self.a, "127.0.0.2", ALICE), "OK")
        self.assertEqual(self.relay(self.b, "127.0.0.2"), 250)
        deadline = time.monotonic() + 20  # (the sentinel must know the replica to promote it)
        while b"\r\nslave\r\n" not in self.redis.command("SENTINEL", "REPLICAS", "m"):
            self.assertLess(time.monotonic(), deadline, "the sentinel knows no replica")
            time.sleep(0.1)
        self.master.kill()
        for node in (self.a, self.b):
            node.wait_for_log(f"Redis is back: {self.redis.url} "
                              f"(master 127.0.0.1:{self.replica.port})", timeout=30)
        self.assertEqual(self.imap_login(self.a, "127.0.0.3", ALICE), "OK")
        self.assertEqual(self.relay(self.b, "127.0.0.3"), 250)
        self.assertEqual(self.relay(self.b, "127.0.0.4"), 550)


class SharedSessionsTests(TwoNodesTestCase):
    def test_a_login_on_a_lets_its_ip_relay_through_b(self):
        self.assertEqual(self.relay(self.b, "127.0.0.2"), 550)
        self.assertEqual(self.imap_login(self.a, "127.0.0.2", ALICE), "OK")
        self.assertEqual(self.relay(self.b, "127.0.0.2"), 250)
        self.assertEqual(self.relay(self.b, "127.0.0.3"), 550)

    def test_five_wrong_passwords_on_a_lock_out_on_b(self):
        for n in range(5):
            self.assertIn("AUTHENTICATIONFAILED",
                          self.imap_login(self.a, "127.0.0.4", ALICE, f"guess {n}"))
        self.assertIn("[UNAVAILABLE] Too many failed logins",
                      self.imap_login(self.b, "127.0.0.4", ALICE))
        self.assertEqual(self.imap_login(self.b, "127.0.0.5", ALICE), "OK")
        locked = self.b.admin("auth", "locked").stdout
        self.assertIn("127.0.0.4/alice@example.test", locked)

    def test_pop3_on_a_and_b_at_once_is_in_use(self):
        first = self.pop3(self.a)
        first.pass_(PASSWORD)
        second = self.pop3(self.b)
        with self.assertRaises(poplib.error_proto) as caught:
            second.pass_(PASSWORD)
        self.assertEqual(caught.exception.args[0],
                         b"-ERR [IN-USE] Mailbox in use by another POP3 session")
        first.quit()
        third = self.pop3(self.b)
        self.assertTrue(third.pass_(PASSWORD).startswith(b"+OK"))
        third.quit()

    def test_a_password_changed_on_a_ends_the_cached_login_on_b(self):
        """
        No Redis message needed: B re-reads the shared users file itself,
        within a second of the change, and its login cache holds only
        while the file has the hash it was checked against.
        """
        self.assertEqual(self.imap_login(self.b, "127.0.0.7", ALICE), "OK")  # (now cached)
        self.a.admin("user", "passwd", ALICE, "--password-stdin", input="new secret\n")
        deadline = time.monotonic() + 5
        while (self.imap_login(self.b, "127.0.0.8", ALICE) == "OK"
               and time.monotonic() < deadline):
            time.sleep(0.2)
        self.assertEqual(self.imap_login(self.b, "127.0.0.8", ALICE),
                         "b'[AUTHENTICATIONFAILED] Authentication failed'")
        self.assertEqual(self.imap_login(self.b, "127.0.0.8", ALICE, "new secret"), "OK")

    def test_redis_stopped_and_started_mid_run(self):
        self.assertEqual(self.imap_login(self.a, "127.0.0.6", ALICE), "OK")
        self.assertEqual(self.relay(self.b, "127.0.0.6"), 250)
        self.redis.stop()
        for node in (self.a, self.b):
            node.wait_for_log("Redis went away: unix://")
        # relay windows fail closed; logins and mail intake keep working
        self.assertEqual(self.relay(self.b, "127.0.0.6"), 550)
        self.assertEqual(self.imap_login(self.a, "127.0.0.6", BOB), "OK")
        self.assertEqual(self.imap_login(self.b, "127.0.0.6", BOB, "wrong"),
                         "b'[AUTHENTICATIONFAILED] Authentication failed'")
        self.assertEqual(self.b.send("Subject: while Redis is away\r\n\r\nhi\r\n")[0], 250)
        self.redis.start()
        for node in (self.a, self.b):
            node.wait_for_log("Redis is back: unix://")
        self.assertEqual(self.imap_login(self.a, "127.0.0.6", ALICE), "OK")
        self.assertEqual(self.relay(self.b, "127.0.0.6"), 250)
        for node in (self.a, self.b):  # one line for the outage, one for the return
            log = node.log_text()
            self.assertEqual((log.count("Redis went away"), log.count("Redis is back")), (1, 1))
        deadline = time.monotonic() + 10
        while not self.a.maildir_files() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(len(self.a.maildir_files()), 1)


class NewMailEventTests(TwoNodesTestCase):
    def idle(self, node):
        """An IMAP client of C{node} idling in alice's INBOX."""
        imap = self.session(node)
        imap.send(b"t IDLE\r\n")
        self.assertTrue(imap.readline().startswith(b"+ "))
        return imap

    def test_idle_on_b_sees_a_delivery_on_a_within_a_second(self):
        """Not at the IDLE's next folder scan (15 s later)."""
        imap = self.idle(self.b)
        self.assertEqual(self.a.send("Subject: to b's IDLE\r\n\r\nhi\r\n")[0], 250)
        delivered = time.monotonic()
        imap.sock.settimeout(10)
        self.assertEqual(imap.readline(), b"* 1 EXISTS\r\n")
        self.assertLess(time.monotonic() - delivered, 1)


class SharedFolderTests(TwoNodesTestCase):
    def subjects(self, imap):
        """UID -> Subject of every message, as C{imap}'s session sees the folder."""
        imap.noop()
        listing = imap.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1]
        return {int(re.search(rb"UID (\d+)", item[0]).group(1)): item[1].strip().decode()
                for item in listing if isinstance(item, tuple)}

    def test_two_nodes_adding_to_one_folder_give_each_message_its_own_uid(self):
        """
        Deliveries and APPENDs at once through both nodes, each with a
        session in the folder (so each takes the new mail in itself): both
        nodes, and a node started afterwards, see the same message under
        each UID, and UIDNEXT follows the highest.
        """
        watching = [self.session(node) for node in (self.a, self.b)]
        failures = []

        def deliver(node, name):
            for n in range(15):
                if node.send(f"Subject: {name} {n}\r\n\r\nhi\r\n")[0] != 250:
                    failures.append((name, n))

        def append(node, name):
            imap = node.imap()
            imap.login(ALICE, PASSWORD)
            for n in range(15):
                message = f"Subject: {name} {n}\r\n\r\nhi\r\n".encode()
                if imap.append("INBOX", None, None, message)[0] != "OK":
                    failures.append((name, n))
            imap.logout()

        work = [threading.Thread(target=job, args=(node, f"{job.__name__} {name}"))
                for node, name in ((self.a, "a"), (self.b, "b")) for job in (deliver, append)]
        for thread in work:
            thread.start()
        for thread in work:
            thread.join()
        self.assertEqual(failures, [])
        later = self.node("c", data_dir=self.a.data_dir)
        everyone = [*watching, self.session(self.a), self.session(self.b), self.session(later)]
        deadline = time.monotonic() + 10
        while True:  # (a session hears of the other node's last ones within a second)
            views = [self.subjects(imap) for imap in everyone]
            if all(view == views[-1] for view in views) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for view in views:
            self.assertEqual(view, views[-1])
        self.assertEqual(len(set(views[-1].values())), 60)
        status = everyone[-1].status("INBOX", "(UIDNEXT)")[1][0].decode()
        self.assertIn(f"(UIDNEXT {max(views[-1]) + 1})", status)


class QueueTakeoverTests(TwoNodesTestCase):
    def setUp(self):
        self.sink = SinkServer()
        self.addCleanup(self.sink.close)
        super().setUp()

    def smart_host(self, name):
        """Node a delivers to the sink; node b's smart host never answers."""
        return f"127.0.0.1:{self.sink.port}" if name == "a" else super().smart_host(name)

    def test_a_killed_nodes_queue_is_delivered_by_the_other_after_its_lease(self):
        with self.b.smtp(source="127.0.0.9") as client:
            client.sendmail("x@example.test", ["friend@remote.test"],
                            b"Subject: stranded\r\n\r\nhello\r\n")
        self.b.wait_for_log("status=deferred")
        self.b.stop(signal.SIGKILL)
        killed = time.monotonic()
        [(sender, recipients, data)] = self.sink.wait_for(1, timeout=LEASE + 2 * RENEW + 10)
        self.assertGreater(time.monotonic() - killed, LEASE - RENEW)  # not before the lease
        self.assertEqual(recipients, ["<friend@remote.test>"])
        self.assertIn(b"Subject: stranded", data)
        self.a.wait_for_log("queue: took over 1 message(s) of node b, whose lease lapsed")


class QueueAtScaleTests(TwoNodesTestCase):
    def setUp(self):
        self.sink = SinkServer()
        self.addCleanup(self.sink.close)
        super().setUp()

    def smart_host(self, name):
        return f"127.0.0.1:{self.sink.port}"

    def test_500_queued_messages_with_both_runners_on_are_each_delivered_once(self):
        def submit(node):
            with node.smtp(source="127.0.0.9") as client:  # (trusted: relays)
                for n in range(250):
                    client.sendmail("x@example.test", [f"friend{n % 7}@remote.test"],
                                    f"Subject: {node.dir.name} {n}\r\n\r\nhi\r\n".encode())

        work = [threading.Thread(target=submit, args=(node,)) for node in (self.a, self.b)]
        for thread in work:
            thread.start()
        for thread in work:
            thread.join()
        self.sink.wait_for(500, timeout=120)
        time.sleep(3)  # (retries come every second: a second delivery would be here by now)
        subjects = [re.search(rb"Subject: ([^\r]+)", data).group(1)
                    for _, _, data in self.sink.messages]
        self.assertEqual(len(subjects), 500)
        self.assertEqual(len(set(subjects)), 500)
        for node in (self.a, self.b):
            self.assertEqual(node.admin("queue", "list").stdout, "0 queued\n")


class WorkersTests(unittest.TestCase):
    """[server] workers = 2: one parent, two worker nodes, one redis-server."""

    def setUp(self):
        self.redis = redisserver.started(self)
        self.metrics_port = free_port()
        self.server = MailServerProcess(extra={
            "server": {"node": "w", "workers": 2},
            "sessions": {"backend": "redis", "redis_url": self.redis.url},
            "relay": {"mode": "trusted", "trusted": ["127.0.0.9"]},
            "delivery": {"smart_host": f"127.0.0.1:{free_port()}", "retry": [600]},
            "metrics": {"endpoint": f"tcp:{self.metrics_port}:interface=127.0.0.1"},
            "log": {"format": "json"},
        })
        self.addCleanup(self.server.cleanup)
        self.server.start()
        self.pids = self.workers(2)

    def workers(self, count):
        """The PIDs of the workers started last, by number, once C{count} answer Redis."""
        deadline = time.monotonic() + 20
        while self.server.log_text().count("Redis connected") < count:
            self.assertLess(time.monotonic(), deadline, self.server.log_text())
            time.sleep(0.05)
        return dict(re.findall(r"worker (\d) started: node w-\d, PID (\d+)",
                               self.server.log_text()))

    def test_two_workers_serve_and_a_kill_9_of_one_does_not_stop_service(self):
        self.assertEqual(sorted(self.pids), ["1", "2"])
        # the parent made the self-signed pair, once, before the workers looked
        self.assertEqual(self.server.log_text().count("generated a self-signed certificate"), 1)
        self.assertEqual(sorted(p.name for p in (self.server.data_dir / "nodes").iterdir()),
                         ["w-1", "w-2"])
        for n in range(4):
            self.assertEqual(self.server.send(f"Subject: {n}\r\n\r\nhi\r\n")[0], 250)
        imap = self.server.imap()
        imap.login(ALICE, PASSWORD)
        imap.logout()
        os.kill(int(self.pids["1"]), signal.SIGKILL)
        for n in range(4, 10):  # at once: worker 2 accepts alone meanwhile
            self.assertEqual(self.server.send(f"Subject: {n}\r\n\r\nhi\r\n")[0], 250)
        self.server.wait_for_log(f"worker 1 (PID {self.pids['1']}) ended (killed by signal 9); "
                                 "starting it again in 0.5 s")
        restarted = self.workers(3)
        self.assertNotEqual(restarted["1"], self.pids["1"])
        self.assertEqual(len(self.server.maildir_files()), 10)
        self.server.stop()  # SIGTERM: the parent stops both workers
        for pid in (restarted["1"], self.pids["2"]):
            with self.assertRaises(ProcessLookupError):
                os.kill(int(pid), 0)


    def test_the_commands_metrics_and_log_cover_every_worker(self):
        spools = [self.server.data_dir / "nodes" / f"w-{n}" / "queue" / "env" for n in (1, 2)]
        for n in range(40):  # until each worker took some (the kernel picks one)
            if all(_entries(spool) for spool in spools):
                break
            with self.server.smtp(source="127.0.0.9") as client:
                client.sendmail("x@remote.test", ["bob@far.test"], f"Subject: {n}\r\n\r\nhi\r\n")
        held = [_entries(spool) for spool in spools]
        self.assertTrue(all(held), held)
        queued = sum(len(entries) for entries in held)
        listing = self.server.admin("queue", "list").stdout
        self.assertTrue(listing.endswith(f"\n{queued} queued\n"), listing)
        second = held[1][0]
        self.assertIn(f"id: {second}\n", self.server.admin("queue", "show", second).stdout)
        self.assertEqual(self.server.admin("queue", "hold", second).stdout,
                         f"hold {second}: done\n")
        self.assertIn(f"{second}  ", self.server.admin("queue", "list").stdout)
        self.assertEqual(self.server.admin("reload").stdout, "reloaded: no change\n")
        self.assertEqual(self.server.admin("auth", "locked").stdout, "0 locked out\n")
        metrics = _get(self.metrics_port, "/metrics")
        for node in ("w-1", "w-2"):
            self.assertRegex(metrics, r'mailsrv_messages_total\{node="%s",outcome="accepted",'
                                      r'status="2.0.0"\} [1-9]' % node)
        self.assertIn("mailsrv_workers_answering 2.0", metrics)
        self.assertEqual(_get(self.metrics_port, "/readyz"), "ready\n")
        accepted = [json.loads(line) for line in self.server.log_text().splitlines()
                    if '"accepted ' in line]
        self.assertEqual({record["node"] for record in accepted}, {"w-1", "w-2"})
        self.assertEqual(len(accepted), queued)


def _entries(directory):
    """The queue ids of a spool's envelopes."""
    return sorted(p.stem for p in directory.iterdir()) if directory.exists() else []


def _get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return answer.read().decode("utf-8")


def _quietly(close):
    try:
        close()
    except (OSError, smtplib.SMTPException, poplib.error_proto):
        pass
