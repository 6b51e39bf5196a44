"""
Message authentication results (RFC 8601): what SPF, DKIM and DMARC
found, as the checks report them in their findings, and the one
C{Authentication-Results} header the framework writes from them
(L{mailsrv.policy.judgement.Judgement.header_block}).

Decision: a check reports its results as L{AuthResult} values in its
L{mailsrv.policy.verdict.Finding}, not as a header of its own: one header
field carries every method, and a check that needs what another method
found (DMARC needs SPF and DKIM) reads the results recorded so far or asks
the shared per-message work (L{mailsrv.policy.dkimverify}), never the
other check.
"""

import re
from dataclasses import dataclass

# The order methods are written in: what each builds on comes first.
METHODS = ("spf", "dkim", "arc", "dmarc")

# RFC 2045's tspecials and space: a property value with any of them is quoted.
_TSPECIALS = re.compile(r'[()<>@,;:\\"/\[\]?= \t]')


@dataclass(frozen=True)
class AuthResult:
    """
    One method's result for one identity, as RFC 8601 writes it.

    @ivar method: C{spf}, C{dkim}, C{dmarc}, C{arc}.
    @ivar result: the RFC 8601 result (C{pass}, C{fail}, C{none}, ...).
    @ivar properties: C{(ptype.property, value)} pairs: the identity checked
        (C{smtp.mailfrom}, C{header.d}, C{header.from}, ...).
    @ivar comment: a short explanation for people (RFC 8601 comments), or "".
    """

    method: str
    result: str
    properties: tuple = ()
    comment: str = ""

    def text(self):
        """C{method=result (comment) ptype.property=value ...}"""
        words = [f"{self.method}={self.result}"]
        if self.comment:
            words.append(f"({_comment(self.comment)})")
        words.extend(f"{name}={_value(value)}" for name, value in self.properties)
        return " ".join(words)


def header_value(authserv_id, results):
    """
    The value of the C{Authentication-Results} field: our host name, then
    each distinct result, by method (L{METHODS}; C{none} when there is
    none: RFC 8601 2.2).
    """
    distinct = sorted(dict.fromkeys(results), key=_method_order)
    if not distinct:
        return f"{authserv_id}; none"
    return authserv_id + ";\r\n\t" + ";\r\n\t".join(r.text() for r in distinct)


def authserv_id(value):
    """
    The authserv-id an C{Authentication-Results} value starts with (lower
    case, comments and the version dropped), or "" when it has none.
    """
    value = re.sub(r"\([^()]*\)", " ", value)  # (comments, one level: enough to find the id)
    first = value.split(";", 1)[0].split()
    return first[0].lower() if first else ""


def _method_order(result):
    return METHODS.index(result.method) if result.method in METHODS else len(METHODS)


def _value(value):
    value = str(value)
    if value and not _TSPECIALS.search(value) and value.isascii() and value.isprintable():
        return value
    cleaned = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "?"
                      for c in value)
    return f'"{cleaned}"'


def _comment(text):
    return "".join(c if c.isascii() and c.isprintable() and c not in "()\\" else " "
                   for c in text)[:200]
