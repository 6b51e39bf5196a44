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

A user whose hash login refuses (L{mailsrv.directory.passwords.hash_problem}:
an unsafe or unknown scheme) is kept, so that their mail is still
delivered; the server logs them at start-up and check-config names them.

Writes go through a temporary file in the same directory, fsync'd, renamed
over the file, then the directory fsync'd: the server never reads half a
file, and a failed write leaves the old one whole. The server itself
writes one thing: the argon2id hash of a user who logged in with an older
hash (L{UserDB.rehash}), changing only that line.
"""

import threading

from twisted.logger import Logger

from mailsrv.address import AddressError, normalise, parse_mailbox
from mailsrv.directory.listfile import ListFileError, WatchedFile, read_lines, replace_list_file
from mailsrv.directory.passwords import hash_password, hash_problem

log = Logger()


def _user_lines(path, problems):
    """
    Yield C{(lineno, normalised address, stored hash)} for each line the
    reader takes, appending a L{ListFileError} to C{problems} for each
    line it skips.
    """
    for lineno, text in read_lines(path):
        address, sep, stored = text.partition(":")
        try:
            if not sep or not stored:
                raise AddressError("expected address:hash")
            if not stored.isascii() or not stored.isprintable() or " " in stored:
                raise AddressError(f"{address.strip()!r}: the hash is not printable ASCII")
            yield lineno, parse_mailbox(address).normalised, stored
        except AddressError as e:
            problems.append(ListFileError(path, lineno, str(e)))


def read_users(path):
    """
    @return: C{(users, problems)}: a dict of normalised address to stored
        hash, and a L{ListFileError} for each line skipped.
    """
    problems = []
    users = {address: stored for _, address, stored in _user_lines(path, problems)}
    return users, problems


def refused_hashes(path):
    """
    A L{ListFileError} (file, line, user, why) for each user whose stored
    hash never verifies: check-config's and C{lists check}'s warnings.
    """
    return [ListFileError(path, lineno, problem)
            for lineno, address, stored in _user_lines(path, [])
            if (problem := hash_problem(address, stored)) is not None]


def _read_for_server(path):
    """
    L{read_users} and the problem of each user's hash, by address: the
    server's reader, which a re-read of a big file runs in a thread.
    """
    users, problems = read_users(path)
    refused = {address: problem for address, stored in users.items()
               if (problem := hash_problem(address, stored)) is not None}
    return users, problems, refused


def replace_hash(path, address, old, new):
    """
    Replace C{address}'s stored hash C{old} with C{new}, leaving every
    other line as it was (comments, and lines the reader skips), whole or
    not at all.

    @return: whether it did: not when the file no longer holds C{old} for
        C{address} (the admin changed or deleted it meanwhile, and wins).
    """
    found = None
    for lineno, name, stored in _user_lines(path, []):
        if name == address:
            found = lineno, stored  # (the last line counts, as for the reader)
    if found is None or found[1] != old:
        return False
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        lines = f.readlines()
    name, colon, rest = lines[found[0] - 1].partition(":")
    lines[found[0] - 1] = name + colon + rest.replace(old, new, 1)
    replace_list_file(path, "".join(lines))
    return True


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
        self._refused = {}
        self._rewriting = threading.Lock()
        self._file = WatchedFile(path, _read_for_server, clock)
        self._users()  # (start-up's log lines)

    def _users(self):
        """
        The users as last read. The lines a new read skipped, and the
        users with a hash login refuses (once each), are logged here, on
        the reactor thread (a re-read runs in a thread).
        """
        users, problems, refused = self._file.get()
        if problems is not self.problems:
            self.problems = problems
            for problem in problems:
                log.warn("users file: skipped {problem}", problem=problem)
            for address in sorted(refused.keys() - self._refused.keys()):
                log.warn("users file {path}: {problem}", path=self.path,
                         problem=refused[address])
            self._refused = refused
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

    def set_hashes(self, hashes):
        """
        Add or replace users with hashes made elsewhere (C{mailsrv import
        users}; the caller checked each with L{hash_problem}).

        @param hashes: normalised address to stored hash.
        @return: the bad lines this rewrite drops (L{ListFileError}s).
        """
        users, dropped = read_users(self.path)
        users.update(hashes)
        self._write(users)
        return dropped

    def delete(self, address):
        """@return: the bad lines this rewrite drops (L{ListFileError}s)."""
        users, dropped = read_users(self.path)
        del users[normalise(address)]
        self._write(users)
        return dropped

    def rehash(self, address, password, stored):
        """
        In a thread, after C{password} proved right for C{stored}: store
        its argon2id hash instead (L{replace_hash}), then read the file
        again. One rewrite at a time.

        @return: the new hash, or L{None} if the file no longer holds
            C{stored} for C{address}.
        @raise OSError: the file could not be rewritten; it is unchanged.
        """
        new = hash_password(password)
        with self._rewriting:
            if not replace_hash(self.path, address, stored, new):
                return None
            self._file.reload()
        return new

    def _write(self, users):
        """Replace the file atomically (L{replace_list_file}), then read it again."""
        replace_list_file(self.path, "".join(f"{address}:{users[address]}\n"
                                             for address in sorted(users)))
        self._file.reload()
