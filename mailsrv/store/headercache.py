"""
The per-folder header cache: one record of L{headerfields.Fields} per
message, in a file beside the UID index, so that SEARCH (and SORT) on the
fields clients use most need not read every message file (format and crash
rules in docs/store.md):

    mailsrv-headercache 1 <uidvalidity> <column>:<type>,...
    <uid> TAB <key> TAB <value> TAB <value> ...
    <uid> TAB <key> TAB !                        (too big: read the file)

A record holds every column, or only the raw ones and the date (up to
C{sort_subject}): SEARCH needs no more, and the SORT and THREAD keys
double the cost of the first search, which writes the whole cache. The
first SORT or THREAD that needs the keys appends records with them
(L{Records.upgrade}); a UID's last record is its record.

A record names the message file's key (the Maildir name without flags): a
record is used only for the message that has that key under that UID, so a
stale or foreign record is never taken for a file's content. Values are
escaped (C{\\\\}, C{\\t}, C{\\n}), C{\\N} is "no such field".

The cache is started by the first search that needs it (L{ready}), or
when a folder that has one is opened: a folder nobody searches costs
nothing. From then on new messages get their records appended (their
heads read in a thread); messages without one (a new or damaged cache)
get it from the first search that reads their files anyway (L{Records}).
Records of expunged messages stay until they outnumber the live ones,
then the file is rewritten without them. Every file access runs in a
thread, one at a time per folder; the state below is changed on the
reactor thread only. In memory: the set of UIDs with a good record
(L{HeaderCache.valid}), nothing else per message.
"""

import collections
import os
import re
import typing

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.logger import Logger

from mailsrv.store import headerfields
from mailsrv.store.delivery import discard, write_all, write_file

log = Logger()

MAGIC = b"mailsrv-headercache"
VERSION = b"1"
# An encoded record longer than this is not kept (a huge References field):
# the message's file is read instead.
MAX_RECORD = 16384
# Records written by one task in a thread (heads read for new messages).
BATCH = 1000
# The two characters whose lower case is ASCII: KELVIN SIGN is "k", LATIN
# CAPITAL LETTER I WITH DOT ABOVE "i" and a combining dot.
_LOWERS_TO = {b"k": "\u212a".encode(), b"i": "\u0130".encode()}
# Characters a search needle may not hold to be looked for in the raw file.
_ESCAPED = frozenset("\\\t\n\r")
_UNESCAPE = re.compile(r"\\(.)")
_UNESCAPED = {"\\": "\\", "t": "\t", "n": "\n"}
_TOO_BIG = b"!"
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n"})


def _columns():
    """C{((name, is_int), ...)} of L{headerfields.Fields}: the record's columns."""
    hints = typing.get_type_hints(headerfields.Fields)
    return tuple((name, int in typing.get_args(hints[name]) or hints[name] is int)
                 for name in headerfields.Fields._fields)


COLUMNS = _columns()
# The header names the columns: a cache written for other Fields is rebuilt.
_INT_COLUMNS = tuple(at for at, (_, is_int) in enumerate(COLUMNS) if is_int)
_WIDTHS = (len(COLUMNS), headerfields.RAW)
SPEC = ",".join(f"{name}:{'i' if is_int else 's'}" for name, is_int in COLUMNS).encode()


def _escape(text):
    if "\\" in text or "\t" in text or "\n" in text:
        return text.translate(_ESCAPES)
    return text


def _unescape(text):
    if "\\" in text:
        return _UNESCAPE.sub(_unescaped, text)
    return text


def _unescaped(match):
    try:
        return _UNESCAPED[match.group(1)]
    except KeyError:
        raise ValueError("damaged record") from None


def encode(uid, key, fields):
    """A record line (bytes, with its newline) for C{fields} of message C{uid}, C{key}."""
    key = _escape(key)
    parts = [str(uid), key]
    if not headerfields.has_keys(fields):  # the raw columns only
        fields = fields[:headerfields.RAW]
    parts += ["\\N" if value is None else _escape(value) if value.__class__ is str
              else str(value) for value in fields]
    line = "\t".join(parts).encode("utf-8", "surrogateescape") + b"\n"
    if len(line) > MAX_RECORD:
        return f"{uid}\t{key}\t!\n".encode("utf-8", "surrogateescape")
    return line


def decode(line, columns=None):
    """
    A record line (without its newline) -> C{(uid, key, Fields or None)}
    (L{None}: too big to keep). A record of the raw columns only gives
    Fields without keys (L{headerfields.has_keys}).

    @param columns: L{column_indexes} of the only columns wanted (the
        others L{None}: a SORT by date need not unescape addresses and
        subjects), or L{None} for all. A record without the keys some
        of them are is decoded whole.

    @raise ValueError: not a record of this format.
    """
    # (decoded whole: a tab ends any UTF-8 sequence)
    parts = line.decode("utf-8", "surrogateescape").split("\t")
    uid, key = int(parts[0]), _unescape(parts[1])
    if len(parts) == 3 and parts[2] == "!":
        return uid, key, None
    width = len(parts) - 2
    if width not in _WIDTHS:
        raise ValueError("wrong number of columns")
    if columns is not None and (width == len(COLUMNS) or not columns[2]):
        values = [None] * len(COLUMNS)
        for at in columns[0]:
            if at < width:
                part = parts[at + 2]
                values[at] = None if part == "\\N" else _unescape(part)
        ints = columns[1]
    else:  # (a SORT or THREAD of 50,000 decodes every record: tests inlined)
        values = [None if part == "\\N" else _unescape(part) if "\\" in part else part
                  for part in parts[2:]]
        values += [None] * (len(COLUMNS) - width)
        ints = _INT_COLUMNS
    for at in ints:
        if at < width:
            part = parts[at + 2]
            values[at] = None if part == "\\N" else int(part)
    return uid, key, headerfields.Fields._make(values)


def column_indexes(names):
    """
    The C{columns} argument of L{decode} for the L{headerfields.Fields}
    attributes C{names}: C{(text indexes, int indexes, needs keys)}
    (a record without keys is then decoded whole, to make them). With a
    key, C{sort_subject} too: it says whether a record has keys
    (L{headerfields.has_keys}).
    """
    indexes = [at for at, (name, _) in enumerate(COLUMNS) if name in names]
    if any(at >= headerfields.RAW for at in indexes):
        indexes.append(headerfields.RAW)  # sort_subject
    return (tuple(at for at in indexes if not COLUMNS[at][1]),
            tuple(at for at in indexes if COLUMNS[at][1]),
            any(at >= headerfields.RAW for at in indexes))


def needle_pieces(text, pieces):
    """
    The bytes L{HeaderCache.lookup} may look for in the raw file for a
    search of C{text} whose test needs every one of C{pieces} (str) in
    the field's lower-case raw value, or L{None} when the raw file cannot
    rule a message out (non-ASCII or escaped characters).
    """
    if not text.isascii() or _ESCAPED & set(text):
        return None
    return tuple(p.encode("ascii") for p in pieces if p)


class HeaderCache:
    """
    One folder's cache file (see the module's docstring).

    @ivar valid: the UIDs whose record in the file is good and is their
        file's: a search may trust the file for them. Changed on the
        reactor thread; a thread takes a copy before it reads the file.
    """

    FILENAME = "mailsrv-headercache"
    # Records of gone messages worth a rewrite: more than this and than live ones.
    COMPACT_AFTER = 1000

    def __init__(self, folder, in_thread):
        self.folder = folder
        self._in_thread = in_thread  # deferToThread, as the folder's (tests patch it)
        self.valid = set()
        self._loaded = None  # None: not started; a list of waiters; True: loaded
        self._too_big = set()  # UIDs whose record says "read the file"
        self._arrived = set()  # UIDs whose records the writer makes (reads their heads)
        self._learned = collections.deque()  # chunks of Records made by threads
        self._lines = 0  # record lines in the file
        self._upgrades = 0  # records with keys written after one without (see Records.upgrade)
        self._whole = 0  # bytes of whole lines in the file (after: a torn write)
        self._rewrite = True  # the next write is a new file (none yet, damaged, old)
        self._running = False
        self._idle = []
        self._identity = None  # (st_dev, st_ino) of the file this cache wrote or read
        self._lost = False  # a lookup found the file gone or replaced (set in a thread)
        self._stopped = False  # no more writes for this folder object: see stop()

    @property
    def path(self):
        return self.folder.path / self.FILENAME

    # On the reactor thread

    def ready(self):
        """
        A Deferred that fires once the cache is loaded (started here the
        first time) and holds what earlier searches learned: the search
        after one that read every file uses the cache.
        """
        if self._loaded is True:
            return self.idle()
        d = defer.Deferred()
        if self._loaded is None:
            self._loaded = [d]
            self._task(self._read_done, self._read, self.folder.uidvalidity)
        else:
            self._loaded.append(d)
        return d

    def opened(self):
        """
        The folder is loaded: a cache some search made before is kept up
        to date from now on (a folder without one waits for a search).
        """
        if self._loaded is None and os.path.exists(self.path):
            self.ready()

    def added(self, uids):
        """New messages in the folder: their records are written (once the cache is started)."""
        if self._loaded is True:
            self._arrived.update(uids)
            self.kick()

    def removed(self, uids):
        """Messages gone: their records are dropped at the next rewrite."""
        self.valid.difference_update(uids)
        self._too_big.difference_update(uids)
        self._arrived.difference_update(uids)
        if self._loaded is True:
            self.kick()

    def stop(self):
        """
        Write nothing more (the folder is deleted, or a write failed):
        searches read the files of messages without a record.
        """
        self._stopped = True

    def records(self):
        """
        A L{Records} for a thread that reads message files the cache
        lacks: what it learns is written at the next L{kick}.
        """
        return Records(self._learned if self._loaded is not None else None, self._too_big)

    def kick(self):
        """Start the next write the cache needs, if none is under way."""
        if self._running or self._loaded is not True:
            return
        if self._stopped:
            self._arrived.clear()
            self._learned.clear()
        if self._lost:  # the file holds none of the records it had
            self._lost, self._rewrite = False, True
            self.valid.clear()
            self._too_big.clear()
        self._arrived -= self.valid
        dead = self._lines - len(self.valid) - len(self._too_big)
        upgrades = self._upgrades + sum(chunk[3] for chunk in self._learned)
        if not self._stopped and (self._rewrite
                                  or upgrades > min(self.COMPACT_AFTER, len(self.folder) // 2)
                                  or dead > max(self.COMPACT_AFTER, len(self.folder))):
            # records with keys for much of the folder (a first THREAD): written with the
            # rest, not appended (a lookup would decode both records of each)
            chunks = [] if self._rewrite else [
                self._learned.popleft() for _ in range(len(self._learned))]
            self._task(self._rewritten, self._write_file, frozenset(self.valid),
                       frozenset(self._too_big), self.folder.uidvalidity, chunks)
        elif self._learned or self._arrived:
            chunks = [self._learned.popleft() for _ in range(len(self._learned))]
            arrived = sorted(self._arrived)[:BATCH]
            self._arrived.difference_update(arrived)
            self._task(self._appended, self._append, chunks, arrived)
        if not self._running:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    def idle(self):
        """A Deferred that fires when nothing is left to write."""
        if self._loaded is None:
            return defer.succeed(None)
        if self._loaded is not True:
            return self.ready().addCallback(lambda _: self.idle())
        if not (self._running or self._arrived or self._learned or self._lost):
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle.append(d)
        self.kick()
        return d

    def _task(self, apply, f, *args):
        """
        Run C{f} in a thread (the only file access under way), then
        C{apply} its result on the reactor thread (L{None} if it failed:
        logged, and the next write is a new file), then the next task.
        """
        self._running = True
        d = self._in_thread(f, *args)
        d.addErrback(self._failed)
        d.addCallback(apply)
        d.addBoth(self._finished)

    def _failed(self, failure):
        """A write failed (a full disk): searches read files until the folder is reopened."""
        failure.trap(OSError)
        log.warn("{path}: cannot write the header cache: {error}", path=str(self.path),
                 error=failure.value)
        self.stop()
        return None

    def _finished(self, result):
        self._running = False
        if isinstance(result, Failure):
            log.failure("{path}: header cache", result, path=str(self.path))
        self.kick()

    def _read_done(self, read):
        waiting, self._loaded = self._loaded, True
        if read is not None:
            valid, too_big, self._lines, self._whole, self._rewrite, self._identity = read
            self.valid = set(self.folder.present(valid))
            self._too_big = set(self.folder.present(too_big))
        for d in waiting:
            d.callback(None)
        self.kick()

    def _appended(self, written):
        if written is not None:
            valid, too_big, size, lines, upgrades = written
            self._whole += size
            self._lines += lines
            self._upgrades += upgrades
            self.valid.update(self.folder.present(valid))
            self._too_big.update(self.folder.present(too_big))

    def _rewritten(self, written):
        if written is not None:
            kept, self._whole, self._identity, (valid, too_big) = written
            self._lines, self._upgrades = len(kept) + len(valid) + len(too_big), 0
            self.valid &= kept  # a file lost meanwhile took its records along
            self._too_big &= kept
            self.valid.update(self.folder.present(valid))
            self._too_big.update(self.folder.present(too_big))
            self._rewrite = False

    # In a thread

    def _read(self, uidvalidity):
        """
        The file's good records: C{(valid uids, too-big uids, lines, whole
        bytes, rewrite)}; C{rewrite} when the file is missing, of another
        format or folder, or has a damaged line (logged).
        """
        try:
            with open(self.path, "rb") as f:
                data = f.read()
                identity = _identity(f)
        except OSError as e:
            if not isinstance(e, FileNotFoundError):
                log.warn("{path}: cannot read the header cache ({error}); rebuilding it",
                         path=str(self.path), error=e)
            return set(), set(), 0, 0, True, None
        whole = data.rfind(b"\n") + 1  # after it: a torn write, ignored
        header, _, body = data[:whole].partition(b"\n")
        if header != _header(uidvalidity):
            return set(), set(), 0, 0, True, None
        valid, too_big, lines, damaged = set(), set(), 0, 0
        entry = self.folder.entry
        for line in body.split(b"\n")[:-1]:
            lines += 1
            try:
                uid, _, rest = line.partition(b"\t")
                uid = int(uid)
                key, _, values = rest.partition(b"\t")
                if values != _TOO_BIG and values.count(b"\t") + 1 not in _WIDTHS:
                    raise ValueError("wrong number of columns")
            except ValueError:
                damaged += 1
                continue
            known = entry(uid)
            if known is not None and _escape(known.key).encode(
                    "utf-8", "surrogateescape") == key:
                (too_big if values == _TOO_BIG else valid).add(uid)
        if damaged:
            log.warn("{path}: {count} damaged header cache records; rewriting it",
                     path=str(self.path), count=damaged)
        return valid, too_big, lines, whole, bool(damaged), identity

    def _write_file(self, valid, too_big, uidvalidity, chunks=()):
        """
        A new file: the header, the records of C{valid} and C{too_big}
        UIDs of the old one, then those of the learned C{chunks} (in
        place of the old ones of their UIDs), in a temporary file renamed
        over the old. Not fsync'd: after a power cut the cache is at
        worst rebuilt.

        @return: C{(UIDs of the records kept, bytes, identity, (valid,
            too-big UIDs of C{chunks}))}.
        """
        learned_valid = [uid for chunk in chunks for uid in chunk[0]]
        learned_too_big = [uid for chunk in chunks for uid in chunk[1]]
        keep = set(valid | too_big).difference(learned_valid, learned_too_big)
        kept, lines = set(), []
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        if keep:
            body = data[data.find(b"\n") + 1:data.rfind(b"\n") + 1]
            for line in reversed(body.split(b"\n")[:-1]):  # the last record of each
                uid = line.partition(b"\t")[0]
                if uid.isdigit() and int(uid) in keep:
                    lines.append(line + b"\n")
                    keep.discard(int(uid))  # one record each
                    kept.add(int(uid))
            lines.reverse()
        lines.extend(chunk[2] for chunk in chunks)
        new = _header(uidvalidity) + b"\n" + b"".join(lines)
        temporary = f"{self.path}.tmp"
        try:
            write_file(temporary, new)
            os.replace(temporary, self.path)
            identity = _identity(self.path)
        except OSError:
            discard(temporary, OSError)
            raise
        return kept, len(new), identity, (learned_valid, learned_too_big)

    def _append(self, chunks, arrived):
        """
        Write the learned C{chunks} and the records of the messages
        C{arrived} (their heads read now) after the file's whole lines
        (cutting off a torn write).

        @return: C{(valid uids, too-big uids, bytes, lines, upgrades)} written.
        """
        records = Records(chunks)
        with self.folder.cur_directory() as cur:
            for uid in arrived:
                entry = self.folder.entry(uid)
                try:
                    fields = headerfields.parse(self.folder.read_header(uid, cur), keys=False)
                except (KeyError, OSError):  # expunged meanwhile
                    continue
                records.add(uid, entry.key, fields)
                entry.dated(fields.date)  # (a SORT by date need not read it back)
        records.flush()
        valid = [uid for chunk in chunks for uid in chunk[0]]
        too_big = [uid for chunk in chunks for uid in chunk[1]]
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)  # never a file without header
        except FileNotFoundError:  # removed behind our back: a new one, learned again
            self._lost = True
            return None
        try:
            if os.fstat(fd).st_size > self._whole:
                os.ftruncate(fd, self._whole)
            for chunk in chunks:
                write_all(fd, chunk[2])
        finally:
            os.close(fd)
        return (valid, too_big, sum(len(chunk[2]) for chunk in chunks),
                len(valid) + len(too_big), sum(chunk[3] for chunk in chunks))

    def lookup(self, uids, narrow=(), columns=None):
        """
        In a thread: the cached L{headerfields.Fields} of C{uids}.

        @param narrow: conditions (tuples of lower-case ASCII bytes, see
            L{needle_pieces}) a message must meet to be worth returning:
            each condition's pieces all in its record (in lower case).
            Records that hold none of them rule their message out without
            being decoded.
        @param columns: the only attributes of the Fields found that the
            caller reads (L{column_indexes}; the others are L{None}), or
            L{None} for all.
        @return: C{(found, unknown)}: C{{uid: Fields}} of the messages the
            cache holds and that meet C{narrow}; the set of C{uids} the cache
            does not hold (read their files). The others were ruled out.
        """
        wanted = set(uids)
        # before the file is read: all their records are in it
        valid, whole, identity = self.valid & wanted, self._whole, self._identity
        unknown = wanted - valid
        if not valid:
            return {}, unknown
        try:
            with open(self.path, "rb") as f:
                header = f.readline()
                data = f.read()  # the records (one copy of them: 10 MB for 50,000)
                same = _identity(f) == identity and len(header) + len(data) >= whole
        except OSError:
            same = False
        if not same:  # deleted or replaced behind our back: rewritten at the next kick
            self._lost = True
            return {}, wanted
        if not data.endswith(b"\n"):  # a write under way: its records are not valid yet
            data = data[:data.rfind(b"\n") + 1]
        conditions = [c for c in narrow if any(c)]
        if conditions:
            lines = (data[s:data.index(b"\n", s)] for s in _candidates(data, conditions))
        else:
            lines = data.split(b"\n")[:-1]
        found = {}
        entry = self.folder.entry
        for line in lines:
            uid = line.partition(b"\t")[0]
            if not uid.isdigit() or int(uid) not in valid:
                continue  # a gone message's, or one the caller did not ask for
            try:
                uid, key, fields = decode(line, columns)
            except ValueError:  # damaged since it was loaded: read the file
                unknown.add(int(uid))
                continue
            known = entry(uid)
            if known is None:
                continue  # expunged meanwhile
            if known.key == key and fields is not None:
                found[uid] = fields
            else:
                unknown.add(uid)
        return found, unknown


class Records:
    """
    Records made in a thread, handed over in chunks of L{BATCH} (one
    bytes object each, not a Fields per message: a search that reads
    50,000 files would hold 35 MB of them).
    """

    def __init__(self, chunks, kept=frozenset()):
        self._chunks = chunks  # where flush() puts them (a deque or list), or None: dropped
        self._kept = kept  # UIDs the file has a record for already (too big ones)
        self._lines, self._valid, self._too_big, self._upgrades = [], [], [], 0

    def add(self, uid, key, fields):
        """The record of message C{uid} (file C{key}) holding C{fields}."""
        if uid in self._kept:
            return
        line = encode(uid, key, fields)
        (self._too_big if line.count(b"\t") == 2 else self._valid).append(uid)
        self._lines.append(line)
        if len(self._lines) >= BATCH:
            self.flush()

    def upgrade(self, uid, key, fields):
        """
        The record with keys of message C{uid}, whose record in the file
        has none: it goes after that one (the last record of a UID is
        its record), unless it is too big to keep.
        """
        line = encode(uid, key, fields)
        if line.count(b"\t") != 2:
            self._valid.append(uid)
            self._lines.append(line)
            self._upgrades += 1
            if len(self._lines) >= BATCH:
                self.flush()

    def flush(self):
        """Hand over what was added: C{(valid uids, too-big uids, lines, upgrades)}."""
        if self._lines and self._chunks is not None:
            self._chunks.append((self._valid, self._too_big, b"".join(self._lines),
                                 self._upgrades))
        self._lines, self._valid, self._too_big, self._upgrades = [], [], [], 0


def _header(uidvalidity):
    return b" ".join((MAGIC, VERSION, b"%d" % uidvalidity, SPEC))


def _identity(file):
    """Which file this is (a path or an open file): C{(st_dev, st_ino)}."""
    st = os.fstat(file.fileno()) if hasattr(file, "fileno") else os.stat(file)
    return st.st_dev, st.st_ino


def _candidates(data, conditions):
    """
    Where the records of C{data} (whole lines) that may meet every
    condition of L{HeaderCache.lookup} start: those holding all pieces of
    each (in ASCII lower case), and those whose raw bytes cannot tell:
    with an encoded word, or a character whose lower case is the ASCII
    letter of a piece.
    """
    lower = data.lower()
    starts = None
    for pieces in conditions:
        for piece in pieces:
            if piece:
                found = _line_starts(lower, piece)
                starts = found if starts is None else starts & found
    starts |= _encoded_word_lines(data)
    if not data.isascii():
        for letter, upper in _LOWERS_TO.items():
            if any(letter in piece for pieces in conditions for piece in pieces):
                starts |= _line_starts(data, upper)
    return starts


def _line_starts(data, piece):
    """Where the lines of C{data} holding C{piece} start (a set of offsets)."""
    starts = set()
    at = data.find(piece)
    while at >= 0:
        starts.add(data.rfind(b"\n", 0, at) + 1)
        at = data.find(piece, data.index(b"\n", at))
    return starts


def _encoded_word_lines(data):
    """L{_line_starts} for C{"=?"}, looking for "?" (a search for one byte is much faster)."""
    starts = set()
    at = data.find(b"?")
    while at >= 0:
        if data[at - 1:at] == b"=":
            starts.add(data.rfind(b"\n", 0, at) + 1)
            at = data.index(b"\n", at)
        at = data.find(b"?", at + 1)
    return starts
