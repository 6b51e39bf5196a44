"""
Reading the DATA section (RFC 5321 section 4.1.1.4, 4.5.2) from a stream of
arbitrary chunks.

Only CRLF "." CRLF ends the data, and a line starts only after CRLF: a bare
LF or a bare CR is never a line break here. Other servers treat them as line
breaks, and the difference lets an attacker end the message early for one
server but not the other and smuggle a second message past SPF/DKIM checks
("SMTP smuggling", CVE-2023-51764/51765/51766). Such data is kept (so the
stream stays in step) but marked, and the server refuses the message.
"""

import re

from mailsrv.policy.hooks import HEADER_LIMIT, header_section

_CR, _LF, _DOT = 13, 10, 46
_LINE_BREAK = re.compile(rb"[\r\n]")

# Where the reader is in the current line.
_LINE_START = "line start"  # just after CRLF (or at the start of the data)
_DOT_SEEN = "dot"  # a "." at the start of a line
_DOT_CR = "dot cr"  # "." CR at the start of a line: the end if LF follows
_IN_LINE = "in line"
_CR_SEEN = "cr"  # a CR inside a line: a line break if LF follows


class DataReader:
    """
    Turns the bytes after C{354} into the message: removes the leading dot
    of stuffed lines, stops at the end marker, and notes bare CR/LF.

    @ivar size: bytes of message produced so far.
    @ivar bare_line_ending: whether a bare CR or LF was seen.
    @ivar done: whether the end marker has been read.
    """

    def __init__(self):
        self.size = 0
        self.bare_line_ending = False
        self.done = False
        self._state = _LINE_START

    def feed(self, data):
        """
        Read a chunk.

        @param data: bytes (or a bytearray) that follow what was fed before.
        @return: C{(message_bytes, consumed)}: the message bytes this chunk
            yields (CRLF line ends kept) and how many bytes of C{data} were
            read. Once L{done}, C{data[consumed:]} belongs to the next
            command. Memory use is bounded by the chunk: a line that never
            ends is produced as it arrives.
        """
        out = []
        i, n = 0, len(data)
        state = self._state
        slow = False
        while i < n:
            if state == _IN_LINE:
                if not slow:
                    # Fast path: copy everything up to the next line that
                    # starts with a dot in one piece, if it has only CRLFs.
                    end = data.find(b"\r\n.", i)
                    stop = n if end < 0 else end
                    if _only_crlf(data, i, stop):
                        out.append(data[i:stop])
                        if end >= 0:
                            out.append(b"\r\n")
                            state = _DOT_SEEN
                            i = end + 3
                        else:
                            if data[n - 1] == _LF:
                                state = _LINE_START  # the next chunk may start with "."
                            i = n
                        continue
                    slow = True  # for the rest of this chunk: no rescans
                found = _LINE_BREAK.search(data, i)
                if found is None:
                    out.append(data[i:])
                    i = n
                    break
                j = found.start()
                out.append(data[i:j])
                if data[j] == _LF:
                    self.bare_line_ending = True
                    out.append(b"\n")
                else:
                    state = _CR_SEEN
                i = j + 1
                continue
            byte = data[i]
            if state == _LINE_START:
                if byte == _DOT:
                    state = _DOT_SEEN
                    i += 1
                else:
                    state = _IN_LINE
            elif state == _DOT_SEEN:
                if byte == _CR:
                    state = _DOT_CR
                    i += 1
                else:
                    state = _IN_LINE  # the stuffed dot is dropped
            elif state == _DOT_CR:
                if byte == _LF:
                    self.done = True
                    i += 1
                    break
                self.bare_line_ending = True
                out.append(b"\r")
                state = _IN_LINE
            else:  # _CR_SEEN
                if byte == _LF:
                    out.append(b"\r\n")
                    state = _LINE_START
                    i += 1
                else:
                    self.bare_line_ending = True
                    out.append(b"\r")
                    state = _IN_LINE
        self._state = state
        message = b"".join(out)
        self.size += len(message)
        return message, i


def _only_crlf(data, start, stop):
    """Whether every CR and LF in C{data[start:stop]} is part of a CRLF."""
    pairs = data.count(b"\r\n", start, stop)
    return data.count(b"\r", start, stop) == pairs == data.count(b"\n", start, stop)


class HeaderSection:
    """
    Holds the start of a message until its header section has ended, so
    that filters can read the headers before anything is written.

    @param limit: bytes held at most: a longer header section is judged on
        its first C{limit} bytes.
    @ivar data: every byte held (the header section and what followed it
        in the same chunk).
    @ivar complete: whether the header section (or C{limit}) is reached.
    """

    def __init__(self, limit=HEADER_LIMIT):
        self.limit = limit
        self.data = bytearray()
        self.complete = False

    def feed(self, message):
        self.data += message
        self.complete = (len(self.data) >= self.limit or self.data.startswith(b"\r\n")
                         or b"\r\n\r\n" in self.data)

    @property
    def header(self):
        """The header section (up to the empty line), or what there is of it."""
        return header_section(self.data, self.limit)
