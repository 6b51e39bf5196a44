"""
The text of a message as a reader sees it, for the content filters that
read words (issue 17): the decoded Subject and header fields, the
text/plain parts, and what the text/html parts show
(L{mailsrv.policy.htmltext}), from the shared analysis
(L{mailsrv.policy.content.Content}).
"""

import functools

from mailsrv.headerblock import FIELD, decode_words
from mailsrv.policy.htmltext import read_html


def header_values(header, name=None):
    """The values of a raw header block's fields (only C{name}'s, if given), RFC 2047 decoded."""
    return [value for key, value in _decoded_fields(header) if name is None or key == name]


@functools.lru_cache(maxsize=16)
def _decoded_fields(header):
    """
    C{((lower-case name, decoded value), ...)} of a header block: found
    once for the filters of a message that ask (the Subject, every field).
    8-bit bytes are read as UTF-8 (RFC 6532), what does not decode replaced.
    """
    decoded = []
    for name, raw in FIELD.findall(header):
        value = raw.decode("utf-8", "replace").lstrip(" \t").rstrip("\r\n")
        decoded.append((name.decode("ascii").lower(), decode_words(value)))
    return tuple(decoded)


def subject_of(content):
    """The message's decoded Subject ("" for none)."""
    found = header_values(content.parts[0].header, "subject") if content.parts else []
    return found[0] if found else ""


def body_text(content):
    """The text/plain parts and what the text/html parts show, one text."""
    texts = list(content.texts("text/plain"))
    texts.extend(read_html(html).text for html in content.texts("text/html"))
    return "\n".join(texts)
