"""
The mail store: users' Maildir++ folders with persistent IMAP UIDs and flags.
See docs/store.md.

Everything here runs on the reactor thread except the bodies of L{Folder.add}
and L{Folder.copy}, which write and fsync a whole message, the listing of
L{Folder.sync}, and the first load of a folder (its index read and parsed,
its directories listed, its unknown files described), which may take a whole
folder: those run in a thread and hand their result back; UIDs are still
assigned on the reactor thread, which is the only place that changes a
loaded folder's in-memory state and its index.

Other processes may change the folder too (nodes on shared storage,
docs/scale-out.md): every change to the index is made holding the folder's
lock, after taking in what the others wrote to it (L{Folder._writing}), so
no two messages ever get one UID and no process writes over another's
lines; a first load whose index changed while it was read is read again.
A listing is already old when it arrives: the messages the server changed meanwhile (see L{Folder._touch})
are left out of what it is taken to say. Nothing reads or changes a folder
before its load is applied (see L{Folder.opened}).

A file enters C{cur/} only after the index line that names it is written,
so a file in C{cur/} unknown to the index always means the index lost
writes (then the folder gets a new UIDVALIDITY, see L{Folder._load}). A
write that fails (a full disk) undoes the change it was part of and raises
L{OSError}, except where the files already say what happened (expunges,
flags renamed by other programs): those are logged and re-read from the
files at the next start. Reading never needs a write to succeed.
"""

import bisect
import contextlib
import operator
import os
from array import array
import shutil
import sys
import time
from io import BytesIO
from pathlib import Path
from typing import NamedTuple

from twisted.internet import defer, threads
from twisted.python.failure import Failure
from twisted.logger import Logger

from mailsrv.store import headerfields
from mailsrv.store.delivery import discard, fsync_directory
from mailsrv.store.headercache import HeaderCache
from mailsrv.store.layout import ensure_maildir, unique_name
from mailsrv.store.names import (
    FLAG_LETTERS,
    INFO_SEPARATOR,
    LETTER_FLAGS,
    arrival_order,
    flags_of,
    info_letters,
    is_keyword,
    seen_suffix,
    size_from_key,
    split_name,
    system_letters,
    wire_from_key,
)
from mailsrv.store.uidlist import UidList

log = Logger()

# A directory modified longer ago than this (seconds) has a trustworthy
# mtime: a later change must give it a different one.
SETTLED = 2
# Bytes read to find a message's header: most fit (SEARCH reads thousands).
HEADER_READ = 8192
# Times a first load reads a folder without its lock, while other processes
# change its index meanwhile, before it reads holding the lock.
STALE_READS = 3


class FolderError(Exception):
    """A folder operation that cannot be done; the text is for the user."""


class NoSuchFolder(FolderError):
    pass


class FolderExists(FolderError):
    pass


class MessageInfo(NamedTuple):
    """
    One message as the folder knew it when asked (a tuple: a FETCH of a
    big folder makes one per message).

    @ivar key: the Maildir base name without the info suffix: stable for the
        message's life (POP3 UIDL), whatever its flags.
    @ivar flags: a frozenset of IMAP flags: system flags (C{"\\Seen"},
        ...) and keywords (C{"$Junk"}, ...).
    @ivar internaldate: arrival time, seconds since the epoch.
    @ivar modseq: the folder's MODSEQ at the message's last change (RFC 7162).
    @ivar name: the file name in C{cur/} when asked.
    @ivar size: the size as POP3 and IMAP send it (CRLF line ends).
    @ivar converted: whether the file has bare LF line ends (copied from
        another server's Maildir) and is served with CRLF.
    """

    uid: int
    key: str
    size: int
    flags: frozenset
    internaldate: int
    modseq: int
    name: str
    folder: object
    converted: bool = False

    @property
    def path(self):
        """The file (built on demand: listings need no Path objects)."""
        return self.folder.path / "cur" / self.name


_NO_KEYWORDS = frozenset()
_DATE = headerfields.Fields._fields.index("date")
_MODSEQ, _UID = operator.attrgetter("modseq"), operator.attrgetter("uid")


class _Entry:
    """
    The mutable state of one message, owned by its L{Folder}; there are
    as many as messages, so it keeps little: the file name is C{key +
    suffix}, and the few distinct suffixes (C{":2,"}, C{":2,S"} ...) are
    shared strings.

    C{size} is the file's (the index's), C{wire} its size with CRLF line
    ends (L{wire_from_key}; L{None} until L{Folder.wire_size} reads it).
    C{sent} is SORT's date (RFC 5256 2.2: the Date field, else
    INTERNALDATE) once the header cache or the file told it (L{dated}),
    L{None} until then: a SORT by date reads no cache when every message
    knows it. A file never changes under its UID, so a thread may set it.
    """

    __slots__ = ("uid", "key", "suffix", "size", "wire", "internaldate", "modseq",
                 "keywords", "sent")

    def __init__(self, uid, key, suffix, size, internaldate, modseq, keywords=()):
        self.uid = uid
        self.key = key
        self.suffix = sys.intern(suffix)
        self.size = size
        self.wire = wire_from_key(key, size)
        self.internaldate = internaldate
        self.modseq = modseq
        self.keywords = frozenset(keywords) if keywords else _NO_KEYWORDS
        self.sent = None

    def dated(self, date):
        """The message's Date field was read: C{date} (seconds, or L{None})."""
        self.sent = self.internaldate if date is None else date

    @property
    def name(self):
        """The current file name in C{cur/}."""
        return self.key + self.suffix

    @property
    def letters(self):
        """The system-flag letters of the file name, sorted."""
        return system_letters(info_letters(self.suffix))

    def flags(self):
        return flags_of(info_letters(self.suffix)) | self.keywords

    def record(self):
        """The index's tuple (L{UidList.save})."""
        return (self.key, self.uid, self.internaldate, self.size, self.modseq,
                self.letters, tuple(sorted(self.keywords)))


class Folder:
    """
    One Maildir with its UID index, shared by every session that uses it.

    Listeners are objects with C{messages_added(uids)},
    C{messages_expunged(uids)} and C{flags_changed(changes)} (a dict of UID to
    flags). A change is announced to every listener but the one that made it
    (C{origin}), which learns the result from the call itself.

    System flags live in the file names (other Maildir software reads them);
    keywords and MODSEQs in the index.

    @ivar name: the IMAP name (C{"INBOX"}, C{"Archive/2024"}).
    @ivar path: the Maildir.
    """

    def __init__(self, store, user, name, path):
        self.store = store
        self.user = user
        self.name = name
        self.path = Path(path)
        self.listeners = []
        self._entries = {}  # uid -> _Entry
        # each MODSEQ given and its UID, ascending (arrays: 12 bytes a
        # record); a record whose message changed again or went is stale
        # (see changed_since)
        self._change_modseqs, self._change_uids = array("Q"), array("L")
        self._clean_stamp = None  # see sync()
        self._own_changes = False  # the server changed a trusted folder since: see _touch()
        self._confirming = None  # the DelayedCall of _confirm()
        self._syncing = None  # the Deferreds waiting on the listing in a thread
        self._touched = None  # keys changed since that listing began
        # UIDs that arrived here and no session has seen: kept by the store,
        # as a folder nobody holds (after an APPEND to it) is let go
        self._recent = store.unseen_arrivals(user, name)
        ensure_maildir(self.path)
        self._index = UidList(self.path / UidList.FILENAME)
        self._caught = set()  # keys other processes added, taken in by this _writing()
        self._loaded = False  # see opened()
        self.headers = HeaderCache(self, lambda f, *args: threads.deferToThread(f, *args))

    # Reading

    @property
    def uidvalidity(self):
        return self._index.uidvalidity

    @property
    def uidnext(self):
        return self._index.uidnext

    @property
    def highestmodseq(self):
        return self._index.highestmodseq

    def __len__(self):
        return len(self._entries)

    def changed_since(self, modseq):
        """
        The UIDs of the messages changed (or added) after C{modseq},
        ascending: a bisection and the changes since, not a look at
        every message (a QRESYNC of a 50,000-message folder after ten
        changes looks at ten).
        """
        start = bisect.bisect_right(self._change_modseqs, modseq)
        entries = self._entries
        return sorted(uid for m, uid in zip(self._change_modseqs[start:], self._change_uids[start:])
                      if (entry := entries.get(uid)) is not None and entry.modseq == m)

    def expunged_since(self, modseq):
        """
        The UIDs expunged after C{modseq} as ranges, or L{None} when the
        history does not go back that far (L{ExpungeHistory.since}).
        """
        return self._index.expunges.since(modseq)

    def messages(self):
        """A list of L{MessageInfo}, sorted by UID."""
        return [self._info(self._entries[uid]) for uid in sorted(self._entries)]

    def message(self, uid):
        """The L{MessageInfo} of C{uid}; L{KeyError} if it is not here."""
        return self._info(self._entries[uid])

    def uids(self):
        return sorted(self._entries)

    def flags(self, uid):
        """
        The flags of C{uid}; L{KeyError} if it is not here. Unlike
        L{message}, never reads the file (a bare-LF file's CRLF size).
        """
        return self._entries[uid].flags()

    def present(self, uids):
        """The UIDs of C{uids} still here, a list (no Python code per UID: 50,000 take 1 ms)."""
        return list(filter(self._entries.__contains__, uids))

    def unseen(self, uids=None):
        """
        The UIDs of C{uids} (all when L{None}) here and without \\Seen, in
        that order, as they are consumed: from the file name's letters,
        one cached test per distinct name suffix, not a flag set per
        message: SELECT's UNSEEN looks at every message of a folder that
        is all read (50,000 messages: about half the time of L{flags}).
        """
        entries = self._entries
        for uid in entries if uids is None else uids:
            entry = entries.get(uid)
            if entry is not None and not seen_suffix(entry.suffix):
                yield uid

    def entry(self, uid):
        """
        The folder's own record of C{uid} (read it, never change it), or
        L{None}: FETCH formats its fields without building a
        L{MessageInfo} per message.
        """
        return self._entries.get(uid)

    def cur_prefix(self):
        """The path of C{cur/} with a trailing separator, as a string."""
        return os.path.join(os.fspath(self.path), "cur", "")

    def claim_recent(self, uids=None, take=True):
        """
        The \\Recent of C{uids} (all when L{None}) that no session took
        before: the first session to see a message gets it (RFC 3501).
        With C{take} false (EXAMINE) they stay for the next.
        """
        claimed = set(self._recent) if uids is None else self._recent.intersection(uids)
        if take:
            self._recent -= claimed
        return claimed

    def recent_count(self):
        """The messages no session has seen yet (STATUS RECENT)."""
        return len(self._recent)

    def unseen_count(self):
        """The messages without \\Seen (STATUS UNSEEN), from the file names."""
        return sum(1 for _ in self.unseen())

    def total_size(self):
        """
        A Deferred of the sum of the messages' sizes as sent (STATUS SIZE,
        RFC 8438: the sum of their RFC822.SIZE). A file whose size with
        CRLF its name does not tell (L{wire_from_key}) is read once, in a
        thread, like every file of a folder copied from another server.
        """
        entries = list(self._entries.values())
        unknown = [(entry, self._path(entry)) for entry in entries if entry.wire is None]
        known = sum(entry.wire for entry in entries if entry.wire is not None)
        if not unknown:
            return defer.succeed(known)

        def measure():
            return [(entry, _crlf_size(path)) for entry, path in unknown]

        def measured(sizes):
            for entry, size in sizes:
                if size is not None:
                    entry.wire = size
            return known + sum(entry.size if size is None else size for entry, size in sizes)
        return threads.deferToThread(measure).addCallback(measured)

    def keywords(self):
        """The keywords set on any message here, sorted."""
        found = set()
        for entry in self._entries.values():
            found |= entry.keywords
        return sorted(found)

    def open(self, uid):
        """
        The message file, opened for binary reading.

        @raise KeyError: no such UID.
        @raise OSError: the file vanished (another program removed it).
        """
        return open(os.path.join(self.path, "cur", self._entries[uid].name), "rb")

    def read_start(self, uid, size, cur=None):
        """
        The first C{size} bytes of a message, read without a file object
        (a quarter of the cost when SEARCH reads every message's header).

        @param cur: a descriptor of C{cur/} (L{cur_directory}), or L{None}.
        @raise KeyError: no such UID.
        @raise OSError: the file vanished.
        """
        name = self._entries[uid].name
        if cur is None:
            fd = os.open(os.path.join(self.path, "cur", name), os.O_RDONLY)
        else:
            fd = os.open(name, os.O_RDONLY, dir_fd=cur)
        try:
            return os.read(fd, size)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def cur_directory(self):
        """
        A descriptor of C{cur/} for reading many of its files: a name
        opened in it costs half of a whole path (SEARCH, the header
        cache). L{None} if it cannot be opened (the files then fail).
        """
        try:
            fd = os.open(self.path / "cur", os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            yield None
            return
        try:
            yield fd
        finally:
            os.close(fd)

    def read_header(self, uid, cur=None):
        """
        The header block of a message as stored, with its empty line
        (the whole file if it has none): read in pieces, as most headers
        are short and SEARCH reads thousands.

        @param cur: as for L{read_start}.
        @raise KeyError: no such UID.
        @raise OSError: the file vanished.
        """
        size = HEADER_READ
        while True:
            data = self.read_start(uid, size, cur)
            end = headerfields.header_end(data)
            if end is not None or len(data) < size:
                return data if end is None else data[:end]
            size *= 4  # a long header: read it again, further

    def fields(self, uids, columns=None):
        """
        In a thread: C{{uid: headerfields.Fields}} of the messages of
        C{uids} still here, from the header cache where it has them
        (once L{HeaderCache.ready}), else from their files (those are
        handed to the cache, written at its next C{kick}).

        @param columns: as for L{HeaderCache.lookup}: the attributes the
            caller reads (the others may be L{None}). When they include
            SORT or THREAD keys, records without them get them (written
            to the cache: L{headercache.Records.upgrade}). When they
            include the date, the messages learn it (L{_Entry.dated}).
        """
        found, unknown = self.headers.lookup(uids, columns=columns)
        records = self.headers.records()
        if columns is None or columns[2]:  # keys wanted: made for records without
            for uid, fields in found.items():
                entry = self._entries.get(uid)
                if not headerfields.has_keys(fields) and entry is not None:
                    found[uid] = fields = headerfields.with_keys(fields)
                    records.upgrade(uid, entry.key, fields)
        with self.cur_directory() as cur:
            for uid in sorted(unknown):
                try:
                    entry = self._entries[uid]
                    fields = headerfields.parse(self.read_header(uid, cur))
                except (KeyError, OSError):  # expunged meanwhile
                    continue
                found[uid] = fields
                records.add(uid, entry.key, fields)
        records.flush()
        if columns is None or _DATE in columns[1]:
            entries = self._entries
            for uid, fields in found.items():
                entry = entries.get(uid)
                if entry is not None:
                    entry.dated(fields.date)
        return found

    # Changing

    def add_listener(self, listener):
        self.listeners.append(listener)

    def remove_listener(self, listener):
        if listener in self.listeners:
            self.listeners.remove(listener)

    def opened(self):
        """
        A Deferred of this folder once loaded: the first L{sync} loads it
        (in a thread: a 50,000-message index and listing take the reactor
        a second and more). Whatever reads or changes the folder waits
        on it.
        """
        if self._loaded:
            return defer.succeed(self)
        return self.sync().addCallback(lambda _: self)

    def sync(self):
        """
        Bring the folder up to date with the disk (the first sync loads
        it, see L{_read}): move C{new/} to C{cur/}, give new files UIDs in
        arrival order, forget vanished files, pick up flags other programs
        changed (with a new MODSEQ). Persists the index
        and tells the listeners. The directories are listed in a thread
        (50,000 names take the reactor 100 ms and more); a sync asked for
        while one is under way waits for it.

        Skipped when neither C{cur/} nor C{new/} changed since a scan that
        found them settled (modified over L{SETTLED} seconds before): a
        NOOP or IDLE in a big folder costs two C{stat}s, not a listing.
        Changes the server made itself (L{_touch}) do not count: this
        object holds their result already.

        @return: a Deferred of C{(added, expunged, flag_changes)}: lists of
            UIDs and a dict of UID to flags.
        """
        waiting = defer.Deferred()
        if self._syncing is not None:
            self._syncing.append(waiting)
            return waiting
        self._syncing, self._touched = [waiting], set()
        if self._loaded:
            own, self._own_changes = self._own_changes and self._clean_stamp is not None, False
            d = threads.deferToThread(self._look, self._clean_stamp, own)
            d.addCallback(self._looked, own)
        else:
            d = threads.deferToThread(self._read)
            d.addCallback(self._load)
        d.addBoth(self._synced)
        return waiting

    def _look(self, clean_stamp, own):
        """
        In a thread: C{(stamp, listing)}; no listing when C{clean_stamp}
        holds, or when only the server changed the folder since (C{own}).
        """
        stamp = self._stamp()
        if stamp is not None and (stamp == clean_stamp or own):
            return stamp, None
        return stamp, self._scan()

    def _looked(self, looked, own):
        stamp, found = looked
        if found is None:
            if own and self._clean_stamp is not None:  # (not if a listing found it changed)
                self._clean_stamp = stamp  # until _confirm()
            return [], [], {}
        touched = self._touched
        result, complete = self._apply(found, touched)
        self._settle(stamp if complete and not touched else None)
        return result

    def _synced(self, result):
        waiting, self._syncing, self._touched = self._syncing, None, None
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)

    def _touch(self, keys):
        """
        The server changes these messages (a file in C{cur/} or C{new/}
        renamed, linked or removed, its index line written first): a
        listing under way is out of date for them. A folder trusted at its
        last listing stays trusted, so the NOOP, IDLE or SELECT after a
        STORE or EXPUNGE in a 50,000-message folder does not list it again
        (L{sync}). Another program's change made meanwhile would hide
        behind ours: a listing confirms the folder L{SETTLED} + 1 seconds
        after the first of our changes.
        """
        if self._touched is not None:
            self._touched.update(keys)
        if self._clean_stamp is not None:
            self._own_changes = True
            if self._confirming is None:  # (not put off by more changes: at most this late)
                self._confirming = self.store.clock.callLater(SETTLED + 1, self._confirm)

    def _confirm(self):
        """A while after the server's first change to a trusted folder: list it again."""
        self._confirming = None
        self._clean_stamp, self._own_changes = None, False
        if self.listeners:
            self.sync().addErrback(
                lambda f: log.failure("{path}: sync", f, path=str(self.path)))

    def arrived(self, names):
        """
        Files just delivered into C{new/} (their names): taken in without
        listing the folder, so a delivery costs an open folder O(1).
        """
        with self._writing():
            arriving = {}
            for name in names:
                # on the reactor and locked, so no sync here nor another
                # process can take it in between: one UID
                if os.path.exists(os.path.join(self.path, "new", name)):
                    key, suffix = split_name(name)
                    arriving[key] = (INFO_SEPARATOR + info_letters(suffix), "new/" + name)
            added = self._place(self._describe(arriving), [], [])
        if added:
            self._notify(None, [entry.uid for entry in added], [], {})

    def _settle(self, stamp):
        """A scan that began at C{stamp} is complete: trust it if settled."""
        settled = stamp is not None and max(stamp) < (time.time() - SETTLED) * 10**9
        self._clean_stamp = stamp if settled else None
        self._own_changes = self._own_changes and settled

    def _stamp(self):
        try:
            return (os.stat(self.path / "cur").st_mtime_ns,
                    os.stat(self.path / "new").st_mtime_ns)
        except FileNotFoundError:
            return None

    def _apply(self, found, touched):
        """
        L{sync} for the files of a L{_scan}, but for the keys in
        C{touched} (the live set of L{_touch}): the server, or another
        process, changed those after the listing.

        @return: C{((added, expunged, flag_changes), complete)}:
            C{complete} is false when new mail had to wait (the index could
            not be written).
        """
        with self._writing():  # (what others changed since is touched: see _catch_up)
            expunged, changed = [], []
            on_disk = dict(split_name(n) for n, where in found.items() if where == "cur")
            for uid, entry in list(self._entries.items()):
                suffix = on_disk.pop(entry.key, None)
                if entry.key in touched:
                    continue
                if suffix is None:
                    expunged.append(uid)
                    del self._entries[uid]
                elif suffix != entry.suffix:
                    before = entry.letters
                    entry.suffix = sys.intern(suffix)
                    if entry.letters != before:
                        changed.append(entry)
            expunged.sort()
            if touched:
                on_disk = {k: v for k, v in on_disk.items() if k not in touched}
                found = {n: w for n, w in found.items()
                         if w == "cur" or split_name(n)[0] not in touched}
            added = self._take_in(on_disk, found, changed, expunged)
        complete = added is not None
        changes = {entry.uid: entry.flags() for entry in changed}
        added = [entry.uid for entry in added or ()]
        self._notify(None, added, expunged, changes)
        return (added, expunged, changes), complete

    def set_flags(self, uid, flags, origin=None):
        """
        Replace the flags of C{uid}: system flags by renaming its file,
        keywords in the index. A change gives the message a new MODSEQ.

        @return: the flags now set, a frozenset.
        @raise KeyError: no such UID.
        @raise OSError: the file vanished.
        """
        with self._writing():
            entry = self._entries[uid]
            letters = info_letters(entry.suffix)
            system = frozenset(f for f in flags if f in FLAG_LETTERS)
            keywords = frozenset(f for f in flags if is_keyword(f))
            # keep letters other software set (lower case keywords)
            others = "".join(c for c in letters if c not in LETTER_FLAGS)
            new_letters = "".join(sorted({FLAG_LETTERS[f] for f in system} | set(others)))
            suffix = INFO_SEPARATOR + new_letters
            if suffix == entry.suffix and keywords == entry.keywords:
                return entry.flags()
            self._touch([entry.key])
            # the index first: a file name it has not seen is taken as a
            # change at the next start, keywords it has not written are lost
            before = (entry.suffix, entry.keywords, entry.modseq)
            entry.suffix, entry.keywords = sys.intern(suffix), keywords
            try:
                self._persist([], [entry], [])
            except OSError:
                entry.suffix, entry.keywords, entry.modseq = before
                raise
            if suffix != before[0]:
                try:
                    os.rename(self.path / "cur" / (entry.key + before[0]),
                              self.path / "cur" / entry.name)
                except OSError:
                    entry.suffix = before[0]
                    raise
            self._notify(origin, [], [], {uid: entry.flags()})
            return entry.flags()

    def delete(self, uids, origin=None):
        """
        Remove messages for good (IMAP EXPUNGE, POP3 QUIT). A file that is
        already gone counts as deleted.

        @return: the UIDs removed, ascending.
        """
        with self._writing():
            removed = []
            for uid in sorted(set(uids)):
                entry = self._entries.get(uid)
                if entry is None:
                    continue
                self._touch([entry.key])
                try:
                    os.unlink(self._path(entry))
                except FileNotFoundError:
                    pass
                del self._entries[uid]
                removed.append(uid)
            self._persist_or_log([], [], removed)
            self._notify(origin, [], removed, {})
            return removed

    def add(self, data, flags=(), date=None):
        """
        Store a new message (IMAP APPEND): L{add_all} of one.

        @return: a Deferred of its UID.
        """
        return self.add_all([(data, flags, date)]).addCallback(lambda uids: uids[0])

    def add_all(self, messages, uids=None):
        """
        Store new messages, all or none (IMAP APPEND, MULTIAPPEND): written
        and fsync'd in a thread, bare LF line ends made CRLF (so sizes are
        what POP3 and IMAP send), then given consecutive UIDs at once.
        Every listener hears of them, the session that added them included
        (RFC 3501 wants EXISTS for an APPEND to the selected mailbox).

        @param messages: C{(data, flags, date)} each: the message as
            L{bytes} or a binary file, system flags and keywords, its
            internal date (seconds; now when L{None}).
        @param uids: for C{mailsrv import}, the UID each message should
            get (L{None}: any): kept when it is not below UIDNEXT then,
            else the message gets the next UID like any other.
        @return: a Deferred of their UIDs, in order; it fails with
            L{OSError} when a message or the index could not be written
            (none of them is left).
        """
        now = self.store.now()
        dated = [(BytesIO(data) if isinstance(data, bytes) else data, flags,
                  now if date is None else date) for data, flags, date in messages]
        d = threads.deferToThread(_write_messages, self.path, dated)
        d.addCallback(self._added_when_opened, uids)
        return d

    def adopt_uidvalidity(self, uidvalidity):
        """
        Take another server's UIDVALIDITY, so that L{add_all} can keep the
        UIDs it gave and its clients need not fetch the messages again
        (C{mailsrv import}). Only a loaded folder that is empty and that no
        session has open: UIDs must never change under a session.

        @return: whether the folder has C{uidvalidity} now.
        """
        with self._writing():
            if uidvalidity == self._index.uidvalidity:
                return True
            if not self._loaded or self._entries or self.listeners or self._syncing is not None:
                return False
            log.info("{path}: UIDVALIDITY {old} replaced by {new} (import)", path=str(self.path),
                     old=self._index.uidvalidity, new=uidvalidity)
            self._index.reset(uidvalidity)
            self._snapshot()
            return True

    def skip_uids(self, uidnext):
        """
        Hand out no UID below C{uidnext}: the server whose UIDs an import
        kept gave them, to messages it has since expunged, and its
        clients may remember them.
        """
        with self._writing():
            if uidnext > self._index.uidnext:
                self._index.uidnext = uidnext
                self._snapshot()

    def copy(self, uid, other):
        """
        Copy message C{uid} into Folder C{other} with its flags and date.

        @return: a Deferred of its UID in C{other} (failing as L{add}'s).
        """
        entry = self._entries[uid]
        flags = entry.flags()
        d = threads.deferToThread(
            _write_message, other.path, self._path(entry), flags, entry.internaldate
        )
        d.addCallback(lambda written: other._added_when_opened(
            [(*written, entry.internaldate, flags)]))
        return d.addCallback(lambda uids: uids[0])

    def move(self, uids, other, origin=None):
        """
        Move messages into Folder C{other} (IMAP MOVE), which must be
        loaded (L{opened}), by renaming their files, keeping flags and
        dates; C{cur/} of C{other} is fsync'd in a thread before the
        Deferred fires. C{other}'s index names them before the files move.

        @return: a Deferred of C{[(uid here, uid in other), ...]}, in UID
            order; a message whose file vanished is left out.
        @raise OSError: C{other}'s index could not be written (nothing
            moved), or a file could not be moved (those before it moved).
        """
        with contextlib.ExitStack() as held:
            # both locks, taken in one order everywhere: no deadlock
            for folder in sorted((self, other), key=lambda f: str(f.path)):
                held.enter_context(folder._writing())
            entries = [self._entries[uid] for uid in sorted(set(uids)) if uid in self._entries]
            keys = [entry.key for entry in entries]
            self._touch(keys)
            other._touch(keys)
            arrived = [
                _Entry(other._index.allocate(), entry.key, entry.suffix, entry.size,
                       entry.internaldate, other._index.next_modseq(), entry.keywords)
                for entry in entries
            ]
            other._entries.update((new.uid, new) for new in arrived)
            try:
                other._persist(arrived, [], [])
            except OSError:
                for new in arrived:
                    del other._entries[new.uid]
                raise
            moved, failure = [], None
            for entry, new in zip(entries, arrived):
                if failure is None:
                    try:
                        os.rename(self._path(entry), other.path / "cur" / entry.name)
                    except OSError as e:
                        if not isinstance(e, FileNotFoundError):
                            failure = e
                    else:
                        del self._entries[entry.uid]
                        moved.append((entry.uid, new.uid))
                        continue
                del other._entries[new.uid]  # its index line names no file: dropped at load
            gone = [uid for uid, _ in moved]
            self._persist_or_log([], [], gone)
        # after a failure the session learns of the moved ones as expunges
        self._notify(origin if failure is None else None, [], gone, {})
        other._notify(None, [uid for _, uid in moved], [], {})
        if failure is not None:
            raise failure
        d = threads.deferToThread(fsync_directory, other.path / "cur")
        d.addCallback(lambda _: moved)
        return d

    # Internals

    def _path(self, entry):
        return self.path / "cur" / entry.name

    def wire_size(self, entry):
        """
        C{entry}'s size with CRLF line ends: from its name, or counted
        in the file once and remembered (in memory: the index has no
        field for it). The file's size if it cannot be read.
        """
        if entry.wire is None:
            size = _crlf_size(self._path(entry))
            if size is None:
                return entry.size
            entry.wire = size
        return entry.wire

    def _info(self, entry):
        wire = self.wire_size(entry)
        return MessageInfo(
            entry.uid, entry.key, wire, entry.flags(), entry.internaldate,
            entry.modseq, entry.name, self, wire != entry.size,
        )

    def _read(self, locked=False):
        """
        In a thread, the file work of the first load (L{_load}): the index
        read and parsed, the listing, entries for the files the index
        knows, and the size, date and order of those it does not. Nothing
        here touches the index of a folder not yet loaded (see L{opened}),
        so it may be read here; another process may write it meanwhile
        (then L{_load} reads again, the last time C{locked}: holding the
        folder's lock).
        """
        with self._index.locked() if locked else contextlib.nullcontext():
            return self._read_unlocked()

    def _read_unlocked(self):
        known = self._index.load()
        stamp = self._stamp()
        found = self._scan()
        in_cur = dict(split_name(n) for n, where in found.items() if where == "cur")
        reset = known is None or not in_cur.keys() <= known.keys()
        entries, changed = {}, []
        for key, (uid, internaldate, size, modseq, letters, keywords) in (
                () if reset else known.items()):
            suffix = in_cur.pop(key, None)
            if suffix is not None:
                entry = _Entry(uid, key, suffix, size, internaldate, modseq, keywords)
                entries[uid] = entry
                # (the first test is a shortcut for the usual ":2,<letters>")
                if letters is not None and suffix[3:] != letters and letters != entry.letters:
                    changed.append(entry)
        vanished = [] if reset or len(entries) == len(known) else sorted(
            uid for uid, *_ in known.values() if uid not in entries)
        # after a reset all of cur/ is new to the index; new/ always is
        arriving = self._describe(self._arriving(in_cur, found))
        order = sorted(entries.values(), key=_MODSEQ)
        changes = (array("Q", map(_MODSEQ, order)), array("L", map(_UID, order)))
        return known, reset, stamp, entries, changes, changed, vanished, arriving

    def _load(self, read, attempts=1):
        """
        Apply a L{_read} on the reactor. A message already in C{cur/} (we
        put it there) but missing from the index means the index is older
        than the folder, say after a crash: its UIDs cannot be trusted, so
        the folder starts again with a new UIDVALIDITY rather than ever
        reusing a UID. System flags that differ from what the index last
        saw changed while the server was not looking: those messages get a
        new MODSEQ.
        """
        with self._index.locked():
            if self._index.stale():  # another process wrote it since it was read
                d = threads.deferToThread(self._read, attempts >= STALE_READS)
                return d.addCallback(self._load, attempts + 1)
            self._caught = set()
            return self._loaded_from(read)

    def _loaded_from(self, read):
        known, reset, stamp, entries, changes, changed, vanished, arriving = read
        if reset:
            if known:
                log.warn(
                    "{path}: UID index is out of date; new UIDVALIDITY",
                    path=str(self.path),
                )
            self._index.reset(self.store.new_uidvalidity(self._index.uidvalidity))
        self._entries = entries
        self._change_modseqs, self._change_uids = changes
        self._loaded = True
        if vanished:
            self._index.expunged(vanished)
        # The index written after a reset is stale anyway: a failure to
        # write it changes nothing, the files go to cur/ all the same.
        added = self._place(arriving, changed, [], keep=reset)
        self._recent.update(entry.uid for entry in added or ())
        if added is not None or reset:
            self._settle(stamp)
        # files vanished while the server was down, or a new (empty) index:
        # its UIDVALIDITY is on disk before any client sees it
        if added is not None and (vanished or self._index.snapshot_due):
            try:
                self._snapshot()
            except OSError as e:
                self._log_write_error(e)
        self.headers.opened()
        return [], [], {}

    def _scan(self):
        """The message file names in C{cur/} and C{new/}: name -> C{"cur"} or C{"new"}."""
        found = {}
        for where in ("cur", "new"):
            try:
                names = os.listdir(self.path / where)
            except FileNotFoundError:
                ensure_maildir(self.path)
                names = []
            for name in names:
                if not name.startswith(".") and "\n" not in name:
                    found[name] = where
        return found

    def _take_in(self, unknown, found, changed, removed, keep=False):
        """
        Give UIDs to the files the index does not know: C{unknown} in
        C{cur/} (key -> suffix) and those of C{new/} in C{found} (a
        L{_scan}), in arrival order; write them to the index with the flag
        C{changed} entries and the C{removed} UIDs; then move the C{new/}
        files to C{cur/}.

        If the index cannot be written, the failure is logged and, unless
        C{keep}, the new files are forgotten: those in C{new/} stay there
        for the next sync.

        @return: the added entries, or L{None} after a failure.
        """
        return self._place(self._describe(self._arriving(unknown, found)),
                           changed, removed, keep)

    @staticmethod
    def _arriving(unknown, found):
        """The files of L{_take_in}: key -> C{(suffix, path in the Maildir now)}."""
        arriving = {key: (suffix, "cur/" + key + suffix) for key, suffix in unknown.items()}
        for name, where in found.items():
            if where == "new":
                key, suffix = split_name(name)
                arriving[key] = (INFO_SEPARATOR + info_letters(suffix), "new/" + name)
        return arriving

    def _describe(self, arriving):
        """
        The files in C{arriving} (see L{_arriving}) in arrival order, as
        C{(key, suffix, path now, size, date)}; no I/O but for a name that
        lacks them, so it may run in a thread (L{_read}). The size and
        arrival time come from the name (C{,S=} and the leading seconds,
        which the delivering program wrote), so a folder of 50,000 new
        messages costs no stat each; a name without them gets the file's
        size and mtime, and is left out if the file is gone.
        """
        described = []
        for key in sorted(arriving, key=arrival_order):
            suffix, now = arriving[key]
            size = size_from_key(key)
            seconds = key.partition(".")[0]
            if size is not None and seconds.isdigit():
                date = int(seconds)
            else:
                try:
                    st = os.stat(self.path / now)
                except FileNotFoundError:
                    continue
                size = st.st_size if size is None else size
                date = int(st.st_mtime)
            described.append((key, suffix, now, size, date))
        return described

    def _place(self, described, changed, removed, keep=False):
        """
        L{_take_in} for the files of a L{_describe}: UIDs in its order.
        """
        with self._writing():
            # (others may have taken some in since they were listed)
            described = [d for d in described if d[0] not in self._caught]
            self._touch(key for key, *_ in described)
            added = []
            for key, suffix, now, size, date in described:
                entry = _Entry(self._index.allocate(), key, suffix, size, date,
                               self._index.next_modseq())
                self._entries[entry.uid] = entry
                added.append((entry, now))
            try:
                self._persist([entry for entry, _ in added], changed, removed)
            except OSError as e:
                self._log_write_error(e)
                if not keep:
                    for entry, _ in added:
                        del self._entries[entry.uid]
                    return None
            for entry, now in added:
                if now.startswith("new/"):
                    try:
                        os.rename(self.path / now, self._path(entry))
                    except FileNotFoundError:  # taken by another process
                        del self._entries[entry.uid]
            return [entry for entry, _ in added if entry.uid in self._entries]

    def _added_when_opened(self, written, uids=None):
        """L{_added} once the folder is loaded (an APPEND to a folder nobody opened)."""
        if self._loaded:
            return self._added(written, uids)
        d = self.opened()
        d.addErrback(lambda failure: (_discard_written(written), failure)[1])
        return d.addCallback(lambda _: self._added(written, uids))

    def _added(self, written, uids=None):
        """
        The second half of L{add_all} and L{copy}, on the reactor thread:
        UIDs, the index lines, then the files from C{tmp/} into C{cur/}
        (fsync'd in a thread). A failure takes back every file moved: a
        line of the index that names no file is dropped at the next load.

        @param written: C{(file in tmp/, name in cur/, date, flags)} each.
        @param uids: the UIDs wanted (see L{add_all}), or L{None}.
        """
        with self._writing():
            entries = []
            for (_, name, date, flags), wanted in zip(written, uids or [None] * len(written)):
                key, suffix = split_name(name)
                self._touch([key])
                entry = _Entry(self._index.allocate(wanted), key, suffix, size_from_key(key),
                               int(date), self._index.next_modseq(), filter(is_keyword, flags))
                self._entries[entry.uid] = entry
                entries.append(entry)
            moved = []
            try:
                self._persist(entries, [], [])
                for entry, (temporary, *_) in zip(entries, written):
                    os.rename(temporary, self._path(entry))
                    moved.append(entry)
            except OSError:
                for entry in entries:
                    del self._entries[entry.uid]
                for entry in moved:
                    discard(self._path(entry))
                _discard_written(written)
                raise
        uids = [entry.uid for entry in entries]
        self._notify(None, uids, [], {})
        d = threads.deferToThread(fsync_directory, self.path / "cur")
        return d.addCallback(lambda _: uids)

    @contextlib.contextmanager
    def _writing(self):
        """
        Hold the folder's lock, with what other processes wrote to the
        index since taken in first (L{_catch_up}): every change to the
        index is made under it. Taken again within, it is a no-op.
        """
        with self._index.locked() as first:
            if first:
                self._caught = self._catch_up()
            yield

    def _catch_up(self):
        """
        Take in what other processes wrote to the index (its lock held):
        their messages, flag changes and removals, told to the listeners;
        a listing under way leaves their messages alone (L{_touch}).

        @return: the keys of the messages they added.
        """
        uidvalidity = self._index.uidvalidity
        news = self._index.news()
        if news is None or (news.entries is None and not news.lines):
            return set()
        if news.entries is None:
            added, expunged, changed = self._replay(news.lines)
        else:
            if self._index.uidvalidity != uidvalidity:
                log.warn("{path}: another process gave the folder a new UIDVALIDITY",
                         path=str(self.path))
                expunged = list(self._entries.values())
                self._entries = {}
            else:
                expunged = []
            added, gone, changed = self._reconcile(news.entries)
            expunged += gone
        self._touch(entry.key for entry in (*added, *changed, *expunged))
        for entry in sorted((*added, *changed), key=_MODSEQ):
            self._change_modseqs.append(entry.modseq)
            self._change_uids.append(entry.uid)
        self._notify(None, [entry.uid for entry in added],
                     sorted(entry.uid for entry in expunged),
                     {entry.uid: entry.flags() for entry in changed})
        return {entry.key for entry in added}

    def _replay(self, lines):
        """
        L{_catch_up} for change lines (L{mailsrv.store.uidlist.News}).

        @return: the added, expunged and changed entries.
        """
        added, changed, expunged = {}, {}, []
        for kind, *fields in lines:
            if kind == "+":
                key, uid, internaldate, size, modseq, letters, keywords = fields
                entry = _Entry(uid, key, INFO_SEPARATOR + (letters or ""), size, internaldate,
                               modseq, keywords)
                self._entries[uid] = added[uid] = entry
            elif kind == "=":
                uid, modseq, letters, keywords = fields
                entry = self._entries.get(uid)
                if entry is not None:
                    _recorded(entry, modseq, letters, keywords)
                    if uid not in added:
                        changed[uid] = entry
            elif kind == "-":
                for uid in fields[1]:
                    entry = self._entries.pop(uid, None)
                    if entry is not None and added.pop(uid, None) is None:
                        changed.pop(uid, None)
                        expunged.append(entry)
        return list(added.values()), expunged, list(changed.values())

    def _reconcile(self, entries):
        """
        L{_catch_up} for another process's snapshot (key -> C{(uid,
        internaldate, size, modseq, letters, keywords)}).

        @return: the added, expunged and changed entries.
        """
        records = {record[0]: (key, *record[1:]) for key, record in entries.items()}
        expunged, changed = [], []
        for uid, entry in list(self._entries.items()):
            record = records.get(uid)
            if record is None or record[0] != entry.key:
                expunged.append(self._entries.pop(uid))
                continue
            del records[uid]
            key, internaldate, size, modseq, letters, keywords = record
            if modseq != entry.modseq:
                _recorded(entry, modseq, letters, keywords)
                changed.append(entry)
        added = []
        for uid, (key, internaldate, size, modseq, letters, keywords) in records.items():
            entry = _Entry(uid, key, INFO_SEPARATOR + (letters or ""), size, internaldate,
                           modseq, keywords)
            self._entries[uid] = entry
            added.append(entry)
        return added, expunged, changed

    def _persist(self, added, changed, removed):
        """
        Record changes in the index: appended lines, or a new snapshot when
        the appended lines have grown larger than one. Flag changes and
        removals take a new MODSEQ here (RFC 7162 wants HIGHESTMODSEQ to
        grow at an expunge too).
        """
        if not (added or changed or removed):
            return
        self._drop_stale_changes()
        for entry in changed:
            entry.modseq = self._index.next_modseq()
        for entry in (*added, *changed):
            self._change_modseqs.append(entry.modseq)
            self._change_uids.append(entry.uid)
        if removed:
            self._index.expunged(sorted(removed))
        if self._index.worth_a_snapshot(len(self._entries)):
            self._snapshot()
            return
        if added:
            self._index.append_added(e.record() for e in added)
        if changed:
            self._index.append_flags(e.record() for e in changed)
        if removed:
            self._index.append_removed(removed)

    def _drop_stale_changes(self):
        """
        Once the records of L{changed_since} outnumber the messages twice,
        keep only the current ones (in order: no sort). Done before a
        change takes its MODSEQ, so the record of one undone after a
        failed write is still there.
        """
        if len(self._change_uids) > 2 * len(self._entries) + 1000:
            entries = self._entries
            current = [(m, uid) for m, uid in zip(self._change_modseqs, self._change_uids)
                       if (entry := entries.get(uid)) is not None and entry.modseq == m]
            self._change_modseqs = array("Q", [m for m, _ in current])
            self._change_uids = array("L", [uid for _, uid in current])

    def _persist_or_log(self, added, changed, removed):
        """
        L{_persist} for changes the files already show (expunges): if the
        index cannot be written, the next start reads them from the files.
        """
        try:
            self._persist(added, changed, removed)
        except OSError as e:
            self._log_write_error(e)

    def _log_write_error(self, error):
        log.error("{path}: cannot write the UID index: {error}",
                  path=str(self.path), error=error)

    def _snapshot(self):
        self._index.save(self._entries[uid].record() for uid in sorted(self._entries))

    def _notify(self, origin, added, expunged, changes):
        self._recent.update(added)
        self._recent.difference_update(expunged)
        self.headers.removed(expunged)
        self.headers.added(added)
        for listener in list(self.listeners):
            if listener is origin:
                continue
            if expunged:
                listener.messages_expunged(sorted(expunged))
            if changes:
                listener.flags_changed(dict(changes))
            if added:
                listener.messages_added(list(added))

    def moved(self, name, path):
        """The folder was renamed to C{name}, its Maildir now at C{path}."""
        self.name, self.path = name, path
        self._index.path = path / UidList.FILENAME

    def forget(self):
        """The folder was deleted: every session sees all messages expunged."""
        uids = sorted(self._entries)
        self._entries.clear()
        self.headers.stop()  # its directory is being removed
        self._notify(None, [], uids, {})


def _recorded(entry, modseq, letters, keywords):
    """
    Another process changed C{entry}'s flags as its index line says (the
    file renamed as L{Folder.set_flags} does: letters other software set
    kept).
    """
    others = "".join(c for c in info_letters(entry.suffix) if c not in LETTER_FLAGS)
    entry.suffix = sys.intern(INFO_SEPARATOR + "".join(sorted(set(letters or "") | set(others))))
    entry.keywords = frozenset(keywords) if keywords else _NO_KEYWORDS
    entry.modseq = modseq


def _crlf_size(path):
    """The size of file C{path} with CRLF line ends, or L{None} if it cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def _write_message(maildir, data, flags, date):
    """
    Write a message into C{tmp/}, fsync it and date it. Runs in a thread;
    L{Folder._added} moves it into C{cur/}.

    @param data: a path to copy, or an iterable of L{bytes}.
    @return: C{(the file in tmp/, its name in cur/)}.
    """
    maildir = Path(maildir)
    temporary = maildir / "tmp" / unique_name(0)
    try:
        with open(temporary, "xb") as out:
            if isinstance(data, (str, Path)):
                with open(data, "rb") as source:
                    shutil.copyfileobj(source, out, 1 << 20)
            else:
                out.writelines(data)
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
        os.utime(temporary, (date, date))
    except BaseException:
        discard(temporary)
        raise
    letters = "".join(sorted(FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS))
    return temporary, unique_name(size) + INFO_SEPARATOR + letters


def _write_messages(maildir, messages):
    """
    L{_write_message} for each C{(file, flags, date)}, bare LF made CRLF;
    after a failure none is left.

    @return: C{(file in tmp/, name in cur/, date, flags)} each.
    """
    written = []
    try:
        for data, flags, date in messages:
            written.append((*_write_message(maildir, _crlf_lines(data), flags, date),
                            date, flags))
    except BaseException:
        _discard_written(written)
        raise
    return written


def _discard_written(written):
    for temporary, *_ in written:
        discard(temporary)


def _crlf_lines(lines):
    """The lines of a binary file with a bare LF ending made CRLF."""
    for line in lines:
        if line.endswith(b"\n") and not line.endswith(b"\r\n"):
            line = line[:-1] + b"\r\n"
        yield line
