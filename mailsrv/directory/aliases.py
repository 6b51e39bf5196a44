"""
The aliases file: C{alias@domain: member, member, ...}. An alias with several
members is a list. A bare local part (C{postmaster: alice@example.test})
applies in every local domain.
"""

from mailsrv.address import AddressError, check_local_part, local_part_of, normalise, parse
from mailsrv.directory.listfile import ListFileError, WatchedFile, read_lines


def parse_aliases(path):
    """
    @return: a dict of alias (normalised address, or bare local part) to
        its members (normalised addresses), in file order.
    @raise ListFileError: naming the file and line of a bad entry.
    """
    aliases = {}
    for lineno, text in read_lines(path):
        name, sep, members = text.partition(":")
        targets = [m for m in members.replace(";", ",").split(",") if m.strip()]
        if not sep or not name.strip() or not targets:
            raise ListFileError(path, lineno, "expected 'alias: address, address'")
        try:
            aliases[_alias_name(name)] = tuple(parse(t).normalised for t in targets)
        except AddressError as e:
            raise ListFileError(path, lineno, str(e))
    return aliases


def _alias_name(text):
    """C{Team@Example.TEST} -> C{team@example.test}; a bare C{Postmaster} -> C{postmaster}."""
    if "@" in text:
        return parse(text).normalised
    check_local_part(text.strip())
    return normalise(text)


class AliasMap:
    def __init__(self, path, clock):
        self.path = path
        self._file = WatchedFile(path, parse_aliases, clock)

    def members(self, address):
        """The members of C{address}, or L{None} if it is not an alias."""
        aliases = self._file.get()
        address = normalise(address)
        found = aliases.get(address)
        if found is None:
            found = aliases.get(local_part_of(address))
        return found

    def names(self):
        """Every alias as the file names it (bare local parts included)."""
        return list(self._file.get())

    def aliases_of(self, address):
        """The aliases whose members include C{address} (not recursive)."""
        address = normalise(address)
        return sorted(a for a, m in self._file.get().items() if address in m)
