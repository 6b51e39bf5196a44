"""
[antispam.mime]: IMail's four broken-MIME-header checks. Each is a header
that mail programs read one way and virus scanners or filters another, so
that a part one of them sees is hidden from the other:

- C{boundary-in-header}: the opening delimiter line (C{--boundary}) is in
  the header block, before the empty line that ends it;
- C{long-boundary}: a boundary over 70 characters (RFC 2046 5.1.1);
- C{no-boundary}: a multipart without a boundary parameter;
- C{unfolded-boundary}: a C{boundary=} parameter on a line of its own
  without the leading white space that would continue the Content-Type.

They read the raw header blocks of the shared content analysis
(L{mailsrv.policy.hooks.Message.judged}).
"""

import re

from mailsrv.policy.content import raw_bytes
from mailsrv.policy.hooks import ContentFilter
from mailsrv.policy.verdict import Verdict

MAX_BOUNDARY = 70  # RFC 2046 5.1.1
_UNFOLDED_BOUNDARY = re.compile(rb"^boundary[ \t]*\*?[0-9]*\*?[ \t]*=", re.I | re.M)


def broken_headers(content):
    """The names of the broken-header tricks in C{content}, each once, in order."""
    found = []
    for part in content.parts:
        if _UNFOLDED_BOUNDARY.search(part.header):
            found.append("unfolded-boundary")
        if not part.content_type.startswith("multipart/"):
            continue
        if part.boundary is None:
            found.append("no-boundary")
            continue
        if len(part.boundary) > MAX_BOUNDARY:
            found.append("long-boundary")
        delimiter = re.escape(b"--" + raw_bytes(part.boundary))
        if re.search(rb"^" + delimiter, part.header, re.M):
            found.append("boundary-in-header")
    return list(dict.fromkeys(found))


class BrokenMIME(ContentFilter):
    """
    A body filter: spam when a part's MIME header is broken in one of the
    four ways.

    @param action: the L{mailsrv.policy.actions.Action} for what it finds.
    @param subject_prefix: its own Subject mark, or L{None}.
    """

    def __init__(self, action, subject_prefix=None):
        self.action = action
        self.subject_prefix = subject_prefix

    def judge(self, content):
        """The L{Verdict} on a message's L{content.Content}."""
        found = broken_headers(content)
        if not found:
            return Verdict.found(False)
        return Verdict.found(True, self.action, tuple(f"mime {name}" for name in found),
                             subject_prefix=self.subject_prefix)
