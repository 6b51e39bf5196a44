"""
The text of a message as a reader sees it, for the content filters that
read words (issue 17): the decoded Subject and header fields, the
text/plain parts, and what the text/html parts show
(L{mailsrv.policy.htmltext}), from the shared analysis
(L{mailsrv.policy.content.Content}).
"""

import functools
from email.errors import MessageError
from email.header import decode_header, make_header

from mailsrv.headerblock import FIELD
from mailsrv.policy.htmltext import read_html

# What decoding a field may raise: the email package's own errors too
# (HeaderParseError for broken base64, CharsetError for a charset named in
# 8-bit bytes).
_UNREADABLE = (LookupError, UnicodeError, ValueError, TypeError, MessageError)


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
        if "=?" in value:  # RFC 2047 encoded words (the rest is as written)
            try:
                value = str(make_header(decode_header(value)))
            except _UNREADABLE:
                pass  # (kept as written)
        decoded.append((name.decode("ascii").lower(), value))
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
