"""
[log] format = "json" through the real server: every line twistd writes is
one JSON object, the accepted message's carries its queue_id, and `mailsrv
log trace` finds the message's lines in the log.
"""

import json

from twisted.trial import unittest

from tests.integration.harness import MailServerProcess


class JSONLogTests(unittest.TestCase):
    def test_json_lines_and_a_trace(self):
        server = MailServerProcess(extra={"log": {"format": "json"}})
        self.addCleanup(server.cleanup)
        server.start()
        code, text = server.send("Subject: traced\r\n\r\nhi\r\n")
        self.assertEqual(code, 250)
        queue_id = text.decode().rsplit(" ", 1)[1]
        server.wait_for_log(f'"queue_id": "{queue_id}"')
        records = [json.loads(line) for line in server.log_text().splitlines() if line]
        [accepted] = [r for r in records if r.get("queue_id") == queue_id
                      and r["text"].startswith("accepted")]
        self.assertEqual((accepted["system"], accepted["level"], accepted["ip"]),
                         ("mailsrv.smtp.reception", "info", "127.0.0.1"))
        connects = [r for r in records if r["text"].startswith("connect from 127.0.0.1 to ")]
        self.assertTrue(connects and all(r["listener"] for r in connects), connects)
        traced = server.admin("log", "trace", queue_id, str(server.log)).stdout
        self.assertIn(f'"text": "accepted {queue_id} from 127.0.0.1', traced)
