"""
The per-folder UID index file (format in docs/store.md):

    mailsrv-uidlist 2 <uidvalidity> <uidnext> <highestmodseq> <expunges-known-since>
    <uid> <internaldate> <size> <modseq> <key>:<letters>[ <keyword>...]
    ...
    ~<modseq>:<low>[:<high>][,...]                (UIDs expunged at <modseq>)
    ...
    =<uid> <modseq> :<letters>[ <keyword>...]     (a flag change)
    -<modseq>:<uid>[ <uid>...]                    (messages removed)

The first three kinds of lines are a snapshot, written whole to a temporary
file, fsync'd and renamed over the old one, so a reader sees the old or the
new snapshot, never half of one, even after a power cut. Changes after it
are appended as lines (new messages as entry lines, flag changes as C{=}
lines, removals as C{-} lines) until there are enough of them to be worth a
new snapshot: a flag change in a folder of 50,000 messages writes one line,
not the folder.

A write can fail half done (a full disk takes what fits, a kill cuts it):
the reader ignores a last line that is cut short or does not parse, and
the next append first cuts the file back to its last whole line, so a torn
line never ends up in the middle of the file.

Several processes may write one index (nodes on shared storage,
docs/scale-out.md): each change is made holding the folder's lock
(L{UidList.locked}, C{flock} on C{mailsrv-uidlist.lock} beside it), after
taking in what the others wrote since (L{UidList.news}): the lines
appended after the ones this process knows, or, after another's snapshot
(a new file), the whole file.
"""

import contextlib
import fcntl
import os
from typing import NamedTuple

from mailsrv.ranges import runs
from mailsrv.store.delivery import discard, fsync_directory, write_all, write_file
from mailsrv.store.expunges import ExpungeHistory

from twisted.logger import Logger

log = Logger()

MAGIC = "mailsrv-uidlist"
VERSION = "2"
READABLE_VERSIONS = ("1", "2")


def _flag_field(letters, keywords):
    return " ".join((":" + letters,) + tuple(keywords))


def _parse_flag_field(text):
    """C{":FS $a b"} -> C{("FS", ("$a", "b"))}."""
    if " " not in text:
        return text[1:], ()
    letters, *keywords = text.split(" ")
    return letters[1:], tuple(k for k in keywords if k)


class News(NamedTuple):
    """
    What other processes wrote to the index since this process last read
    or wrote it: the change lines after what it knew (C{lines}, parsed by
    L{_parse_line}), or a new snapshot (C{entries}, as L{UidList.load}
    gives them, L{None} when it did not parse).
    """

    lines: tuple = ()
    entries: dict = None


class UidList:
    """
    @ivar uidvalidity: 0 until loaded or reset.
    @ivar uidnext: the UID the next message gets.
    @ivar highestmodseq: the highest MODSEQ handed out (RFC 7162).
    @ivar expunges: the L{ExpungeHistory}: removed UIDs and their MODSEQ.
    @ivar appended: change lines written since the last snapshot.
    @ivar snapshot_due: whether the next write must be a snapshot (no file
        yet, a damaged one, or a reset).
    @ivar whole: the length in bytes of the file's whole lines, as far as
        this object knows: anything after it is a torn write, cut off
        before the next append, or lines another process wrote since
        (L{news}).
    @ivar seen: the file's inode and size when this object last read or
        wrote it (L{None}: no file): another's snapshot is a new file, its
        appends make it longer.
    """

    FILENAME = "mailsrv-uidlist"

    def __init__(self, path):
        self.path = path
        self.uidvalidity = 0
        self.uidnext = 1
        self.highestmodseq = 0
        self.expunges = ExpungeHistory()
        self.appended = 0
        self.snapshot_due = True
        self.whole = 0
        self.seen = None
        self._lock_fd = None

    @contextlib.contextmanager
    def locked(self):
        """
        Hold the folder's lock (blocking: other processes hold it for an
        append or a snapshot); within a hold, taking it again is a no-op.

        @return: a context manager of whether this call took the lock.
        """
        if self._lock_fd is not None:
            yield False
            return
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_fd = fd
            yield True
        finally:
            self._lock_fd = None
            os.close(fd)  # (releases the lock)

    def stale(self):
        """Whether another process wrote the file since this object read or wrote it."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_ino, st.st_size) != self.seen

    def news(self):
        """
        What other processes wrote since this object last read or wrote the
        file (call it holding L{locked}): a L{News}, or L{None} when
        nothing. Change lines are read from where this object's knowledge
        ends; a new file is read whole (one in every L{worth_a_snapshot}).
        """
        if not self.stale():
            return None
        with open(self.path, "rb") as f:
            if self.seen is None or os.fstat(f.fileno()).st_ino != self.seen[0]:
                entries = self.load()
                if entries is None:
                    self.snapshot_due = True  # (ours replaces it)
                return News(entries=entries)
            f.seek(self.whole)
            data = f.read()
        whole = data.rfind(b"\n") + 1  # (a torn last line is cut off at the next append)
        lines = []
        for line in data[:whole].decode("utf-8", "surrogateescape").split("\n")[:-1]:
            try:
                lines.append(_parse_line(line, VERSION))
            except (ValueError, KeyError) as e:
                log.warn("{path}: ignoring a damaged line another process wrote to the UID "
                         "index ({error})", path=str(self.path), error=e)
        self.seen = (self.seen[0], self.whole + len(data))
        self.whole += whole
        for kind, *fields in lines:
            if kind == "+":
                self.uidnext = max(self.uidnext, fields[1] + 1)
                self.highestmodseq = max(self.highestmodseq, fields[4])
            else:
                self.appended += 1
                self.highestmodseq = max(self.highestmodseq, fields[1 if kind == "=" else 0])
                if kind == "-":
                    self.expunges.add(fields[0], runs(sorted(fields[1])))
        return News(lines=tuple(lines))

    def load(self):
        """
        Read the file.

        @return: a dict of key -> C{(uid, internaldate, size, modseq,
            letters, keywords)}, or L{None} when there is no usable file
            (missing, or damaged: logged). C{letters} are the system-flag
            letters the index last saw in the file name, L{None} when it
            does not know (a version 1 index); C{keywords} a tuple.
        """
        try:
            with open(self.path, "rb") as f:
                data = f.read()
                self.seen = (os.fstat(f.fileno()).st_ino, len(data))
        except FileNotFoundError:
            return None
        try:
            return self._parse(data)
        except (ValueError, KeyError) as e:
            log.warn("{path}: damaged UID index ({error}); rebuilding it",
                     path=str(self.path), error=e)
            return None

    def _parse(self, data):
        lines = data.decode("utf-8", "surrogateescape").split("\n")
        # an append cut short (a crash, a full disk): its change is lost,
        # the rest holds; the next append cuts it off (see _append)
        lines.pop()
        whole = data.rfind(b"\n") + 1
        if not lines:
            raise ValueError("truncated")
        try:
            entries = self._apply(lines)
        except (ValueError, KeyError) as e:
            if len(lines) < 2:
                raise
            # a last line that does not parse is a torn write too
            log.warn("{path}: ignoring a damaged last line of the UID index ({error})",
                     path=str(self.path), error=e)
            lines.pop()
            whole = data.rfind(b"\n", 0, whole - 1) + 1
            entries = self._apply(lines)
        self.whole = whole
        return entries

    def _apply(self, lines):
        """The entries C{lines} (a header and whole lines) describe."""
        header = lines[0].split()
        if len(header) < 4 or header[0] != MAGIC or header[1] not in READABLE_VERSIONS:
            raise ValueError("unknown header")
        version = header[1]
        uidvalidity, uidnext = int(header[2]), int(header[3])
        highest = int(header[4]) if version == "2" else 1
        if uidvalidity <= 0:
            raise ValueError("bad UIDVALIDITY")
        # an index without the field predates the history: it starts here
        expunges = ExpungeHistory(int(header[5]) if len(header) > 5 else highest)
        entries = {}  # key -> (uid, internaldate, size, modseq, letters, keywords)
        keys = {}  # uid -> key
        changes = 0
        for line in lines[1:]:
            kind, *fields = _parse_line(line, version)
            if kind == "=":
                changes += 1
                uid, modseq, letters, keywords = fields
                key = keys[uid]
                entries[key] = entries[key][:3] + (modseq, letters, keywords)
            elif kind == "-":
                changes += 1
                modseq, removed = fields
                if not keys.keys() >= set(removed):
                    raise KeyError("unknown UID removed")
                for uid in removed:
                    del entries[keys.pop(uid)]
                expunges.add(modseq, runs(sorted(removed)))
            elif kind == "~":
                modseq, ranges = fields
                expunges.add(modseq, ranges)
            else:
                key, uid, internaldate, size, modseq, letters, keywords = fields
                if uid >= uidnext:
                    uidnext = uid + 1
                entries[key] = (uid, internaldate, size, modseq, letters, keywords)
                keys[uid] = key
            if modseq > highest:
                highest = modseq
        if any(uid <= 0 for uid in keys):
            raise ValueError("UID out of range")
        self.uidvalidity, self.uidnext = uidvalidity, uidnext
        self.highestmodseq = highest
        self.expunges = expunges
        self.appended = changes
        self.snapshot_due = version != VERSION  # no appending to an old format
        return entries

    def reset(self, uidvalidity):
        """Start again: a new UIDVALIDITY, UIDs from 1, nothing expunged yet."""
        self.uidvalidity = uidvalidity
        self.uidnext = 1
        self.expunges = ExpungeHistory()
        self.snapshot_due = True

    def allocate(self, wanted=None):
        """The next UID, or C{wanted} when it is not below it (an import keeping UIDs)."""
        uid = self.uidnext if wanted is None or wanted < self.uidnext else wanted
        self.uidnext = uid + 1
        return uid

    def next_modseq(self):
        self.highestmodseq += 1
        return self.highestmodseq

    def expunged(self, uids):
        """
        Messages removed (ascending UIDs): a new MODSEQ, remembered with
        them in L{expunges} (RFC 7162: an expunge is a change).
        """
        self.expunges.add(self.next_modseq(), runs(uids))

    def worth_a_snapshot(self, messages):
        """Whether the change lines outweigh a rewrite of C{messages} lines."""
        return self.snapshot_due or self.appended > max(1000, messages)

    def save(self, entries):
        """
        Replace the file with a snapshot: a temporary file, fsync'd, renamed
        over the old one, and the directory fsync'd. If any step fails, the
        old file is left as it was.

        @param entries: C{(key, uid, internaldate, size, modseq, letters,
            keywords)} tuples in UID order.
        @raise OSError: the snapshot could not be written.
        """
        lines = [f"{MAGIC} {VERSION} {self.uidvalidity} {self.uidnext} "
                 f"{self.highestmodseq} {self.expunges.known_since}\n"]
        lines.extend(map(_entry_line, entries))
        lines.extend(
            f"~{modseq}:{','.join(_range_text(r) for r in ranges)}\n"
            for modseq, ranges in self.expunges.groups())
        data = "".join(lines).encode("utf-8", "surrogateescape")
        temporary = f"{self.path}.tmp"
        try:
            write_file(temporary, data, fsync=True)
            os.replace(temporary, self.path)
        except OSError:
            discard(temporary, OSError)
            raise
        fsync_directory(os.path.dirname(self.path))
        self.seen = (os.stat(self.path).st_ino, len(data))
        self.whole = len(data)
        self.appended = 0
        self.snapshot_due = False

    def append_added(self, entries):
        """New messages: tuples as for L{save}, in UID order."""
        self._append(list(map(_entry_line, entries)))

    def append_flags(self, entries):
        """Flag changes: tuples as for L{save}."""
        self._append([
            f"={uid} {modseq} {_flag_field(letters, keywords)}\n"
            for _, uid, _, _, modseq, letters, keywords in entries
        ])

    def append_removed(self, uids):
        """Removed messages; the removal took the current HIGHESTMODSEQ."""
        self._append([f"-{self.highestmodseq}:{' '.join(map(str, uids))}\n"])

    def _append(self, lines):
        """
        Append whole lines, after cutting off what a failed write left
        behind (see L{whole}). A write that fails is cut off at once too
        where possible.

        @raise OSError: the lines could not be written; the file's whole
            lines are as before.
        """
        data = "".join(lines).encode("utf-8", "surrogateescape")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size > self.whole:
                os.ftruncate(fd, self.whole)
            try:
                write_all(fd, data)
            except OSError:
                # best effort: if this cut fails too, the next append makes it
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self.whole)
                raise
            self.seen = (os.fstat(fd).st_ino, self.whole + len(data))
        finally:
            os.close(fd)
        self.whole += len(data)
        self.appended += len(lines)


def _parse_line(line, version):
    """
    One line after the header: C{("+", key, uid, internaldate, size,
    modseq, letters, keywords)} (a message), C{("=", uid, modseq, letters,
    keywords)} (its flags), C{("-", modseq, [uid, ...])} (removed) or
    C{("~", modseq, [(low, high), ...])} (expunged before the snapshot).

    @raise ValueError: it does not parse.
    """
    first = line[:1]
    if first == "=":
        uid, modseq, flags = line[1:].split(" ", 2)
        return ("=", int(uid), int(modseq), *_parse_flag_field(flags))
    if first in ("-", "~"):
        modseq, _, uids = line[1:].partition(":")
        if first == "-":
            return ("-", int(modseq), [int(uid) for uid in uids.split()])
        return ("~", int(modseq), [_uid_range(r) for r in uids.split(",")])
    if version == "1":
        uid, internaldate, size, key = line.split(" ", 3)
        return ("+", key, int(uid), int(internaldate), int(size), 1, None, ())
    uid, internaldate, size, modseq, rest = line.split(" ", 4)
    key, _, flags = rest.partition(":")
    return ("+", key, int(uid), int(internaldate), int(size), int(modseq),
            *_parse_flag_field(":" + flags))


def _range_text(uids):
    low, high = uids
    return str(low) if low == high else f"{low}:{high}"


def _uid_range(text):
    """C{"4:9"} -> C{(4, 9)}, C{"4"} -> C{(4, 4)}."""
    low, _, high = text.partition(":")
    low, high = int(low), int(high or low)
    if not 0 < low <= high:
        raise ValueError("bad UID range")
    return low, high


def _entry_line(entry):
    key, uid, internaldate, size, modseq, letters, keywords = entry
    return f"{uid} {internaldate} {size} {modseq} {key}{_flag_field(letters, keywords)}\n"
