"""
The running server's control socket (mailsrv/control.py) and the admin
commands of issue 20 that read the queue or the session store: `auth
locked` / `auth unlock`, `queue show`, `user list --json`, `--version`,
and a password prompt with no terminal.
"""

import io
import json
from pathlib import Path
from types import SimpleNamespace

from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from mailsrv import config
from mailsrv.admin import cli
from mailsrv.control import ControlFactory
from mailsrv.queue.spool import Envelope, RecipientState, Spool
from mailsrv.reload import changes, needs_restart, running_part
from mailsrv.sessions import MemorySessionStore
from tests.test_admin import AdminTestCase

LIMITS = SimpleNamespace(max_failures=2, max_failures_per_ip=3, failure_window=600,
                         lockout=900)


class SessionLockoutTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.store = MemorySessionStore(0, self.clock, LIMITS)
        for n, (ip, user) in enumerate([("192.0.2.1", "alice@x.test")] * 2
                                       + [("192.0.2.2", "bob@x.test")] * 3):
            self.store.record_failure(ip, user, str(n).encode())

    def locked(self):
        results = []
        self.store.locked().addCallback(results.append)
        return results[0]

    def unlock(self, target):
        results = []
        self.store.unlock(target).addCallback(results.append)
        return results[0]

    def test_locked_keys_and_their_time_left(self):
        self.clock.advance(100)
        self.assertEqual(self.locked(), [("192.0.2.1/alice@x.test", 800),
                                         ("192.0.2.2/bob@x.test", 800), ("192.0.2.2", 800)])

    def test_unlock_by_ip_user_or_key(self):
        self.assertEqual(self.unlock("Alice@x.test"), ["192.0.2.1/alice@x.test"])
        self.assertEqual(self.unlock("::ffff:192.0.2.2"),
                         ["192.0.2.2/bob@x.test", "192.0.2.2"])
        self.assertEqual((self.locked(), self.unlock("192.0.2.9")), ([], []))
        results = []
        self.store.login_refused("192.0.2.2", "bob@x.test").addCallback(results.append)
        self.assertEqual(results, [None])


class ControlProtocolTests(unittest.TestCase):
    def converse(self, *lines):
        store = MemorySessionStore(0, task.Clock(), LIMITS)
        for n in range(2):
            store.record_failure("192.0.2.1", "alice@x.test", bytes([n]))
        protocol = ControlFactory(store).buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        for line in lines:
            protocol.dataReceived(line)
        return [json.loads(answer) for answer in transport.value().splitlines()]

    def test_commands(self):
        self.assertEqual(self.converse(b"locked\n", b"unlock alice@x.test\n", b"locked\n"), [
            {"ok": True, "locked": [["192.0.2.1/alice@x.test", 900]]},
            {"ok": True, "unlocked": ["192.0.2.1/alice@x.test"]},
            {"ok": True, "locked": []}])

    def test_bad_input_gets_an_answer(self):
        self.assertEqual(self.converse(b"reboot\n", b"unlock\n", b"\n"), [
            {"ok": False, "error": "unknown command 'reboot'"},
            {"ok": False, "error": "usage: unlock TARGET"},
            {"ok": False, "error": "unknown command ''"}])
        [answer] = self.converse(b"x" * 2000)
        self.assertEqual(answer, {"ok": False, "error": "line too long"})


class CommandTests(AdminTestCase):
    def test_version(self):
        stdout = io.StringIO()
        self.patch(cli.sys, "stdout", stdout)
        with self.assertRaises(SystemExit) as caught:
            cli.main(["--version"])
        self.assertEqual((caught.exception.code, stdout.getvalue()), (0, "mailsrv 0.1.0\n"))

    def test_no_server_to_ask(self):
        status, out, err = self.run_command("auth", "locked")
        self.assertEqual(status, 1)
        self.assertIn("mailsrv: no running server answers on ", err)  # (either reason)
        self.assertTrue("is mailsrv running with" in err or "shorter path" in err, err)

    def test_user_list_json(self):
        self.add("bob@example.test")
        self.add("alice@example.test")
        status, out, _ = self.run_command("user", "list", "--json")
        self.assertEqual(json.loads(out), [{"address": "alice@example.test",
                                            "source": "users file"},
                                           {"address": "bob@example.test",
                                            "source": "users file"}])

    def test_no_terminal_for_the_password(self):
        status, out, err = self.run_command("user", "add", "alice@example.test")
        self.assertEqual(status, 1)
        self.assertIn("--password-stdin", err)
        self.assertFalse(self.users.exists())

    def test_queue_show(self):
        spool = Spool(self.root / "var" / "queue")
        incoming = spool.incoming()
        incoming.write(b"Subject: held back\r\nFrom: a@example.test\r\n\r\nbody\r\n")
        incoming.finish()
        spool.enqueue(incoming, Envelope(
            id=incoming.queue_id, sender="a@example.test", client_ip="192.0.2.7",
            helo="laptop", held=True, recipients=[
                RecipientState("b@remote.test", "deferred", 2, 2e9,
                               "mx.remote.test:25: 451 4.3.0 later"),
                RecipientState("c@remote.test", "failed", 1, 0, "550 5.1.1 no such user")]))
        status, out, _ = self.run_command("queue", "show", incoming.queue_id)
        self.assertEqual(status, 0)
        self.assertIn(f"id: {incoming.queue_id}\nsender: <a@example.test>\n", out)
        self.assertIn("from: 192.0.2.7 (helo laptop)\n", out)
        self.assertIn(f"held: yes (mailsrv queue release {incoming.queue_id})\n", out)
        self.assertIn("  <b@remote.test>: deferred, 2 attempts, next attempt ", out)
        self.assertIn("    last error: mx.remote.test:25: 451 4.3.0 later\n", out)
        self.assertIn("  <c@remote.test>: failed, 1 attempts\n", out)
        self.assertIn("headers:\n  Subject: held back\n", out)
        status, _, err = self.run_command("queue", "show", "NOPE")
        self.assertEqual((status, err), (1, "mailsrv: no queued message NOPE\n"))


class ReloadChangesTests(unittest.TestCase):
    def test_changes_and_what_waits_for_a_restart(self):
        old = config.parse({"access": {"max_message_size": 10000}}, Path("/c.toml"))
        new = config.parse({"access": {"max_message_size": 20000},
                            "auth": {"cache_ttl": 0, "lockout": 60},
                            "domains": {"local": ["example.test"]},
                            "listen": [{"endpoint": "tcp:2525"}]}, Path("/c.toml"))
        found = changes(old, new)
        self.assertEqual(found, ["[[listen]]", "[auth] lockout", "[auth] cache_ttl",
                                 "[access] max_message_size", "[domains] local"])
        self.assertEqual([c for c in found if needs_restart(c)],
                         ["[[listen]]", "[auth] lockout"])
        running = running_part(old, new)
        self.assertEqual((running.access.max_message_size, running.auth.cache_ttl,
                          running.auth.lockout, running.listeners),
                         (20000, 0, old.auth.lockout, old.listeners))
