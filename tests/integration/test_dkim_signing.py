"""
DKIM signing end to end (docs/dkim.md): keys made by `mailsrv dkim keygen`,
the real server signing what swaks submits with AUTH and the bounce it
makes, and dkimpy verifying what reached the next hop against the records
keygen printed; a tampered copy fails.
"""

import re
import smtplib
import socketserver
import subprocess
import threading

import dkim
from twisted.trial import unittest

from tests.integration.harness import (
    PASSWORD,
    MailServerProcess,
    SinkServer,
    free_port,
    require_tool,
)


class RefusingServer:
    """Another site's MX that refuses every recipient for good (550)."""

    def __init__(self):
        self.port = free_port()

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                self.wfile.write(b"220 refuse.test ESMTP\r\n")
                while line := self.rfile.readline(4096):
                    verb = line[:4].upper()
                    if verb == b"RCPT":
                        self.wfile.write(b"550 5.1.1 No such user\r\n")
                    elif verb == b"QUIT":
                        self.wfile.write(b"221 bye\r\n")
                        return
                    else:
                        self.wfile.write(b"250 refuse.test\r\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def verifies(message, records, index):
    def dnsfunc(name, timeout=5):
        return records.get(name.decode().rstrip("."))
    try:
        return dkim.DKIM(message).verify(idx=index, dnsfunc=dnsfunc)
    except dkim.DKIMException:
        return False


class SigningTests(unittest.TestCase):
    def setUp(self):
        self.sink = SinkServer()
        self.addCleanup(self.sink.close)
        self.refusing = RefusingServer()
        self.addCleanup(self.refusing.close)
        self.server = MailServerProcess(extra={
            "delivery": {"smart_host": f"127.0.0.1:{self.sink.port}", "retry": [1],
                         "transports": {"refuse.test": f"127.0.0.1:{self.refusing.port}"}},
            "dkim": {"sign": [{"domain": "example.test", "selector": "rsa2026"},
                              {"domain": "example.test", "selector": "ed2026"}]},
        })
        self.records = {}
        self.keygen("rsa2026", "rsa")
        self.keygen("ed2026", "ed25519")
        self.assertIn("ok", self.server.admin("check-config").stdout)
        self.server.start()
        self.addCleanup(self.server.cleanup)

    def keygen(self, selector, kind):
        """A key made by `mailsrv dkim keygen`, its record kept as DNS would serve it."""
        out = self.server.admin("dkim", "keygen", "example.test", selector,
                                "--type", kind).stdout
        line = [line for line in out.splitlines() if "IN TXT" in line][0]
        self.records[f"{selector}._domainkey.example.test"] = \
            "".join(re.findall(r'"([^"]*)"', line)).encode()

    def test_submitted_mail_is_signed_by_both_keys(self):
        require_tool(self, "swaks")
        sent = subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", str(self.server.ports["submission"]),
             "--tls", "--auth", "PLAIN", "--auth-user", "alice@example.test",
             "--auth-password", PASSWORD, "--from", "alice@example.test",
             "--to", "friend@elsewhere.test", "--header", "Subject: signed by mailsrv",
             "--body", "hello\nsecond line\n"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(sent.returncode, 0, sent.stdout)
        (sender, recipients, data), = self.sink.wait_for(1)
        self.assertEqual(recipients, ["<friend@elsewhere.test>"])
        self.assertEqual(data.count(b"DKIM-Signature:"), 2)
        self.assertTrue(verifies(data, self.records, 0))
        self.assertTrue(verifies(data, self.records, 1))
        tampered = data.replace(b"second line", b"second 1ine")
        self.assertFalse(verifies(tampered, self.records, 0))
        self.assertFalse(verifies(tampered, self.records, 1))

    def test_anonymous_mail_is_not_signed_and_its_bounce_is(self):
        # refuse.test is a relay domain of ours: anyone's mail goes on to it.
        with self.server.smtp() as client:
            client.ehlo("client.test")
            client.mail("x@remote.test")
            client.rcpt("nobody@refuse.test")
            client.data(b"From: alice@example.test\r\nSubject: forged\r\n\r\nhello\r\n")
        self.server.wait_for_log("bounce ")
        (sender, recipients, data), = self.sink.wait_for(1)
        self.assertEqual((sender, recipients), ("<>", ["<x@remote.test>"]))
        self.assertIn(b"From: Mail Delivery System <MAILER-DAEMON@mail.example.test>", data)
        self.assertEqual(data.count(b"DKIM-Signature:"), 2)  # (the forged copy's got none)
        self.assertTrue(verifies(data, self.records, 0))
        self.assertTrue(verifies(data, self.records, 1))

    def test_key_rotation_by_reload(self):
        self.keygen("rsa2027", "rsa")
        self.server.config.write_text(
            self.server.config.read_text().replace('"rsa2026"', '"rsa2027"'))
        self.assertEqual(self.server.admin("reload").stdout, "reloaded: [dkim] sign\n")
        with smtplib.SMTP("127.0.0.1", self.server.ports["submission"], timeout=30) as client:
            client.login("alice@example.test", PASSWORD)  # (plain text on loopback: the tests')
            client.sendmail("alice@example.test", ["friend@elsewhere.test"],
                            b"From: alice@example.test\r\nSubject: new key\r\n\r\nhello\r\n")
        (_, _, data), = self.sink.wait_for(1)
        self.assertEqual(re.findall(rb"\bs=(\w+);", data), [b"rsa2027", b"ed2026"])
        self.assertTrue(verifies(data, self.records, 0))
        self.assertTrue(verifies(data, self.records, 1))
