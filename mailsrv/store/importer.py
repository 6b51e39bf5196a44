"""
`mailsrv import`: another server's mailboxes (read by foreign.py) into a
user's folders through the store's own path, L{Folder.add_all}: each
message made CRLF, written and fsync'd in a thread, its UID and index line
given on the reactor by the process that owns the folder, so sessions
that have it open see it arrive (docs/store.md, "Importing").

Reading the source runs in a thread, a batch at a time: an mbox of
gigabytes is never held whole, and the reactor never parses.
"""

import os

from twisted.internet import defer, threads

from mailsrv.store import foreign
from mailsrv.store.delivery import write_all
from mailsrv.store.folder import NoSuchFolder

# What an imported folder remembers of its messages, one identity a line.
STATE = "mailsrv-imported"
# A batch is written (and fsync'd) in one thread hop; at most this much.
BATCH_MESSAGES = 200
BATCH_BYTES = 16 << 20


class ImportReport:
    """
    What an import did, told as it goes through C{say} (one line each).

    @ivar failed: whether anything was skipped or failed (a non-zero exit).
    """

    def __init__(self, say):
        self.say = say
        self.failed = False

    def problem(self, where, what):
        self.failed = True
        self.say(f"{where}: {what}")


def run_import(store, kind, path, user, folder, report):
    """C{mailsrv import maildir} (every folder) or C{mbox} (into C{folder})."""
    if kind == "maildir":
        return import_maildir(store, user, path, report)
    return import_mbox(store, user, path, folder, report)


def import_maildir(store, user, root, report):
    """
    Every folder of the Maildir or Maildir++ tree C{root} into C{user}'s
    folders of the same names, created when missing.

    @return: a Deferred that fires when done (failures are in C{report}).
    """
    d = threads.deferToThread(foreign.maildir_folders, root)

    @defer.inlineCallbacks
    def each(folders):
        for name, path in folders:
            uidlist, keywords, warning = yield threads.deferToThread(_dovecot_files, path)
            if warning:
                report.say(warning)
            messages = foreign.maildir_messages(path, keywords, uidlist.uids if uidlist else {})
            yield import_folder(store, user, name, messages, uidlist, report)

    d.addCallback(each)
    d.addErrback(_source_failed, root, report)
    return d


def import_mbox(store, user, path, name, report):
    """The messages of the mbox file C{path} into C{user}'s folder C{name}."""
    d = threads.deferToThread(open, path, "rb")

    def read(f):
        finished = import_folder(store, user, name, foreign.mbox_messages(f, path), None, report)
        return finished.addBoth(lambda result: (f.close(), result)[1])

    d.addCallback(read)
    d.addErrback(_source_failed, path, report)
    return d


def _source_failed(failure, where, report):
    failure.trap(OSError, foreign.ForeignError)
    error = failure.value
    report.problem(where, error.strerror if isinstance(error, OSError) else str(error))


def _dovecot_files(path):
    """
    In a thread: the folder's dovecot-uidlist (or L{None}), its keywords,
    and a line to tell when the uidlist cannot be used.
    """
    uidlist, warning = None, None
    text = foreign.read_text(os.path.join(path, foreign.UIDLIST))
    if text is not None:
        try:
            uidlist = foreign.parse_uidlist(text)
        except foreign.ForeignError as e:
            warning = f"{os.path.join(path, foreign.UIDLIST)}: {e}; its UIDs are not kept"
    text = foreign.read_text(os.path.join(path, foreign.KEYWORDS))
    return uidlist, foreign.parse_keywords(text) if text is not None else {}, warning


@defer.inlineCallbacks
def import_folder(store, user, name, messages, uidlist, report):
    """
    The L{foreign.Found} C{messages} (an iterator, read in a thread) into
    one folder, but those its state file names; each batch's identities
    are added to that file once the batch is stored.

    The old server's UIDs (C{uidlist}) are kept when the folder has its
    UIDVALIDITY already or can take it (L{Folder.adopt_uidvalidity}).
    """
    try:
        folder = store.folder(user, name)
    except NoSuchFolder:
        store.create_folder(user, name)
        folder = store.folder(user, name)
    yield folder.opened()
    state = folder.path / STATE
    known = yield threads.deferToThread(_read_state, state)
    keep = uidlist is not None and folder.adopt_uidvalidity(uidlist.uidvalidity)
    if uidlist is not None and not keep:
        report.say(f"{name}: has messages or is open; the old UIDs are not kept, new ones "
                   f"go on from {folder.uidnext}")
    imported = already = 0
    while True:
        batch, skipped, seen = yield threads.deferToThread(_next_batch, messages, known)
        already += seen
        for found in skipped:
            report.problem(found.where, f"{found.problem} (skipped)")
        if not batch:
            break
        uids = [found.uid for found in batch] if keep else None
        yield folder.add_all([(found.data, found.flags, found.date) for found in batch], uids)
        identities = [found.identity for found in batch]
        yield threads.deferToThread(_remember, state, identities)
        known.update(identities)
        imported += len(batch)
    report.say(f"{name}: {imported} imported, {already} already there")


def _next_batch(messages, known):
    """
    In a thread: the next messages to store (at most L{BATCH_MESSAGES} or
    L{BATCH_BYTES}), those skipped as malformed, and how many were known.
    """
    batch, skipped, seen, size = [], [], 0, 0
    for found in messages:
        if found.identity in known:
            seen += 1
        elif found.problem is not None:
            skipped.append(found)
        else:
            batch.append(found)
            size += len(found.data)
            if len(batch) >= BATCH_MESSAGES or size >= BATCH_BYTES:
                break
    return batch, skipped, seen


def _read_state(path):
    """The identities of the state file's whole lines (a torn last line is no identity)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return {line[:-1] for line in f if line.endswith("\n")}
    except FileNotFoundError:
        return set()


def _remember(path, identities):
    """
    Append C{identities} to the state file, fsync'd: the messages are
    stored. After a torn line (a crash) they start on a line of their own.
    """
    data = "".join(f"{identity}\n" for identity in identities)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        end = os.fstat(fd).st_size
        if end and os.pread(fd, 1, end - 1) != b"\n":
            data = "\n" + data
        write_all(fd, data.encode("utf-8", "surrogateescape"))
        os.fsync(fd)
    finally:
        os.close(fd)
