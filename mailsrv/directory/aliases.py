"""
The aliases file: C{alias@domain: member, member, ...}. An alias with several
members is a list. A bare local part (C{postmaster: alice@example.test})
applies in every local domain.
"""

from mailsrv.directory.listfile import ListFileError, WatchedFile, read_lines
from mailsrv.directory.users import normalise_address, valid_address


def parse_aliases(path):
    aliases = {}
    for lineno, text in read_lines(path):
        name, sep, members = text.partition(":")
        name = normalise_address(name)
        targets = [normalise_address(m) for m in members.replace(";", ",").split(",")]
        targets = [t for t in targets if t]
        if not sep or not name or not targets:
            raise ListFileError(path, lineno, "expected 'alias: address, address'")
        for target in targets:
            if not valid_address(target):
                raise ListFileError(path, lineno, f"bad member address {target!r}")
        aliases[name] = tuple(targets)
    return aliases


class AliasMap:
    def __init__(self, path, clock=None):
        self.path = path
        self._file = WatchedFile(path, parse_aliases, clock)

    def members(self, address):
        """The members of C{address}, or L{None} if it is not an alias."""
        aliases = self._file.get()
        address = normalise_address(address)
        found = aliases.get(address)
        if found is None:
            found = aliases.get(address.rpartition("@")[0])
        return found

    def aliases_of(self, address):
        """The aliases whose members include C{address} (not recursive)."""
        address = normalise_address(address)
        return sorted(a for a, m in self._file.get().items() if address in m)
