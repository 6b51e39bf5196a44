"""
Lists of senders, re-read on change: the kill list (kill.lst, refused at
MAIL FROM) and the sender whitelist (whitelist.txt, skips the anti-spam
filters). One or more entries a line (separated like IP lists), C{#}
comments: C{userid@host} is one address, C{@host} every address at exactly
that host; in the whitelist a bare C{host} is C{@host} too.
"""

from functools import partial

from mailsrv.address import domain_of, is_address, normalise
from mailsrv.directory.listfile import ListFileError, WatchedFile, read_lines
from mailsrv.netaddr import split_entries


def parse_senders(path, bare_hosts=False):
    """
    @param bare_hosts: whether C{host} may stand for C{@host}.
    @return: a frozenset of addresses and C{@host} entries, lower-cased.
    @raise ListFileError: naming the file, line and entry of a bad entry.
    """
    entries = set()
    for lineno, text in read_lines(path):
        for entry in split_entries(text):
            entry = normalise(entry)
            if bare_hosts and "@" not in entry:
                entry = "@" + entry
            if not is_address(entry if not entry.startswith("@") else "x" + entry):
                raise ListFileError(path, lineno, f"{entry!r}: not userid@host or @host"
                                    + (" or host" if bare_hosts else ""))
            entries.add(entry)
    return frozenset(entries)


parse_kill_list = parse_senders
parse_whitelist = partial(parse_senders, bare_hosts=True)


class SenderList:
    """
    @param parse: L{parse_kill_list} or L{parse_whitelist}.
    """

    def __init__(self, path, parse, clock):
        self._file = WatchedFile(path, parse, clock)

    def entry_for(self, sender):
        """The entry that lists C{sender}, or L{None}."""
        sender = normalise(sender)
        entries = self._file.get()
        if sender in entries:
            return sender
        domain = "@" + domain_of(sender)
        return domain if domain in entries else None
