"""mailsrv/login.py: one classification and one log line per failed login, for every protocol."""

from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from mailsrv import login
from mailsrv.directory.checker import LoginThrottled
from tests.helpers import fresh_error_log
from tests.test_smtp.test_server import LogCapture


def failure(error):
    try:
        raise error
    except Exception:
        return Failure()


class FailedTests(unittest.TestCase):
    def setUp(self):
        fresh_error_log(self)
        self.logs = LogCapture(self)

    def outcome(self, error, name=b"bob\x00@example.test"):
        return login.failed(failure(error), name, "192.0.2.7", "imap", StringTransport())

    def test_each_failure_has_its_outcome_and_one_line(self):
        for error, outcome, line in [
            (LoginThrottled("192.0.2.7"), login.THROTTLED, "login refused (throttled)"),
            (login.MaildropInUse("bob"), login.IN_USE, "login refused (maildrop in use)"),
            (UnauthorizedLogin(), login.FAILED, "login failed: user=bob?@example.test "
                                                "ip=192.0.2.7 protocol=imap"),
            (UnhandledCredentials(), login.FAILED, "login failed"),
            (OSError("users file unreadable"), login.BROKEN, "IMAP login of bob?@example.test"),
        ]:
            before = len(self.logs.text().splitlines())
            self.assertEqual(self.outcome(error), outcome, error)
            new = self.logs.text().splitlines()[before:]
            self.assertIn(line, new[0])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)  # the broken one's traceback
