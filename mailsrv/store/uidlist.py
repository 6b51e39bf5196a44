"""
The per-folder UID index file (format in docs/store.md):

    mailsrv-uidlist 2 <uidvalidity> <uidnext> <highestmodseq>
    <uid> <internaldate> <size> <modseq> <key>:<letters>[ <keyword>...]
    ...
    =<uid> <modseq> :<letters>[ <keyword>...]     (a flag change)
    -<modseq>:<uid>[ <uid>...]                    (messages removed)

The first two kinds of lines are a snapshot, written whole to a temporary
file and renamed over the old one, so a reader sees the old or the new
snapshot, never half of one. Changes after it are appended as lines (new
messages as entry lines, flag changes as C{=} lines, removals as C{-}
lines) until there are enough of them to be worth a new snapshot: a flag
change in a folder of 50,000 messages writes one line, not the folder.
"""

import os

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


class UidList:
    """
    @ivar uidvalidity: 0 until loaded or reset.
    @ivar uidnext: the UID the next message gets.
    @ivar highestmodseq: the highest MODSEQ handed out (RFC 7162).
    @ivar appended: change lines written since the last snapshot.
    @ivar snapshot_due: whether the next write must be a snapshot (no file
        yet, a damaged one, or a reset).
    """

    FILENAME = "mailsrv-uidlist"

    def __init__(self, path):
        self.path = path
        self.uidvalidity = 0
        self.uidnext = 1
        self.highestmodseq = 0
        self.appended = 0
        self.snapshot_due = True

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
            with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            return self._parse(text)
        except (ValueError, KeyError) as e:
            log.warn("{path}: damaged UID index ({error}); rebuilding it",
                     path=str(self.path), error=e)
            return None

    def _parse(self, text):
        lines = text.split("\n")
        # an append cut short by a crash: its change is lost, the rest holds
        # (a message it added is in cur/ but unknown: see Folder._load)
        lines.pop()
        if not lines:
            raise ValueError("truncated")
        header = lines[0].split()
        if len(header) < 4 or header[0] != MAGIC or header[1] not in READABLE_VERSIONS:
            raise ValueError("unknown header")
        version = header[1]
        uidvalidity, uidnext = int(header[2]), int(header[3])
        highest = int(header[4]) if version == "2" else 1
        if uidvalidity <= 0:
            raise ValueError("bad UIDVALIDITY")
        entries = {}  # key -> (uid, internaldate, size, modseq, letters, keywords)
        keys = {}  # uid -> key
        changes = 0
        for line in lines[1:]:
            first = line[:1]
            if first == "=":
                changes += 1
                uid, modseq, flags = line[1:].split(" ", 2)
                key = keys[int(uid)]
                modseq = int(modseq)
                entries[key] = entries[key][:3] + (modseq,) + _parse_flag_field(flags)
            elif first == "-":
                changes += 1
                modseq, _, uids = line[1:].partition(":")
                modseq = int(modseq)
                for uid in uids.split():
                    del entries[keys.pop(int(uid))]
            else:
                if version == "1":
                    uid, internaldate, size, key = line.split(" ", 3)
                    modseq, letters, keywords = 1, None, ()
                else:
                    uid, internaldate, size, modseq, rest = line.split(" ", 4)
                    key, _, flags = rest.partition(":")
                    modseq = int(modseq)
                    letters, keywords = _parse_flag_field(":" + flags)
                uid = int(uid)
                if uid >= uidnext:
                    uidnext = uid + 1
                entries[key] = (uid, int(internaldate), int(size), modseq, letters,
                                keywords)
                keys[uid] = key
            if modseq > highest:
                highest = modseq
        if any(uid <= 0 for uid in keys):
            raise ValueError("UID out of range")
        self.uidvalidity, self.uidnext = uidvalidity, uidnext
        self.highestmodseq = highest
        self.appended = changes
        self.snapshot_due = version != VERSION  # no appending to an old format
        return entries

    def reset(self, uidvalidity):
        """Start again: a new UIDVALIDITY, UIDs from 1."""
        self.uidvalidity = uidvalidity
        self.uidnext = 1
        self.snapshot_due = True

    def allocate(self):
        uid = self.uidnext
        self.uidnext += 1
        return uid

    def next_modseq(self):
        self.highestmodseq += 1
        return self.highestmodseq

    def worth_a_snapshot(self, messages):
        """Whether the change lines outweigh a rewrite of C{messages} lines."""
        return self.snapshot_due or self.appended > max(1000, messages)

    def save(self, entries):
        """
        Replace the file with a snapshot.

        @param entries: C{(key, uid, internaldate, size, modseq, letters,
            keywords)} tuples in UID order.
        """
        lines = [f"{MAGIC} {VERSION} {self.uidvalidity} {self.uidnext} "
                 f"{self.highestmodseq}\n"]
        lines.extend(map(_entry_line, entries))
        temporary = f"{self.path}.tmp"
        with open(temporary, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write("".join(lines))
        os.replace(temporary, self.path)
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
        with open(self.path, "a", encoding="utf-8", errors="surrogateescape") as f:
            f.write("".join(lines))
        self.appended += len(lines)


def _entry_line(entry):
    key, uid, internaldate, size, modseq, letters, keywords = entry
    return f"{uid} {internaldate} {size} {modseq} {key}{_flag_field(letters, keywords)}\n"
