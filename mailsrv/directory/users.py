"""
The users file: one C{address:hash} line per user, mode 0600.

The server keeps the parsed file in memory and re-reads it when it changes
(C{mailsrv user add} works while the server runs). Every address is a
mailbox name by L{mailsrv.address.parse_mailbox}, since it becomes the
directory C{mail/DOMAIN/LOCAL/}.

A line the reader cannot take (written by an older version, or by hand) is
skipped and logged with its file and line number: one bad line must not
keep every other user's mail out. C{mailsrv lists check} and
C{check-config} report it, and the next write by C{mailsrv user} drops it.

Writes go through a temporary file in the same directory, fsync'd, renamed
over the file, then the directory fsync'd: the server never reads half a
file, and a failed write leaves the old one whole.
"""

from twisted.logger import Logger

from mailsrv.address import AddressError, normalise, parse_mailbox
from mailsrv.directory.listfile import ListFileError, WatchedFile, read_lines, replace_list_file
from mailsrv.directory.passwords import hash_password

log = Logger()


def read_users(path):
    """
    @return: C{(users, problems)}: a dict of normalised address to stored
        hash, and a L{ListFileError} for each line skipped.
    """
    users, problems = {}, []
    for lineno, text in read_lines(path):
        address, sep, stored = text.partition(":")
        try:
            if not sep or not stored:
                raise AddressError("expected address:hash")
            if not stored.isascii() or not stored.isprintable() or " " in stored:
                raise AddressError(f"{address.strip()!r}: the hash is not printable ASCII")
            users[parse_mailbox(address).normalised] = stored
        except AddressError as e:
            problems.append(ListFileError(path, lineno, str(e)))
    return users, problems


def parse_users(path):
    """The users of a file with no bad line (for the admin's checks)."""
    users, problems = read_users(path)
    if problems:
        raise problems[0]
    return users


class UserDB:
    """
    The users file, read into memory.

    @ivar problems: the lines skipped at the last read (L{ListFileError}s).
    """

    def __init__(self, path, clock):
        self.path = path
        self.problems = []
        self._file = WatchedFile(path, read_users, clock)
        self._users()  # (start-up's log lines)

    def _users(self):
        """
        The users as last read. The lines a new read skipped are logged
        here, on the reactor thread (a re-read runs in a thread).
        """
        users, problems = self._file.get()
        if problems is not self.problems:
            self.problems = problems
            for problem in problems:
                log.warn("users file: skipped {problem}", problem=problem)
        return users

    def hash_for(self, address):
        """The stored hash, or L{None} if there is no such user."""
        return self._users().get(normalise(address))

    def exists(self, address):
        return normalise(address) in self._users()

    def addresses(self):
        return sorted(self._users())

    # Changes, used by the `mailsrv user` command.

    def set_password(self, address, password):
        """
        @return: the bad lines this rewrite drops (L{ListFileError}s).
        @raise AddressError: C{address} is no mailbox name.
        """
        address = parse_mailbox(address).normalised
        users, dropped = read_users(self.path)
        users[address] = hash_password(password)
        self._write(users)
        return dropped

    def delete(self, address):
        """@return: the bad lines this rewrite drops (L{ListFileError}s)."""
        users, dropped = read_users(self.path)
        del users[normalise(address)]
        self._write(users)
        return dropped

    def _write(self, users):
        """Replace the file atomically (L{replace_list_file}), then read it again."""
        replace_list_file(self.path, "".join(f"{address}:{users[address]}\n"
                                             for address in sorted(users)))
        self._file.reload()
