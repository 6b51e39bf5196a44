"""
Dovecot's passwd-file, read by C{mailsrv import users}: one
C{user:{SCHEME}hash:uid:gid:gecos:home:shell:extra} line per user, of
which only the first two fields matter here; C{#} comments, blank lines.
"""

from typing import NamedTuple

from mailsrv.address import parse_mailbox
from mailsrv.directory.listfile import ListFileError, read_lines
from mailsrv.directory.passwords import scheme_problem


class PasswdEntry(NamedTuple):
    lineno: int
    address: str  # normalised
    stored: str  # the hash as Dovecot keeps it, {SCHEME} prefix and all


def read_passwd_file(path, domain, is_local_domain):
    """
    @param domain: the domain of user names without one, or L{None}.
    @param is_local_domain: whether a domain is one of ours.
    @return: C{(entries, problems)}: the L{PasswdEntry}s of the good lines
        in file order, and a L{ListFileError} for each line whose address
        or hash the users file would not take (a user listed twice counts
        once, at the first line, as for Dovecot).
    @raise OSError: the file cannot be read (a missing one is empty).
    """
    entries, problems, seen = [], [], {}
    for lineno, text in read_lines(path):
        name, _, rest = text.partition(":")
        stored = rest.split(":", 1)[0]
        try:
            if "@" not in name:
                if domain is None:
                    raise ValueError(f"{name!r} has no @domain: say --domain DOMAIN")
                name = f"{name}@{domain}"
            address = parse_mailbox(name)
            if not is_local_domain(address.domain):
                raise ValueError(f"{address.normalised}: {address.domain} is not one of "
                                 "[domains] local")
            if address.normalised in seen:
                raise ValueError(f"{address.normalised} is listed already, at line "
                                 f"{seen[address.normalised]}")
            problem = scheme_problem(stored) if stored else "no password hash"
            if problem is not None:
                raise ValueError(f"{address.normalised}: {problem}")
        except ValueError as e:  # (an AddressError too)
            problems.append(ListFileError(path, lineno, str(e)))
            continue
        seen[address.normalised] = lineno
        entries.append(PasswdEntry(lineno, address.normalised, stored))
    return entries, problems
