"""
The users file: one C{address:hash} line per user, mode 0600.

The server keeps the parsed file in memory and re-reads it when it changes
(C{mailsrv user add} works while the server runs). Writes go through a
temporary file and a rename so the server never reads half a file.
"""

import os
import tempfile

from mailsrv.directory.listfile import ListFileError, WatchedFile, read_lines
from mailsrv.directory.passwords import hash_password


def normalise_address(address):
    """C{Alice@Example.TEST} -> C{alice@example.test}: our addresses ignore case."""
    return address.strip().lower()


def valid_address(address):
    local, at, domain = address.rpartition("@")
    return bool(
        at and local and domain and "." in domain.strip(".")
        and not any(c in address for c in " \t:<>,;\"\\")
    )


def parse_users(path):
    users = {}
    for lineno, text in read_lines(path):
        address, sep, stored = text.partition(":")
        address = normalise_address(address)
        if not sep or not stored or not valid_address(address):
            raise ListFileError(path, lineno, "expected address:hash")
        users[address] = stored
    return users


class UserDB:
    """
    The users file, read into memory.
    """

    def __init__(self, path, clock=None):
        self.path = path
        self._file = WatchedFile(path, parse_users, clock)

    def hash_for(self, address):
        """The stored hash, or L{None} if there is no such user."""
        return self._file.get().get(normalise_address(address))

    def exists(self, address):
        return normalise_address(address) in self._file.get()

    def addresses(self):
        return sorted(self._file.get())

    # Changes, used by the `mailsrv user` command.

    def set_password(self, address, password):
        users = dict(parse_users(self.path))
        users[normalise_address(address)] = hash_password(password)
        self._write(users)

    def delete(self, address):
        users = dict(parse_users(self.path))
        del users[normalise_address(address)]
        self._write(users)

    def _write(self, users):
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".users.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for address in sorted(users):
                    f.write(f"{address}:{users[address]}\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        self._file.reload()
