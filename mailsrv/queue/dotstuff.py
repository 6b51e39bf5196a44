"""
The wire form of a stored message: CRLF line ends and dot-stuffing, as SMTP
DATA (RFC 5321 4.5.2) and POP3 RETR/TOP (RFC 1939 3) both send it.

Twisted's own transforms (C{SMTPClient.transformChunk},
C{POP3.transformChunk}) turn every LF into CRLF, so a file stored with CRLF
goes out with CR CR LF, and they miss a dot that starts a chunk. This one
keeps CRLF as it is, turns only bare LF into CRLF, and carries its state
from one chunk to the next, so a message of any size is sent in chunks that
add up to exactly the stuffed form of the whole.
"""

import re

_BARE_LF = re.compile(rb"(?<!\r)\n")


class DotStuffer:
    """
    Feed a message chunk by chunk; the outputs, followed by L{finish}, are
    the message in wire form with its terminating C{.CRLF}.
    """

    def __init__(self):
        self._line_start = True
        self._held_cr = False

    def feed(self, data):
        """
        @param data: the next bytes of the message, any length.
        @return: bytes to send now (possibly fewer than given: a final CR is
            held until we know whether LF follows).
        """
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self._held_cr = True
        if not data:
            return b""
        if data.count(b"\n") != data.count(b"\r\n"):
            data = _BARE_LF.sub(b"\r\n", data)
        data = data.replace(b"\n.", b"\n..")
        if self._line_start and data[:1] == b".":
            data = b"." + data
        self._line_start = data.endswith(b"\n")
        return data

    def finish(self):
        """
        @return: what ends the transfer: a held CR, the CRLF the last line
            lacks (if any) and the terminating C{.CRLF}.
        """
        tail = b"\r" if self._held_cr else b""
        self._held_cr = False
        if tail or not self._line_start:
            tail += b"\r\n"
        self._line_start = True
        return tail + b".\r\n"


def stuff(data):
    """The wire form of a whole message held in memory."""
    stuffer = DotStuffer()
    return stuffer.feed(data) + stuffer.finish()
