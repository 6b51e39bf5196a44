"""
RFC 5322 address lists taken apart as IMAP needs them: ENVELOPE's address
structures (mailsrv/imap/mime.py) and SORT's FROM, TO, CC, DISPLAYFROM and
DISPLAYTO keys (mailsrv/store/sortkeys.py, which the store's header cache
computes). Pure parsing of bytes; it imports nothing of the server.
"""


def addresses(value):
    """
    The addresses of an RFC 5322 address list (bytes, or L{None}) as
    ENVELOPE (RFC 3501 7.4.2) has them: C{(name, route, mailbox, host)},
    a missing mailbox or host C{b""}. A group is C{(None, None, name,
    None)}, its members, then C{(None, None, None, None)}; a comment
    names an address without a phrase. SORT takes its keys from the
    first (RFC 5256, 5957).
    """
    if not value:
        return []
    out = []
    words, comment, in_group = [], None, False

    def finish():
        if words:
            out.append(_addr_spec(words, None, comment))

    for kind, text in _tokens(value):
        if kind == b"(":
            comment = text
        elif kind == b":" and not in_group and b"@" not in [k for k, _ in words]:
            out.append((None, None, _phrase(words) or b"", None))
            words, comment, in_group = [], None, True
        elif kind == b"<":
            words = [("<", _phrase(words) or comment)]
        elif kind == b">" and words and words[0][0] == "<":
            name = words[0][1]
            out.append(_addr_spec(words[1:], name, None))
            words, comment = [], None
        elif kind in (b",", b";"):
            finish()
            words, comment = [], None
            if kind == b";" and in_group:
                out.append((None, None, None, None))
                in_group = False
        else:
            words.append((kind, text))
    finish()
    if in_group:
        out.append((None, None, None, None))
    return out


def _addr_spec(words, name, comment):
    """C{(name, route, mailbox, host)} of the words of an addr-spec, maybe with a route."""
    route = None
    if words and words[0][0] == "<":
        words = words[1:]
    colons = [i for i, (kind, _) in enumerate(words) if kind == b":"]
    if colons and words[0][0] == b"@":
        route = b"".join(text for _, text in words[:colons[-1]])
        words = words[colons[-1] + 1:]
    at = max((i for i, (kind, _) in enumerate(words) if kind == b"@"), default=None)
    local = words if at is None else words[:at]
    host = b"".join(text for _, text in words[at + 1:]) if at is not None else b""
    return (name if name is not None else comment, route,
            b"".join(text for _, text in local), host)


def _phrase(words):
    """Display-name words joined by spaces (dots attached), or L{None}."""
    out = b""
    for kind, text in words:
        if kind in (b"atom", b'"'):
            out += (b" " if out and not out.endswith(b".") else b"") + text
        else:
            out += text
    return out or None


def _tokens(value):
    """
    RFC 5322 tokens of C{value}: C{(kind, text)} where kind is C{b"atom"},
    C{b'"'} (a quoted string, unquoted), C{b"("} (a comment, nested ones
    kept inside) or the special character itself.
    """
    i, n = 0, len(value)
    while i < n:
        c = value[i:i + 1]
        if c in b" \t\r\n":
            i += 1
        elif c in (b'"', b"("):
            close = b'"' if c == b'"' else b")"
            depth, j, text = 1, i + 1, bytearray()
            while j < n:
                d = value[j:j + 1]
                if d == b"\\" and j + 1 < n:
                    text += value[j + 1:j + 2]
                    j += 2
                    continue
                if c == b"(" and d == b"(":
                    depth += 1
                elif d == close:
                    depth -= 1
                    if not depth:
                        break
                text += d
                j += 1
            yield c, (bytes(text).strip() if c == b"(" else bytes(text))
            i = j + 1
        elif c in b"<>@,;:.[]":
            yield c, c
            i += 1
        else:
            j = i
            while j < n and value[j:j + 1] not in b' \t\r\n"()<>@,;:.[]':
                j += 1
            yield b"atom", value[i:j]
            i = j
