"""
The Maildir file-name codec: IMAP system flags as the info letters of a
name (C{<key>:2,<letters>}), and what a name's key tells (its size, its
CRLF size, its arrival order). See docs/store.md.
"""

import functools
import re

# IMAP system flag <-> Maildir info letter (the letters stay sorted in names).
FLAG_LETTERS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
LETTER_FLAGS = {letter: flag for flag, letter in FLAG_LETTERS.items()}
PERMANENT_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
# atom-specials of RFC 3501 that may not be in a keyword ("]" included)
KEYWORD_SPECIALS = frozenset('(){ %*"\\]')

INFO_SEPARATOR = ":2,"


def split_name(name):
    """C{"key:2,FS"} -> C{("key", ":2,FS")}: a key never holds C{":"}."""
    key, sep, rest = name.partition(":")
    return key, sep + rest


def info_letters(suffix):
    """The letters of a C{":2,<letters>"} suffix; other suffixes have none."""
    return suffix[3:] if suffix.startswith(INFO_SEPARATOR) else ""


@functools.lru_cache(maxsize=256)
def flags_of(letters):
    return frozenset(LETTER_FLAGS[c] for c in letters if c in LETTER_FLAGS)


@functools.lru_cache(maxsize=256)
def seen_suffix(suffix):
    """Whether a name with this suffix is \\Seen."""
    return "S" in info_letters(suffix)


@functools.lru_cache(maxsize=256)
def system_letters(letters):
    return "".join(sorted(c for c in letters if c in LETTER_FLAGS))


def is_keyword(flag):
    """An IMAP keyword (RFC 3501 flag-keyword): an atom, not a system flag."""
    return bool(flag) and not flag.startswith("\\") and not (
        set(flag) & KEYWORD_SPECIALS) and flag.isascii() and flag.isprintable()


def size_from_key(key, field=",S="):
    """The C{,S=<size>} (or other C{field}) of a Maildir name, or L{None}."""
    start = key.find(field)
    if start < 0:
        return None
    end = key.find(",", start + 3)
    digits = key[start + 3:] if end < 0 else key[start + 3:end]
    return int(digits) if digits.isdigit() else None


# The names mailsrv gives (L{unique_name}): it writes only CRLF files.
_OWN_NAME = re.compile(r"\d+\.M\d+P\d+Q\d+\.")


def wire_from_key(key, size):
    """
    The size with CRLF line ends of the file C{key} of C{size} bytes, as
    far as its name tells (docs/store.md): C{,W=} (Dovecot's), else
    C{size} for a name mailsrv gave, else L{None} (the file decides).
    """
    wire = size_from_key(key, ",W=")
    if wire is not None:
        return wire
    return size if _OWN_NAME.match(key) else None


def arrival_order(name):
    """
    Sort key putting names in arrival order: C{<seconds>.M<usec>...} names
    compare by their numbers (C{"M9"} is before C{"M10"}), others by text.
    """
    head, _, rest = name.partition(".")
    micro = ""
    if rest[:1] == "M":
        end = rest.find("P")
        micro = rest[1:end] if end > 0 else rest[1:]
    return (
        int(head) if head.isdigit() else 0,
        int(micro) if micro.isdigit() else 0,
        name,
    )
