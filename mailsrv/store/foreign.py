"""
Mailboxes other software wrote, read for `mailsrv import` (docs/store.md,
"Importing"): a Maildir or Dovecot's Maildir++ tree with its
C{dovecot-uidlist} and C{dovecot-keywords} files, and mbox files (mboxo and
mboxrd). Plain file reading, no Twisted: the importer runs it in a thread.

A source message is a L{Found}: how to recognise it again (its identity,
so a second import skips it), its system flags and keywords, its date,
the UID the old server gave it, and its bytes.
"""

import base64
import calendar
import hashlib
import os
import re
import time
from typing import NamedTuple, Optional

from mailsrv.store.names import flags_of, info_letters, is_keyword, split_name

UIDLIST = "dovecot-uidlist"
KEYWORDS = "dovecot-keywords"
# Dovecot keyword letters: the n-th keyword of dovecot-keywords is "a" + n.
KEYWORD_LETTERS = "abcdefghijklmnopqrstuvwxyz"


class ForeignError(ValueError):
    """A file of the source cannot be read as what it should be."""


class Found(NamedTuple):
    """
    One message of a source folder.

    @ivar identity: what the import state remembers (docs/store.md).
    @ivar flags: IMAP system flags and keywords.
    @ivar date: internal date, seconds since the epoch (L{None}: when stored).
    @ivar uid: the UID the old server gave it, or L{None}.
    @ivar data: the message, or L{None} when it could not be read.
    @ivar problem: why it is skipped (L{None}: it is not).
    @ivar where: the file (and line, for an mbox) it came from.
    """

    identity: str
    flags: frozenset
    date: Optional[int]
    uid: Optional[int]
    data: Optional[bytes]
    problem: Optional[str]
    where: str


class UidListFile(NamedTuple):
    uidvalidity: int
    uidnext: int
    uids: dict  # base name -> UID


def parse_uidlist(text):
    """
    Dovecot's C{dovecot-uidlist}, version 1 (C{1 <uidvalidity> <uidnext>},
    lines C{<uid> <file name>}) or 3 (C{3 V<uidvalidity> N<uidnext> ...},
    lines C{<uid> [<key><value> ...] :<base name>}).

    @return: a L{UidListFile}; a line that does not parse is left out.
    @raise ForeignError: the header is not one of those.
    """
    lines = text.split("\n")
    header = lines[0].split()
    if header[:1] == ["1"] and len(header) >= 3 and all(map(_is_uid, header[1:3])):
        uidvalidity, uidnext = int(header[1]), int(header[2])
    elif header[:1] == ["3"]:
        fields = {field[:1]: field[1:] for field in header[1:]}
        if not (_is_uid(fields.get("V", "")) and _is_uid(fields.get("N", ""))):
            raise ForeignError("version 3 header without V<uidvalidity> and N<uidnext>")
        uidvalidity, uidnext = int(fields["V"]), int(fields["N"])
    else:
        raise ForeignError("not a version 1 or 3 header")
    uids = {}
    for line in lines[1:]:
        uid, _, rest = line.partition(" ")
        if not _is_uid(uid):
            continue
        if header[0] == "3":
            name = rest.partition(":")[2]
        else:
            name = rest.strip()
        key = split_name(name)[0]
        if key:
            uids[key] = int(uid)
    return UidListFile(uidvalidity, uidnext, uids)


def _is_uid(text):
    """A UID or UIDVALIDITY: 1 to 2**32 - 1 (RFC 3501 nz-number)."""
    return text.isascii() and text.isdigit() and 0 < int(text) < 2**32


def parse_keywords(text):
    """
    Dovecot's C{dovecot-keywords}: C{<index> <keyword>} lines.

    @return: letter -> keyword, for the letters C{a} to C{z}; lines that do
        not parse, or name no IMAP keyword, are left out.
    """
    found = {}
    for line in text.split("\n"):
        index, _, keyword = line.strip().partition(" ")
        if (index.isascii() and index.isdigit() and int(index) < len(KEYWORD_LETTERS)
                and is_keyword(keyword)):
            found[KEYWORD_LETTERS[int(index)]] = keyword
    return found


def maildir_folders(root):
    """
    The folders of a Maildir (C{cur/ new/}) or a Maildir++ tree (Dovecot's
    layout: subfolders C{.A.B} beside C{cur/}).

    @return: C{[(IMAP name, path)]}, INBOX first; names use C{/} as the
        hierarchy separator, decoded from modified UTF-7 as IMAP shows them.
    @raise ForeignError: C{root} is not a Maildir.
    """
    if not all(os.path.isdir(os.path.join(root, sub)) for sub in ("cur", "new")):
        raise ForeignError("not a Maildir (no cur/ and new/)")
    folders = [("INBOX", root)]
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if (entry.startswith(".") and len(entry) > 1 and entry[1] != "."
                and os.path.isdir(os.path.join(path, "cur"))):
            folders.append((decode_mutf7(entry[1:]).replace(".", "/"), path))
    return folders


def decode_mutf7(name):
    """RFC 3501 modified UTF-7 (C{&AOQ-} is "ä"); a name that is not valid stays as it is."""
    def decoded(match):
        text = match.group(1)
        if not text:
            return "&"
        padded = text.replace(",", "/") + "=" * (-len(text) % 4)
        return base64.b64decode(padded, validate=True).decode("utf-16-be")
    try:
        return re.sub(r"&([A-Za-z0-9+,]*)-", decoded, name)
    except (ValueError, UnicodeDecodeError):
        return name


def read_text(path):
    """A small file of the source as text, or L{None} when it is missing."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return None


def maildir_messages(path, keywords, uids):
    """
    The messages of one Maildir folder, in the old server's UID order
    (then those it gave none, by name), one at a time.

    @param keywords: letter -> keyword (L{parse_keywords}).
    @param uids: base name -> UID (L{parse_uidlist}).
    """
    names = []
    for sub in ("cur", "new"):
        try:
            listed = os.listdir(os.path.join(path, sub))
        except FileNotFoundError:
            continue
        names.extend((sub, name) for name in listed if not name.startswith("."))
    names.sort(key=lambda item: (uids.get(split_name(item[1])[0], 2**32), item[1]))
    for sub, name in names:
        yield maildir_message(os.path.join(path, sub, name), keywords, uids)


def maildir_message(path, keywords, uids):
    """One message file as a L{Found}: flags from its info, keywords through C{keywords}."""
    key, suffix = split_name(os.path.basename(path))
    letters = info_letters(suffix)
    flags = flags_of(letters) | frozenset(keywords[c] for c in letters if c in keywords)
    uid = uids.get(key)
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            data = f.read()
    except OSError as e:
        return Found(key, flags, 0, uid, None, e.strerror, path)
    identity = f"{key} {stat.st_size}"
    return Found(identity, flags, int(stat.st_mtime), uid, data, malformed(data), path)


def malformed(data):
    """Why C{data} is no message (empty, or its first line no header field), else L{None}."""
    first = data.split(b"\n", 1)[0]
    if not data.strip():
        return "empty"
    if not re.match(rb"[!-9;-~]+[ \t]*:", first):
        return "no header field on its first line"
    return None


# mbox: Status letters (Dovecot's mbox) -> IMAP flags
STATUS_FLAGS = {"R": "\\Seen"}
X_STATUS_FLAGS = {"A": "\\Answered", "F": "\\Flagged", "T": "\\Draft", "D": "\\Deleted"}
# header fields of the mbox format itself, not of the message (Dovecot drops them too)
MBOX_FIELDS = (b"status", b"x-status", b"x-keywords", b"x-uid", b"x-imap", b"x-imapbase",
               b"content-length")
_QUOTED_FROM = re.compile(rb">+From ")


def mbox_messages(f, where):
    """
    The messages of an mbox file opened in binary mode, one at a time
    (a file of gigabytes is never read whole): a C{From } line after an
    empty line (or at the start) begins one; C{>From } lines are unquoted
    (mboxrd, and mboxo as far as it can be); the C{Status:} and
    C{X-Status:} fields become flags, C{X-Keywords:} keywords, and are
    removed with the other fields of the mbox format; the date of the
    C{From } line is the internal date.

    The identity is the position of the message among those with the
    same content (C{<sha256> <n>}): an mbox has no names, and may hold the
    same message twice.
    """
    seen = {}
    lines, start, line_number, blank, from_line = None, 0, 0, True, b""
    for line in f:
        line_number += 1
        if line.startswith(b"From ") and blank:
            if lines is not None:
                yield from _mbox_message(lines, start, seen, where, from_line)
            lines, start, from_line = [], line_number, line
        elif lines is not None:
            lines.append(line[1:] if _QUOTED_FROM.match(line) else line)
        elif line.strip():
            raise ForeignError(f"line {line_number}: not an mbox (no From line first)")
        blank = line in (b"\n", b"\r\n")
    if lines is not None:
        yield from _mbox_message(lines, start, seen, where, from_line)


def _mbox_message(lines, start, seen, where, from_line):
    """
    The message of L{mbox_messages} in C{lines} (after its C{From } line),
    if it is one: UW-IMAP's "FOLDER INTERNAL DATA" pseudo message is not.
    """
    if lines and lines[-1] in (b"\n", b"\r\n"):
        lines = lines[:-1]  # the empty line before the next From line is the format's
    header_end = next((i for i, line in enumerate(lines) if line in (b"\n", b"\r\n")),
                      len(lines))
    flags, kept, skip = set(), [], False
    internal = False
    for line in lines[:header_end]:
        if line[:1] in (b" ", b"\t"):
            if not skip:
                kept.append(line)
            continue
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        skip = name in MBOX_FIELDS
        text = value.decode("ascii", "replace").strip()
        if name == b"status":
            flags.update(STATUS_FLAGS[c] for c in text if c in STATUS_FLAGS)
        elif name == b"x-status":
            flags.update(X_STATUS_FLAGS[c] for c in text if c in X_STATUS_FLAGS)
        elif name == b"x-keywords":
            flags.update(k for k in re.split(r"[\s,]+", text) if is_keyword(k))
        elif name == b"x-imap" or name == b"x-imapbase":
            internal = True
        if not skip:
            kept.append(line)
    data = b"".join(kept + lines[header_end:])
    if internal and b"FOLDER INTERNAL DATA" in data:
        return
    digest = hashlib.sha256(data).hexdigest()
    seen[digest] = count = seen.get(digest, 0) + 1
    yield Found(f"{digest} {count}", frozenset(flags), from_line_date(from_line), None, data,
                malformed(data), f"{where}:{start}")


def from_line_date(line):
    """
    The date of a C{From sender Tue Jan  2 03:04:05 2024} line (asctime,
    taken as UTC), or L{None} when it has none that parses (the message
    is then dated when it is stored).
    """
    words = line.decode("ascii", "replace").split()
    try:
        return calendar.timegm(time.strptime(" ".join(words[2:7]), "%a %b %d %H:%M:%S %Y"))
    except (ValueError, OverflowError):
        return None
