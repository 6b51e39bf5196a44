"""
The kill list (kill.lst): senders refused at MAIL FROM. One or more entries
a line (separated like IP lists), C{#} comments: C{userid@host} refuses one
address, C{@host} every address at exactly that host. Re-read on change.
"""

from mailsrv.directory.listfile import ListFileError, WatchedFile, read_lines
from mailsrv.directory.users import normalise_address, valid_address
from mailsrv.netaddr import split_entries


def parse_kill_list(path):
    """
    @return: a frozenset of addresses and C{@host} entries, lower-cased.
    @raise ListFileError: naming the file, line and entry of a bad entry.
    """
    entries = set()
    for lineno, text in read_lines(path):
        for entry in split_entries(text):
            entry = normalise_address(entry)
            if not valid_address(entry if not entry.startswith("@") else "x" + entry):
                raise ListFileError(path, lineno, f"{entry!r}: not userid@host or @host")
            entries.add(entry)
    return frozenset(entries)


class KillList:
    def __init__(self, path, clock=None):
        self._file = WatchedFile(path, parse_kill_list, clock)

    def entry_for(self, sender):
        """The entry that lists C{sender}, or L{None}."""
        sender = normalise_address(sender)
        entries = self._file.get()
        if sender in entries:
            return sender
        domain = "@" + sender.rpartition("@")[2].rstrip(".")
        return domain if domain in entries else None
