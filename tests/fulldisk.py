"""
A full file system for unit tests, without filling one: the store's
modules are given an C{os} whose calls that need free space fail, the way
they fail on a full disk (or with another errno, for other write errors).
"""

import errno
import os

from twisted.python.monkey import MonkeyPatcher

from mailsrv.store import delivery, folder, headercache, layout, mailstore, uidlist

STORE_MODULES = (delivery, folder, headercache, layout, mailstore, uidlist)


class FailingOS:
    """
    C{os} as seen on a full disk: C{write} stores the half of its data that
    fits in the last free block and then fails (leaving a torn line, as a
    real full disk does), C{mkdir}/C{makedirs} of a missing directory and
    C{fsync} fail. Everything else is the real C{os}.
    """

    def __init__(self, code=errno.ENOSPC):
        self.code = code

    def _error(self, what):
        return OSError(self.code, os.strerror(self.code), what)

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        os.write(fd, bytes(data[:len(data) // 2]))
        raise self._error("write")

    def fsync(self, fd):
        raise self._error("fsync")

    def mkdir(self, path, mode=0o777, **kwargs):
        raise self._error(os.fspath(path))

    def makedirs(self, path, mode=0o777, exist_ok=False):
        if exist_ok and os.path.isdir(path):
            return
        raise self._error(os.fspath(path))


class FullDisk:
    """
    C{fill()} makes every write of the store fail with C{code}, C{free()}
    undoes it (also at the end of the test).
    """

    def __init__(self, testcase, code=errno.ENOSPC, modules=STORE_MODULES):
        failing = FailingOS(code)
        self._patcher = MonkeyPatcher(*[(m, "os", failing) for m in modules])
        testcase.addCleanup(self.free)

    def fill(self):
        self._patcher.patch()

    def free(self):
        self._patcher.restore()
