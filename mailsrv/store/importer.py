"""
`mailsrv import`: another server's mailboxes (read by foreign.py) into a
user's folders through the store's own path, L{Folder.add_all}: each
message made CRLF, written and fsync'd in a thread, its UID and index line
given on the reactor by the process that owns the folder, so sessions
that have it open see it arrive (docs/store.md, "Importing").

Reading the source runs in a thread, a batch at a time: an mbox of
gigabytes is never held whole, and the reactor never parses.
"""

import json
import os
import time
from pathlib import Path

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from mailsrv.store import foreign
from mailsrv.store.delivery import discard, write_all, write_file
from mailsrv.store.folder import NoSuchFolder

log = Logger()

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
    UIDVALIDITY already or can take it (L{Folder.adopt_uidvalidity}), and
    UIDs go on from its UIDNEXT.
    """
    try:
        try:
            folder = store.folder(user, name)
        except NoSuchFolder:
            store.create_folder(user, name)
            folder = store.folder(user, name)
    except ValueError as e:  # a name the old server allowed and we do not
        report.problem(name, f"cannot be a folder here ({e}); not imported")
        return
    yield folder.opened()
    counts = [0, 0]  # imported, already there
    try:
        yield _fill(folder, messages, uidlist, report, counts)
    except OSError as e:  # a full disk: what is stored stays, a second run adds the rest
        report.problem(name, f"cannot write the folder ({e.strerror}); {counts[0]} "
                             f"imported before it stopped")
        return
    imported, already = counts
    report.say(f"{name}: {imported} imported, {already} already there")


@defer.inlineCallbacks
def _fill(folder, messages, uidlist, report, counts):
    """L{import_folder} once the folder is open; C{counts} as it goes."""
    state = folder.path / STATE
    known = yield threads.deferToThread(_read_state, state)
    keep = uidlist is not None and folder.adopt_uidvalidity(uidlist.uidvalidity)
    if uidlist is not None and not keep:
        report.say(f"{folder.name}: has messages or is open; the old UIDs are not kept, new "
                   f"ones go on from {folder.uidnext}")
    while True:
        batch, skipped, seen = yield threads.deferToThread(_next_batch, messages, known)
        counts[1] += seen
        for found in skipped:
            report.problem(found.where, f"{found.problem} (skipped)")
        if not batch:
            break
        # (a message the old server had given no UID yet takes its UIDNEXT)
        uids = [found.uid or uidlist.uidnext for found in batch] if keep else None
        yield folder.add_all([(found.data, found.flags, found.date) for found in batch], uids)
        identities = [found.identity for found in batch]
        yield threads.deferToThread(_remember, state, identities)
        known.update(identities)
        counts[0] += len(batch)
    if keep:
        folder.skip_uids(uidlist.uidnext)


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


# `mailsrv import` while the server runs: the server owns every folder's
# index, so it does the import; the command asks it through a directory.
#   <name>.json   a request (written to .<name>.tmp, fsync'd, renamed)
#   <name>.run    taken: the server imports
#   <name>.out    what it says, a line at a time
#   <name>.done   finished: "ok" or "failed"
IMPORT_REQUESTS = "import"  # the directory, in data_dir
REQUEST_FIELDS = ("kind", "path", "user", "folder")
CHECK_INTERVAL = 1.0


def request_import(directory, kind, path, user, folder):
    """
    Ask the running server for an import, in the directory it made (as
    its own user: the command may run as root). The request is readable
    by the server's user (mode 0644).

    @return: the request's name.
    @raise FileNotFoundError: no server made the directory.
    """
    directory = Path(directory)
    name = f"{time.time_ns()}-{os.getpid()}"
    temporary = directory / f".{name}.tmp"
    request = dict(zip(REQUEST_FIELDS, (kind, path, user, folder)))
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, json.dumps(request).encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, directory / f"{name}.json")
    return name


class ImportRequests(service.Service):
    """
    The server's side of L{request_import}: every L{CHECK_INTERVAL}
    seconds a look into the directory (a listing, in a thread), then the
    requests one at a time, oldest first, by L{run_import} on this
    process's folders.
    """

    def __init__(self, directory, store, clock):
        self.directory = Path(directory)
        self.store = store
        self.clock = clock
        self._loop = None
        self._busy = False

    def startService(self):
        super().startService()
        d = threads.deferToThread(_abandoned, self.directory)
        d.addCallback(_log_cut_short)
        d.addErrback(lambda f: log.failure("import: files left by the last run", f))
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(CHECK_INTERVAL, now=False)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def check(self):
        """Take the waiting requests, unless those taken before are still under way."""
        if self._busy:
            return None
        self._busy = True
        d = threads.deferToThread(_take_requests, self.directory)
        d.addCallback(self._run_all)
        d.addErrback(lambda f: log.failure("import: requests failed", f))
        d.addBoth(self._done)
        return d

    def _done(self, _):
        self._busy = False

    @defer.inlineCallbacks
    def _run_all(self, taken):
        for name, request in taken:
            out = open(self.directory / f"{name}.out", "a", encoding="utf-8")
            report = ImportReport(lambda line: (out.write(line + "\n"), out.flush()))
            try:
                if request is None:
                    report.problem(name, "unreadable request, dropped")
                else:
                    log.info("import: {kind} {path} for {user} asked by mailsrv import",
                             **request)
                    yield run_import(self.store, *(request[f] for f in REQUEST_FIELDS),
                                     report)
            except Exception as e:
                log.failure("import: {name}", name=name)
                report.problem(name, f"import failed: {e}")
            finally:
                out.close()
            yield threads.deferToThread(_finish, self.directory, name, report.failed)


def _take_requests(directory):
    """
    In a thread: the waiting requests, oldest first, each renamed to
    C{.run}: C{[(name, request or None when unreadable)]}.
    """
    taken = []
    for path in sorted(directory.glob("*.json")):
        name = path.stem
        try:
            request = json.loads(path.read_text("utf-8"))
            if not all(isinstance(request.get(f), str) for f in REQUEST_FIELDS):
                request = None
        except (OSError, ValueError, AttributeError):
            request = None
        try:
            os.rename(path, directory / f"{name}.run")
        except FileNotFoundError:  # withdrawn by the command meanwhile
            continue
        taken.append((name, request))
    return taken


def _abandoned(directory):
    """
    In a thread, at start: the directory made if missing; what the last
    run left (its commands have ended: they watch the server's PID)
    removed.

    @return: the names of the imports it did not finish.
    """
    directory.mkdir(mode=0o700, exist_ok=True)
    cut = sorted(path.stem for path in directory.glob("*.run"))
    for pattern in ("*.run", "*.out", "*.done", ".*.tmp"):
        for path in directory.glob(pattern):
            discard(path)
    return cut


def _log_cut_short(names):
    for name in names:
        log.warn("import {name}: cut short by the last stop; run it again for the rest",
                 name=name)


def _finish(directory, name, failed):
    write_file(directory / f".{name}.done.tmp", b"failed" if failed else b"ok", fsync=True)
    os.rename(directory / f".{name}.done.tmp", directory / f"{name}.done")
    discard(directory / f"{name}.run")
