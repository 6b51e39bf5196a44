"""
The per-folder UID index file (format in docs/store.md):

    mailsrv-uidlist 1 <uidvalidity> <uidnext>
    <uid> <internaldate> <size> <key>
    ...

Written whole to a temporary file and renamed over the old one, so a reader
sees the old or the new index, never half of one.
"""

import os

from twisted.logger import Logger

log = Logger()

MAGIC = "mailsrv-uidlist"
VERSION = "1"


class UidList:
    """
    @ivar uidvalidity: 0 until loaded or reset.
    @ivar uidnext: the UID the next message gets.
    """

    FILENAME = "mailsrv-uidlist"

    def __init__(self, path):
        self.path = path
        self.uidvalidity = 0
        self.uidnext = 1

    def exists(self):
        return os.path.exists(self.path)

    def load(self):
        """
        Read the file.

        @return: a dict of key -> C{(uid, internaldate, size)}, or L{None}
            when there is no usable file (missing, or damaged: logged).
        """
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            return self._parse(text)
        except ValueError as e:
            log.warn("{path}: damaged UID index ({error}); rebuilding it",
                     path=str(self.path), error=e)
            return None

    def _parse(self, text):
        lines = text.split("\n")
        if not text.endswith("\n"):
            raise ValueError("truncated")
        header = lines[0].split()
        if len(header) != 4 or header[0] != MAGIC or header[1] != VERSION:
            raise ValueError("unknown header")
        uidvalidity, uidnext = int(header[2]), int(header[3])
        entries = {}
        for line in lines[1:-1]:
            uid, internaldate, size, key = line.split(" ", 3)
            uid = int(uid)
            if not 0 < uid < uidnext:
                raise ValueError(f"UID {uid} out of range")
            entries[key] = (uid, int(internaldate), int(size))
        if uidvalidity <= 0:
            raise ValueError("bad UIDVALIDITY")
        self.uidvalidity, self.uidnext = uidvalidity, uidnext
        return entries

    def reset(self, uidvalidity):
        """Start again: a new UIDVALIDITY, UIDs from 1."""
        self.uidvalidity = uidvalidity
        self.uidnext = 1

    def allocate(self):
        uid = self.uidnext
        self.uidnext += 1
        return uid

    def save(self, entries):
        """
        Replace the file.

        @param entries: C{(uid, internaldate, size, key)} tuples by UID.
        """
        lines = [f"{MAGIC} {VERSION} {self.uidvalidity} {self.uidnext}\n"]
        lines.extend(f"{u} {d} {s} {k}\n" for u, d, s, k in entries)
        temporary = f"{self.path}.tmp"
        with open(temporary, "w", encoding="utf-8") as f:
            f.write("".join(lines))
        os.replace(temporary, self.path)
