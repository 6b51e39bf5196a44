"""
Pure parsing of SMTP command lines (RFC 5321 section 4.1, RFC 1870 SIZE,
RFC 6152 8BITMIME). Nothing here knows about connections, so every rule has
a table-driven test in tests/test_smtp_commands.py.
"""

import re
from dataclasses import dataclass
from typing import Optional

from mailsrv.address import is_address, is_bare_name


class CommandError(Exception):
    """
    A client mistake, already worded as the reply it deserves.

    @ivar code: the SMTP reply code.
    @ivar enhanced: the RFC 3463 enhanced status code.
    @ivar text: the reply text.
    """

    def __init__(self, code, enhanced, text):
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text


_PRINTABLE = re.compile(rb"[\x20-\x7e]*\Z")

# A browser or proxy speaking to the SMTP port (cross-protocol attacks): the
# connection is closed without a reply.
_HTTP_REQUEST = re.compile(
    rb"(?:GET|POST|HEAD|PUT|DELETE|CONNECT|OPTIONS|TRACE|PATCH) \S.* HTTP/\d", re.I
)


def is_http_request(line):
    """Whether a command line is an HTTP request line."""
    return _HTTP_REQUEST.match(line) is not None


def split_command(line):
    """
    C{b"mail FROM:<a@b>"} -> C{("MAIL", "FROM:<a@b>")}.

    @param line: one command line without its line ending.
    @raise CommandError: for bytes outside printable ASCII (we do not offer
        SMTPUTF8, and a NUL or control byte is never part of a command).
    """
    if not _PRINTABLE.match(line):
        raise CommandError(500, "5.5.2", "Syntax error: command must be printable ASCII")
    verb, _, arg = line.decode("ascii").partition(" ")
    return verb.upper(), arg.strip()


def parse_helo(arg):
    """The client's name from C{EHLO name} / C{HELO name}."""
    name = arg.split(" ", 1)[0]
    if not name:
        raise CommandError(501, "5.5.4", "Syntax: EHLO hostname")
    return name


@dataclass(frozen=True)
class MailParams:
    """
    The ESMTP parameters of MAIL FROM that we support.

    @ivar size: the declared size (RFC 1870), or L{None}.
    @ivar body: C{"7BIT"} or C{"8BITMIME"} (RFC 6152), or L{None}.
    """

    size: Optional[int] = None
    body: Optional[str] = None


def parse_mail_params(text):
    """
    C{"SIZE=1000 BODY=8BITMIME"} -> C{MailParams(1000, "8BITMIME")}.

    Keywords are case-insensitive; an unknown or repeated keyword or a bad
    value is refused, so a client never believes we honoured an extension
    we did not offer.
    """
    size = body = None
    seen = set()
    for param in text.split():
        keyword, has_value, value = param.partition("=")
        keyword = keyword.upper()
        if keyword in seen:
            raise CommandError(501, "5.5.4", f"Duplicate MAIL parameter {keyword}")
        seen.add(keyword)
        if keyword == "SIZE":
            if not has_value or not value.isdigit() or len(value) > 20:
                raise CommandError(501, "5.5.4", "Bad SIZE parameter")
            size = int(value)
        elif keyword == "BODY":
            body = value.upper()
            if not has_value or body not in ("7BIT", "8BITMIME"):
                raise CommandError(501, "5.5.4", "Bad BODY parameter")
        else:
            raise CommandError(555, "5.5.4", f"Unsupported MAIL parameter {keyword}")
    return MailParams(size=size, body=body)


def parse_mail(arg):
    """
    C{"FROM:<a@b> SIZE=10"} -> C{("a@b", MailParams(size=10))}; the null
    sender is C{""}.
    """
    if arg[:5].upper() != "FROM:":
        raise CommandError(501, "5.5.4", "Syntax: MAIL FROM:<address>")
    address, params = _split_path(arg[5:])
    if address is None:
        raise CommandError(501, "5.1.7", "Bad sender address syntax")
    return address, parse_mail_params(params)


def parse_rcpt(arg):
    """
    C{"TO:<a@b>"} -> C{"a@b"}. A recipient must be a full mailbox, except
    C{<postmaster>} which RFC 5321 section 4.5.1 says we must accept.
    """
    if arg[:3].upper() != "TO:":
        raise CommandError(501, "5.5.4", "Syntax: RCPT TO:<address>")
    address, params = _split_path(arg[3:])
    if not address or not (is_address(address) or address.lower() == "postmaster"):
        raise CommandError(501, "5.1.3", "Bad recipient address syntax")
    if params:
        raise CommandError(555, "5.5.4", "Unsupported RCPT parameter")
    return address


def _split_path(text):
    """
    Split C{" <a@b> PARAMS"} into the address (L{None} if the path is
    malformed) and the parameter text. A source route (C{<@x,@y:a@b>}) is
    dropped, as RFC 5321 allows. A path without angle brackets is taken too:
    old clients send C{MAIL FROM: a@b}.
    """
    text = text.lstrip(" ")
    if text.startswith("<"):
        end = _closing_bracket(text)
        if end is None:
            return None, ""
        address, params = text[1:end], text[end + 1:]
        if params and not params.startswith(" "):
            return None, params
        if address.startswith("@"):
            _route, colon, address = address.partition(":")
            if not colon:
                return None, params
    else:
        address, _, params = text.partition(" ")
        if not address:
            return None, params
    if address and not is_address(address) and not is_bare_name(address):
        return None, params
    return address, params.strip()


def _closing_bracket(text):
    """The index of the C{>} closing a path, skipping quoted local parts."""
    quoted = escaped = False
    for index, char in enumerate(text[1:], 1):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return index
    return None
