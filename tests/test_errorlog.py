"""The log of client-triggered errors: one line each, tracebacks rate-limited."""

from twisted.internet import task
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailsrv import errorlog
from mailsrv.policy import hooks


def failure_at(where):
    """A Failure raised in one of two places (two distinct errors)."""
    try:
        if where == "a":
            raise ValueError("bad input " + "x" * 500)
        raise ValueError("bad input")
    except ValueError:
        return Failure()


class ClientErrorLogTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.events = []
        self.log = Logger(observer=self.events.append, namespace="test")
        self.errors = errorlog.ClientErrorLog(self.clock.seconds, interval=600,
                                              max_tracebacks=3)

    def tracebacks(self):
        return [e for e in self.events if "log_failure" in e]

    def test_one_traceback_per_distinct_error(self):
        for _ in range(5):
            self.errors.failed(self.log, failure_at("a"), "IMAP FETCH", "imap 192.0.2.1:4")
            self.errors.failed(self.log, failure_at("b"), "IMAP FETCH", "imap 192.0.2.1:4")
        self.assertEqual(len(self.events), 10)
        self.assertEqual(len(self.tracebacks()), 2)
        self.assertEqual(formatEvent(self.events[-1]),
                         "IMAP FETCH failed: imap 192.0.2.1:4: ValueError: bad input")

    def test_line_is_short_and_printable(self):
        failure = failure_at("a")
        failure.value.args = ("\r\n{evil}" + "x" * 500,)
        self.errors.failed(self.log, failure, "IMAP {x}", "imap 192.0.2.1:4")
        text = formatEvent(self.events[0])
        self.assertNotIn("\n", text.split("(traceback")[0])
        self.assertIn("??{evil}", text)
        self.assertLess(len(text), 300)

    def test_traceback_again_after_the_interval(self):
        self.errors.failed(self.log, failure_at("a"), "x", "s")
        self.clock.advance(599)
        self.errors.failed(self.log, failure_at("a"), "x", "s")
        self.clock.advance(1)
        self.errors.failed(self.log, failure_at("a"), "x", "s")
        self.assertEqual(len(self.tracebacks()), 2)

    def test_global_cap(self):
        """Many distinct errors still give at most max_tracebacks per interval."""
        for line in range(10):
            failure = failure_at("a")
            failure.frames[-1] = ("f", "file.py", line, [], [])
            self.errors.failed(self.log, failure, "x", "s")
        self.assertEqual(len(self.tracebacks()), 3)
        self.assertEqual(len(self.events), 10)


class PolicyStageTests(unittest.TestCase):
    def test_failing_stage_logs_through_the_limiter(self):
        """A stage a client can make fail (a bug) does not log a traceback each time."""
        self.patch(errorlog, "client_errors", errorlog.ClientErrorLog(task.Clock().seconds))

        class Broken:
            def check(self, session, transaction, subject):
                raise KeyError("odd sender")

        class Session:
            ip = "192.0.2.9"

        for _ in range(50):
            verdict = hooks.run([Broken()], Session(), None, "x@example.org")
            self.assertEqual(verdict.code, 451)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
