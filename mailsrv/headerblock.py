"""
A message header block's fields, found by one regular expression: the
IMAP header cache (L{mailsrv.store.headerfields}) and the content filters
(L{mailsrv.policy.content}, L{mailsrv.policy.reading}) read them so, at a
tenth of the cost of the C{email} package's parser, which walks the block
line by line in Python. And their RFC 2047 encoded words decoded, for
IMAP SEARCH and SORT and for the filters alike.
"""

import email.errors
import email.header
import re

# A field: its name (RFC 5322 3.6.8: printable ASCII but the colon) and
# its raw value after the colon, continuation lines included. A line that
# is no field is skipped (C{email}'s parser would end the header there).
FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.MULTILINE)
# The line break of a folded header line (RFC 5322 2.2.3); MIME parsing unfolds with it too.
FOLD = re.compile(rb"\r?\n(?=[ \t])")


def compat32_value(raw):
    """
    A raw value as the C{email} package's compat32 policy keeps it: bytes
    as ASCII with 8-bit bytes as surrogates, white space after the colon
    and the last line end gone, folds kept.
    """
    return raw.decode("ascii", "surrogateescape").lstrip(" \t").rstrip("\r\n")


def decode_words(value):
    """A header value with its RFC 2047 encoded words decoded (as it is if they are broken)."""
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, TypeError, email.errors.MessageError):
        return value  # (MessageError: broken base64, a charset named in 8-bit bytes)
