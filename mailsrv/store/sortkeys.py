"""
The keys SORT and THREAD compare (RFC 5256, 5957), derived from header
values once, when a message's L{headerfields.Fields} are parsed, so that
sorting a folder compares ready strings.

Keys are compared with i;unicode-casemap (RFC 5051): each is stored
already mapped (L{casemap}), so plain string order is the collation's.
"""

import functools
import re
import unicodedata

from mailsrv.addresslist import addresses
from mailsrv.headerblock import decode_words

_SPACES = re.compile(r"[ \t\r\n]+")
# subj-leader (RFC 5256 5): *subj-blob subj-refwd, or one WSP
_REFWD = re.compile(r"(?:\[[^\[\]]*\] *)*(?:re|fwd?) *(?:\[[^\[\]]*\] *)?:", re.IGNORECASE)
_BLOB = re.compile(r"\[[^\[\]]*\] *")
# One address, "Name <a@b>", "\"Name\" <a@b>" or "a@b": no comment, group,
# route, escape or dot in the name (the tokenizer's cases)
_ADDR = r'[^\s"(),:;<>@\[\]\\]+'
_SIMPLE_ADDRESS = re.compile(
    rf'\s*(?:(?:"([^"\\\r\n]*)"|([^"(),.:;<>@\[\]\\]*?))\s*<({_ADDR})@({_ADDR})>'
    rf'|({_ADDR})@({_ADDR}))\s*')
_MESSAGE_ID = re.compile(r"<\s*([^<>\s@]+@[^<>\s]+?)\s*>")


def casemap(text):
    """
    i;unicode-casemap (RFC 5051): each character's titlecase, then its
    decomposition, so that C{"é"} and C{"E\\u0301"} compare equal.
    """
    if text.isascii():
        return text.upper()
    return unicodedata.normalize("NFKD", "".join(map(_title, text)))


@functools.lru_cache(maxsize=4096)
def _title(char):
    titled = char.title()  # a simple mapping only: "ß".title() is "Ss"
    return titled if len(titled) == 1 else char


def base_subject(subject):
    """
    RFC 5256 2.1: the base subject of a decoded subject, and whether the
    subject marked a reply or forward (a C{Re:}, C{Fwd:} or C{Fw:}
    leader, a C{(fwd)} trailer, or a C{[fwd: ...]} wrapper): THREAD's
    subject merging needs both.

    @return: C{(base, is_reply)}.
    """
    text = _SPACES.sub(" ", subject)  # step 1 (words decoded by the caller)
    reply = False
    while True:
        # step 2: trailers, "(fwd)" and white space
        while True:
            text = text.rstrip(" ")
            if not text[-5:].lower() == "(fwd)":
                break
            text, reply = text[:-5], True
        # steps 3 to 5: leaders, then one blob if something follows it
        while True:
            if text.startswith(" "):
                text = text.lstrip(" ")
                continue
            leader = _REFWD.match(text)
            if leader:
                text, reply = text[leader.end():], True
                continue
            blob = _BLOB.match(text)
            if blob and text[blob.end():].strip(" "):
                text = text[blob.end():]
                continue
            break
        # step 6: "[fwd: ...]" around the rest
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text, reply = text[5:-1], True
            continue
        return text, reply


def subject_key(raw):
    """C{(casemapped base subject, 1 or 0 for reply)} of a raw Subject value (or L{None})."""
    if raw is None:
        return "", 0
    base, reply = base_subject(decode_words(raw))
    return casemap(base), int(reply)


def address_keys(raw):
    """
    C{(mailbox, display)} of the first address of a raw address field:
    its addr-mailbox (SORT FROM, TO, CC; a group's name, as ENVELOPE
    has it) and its display name (RFC 5957 DISPLAYFROM, DISPLAYTO:
    decoded, or the address when it has none), both casemapped; or
    C{(None, None)} without an address.
    """
    if raw is None:
        return None, None
    first = _simple_first_address(raw) or _first_address(raw)
    if first is None:
        return None, None
    name, mailbox, host = first
    if name:
        display = decode_words(name)
    elif host:
        display = f"{mailbox}@{host}"
    else:
        display = mailbox
    return casemap(mailbox), casemap(display)


def _first_address(raw):
    """C{(name, mailbox, host)} of the first address, as ENVELOPE's parser gives it, or L{None}."""
    found = addresses(raw.encode("utf-8", "surrogateescape"))
    if not found:
        return None
    name, _, mailbox, host = (
        None if v is None else v.decode("utf-8", "surrogateescape") for v in found[0])
    return name, mailbox or "", host


def _simple_first_address(raw):
    """
    L{_first_address} of a field holding one plain address (most do),
    with a regular expression instead of the tokenizer; else L{None}.
    """
    simple = _SIMPLE_ADDRESS.fullmatch(raw)
    if simple is None:
        return None
    quoted, phrase, mailbox, host, bare_mailbox, bare_host = simple.groups()
    if mailbox is None:
        return None, bare_mailbox, bare_host
    name = quoted if quoted is not None else " ".join(phrase.split()) or None
    return name, mailbox, host


def message_ids(raw):
    """The message IDs in a raw Message-ID, References or In-Reply-To value, in order."""
    if raw is None:
        return []
    return _MESSAGE_ID.findall(raw)
