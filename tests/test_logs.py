"""
[log] (mailsrv/logs.py): JSON objects a line with the events' own fields, a
rotated file, and `mailsrv log trace` following one message.
"""

import io
import json
from pathlib import Path

from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailsrv import config
from mailsrv.admin import cli
from mailsrv.logs import files_of, json_line, observer, trace
from tests.test_admin import AdminTestCase

ACCEPTED = {"log_format": "accepted {queue_id} from {ip}", "log_level": LogLevel.info,
            "log_namespace": "mailsrv.smtp.reception", "log_time": 1765000000.25,
            "queue_id": "Q1", "ip": "192.0.2.7", "size": 120, "log_logger": object()}


class JSONTests(unittest.TestCase):
    def test_one_object_with_the_fields(self):
        line = json_line(ACCEPTED)
        self.assertTrue(line.endswith("}\n") and line.count("\n") == 1)
        self.assertEqual(json.loads(line), {
            "time": "2025-12-06T05:46:40.250Z", "level": "info",
            "system": "mailsrv.smtp.reception", "text": "accepted Q1 from 192.0.2.7",
            "queue_id": "Q1", "ip": "192.0.2.7", "size": 120})

    def test_a_failure_keeps_its_traceback(self):
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        record = json.loads(json_line({**ACCEPTED, "log_failure": failure,
                                       "log_level": LogLevel.critical}))
        self.assertEqual(record["level"], "critical")
        self.assertIn("ZeroDivisionError", record["traceback"])

    def test_text_to_twistd_is_twistd_own(self):
        settings = config.parse({}, Path("/c.toml")).log
        self.assertIsNone(observer(settings))

    def test_a_file_rotated_and_bounded(self):
        root = Path(self.mktemp()).absolute()
        settings = config.parse({"log": {"format": "json", "file": "log/m.json",
                                         "max_size": 4096, "max_files": 2}},
                                root / "c.toml").log
        observe = observer(settings)
        for n in range(200):
            observe({**ACCEPTED, "queue_id": f"Q{n}"})
        files = files_of(root / "log" / "m.json")
        self.assertEqual([p.name for p in files], ["m.json.2", "m.json.1", "m.json"])
        last = files[-1].read_text().splitlines()[-1]
        self.assertEqual(json.loads(last)["queue_id"], "Q199")


class TraceTests(unittest.TestCase):
    LINES = [
        "2026-12-06T08:00:00+0000 [mailsrv.smtp.reception#info] accepted Q1 from 192.0.2.7\n",
        "2026-12-06T08:00:01+0000 [mailsrv.smtp.reception#info] accepted Q2 from 192.0.2.8\n",
        "2026-12-06T08:00:02+0000 [mailsrv.queue.runner#info] queue Q1: from=<a@x> "
        "to=<b@y> relay=mx status=failed (550 5.1.1 no)\n",
        "2026-12-06T08:00:02+0000 [mailsrv.queue.runner#info] queue Q1: bounce B7 to <a@x>: "
        "queued\n",
        "2026-12-06T08:00:03+0000 [mailsrv.queue.runner#info] queue B7: from=<> to=<a@x> "
        "relay=mx status=sent (250 ok)\n",
        json_line({**ACCEPTED, "queue_id": "Q1", "log_format": "accepted {queue_id}"}),
        json_line({**ACCEPTED, "queue_id": "Q3", "log_format": "accepted {queue_id}"}),
    ]

    def test_every_line_of_one_message_and_its_bounce(self):
        found = list(trace(self.LINES, "Q1"))
        self.assertEqual(found, [self.LINES[i] for i in (0, 2, 3, 4, 5)])


class CommandTests(AdminTestCase):
    def test_log_trace_from_stdin_and_without_a_file(self):
        stdout = io.StringIO()
        status = cli.main(["--config", str(self.config), "log", "trace", "Q2", "-"],
                          stdin=io.StringIO("".join(TraceTests.LINES)), stdout=stdout)
        self.assertEqual((status, stdout.getvalue()), (0, TraceTests.LINES[1]))
        status, _, err = self.run_command("log", "trace", "Q2")
        self.assertEqual(status, 1)
        self.assertIn("journalctl -u mailsrv -o cat | mailsrv log trace Q2 -", err)
        status, _, err = self.run_command("log", "trace", "Q9", "-")
        self.assertEqual((status, err), (1, "mailsrv: no line names Q9\n"))
