"""
Plain list files: one entry a line, C{#} comments, re-read when they change.
"""

import os
import stat
import tempfile

from mailsrv.store.delivery import fsync_directory


class ListFileError(Exception):
    """A bad line: the message names file, line and problem."""

    def __init__(self, path, lineno, problem):
        super().__init__(f"{path}:{lineno}: {problem}")
        self.path = path
        self.lineno = lineno


def read_lines(path):
    """
    Yield C{(lineno, text)} for each line that is not blank or a comment.
    A missing file has no lines. Bytes that are not UTF-8 come through as
    lone surrogates, so the line's parser refuses that line by number
    instead of the whole file failing to decode.
    """
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            for lineno, line in enumerate(f, 1):
                text = line.split("#", 1)[0].strip()
                if text:
                    yield lineno, text
    except FileNotFoundError:
        return


def replace_list_file(path, text):
    """
    Replace list file C{path} with C{text}, whole or not at all (a temporary
    file, fsync'd, renamed over it, the directory fsync'd), keeping its mode
    and owner (0600 and ours for a new file): the users file, a filter's
    table.
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            os.fchmod(fd, stat.S_IMODE(old.st_mode) if old else 0o600)
            if old is not None:
                new = os.fstat(fd)
                if (new.st_uid, new.st_gid) != (old.st_uid, old.st_gid):
                    os.fchown(fd, old.st_uid, old.st_gid)
            f.write(text)
            f.flush()
            os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_directory(directory)


class WatchedFile:
    """
    Re-parses a file when its modification time or size changes, at most
    once per C{interval} seconds, so that admins' edits take effect without a
    restart and a lookup costs one C{stat} at most.
    """

    interval = 1.0

    def __init__(self, path, parse, clock):
        self.path = path
        self._parse = parse
        self._clock = clock
        self._signature = None
        self._checked = None
        self.value = None
        self.reload()

    def _stat_signature(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self):
        """Parse the file now (raising the parser's error for a bad file)."""
        signature = self._stat_signature()
        self.value = self._parse(self.path)
        self._signature = signature
        self._checked = self._clock.seconds()

    def get(self):
        """The parsed value, re-read first if the file changed."""
        now = self._clock.seconds()
        if now - self._checked >= self.interval:
            self._checked = now
            if self._stat_signature() != self._signature:
                try:
                    self.reload()
                except (ListFileError, OSError) as e:
                    from twisted.logger import Logger

                    Logger().error(
                        "keeping the previous contents of {path}: {error}",
                        path=self.path, error=e,
                    )
                    self._signature = self._stat_signature()
        return self.value
