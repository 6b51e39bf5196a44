"""mailsrv/privileges.py: who may read what, decided from owners and modes alone."""

import os
import shutil
import tempfile
from pathlib import Path

from twisted.trial import unittest

from mailsrv.privileges import unreadable

OTHER = 65534  # a uid that owns none of the test's files


class UnreadableTests(unittest.TestCase):
    def setUp(self):
        # (not under trial's temp folder: that may be closed to others)
        self.root = Path(tempfile.mkdtemp(prefix="mailsrv-privileges-"))
        self.addCleanup(shutil.rmtree, self.root)
        self.root.chmod(0o755)
        self.file = self.root / "users"
        self.file.write_text("x")
        for parent in self.root.parents:
            if parent.stat().st_mode & 0o001 == 0:
                raise unittest.SkipTest(f"{parent} is not reachable by others here")
        self.gid = os.stat(self.file).st_gid

    def test_modes_and_owners(self):
        self.file.chmod(0o644)
        self.assertIsNone(unreadable([self.file], OTHER, {OTHER}))
        self.file.chmod(0o640)
        self.assertEqual(unreadable([self.file], OTHER, {OTHER}), self.file)
        self.assertIsNone(unreadable([self.file], OTHER, {self.gid}), "its group reads it")
        self.file.chmod(0o600)
        self.assertIsNone(unreadable([self.file], os.stat(self.file).st_uid, set()))

    def test_a_closed_directory_on_the_way(self):
        self.file.chmod(0o644)
        self.root.chmod(0o700)
        self.assertEqual(unreadable([self.file], OTHER, {OTHER}), self.root)

    def test_missing_files_are_not_asked(self):
        self.assertIsNone(unreadable([self.root / "none"], OTHER, {OTHER}))
