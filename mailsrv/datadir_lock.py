"""
One server per data directory. Two servers on one spool would each recover
(delete) what the other is receiving and deliver the same messages twice.

The server takes an exclusive C{flock} on C{data_dir/mailsrv.lock} at
start, before anything reads the spool, and holds it for the life of the
process. The kernel drops it when the process ends, however it ends
(C{kill -9} included), so a lock is never stale and the file is never
removed. `mailsrv user` and `mailsrv queue` do not take it: they are safe
beside a running server (docs/queue.md); `mailsrv import` takes it when it
is free and imports by itself (docs/store.md, "Importing").
"""

import fcntl
import os

from twisted.application import service

from mailsrv.config import ConfigError

LOCK_FILE = "mailsrv.lock"


class DataDirInUse(ConfigError):
    """Another process holds the lock (a server, or `mailsrv import`)."""

    def __init__(self, settings, holder):
        super().__init__(settings.path, "[server] data_dir",
                         f"{settings.data_dir} is in use by another mailsrv (pid {holder})",
                         "stop it, or give this server its own data_dir")
        self.holder = holder


class DataDirLock(service.Service):
    """
    The lock of one data directory; the file holds the PID of the holder,
    for people.
    """

    def __init__(self, settings):
        self.settings = settings
        self.path = settings.data_dir / LOCK_FILE
        self._fd = None

    def acquire(self):
        """
        Take the lock, creating data_dir if need be.

        @raise DataDirInUse: another process holds it.
        @raise ConfigError: it cannot be taken.
        """
        data_dir = self.settings.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(self.settings.path, "[server] data_dir",
                              f"cannot lock {self.path}: {e.strerror}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(self.settings, holder)
        self._fd = fd
        self._write_pid()

    def startService(self):
        """twistd may have forked (daemonized) since L{acquire}: name the process now."""
        super().startService()
        self._write_pid()

    def _write_pid(self):
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode("ascii"), 0)
