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


class NodeLockTests(unittest.TestCase):
    """[sessions] backend = "redis": nodes share data_dir, each its own part exclusively."""

    def setUp(self):
        self.tmp = self.mktemp()
        self.fds = []
        self.addCleanup(lambda: [os.close(fd) for fd in self.fds])

    def settings(self, node, backend="redis"):
        server = {"hostname": "mail.example.test", "node": node}
        return make_settings(self.tmp, server=server, sessions={"backend": backend})

    def take(self, settings):
        lock = DataDirLock(settings)
        lock.acquire()
        self.fds += [fd for fd in (lock._fd, lock._shared_fd) if fd is not None]
        return lock

    def test_two_nodes_share_one_data_dir(self):
        a = self.take(self.settings("mx1"))
        b = self.take(self.settings("mx2"))
        self.assertEqual(a.path, a.settings.data_dir / "nodes" / "mx1" / "mailsrv.lock")
        self.assertEqual(b.path.read_text(), f"{os.getpid()}\n")
        self.assertEqual((a.settings.data_dir / "mailsrv.lock").read_text(), "")

    def test_two_servers_as_one_node_are_refused(self):
        settings = self.take(self.settings("mx1")).settings
        with self.assertRaises(ConfigError) as caught:
            DataDirLock(self.settings("mx1")).acquire()
        self.assertEqual(
            str(caught.exception),
            f"{settings.path}: [server] node: node mx1 of {settings.data_dir} is in use by "
            f"another mailsrv (pid {os.getpid()}) (stop it, or give each node its own "
            "[server] node)")

    def test_memory_backend_and_nodes_never_share(self):
        self.take(self.settings("mx1"))
        with self.assertRaises(ConfigError) as caught:
            DataDirLock(self.settings("mx2", backend="memory")).acquire()
        self.assertIn("[server] data_dir: ", str(caught.exception))

    def test_a_node_beside_a_memory_server_is_refused(self):
        self.take(self.settings("", backend="memory"))
        with self.assertRaises(ConfigError) as caught:
            DataDirLock(self.settings("mx1")).acquire()
        self.assertIn('(nodes sharing a data_dir all need [sessions] backend = "redis")',
                      str(caught.exception))
