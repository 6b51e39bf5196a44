"""
Mail addresses: one type and one validator for the whole program (SMTP
paths, the `mailsrv user` command, the users and aliases files).

Two levels:

  - L{parse}: any address RFC 5321 allows in a path (C{local@domain}, the
    local part a dot-atom or a quoted string, the domain host labels or an
    address literal). Aliases, their remote members, senders.
  - L{parse_mailbox}: an address that names one of our mailboxes. Its local
    part and domain become directory names (C{mail/DOMAIN/LOCAL/}), so they
    are held to a small safe set, as Dovecot's C{auth_username_chars} does:
    lower-case letters, digits, C{.}, C{-} and C{_}, starting with a letter
    or digit, no C{..}, at most 64 characters. No C{/}, no leading dot, no
    control character, no C{+} (it separates the detail in C{alice+tag}).

Addresses ignore case: L{Address.normalised} is the lower-cased form every
lookup and every file uses.
"""

import re
from dataclasses import dataclass

# RFC 5321 4.5.3.1: local part 64 octets, domain 255, a path 256 with its
# angle brackets.
MAX_LOCAL = 64
MAX_DOMAIN = 255
MAX_ADDRESS = 254

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LOCAL_PART = re.compile(rf"(?:{_ATEXT}(?:\.{_ATEXT})*|{_QUOTED})\Z")
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*\Z")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z")
_LITERAL = re.compile(r"\[[\x21-\x5a\x5e-\x7e]+\]\Z")
_MAILBOX_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*(?:\.[a-z0-9_-]+)*\Z")

MAILBOX_RULE = ("a mailbox name may hold only letters, digits, '.', '-' and '_', "
                f"must start with a letter or digit, have no '..', and at most "
                f"{MAX_LOCAL} characters")


class AddressError(ValueError):
    """What is wrong with an address, in words fit for an admin or a log line."""


@dataclass(frozen=True)
class Address:
    """
    A syntactically valid address.

    @ivar local: the local part, as written.
    @ivar domain: the domain, as written (without a trailing dot).
    """

    local: str
    domain: str

    def __str__(self):
        return f"{self.local}@{self.domain}"

    @property
    def normalised(self):
        """C{Alice@Example.TEST} -> C{alice@example.test}: our addresses ignore case."""
        return str(self).lower()


def normalise(text):
    """
    The lookup form of any string: stripped and lower-cased. For keys that
    may not be valid addresses (a login name as typed); L{parse} validates.
    """
    return text.strip().lower()


def domain_of(text):
    """
    The domain of an address as we compare domains: lower case, without
    the root's trailing dot (C{bob@Example.TEST.} -> C{example.test}); no
    validation, for addresses that have passed L{parse} or SMTP's parser.
    """
    return text.rpartition("@")[2].lower().rstrip(".")


def local_part_of(text):
    """The local part of an address as it is written (C{"a@b"@c.test} -> C{"a@b"})."""
    return text.rpartition("@")[0]


def parse(text):
    """
    C{" Alice@Example.TEST "} -> C{Address("Alice", "Example.TEST")}.

    @raise AddressError: saying what is wrong.
    """
    if not isinstance(text, str):
        raise AddressError(f"{text!r} is not text")
    text = text.strip()
    if not text:
        raise AddressError("empty address")
    if not text.isascii() or not text.isprintable():
        raise AddressError(f"{text!r}: control or non-ASCII characters in an address")
    if len(text) > MAX_ADDRESS:
        raise AddressError(f"{text[:40]!r}...: longer than {MAX_ADDRESS} characters")
    local, at, domain = text.rpartition("@")
    if not at:
        raise AddressError(f"{text!r} is not an address like user@example.test")
    check_local_part(local, text)
    if domain.endswith("."):  # the root: example.test. is example.test
        domain = domain[:-1]
    if not domain or len(domain) > MAX_DOMAIN or not (
            _HOST.match(domain) or _LITERAL.match(domain)):
        raise AddressError(f"{text!r}: bad domain {domain!r}")
    return Address(local, domain)


def check_local_part(local, shown=None):
    """
    Raise L{AddressError} unless C{local} is an RFC 5321 local part (the
    aliases file's bare C{postmaster:} names are checked with it).
    """
    shown = local if shown is None else shown
    if not local:
        raise AddressError(f"{shown!r}: empty local part")
    if len(local) > MAX_LOCAL:
        raise AddressError(f"{shown!r}: local part longer than {MAX_LOCAL} characters")
    if not _LOCAL_PART.match(local):
        raise AddressError(f"{shown!r}: bad local part {local!r}")


def is_address(text):
    """Whether L{parse} takes C{text}."""
    try:
        parse(text)
    except AddressError:
        return False
    return True


def is_host_name(text):
    """Whether C{text} is a host name (letters, digits and hyphens in dotted labels)."""
    return len(text) <= MAX_DOMAIN and bool(_HOST.match(text))


def is_bare_name(text):
    """Whether C{text} is a dot-atom without a domain (C{<alice>}, C{postmaster})."""
    return bool(_DOT_ATOM.match(text))


def mailbox_problem(address):
    """Why L{Address} C{address} cannot name a mailbox, or L{None}."""
    local = address.local.lower()
    if len(local) > MAX_LOCAL or not _MAILBOX_NAME.match(local):
        return f"{str(address)!r}: {MAILBOX_RULE}"
    if not _HOST.match(address.domain):
        return f"{str(address)!r}: a mailbox's domain must be a host name"
    return None


def parse_mailbox(text):
    """
    L{parse}, and the local part and domain must be safe as directory
    names (see the module docstring).

    @raise AddressError: saying what is wrong.
    """
    address = parse(text)
    problem = mailbox_problem(address)
    if problem is not None:
        raise AddressError(problem)
    return address
