"""
Plain list files: one entry a line, C{#} comments, re-read when they change.
"""

import os
import stat
import tempfile

from twisted.internet import defer, threads
from twisted.logger import Logger

from mailsrv.store.delivery import fsync_directory

log = Logger()

# A list file this small (most that admins keep by hand) is re-parsed at
# once, on the reactor thread, in a millisecond or so, so that an edit holds
# for the very next lookup; a bigger one (a word table) in a thread.
INLINE = 2 << 10


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
    A list file's parsed contents, re-parsed when its modification time,
    size or inode changes, looked for at most once per C{interval}
    seconds: admins' edits take effect without a restart, and a lookup
    costs one C{stat} at most. A file over L{INLINE} bytes is re-parsed in
    a thread (a word table has hundreds of thousands of lines) while the
    previous contents keep being served. Contents the parser refuses are
    not used: the previous ones stay, and one log line says why.

    @ivar value: the parsed contents, which any thread may read.
    """

    interval = 1.0

    def __init__(self, path, parse, clock, first=None):
        """
        @param parse: from the path to the contents; raises
            L{ListFileError} for a file it refuses. It may run in a thread
            on a re-read, so it logs nothing and changes nothing shared.
        @param first: how start-up parses the file, if not as C{parse}.
        @raise ListFileError: start-up's parser refused the file.
        """
        self.path = path
        self._parse = parse
        self._clock = clock
        self._rereading = False
        self._load(first or parse)

    def _stat_signature(self):
        """C{(modification time, size, inode)}, or L{None} for a missing file."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self):
        """Parse the file now, on this thread (raising the parser's error): after our own write."""
        self._load(self._parse)

    def _load(self, parse):
        signature = self._stat_signature()
        self.value = parse(self.path)
        self._signature = signature
        self._checked = self._clock.seconds()

    def get(self):
        """The parsed contents, after L{refresh}: on the reactor thread."""
        self.refresh()
        return self.value

    def refresh(self):
        """
        On the reactor thread: if the file changed, re-read it, a big one
        in a thread (one re-read at a time); L{value} is the new contents
        once it ends.
        """
        now = self._clock.seconds()
        if now - self._checked >= self.interval and not self._rereading:
            self._checked = now
            signature = self._stat_signature()
            if signature != self._signature:
                self._rereading = True
                if signature is None or signature[1] <= INLINE:  # (its size)
                    d = defer.maybeDeferred(self._parse, self.path)
                else:
                    d = threads.deferToThread(self._parse, self.path)
                d.addCallbacks(self._reread, self._refused, (signature,), None, (signature,))

    def _reread(self, value, signature):
        self._rereading = False
        self.value, self._signature = value, signature

    def _refused(self, failure, signature):
        self._rereading = False
        self._signature = signature  # (not tried again until the next change)
        if failure.check(ListFileError, OSError):
            log.error("keeping the previous contents of {path}: {error}",
                      path=self.path, error=failure.value)
        else:
            log.failure("keeping the previous contents of {path}", failure, path=self.path)
