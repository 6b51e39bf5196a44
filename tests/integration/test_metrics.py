"""
[metrics] through the real server: curl scrapes /metrics (Prometheus text)
after a message and a failed login, /healthz answers, /readyz says ready.
"""

import imaplib
import subprocess

from twisted.trial import unittest

from tests.integration.harness import MailServerProcess, free_port, require_tool


class MetricsTests(unittest.TestCase):
    def setUp(self):
        require_tool(self, "curl")
        self.port = free_port()
        self.server = MailServerProcess(extra={"metrics": {"endpoint": f"tcp:{self.port}"}})
        self.addCleanup(self.server.cleanup)
        self.server.start()
        self.server.wait_for_log("metrics: tcp:")

    def get(self, path):
        result = subprocess.run(["curl", "-s", "-w", "\n%{http_code}",
                                 f"http://127.0.0.1:{self.port}{path}"],
                                capture_output=True, text=True, timeout=30)
        body, _, code = result.stdout.rpartition("\n")
        return int(code), body

    def test_scrape(self):
        self.assertEqual(self.server.send("Subject: counted\r\n\r\nhi\r\n")[0], 250)
        with self.server.imap() as client:
            with self.assertRaises(imaplib.IMAP4.error):
                client.login("alice@example.test", "wrong")
        code, text = self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertIn('mailsrv_messages_total{outcome="accepted",status="2.0.0"} 1.0', text)
        self.assertIn('mailsrv_logins_total{outcome="failed",protocol="imap"} 1.0', text)
        self.assertRegex(text, r'mailsrv_connections_total\{listener="smtp/mx tcp:\d+:'
                               r'interface=127\.0\.0\.1"\} [1-9]')
        self.assertNotIn("_created", text)
        self.assertIn("mailsrv_queue_messages 0.0", text)
        self.assertIn("mailsrv_intake_seconds_bucket", text)
        self.assertIn("process_resident_memory_bytes", text)
        self.assertEqual(self.get("/healthz"), (200, "ok\n"))
        self.assertEqual(self.get("/readyz"), (200, "ready\n"))

    def test_loopback_only_by_default(self):
        self.assertIn(f"metrics: tcp:{self.port}:interface=127.0.0.1", self.server.log_text())
