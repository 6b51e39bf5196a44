"""
The spool directory and its on-disk format (docs/queue.md):

    queue/tmp/ID        a message being received; never acknowledged
    queue/msg/ID        the message, with our trace headers, fsync'd
    queue/env/ID.json   envelope and per-recipient delivery state
    queue/ctl/N.json    a request from `mailsrv queue` to the runner

An entry is in the queue exactly when its C{env/ID.json} exists; the
envelope is always written after its message file, by write-fsync-rename.
"""

import io
import json
import os
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mailsrv.store.delivery import fsync_directory

PENDING = "pending"
DEFERRED = "deferred"
DELIVERED = "delivered"
FAILED = "failed"

# The directories of a spool, made when it is opened.
SPOOL_DIRECTORIES = ("tmp", "msg", "env", "ctl")


class QueueIds:
    """
    Queue ids: 13 hex digits of a microsecond tick, then 5 hex digits of
    this process's tag (18 upper-case hex digits, as file names).

    The tick is the clock's microseconds since the epoch, but never less
    than the previous id's plus one: ids made in one microsecond, or after
    the clock stepped back, still sort by arrival within the process. The
    tag, 20 random bits drawn once per process (again after a fork), keeps
    two processes that use one tick apart. The bits need not be secret
    (the id is shown to the client).
    """

    def __init__(self, now=time.time_ns, tag=None):
        """
        @param now: the clock, in nanoseconds since the epoch.
        @param tag: the process's 20 bits; random when L{None}.
        """
        self._now = now
        self._tag = random.getrandbits(20) if tag is None else tag
        self._last = 0
        self._lock = threading.Lock()  # journal copies get ids in threads

    def next(self):
        with self._lock:
            self._last = max(self._last + 1, self._now() // 1000)
            return f"{self._last:013X}{self._tag:05X}"

    def new_tag(self):
        """In a forked child: its own tag, so parent and child never clash."""
        self._tag = random.getrandbits(20)


_queue_ids = QueueIds()
os.register_at_fork(after_in_child=_queue_ids.new_tag)


def new_queue_id():
    """The next queue id of this process (L{QueueIds})."""
    return _queue_ids.next()


@dataclass
class RecipientState:
    address: str
    state: str = PENDING
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    warned: bool = False  # a "delayed" DSN was sent


@dataclass
class Envelope:
    """
    @ivar sender: the MAIL FROM address, "" for the null sender.
    @ivar bounce: "" for a received message; "dsn" for a bounce we made,
        "postmaster" for the postmaster's copy of a bounce that failed
        (mailsrv/queue/bounce.py).
    @ivar held: not delivered until released (C{mailsrv queue hold}).
    """

    id: str
    sender: str
    recipients: list
    created: float = field(default_factory=time.time)
    client_ip: str = ""
    helo: str = ""
    bounce: str = ""
    held: bool = False

    def to_json(self):
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        data = json.loads(text)
        data["recipients"] = [RecipientState(**r) for r in data["recipients"]]
        return cls(**data)

    def pending(self):
        """Recipients still to be delivered (pending or deferred)."""
        return [r for r in self.recipients if r.state in (PENDING, DEFERRED)]


class IncomingMessage:
    """
    A message being received. A small one is held in memory and written,
    with its fsync, at commit, off the reactor thread (creating a file costs
    about as much as the rest of a 4 KB message's handling); one that grows
    past L{IN_MEMORY} goes to its file as it arrives (the page cache takes
    the writes).
    """

    IN_MEMORY = 256 * 1024

    def __init__(self, spool, queue_id):
        self.spool = spool
        self.queue_id = queue_id
        self._path = None
        self.size = 0
        self._held = []
        self._file = None

    @property
    def path(self):
        """C{tmp/ID}, made when first needed: off the reactor thread for a small message."""
        if self._path is None:
            self._path = self.spool.tmp / self.queue_id
        return self._path

    def write(self, data):
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._held.append(data)
        if self.size > self.IN_MEMORY:
            self._spill()

    def _spill(self):
        self._file = open(self.path, "xb", buffering=1 << 16)
        self._file.write(b"".join(self._held))
        self._held = []

    @property
    def in_memory(self):
        """Whether every byte is still held here (nothing on disk yet)."""
        return self._file is None

    def reader(self):
        """
        The bytes written so far, as a binary file to read (call off the
        reactor thread unless L{in_memory}: a big message is on disk).
        """
        if self._file is None:
            return io.BytesIO(b"".join(self._held))
        self._file.flush()
        return open(self.path, "rb")

    def finish(self):
        """Write what is held, flush and fsync (call off the reactor thread)."""
        if self._file is None:
            self._spill()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def abort(self):
        """
        Forget the message: nothing of it stays on disk. Closing flushes
        the last buffered bytes, which a full disk refuses: the file goes
        all the same (the caller is already handling the failure).
        """
        self._held = []
        if self._file is None:
            return
        try:
            self._file.close()
        except OSError:
            pass
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class Spool:
    def __init__(self, root):
        self.root = Path(root)
        self.tmp, self.msg, self.env, self.ctl = (self.root / d for d in SPOOL_DIRECTORIES)
        for directory in (self.tmp, self.msg, self.env, self.ctl):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def recover(self, before=None):
        """
        At start-up, remove what was never acknowledged: messages still in
        tmp/ and message files without an envelope.

        @param before: a time (seconds since the epoch): only files last
            written before it go, so that recovery in a thread never takes a
            file this process has begun meanwhile (a bounce, a message that
            came in as the listeners started); L{None}: every such file.
        @return: how many files were removed.
        """
        removed = 0
        queued = {p.name[: -len(".json")] for p in self.env.glob("*.json")}
        stale = [path for path in self.tmp.iterdir()]
        stale += [path for path in self.msg.iterdir() if path.name not in queued]
        for path in stale:
            removed += _remove_older(path, before)
        for path in [*self.env.glob(".*.tmp"), *self.ctl.glob(".*.tmp")]:
            _remove_older(path, before)
        return removed

    def incoming(self):
        return IncomingMessage(self, new_queue_id())

    def message_path(self, queue_id):
        return self.msg / queue_id

    def enqueue(self, incoming, envelope):
        """
        Move a finished (fsync'd) incoming message into the queue with its
        envelope. Call off the reactor thread.
        """
        os.rename(incoming.path, self.message_path(envelope.id))
        fsync_directory(self.msg)
        self.save(envelope)

    def save(self, envelope):
        """Write an envelope durably (write, fsync, rename, fsync directory)."""
        final = self.env / f"{envelope.id}.json"
        temporary = self.env / f".{envelope.id}.tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(envelope.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.rename(temporary, final)
        fsync_directory(self.env)

    def load(self, queue_id):
        return Envelope.from_json((self.env / f"{queue_id}.json").read_text("utf-8"))

    def ids(self):
        return sorted(p.name[: -len(".json")] for p in self.env.glob("*.json"))

    def remove(self, queue_id):
        """Take an entry out of the queue: the envelope first, then the data."""
        (self.env / f"{queue_id}.json").unlink()
        fsync_directory(self.env)
        try:
            self.message_path(queue_id).unlink()
        except FileNotFoundError:
            pass

    def adopt(self, other):
        """
        Move every entry of another node's spool (C{other}, a L{Spool} whose
        node is dead and whose lock the caller holds) into this one. No
        moment of a crash loses an entry or gives it to both: the message
        is linked here, then the envelope renamed here (the entry is now
        ours: the other's start removes its leftover message), then the
        other's link removed. Call off the reactor thread.

        @return: the ids moved.
        """
        moved = []
        for queue_id in other.ids():
            try:
                os.link(other.message_path(queue_id), self.message_path(queue_id))
            except FileExistsError:
                pass  # linked before a crash: the same file (ids never repeat)
            except FileNotFoundError:
                continue  # an envelope without a message: its own start drops it
            fsync_directory(self.msg)
            os.rename(other.env / f"{queue_id}.json", self.env / f"{queue_id}.json")
            fsync_directory(self.env)
            fsync_directory(other.env)
            other.message_path(queue_id).unlink()
            moved.append(queue_id)
        fsync_directory(other.msg)
        return moved

    # Requests from `mailsrv queue` to the running server's queue runner,
    # which alone writes envelopes while it runs (docs/queue.md).

    def request(self, action, queue_id=""):
        """
        Ask the runner to act (write, fsync, rename).

        @return: the request's path; it is gone once the runner has acted.
        """
        name = f"{time.time_ns()}-{random.getrandbits(20):05x}"
        temporary, final = self.ctl / f".{name}.tmp", self.ctl / f"{name}.json"
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump({"action": action, "id": queue_id}, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temporary, final)
        return final

    def requests(self):
        """The waiting requests, oldest first: C{[(path, action, id)]}."""
        found = []
        for path in sorted(self.ctl.glob("*.json")):
            try:
                data = json.loads(path.read_text("utf-8"))
                found.append((path, data["action"], data["id"]))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError):
                found.append((path, "", ""))  # unreadable: dropped by the runner
        return found


def _remove_older(path, before):
    """Remove C{path} if it was last written before C{before} (any time: L{None}); 1 if so."""
    try:
        if before is not None and path.stat().st_mtime >= before:
            return 0
        path.unlink()
    except FileNotFoundError:  # (finished and moved on meanwhile)
        return 0
    return 1
