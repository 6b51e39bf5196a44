"""
The content filters' list files as admins write them (issue 17): the
phrase list (phrase-list.txt: one phrase a line, 3-32 characters) and the
URL list (url-domain-bl.txt: one domain or IP address a line; a domain
covers its subdomains), each entry normalised the way the filters compare
it; and merging lists and word tables (`mailsrv filter merge`, IMail's
cleanlist): counts add up, duplicates go, bad entries are reported.

The filters watch the phrase and URL lists (L{watched}): start-up uses a
list's good lines and logs each bad one; an edit with a bad line is not
used, the previous contents stay and one log line says why, so a slip in
an edit never drops the entries the server was using.
"""

import ipaddress
import re

from twisted.logger import Logger

from mailsrv.directory.listfile import ListFileError, WatchedFile, read_lines
from mailsrv.policy import bayes

log = Logger()

MIN_PHRASE, MAX_PHRASE = 3, 32
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
KINDS = ("table", "phrases", "urls")


def phrase(text):
    """
    A phrase as the filter compares it: spaces collapsed, case folded.

    @raise ValueError: not 3-32 characters.
    """
    normal = " ".join(text.split()).casefold()
    if not MIN_PHRASE <= len(normal) <= MAX_PHRASE:
        raise ValueError(f"{text!r}: a phrase has {MIN_PHRASE}-{MAX_PHRASE} characters")
    return normal


def read_phrases(path):
    """
    The phrase list in file C{path}: C{(phrases in order, each once; the
    bad lines as L{ListFileError}s)}: a bad line is left out, the others
    are used (L{watched} says when).
    """
    phrases = {}
    skipped = _take_lines([path], lambda text: phrases.setdefault(phrase(text), None))
    return tuple(phrases), skipped


def read_urls(path):
    """
    The URL list in file C{path}: C{(entries, a frozenset; the bad lines as
    L{ListFileError}s)}, bad lines left out and reported as for phrases.
    """
    entries = set()
    skipped = _take_lines([path], lambda text: entries.add(url_entry(text)))
    return frozenset(entries), skipped


def watched(path, read, clock):
    """
    The L{WatchedFile} of the phrase or URL list at C{path}.

    @param read: L{read_phrases} or L{read_urls}.
    """
    return WatchedFile(path, _refusing(read), clock, first=_skipping(read))


def _skipping(read):
    """Start-up's loader: the good lines, each bad one logged."""
    def entries(path):
        found, skipped = read(path)
        for problem in skipped:
            log.warn("{problem} (left out)", problem=problem)
        return found
    return entries


def _refusing(read):
    """A re-read's loader: a bad line refuses the list (L{ListFileError})."""
    def entries(path):
        found, skipped = read(path)
        if skipped:
            raise skipped[0]
        return found
    return entries


def _take_lines(paths, take):
    """
    C{take(text)} of each line of the files C{paths}; the lines it refuses
    (C{ValueError}) are left out: returned as L{ListFileError}s.
    """
    skipped = []
    for path in paths:
        for lineno, text in read_lines(path):
            try:
                take(text)
            except ValueError as e:
                skipped.append(ListFileError(path, lineno, str(e)))
    return skipped


def url_entry(text):
    """
    A domain (lower case, IDNA, no trailing dot) or an IP address (its
    usual text form) of the URL list.

    @raise ValueError: neither.
    """
    host = text.strip().rstrip(".").lower()
    address = host.strip("[]")
    if address[:1].isdigit() or ":" in address:  # (else no IP address: no exception)
        try:
            return str(ipaddress.ip_address(address))
        except ValueError:
            pass
    if not host.isascii():  # (an ASCII name is its IDNA form: _LABEL checks the lengths)
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{text!r} is not a domain or an IP address") from None
    labels = host.split(".")
    if (len(host) > 253 or len(labels) < 2 or labels[-1].isdigit()  # (192.0.2.010: no IP)
            or not all(_LABEL.match(label) for label in labels)):
        raise ValueError(f"{text!r} is not a domain or an IP address")
    return host


def merge(kind, paths):
    """
    The merged list (or table) of the files C{paths}.

    @param kind: one of L{KINDS}.
    @return: C{(text of the merged file, entries, problems)}; each
        problem is C{"path:line: what"} (that entry left out).
    """
    if kind == "table":
        merged = bayes.Table()
        skipped = _take_lines(paths, merged.add_line)
        return merged.text(), len(merged.counts), [str(e) for e in skipped]
    normal = phrase if kind == "phrases" else url_entry
    entries = {}
    skipped = _take_lines(paths, lambda text: entries.setdefault(normal(text), None))
    return "".join(f"{entry}\n" for entry in entries), len(entries), [str(e) for e in skipped]
