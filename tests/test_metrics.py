"""
The metrics (mailsrv/metrics.py) counted where things happen, and /readyz's
verdict, in-process; tests/integration/test_metrics.py scrapes the real
server.
"""

from pathlib import Path
from types import SimpleNamespace

from prometheus_client import REGISTRY
from twisted.trial import unittest

from mailsrv.control import ControlError
from mailsrv.metricsweb import Readiness, WorkersReadiness, merged_metrics
from tests.test_smtp.support import connect, make_mail_server, run_threads_inline


def value(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


class CountedTests(unittest.TestCase):
    def setUp(self):
        run_threads_inline(self)
        self.mail = make_mail_server(self)

    def test_messages_and_refusals(self):
        accepted = value("mailsrv_messages_total", outcome="accepted", status="2.0.0")
        unknown = value("mailsrv_smtp_refusals_total", command="rcpt", status="5.1.1")
        intake = value("mailsrv_intake_seconds_count")
        conn = connect(self.mail)
        conn.send(b"EHLO client.test\r\nMAIL FROM:<x@remote.test>\r\n")
        self.assertTrue(conn.send(b"RCPT TO:<nobody@example.test>\r\n").startswith(b"550"))
        conn.send(b"RCPT TO:<alice@example.test>\r\nDATA\r\n")
        self.assertTrue(conn.send(b"Subject: x\r\n\r\nx\r\n.\r\n").startswith(b"250"))
        self.assertEqual(value("mailsrv_messages_total", outcome="accepted", status="2.0.0"),
                         accepted + 1)
        self.assertEqual(value("mailsrv_smtp_refusals_total", command="rcpt",
                               status="5.1.1"), unknown + 1)
        self.assertEqual(value("mailsrv_intake_seconds_count"), intake + 1)

    def test_refused_at_the_end_of_data(self):
        refused = value("mailsrv_messages_total", outcome="refused", status="5.6.0")
        conn = connect(self.mail)
        conn.send(b"EHLO client.test\r\nMAIL FROM:<x@remote.test>\r\n"
                  b"RCPT TO:<alice@example.test>\r\nDATA\r\n")
        self.assertTrue(conn.send(b"bare\nLF\r\n.\r\n").startswith(b"550 5.6.0"))
        self.assertEqual(value("mailsrv_messages_total", outcome="refused", status="5.6.0"),
                         refused + 1)


class ReadinessTests(unittest.TestCase):
    def readiness(self, listening=True, min_free=0):
        root = Path(self.mktemp()).absolute()
        root.mkdir()
        listener = SimpleNamespace(listener=SimpleNamespace(name="smtp/mx tcp:25"),
                                   port=object() if listening else None)
        return Readiness([listener], root, root, min_free)

    def test_ready(self):
        self.assertEqual(self.readiness().problems(), [])

    def test_not_ready_says_why(self):
        problems = self.readiness(listening=False, min_free=1 << 62).problems()
        self.assertEqual(problems[0], "smtp/mx tcp:25: not listening")
        self.assertIn("bytes free, below 4611686018427387904", problems[1])


class WorkersMetricsTests(unittest.TestCase):
    """The parent of [server] workers shows theirs (mailsrv/metricsweb.py)."""

    WORKER = (
        "# HELP mailsrv_messages_total Messages at the end of DATA\n"
        "# TYPE mailsrv_messages_total counter\n"
        'mailsrv_messages_total{outcome="accepted",status="2.0.0"} %d.0\n'
        "# HELP mailsrv_queue_messages Messages in the queue\n"
        "# TYPE mailsrv_queue_messages gauge\n"
        "mailsrv_queue_messages %d.0\n")

    def test_each_workers_series_under_its_node(self):
        text = merged_metrics({"mx-1": self.WORKER % (3, 1), "mx-2": self.WORKER % (4, 0)},
                              3).decode()
        self.assertEqual(text.count("# TYPE mailsrv_messages_total counter"), 1)
        self.assertIn('mailsrv_messages_total{node="mx-1",outcome="accepted",status="2.0.0"} '
                      '3.0\n', text)
        self.assertIn('mailsrv_messages_total{node="mx-2",outcome="accepted",status="2.0.0"} '
                      '4.0\n', text)
        self.assertIn('mailsrv_queue_messages{node="mx-2"} 0.0\n', text)
        self.assertIn("mailsrv_workers_answering 2.0\n", text)

    def test_ready_when_every_worker_is(self):
        listener = SimpleNamespace(listener=SimpleNamespace(name="smtp/mx tcp:25"),
                                   port=object())
        readiness = WorkersReadiness({}, None, [listener])
        self.assertEqual(readiness.page({"mx-1": {"problems": []}}), (200, b"ready\n"))
        self.assertEqual(readiness.page({
            "mx-1": {"problems": ["spool /q: not writable"]},
            "mx-2": ControlError("no running server answers on /d/control.sock")}), (503,
            b"mx-1: spool /q: not writable\n"
            b"mx-2: not answering (no running server answers on /d/control.sock)\n"))
