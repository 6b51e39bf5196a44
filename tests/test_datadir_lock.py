"""
The data_dir lock: one server per data directory.
"""

import os

from twisted.trial import unittest

from mailsrv.config import ConfigError
from mailsrv.datadir_lock import DataDirLock
from tests.helpers import make_settings


class DataDirLockTests(unittest.TestCase):
    def setUp(self):
        self.settings = make_settings(self.mktemp())
        self.held = DataDirLock(self.settings)
        self.held.acquire()
        self.addCleanup(os.close, self.held._fd)

    def test_holder_writes_its_pid(self):
        self.assertEqual(self.held.path.read_text(), f"{os.getpid()}\n")
        self.assertEqual(self.held.path.parent, self.settings.data_dir)

    def test_second_holder_is_refused_naming_the_first(self):
        with self.assertRaises(ConfigError) as caught:
            DataDirLock(self.settings).acquire()
        self.assertEqual(
            str(caught.exception),
            f"{self.settings.path}: [server] data_dir: {self.settings.data_dir} is in use "
            f"by another mailsrv (pid {os.getpid()}) (stop it, or give this server its "
            "own data_dir)")

    def test_released_when_the_holder_closes(self):
        os.close(self.held._fd)
        again = DataDirLock(self.settings)
        again.acquire()
        self.held._fd = again._fd  # closed by the cleanup
