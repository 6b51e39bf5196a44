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

With [sessions] backend = "redis" several nodes share data_dir (shared
storage: the Maildirs are everyone's) and each keeps what is its own in
C{data_dir/nodes/NODE} (L{mailsrv.config.Settings.node_dir}: its spool,
control socket and import requests). A node takes a shared C{flock} on
C{data_dir/mailsrv.lock}, so no server with the memory backend (which
takes it exclusively) runs beside the nodes, and an exclusive one on
C{data_dir/nodes/NODE/mailsrv.lock}, so two servers never run as one node
(docs/scale-out.md).
"""

import fcntl
import os

from twisted.application import service

from mailsrv.config import ConfigError

LOCK_FILE = "mailsrv.lock"


class DataDirInUse(ConfigError):
    """Another process holds the lock (a server, or `mailsrv import`)."""

    def __init__(self, settings, holder, node=False):
        if node:
            super().__init__(settings.path, "[server] node",
                             f"node {settings.node} of {settings.data_dir} is in use by "
                             f"another mailsrv (pid {holder})",
                             "stop it, or give each node its own [server] node")
        else:
            hint = "stop it, or give this server its own data_dir"
            if settings.sessions.backend == "redis":
                hint += ' (nodes sharing a data_dir all need [sessions] backend = "redis")'
            super().__init__(settings.path, "[server] data_dir",
                             f"{settings.data_dir} is in use by another mailsrv (pid {holder})",
                             hint)
        self.holder = holder


class DataDirLock(service.Service):
    """
    The lock of one data directory, or of one node's part of it; the file
    of the exclusive lock holds the PID of the holder, for people.
    """

    def __init__(self, settings):
        self.settings = settings
        self.path = settings.node_dir / LOCK_FILE
        self._fd = None
        self._shared_fd = None

    def acquire(self):
        """
        Take the lock, creating data_dir (and the node's directory) if need be.

        @raise DataDirInUse: another process holds it.
        @raise ConfigError: it cannot be taken.
        """
        settings = self.settings
        shared = settings.node_dir != settings.data_dir
        if shared:
            self._shared_fd = _locked(settings, settings.data_dir / LOCK_FILE, fcntl.LOCK_SH)
        try:
            self._fd = _locked(settings, self.path, fcntl.LOCK_EX, node=shared)
        except ConfigError:
            if shared:
                os.close(self._shared_fd)
            raise
        self._write_pid()

    def startService(self):
        """twistd may have forked (daemonized) since L{acquire}: name the process now."""
        super().startService()
        self._write_pid()

    def _write_pid(self):
        """(Only into the exclusive lock's file: the shared one is every node's.)"""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode("ascii"), 0)


def _locked(settings, path, how, node=False):
    """
    A descriptor of C{path} locked C{how} (C{LOCK_EX} or C{LOCK_SH}),
    creating its directory if need be.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ConfigError(settings.path, "[server] node" if node else "[server] data_dir",
                          f"cannot lock {path}: {e.strerror}")
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise DataDirInUse(settings, holder, node)
    return fd
