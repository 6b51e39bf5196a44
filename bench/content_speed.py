"""
What the body hook's content filters cost a message (issue 17), in
process: the shared analysis (mailsrv/policy/content.py, which the server
runs in a thread) and each filter's judgement on it, for messages of about
5 KB, 100 KB and 5 MB (a text and HTML alternative, and a base64 zip
attachment making up the size). Prints the least CPU time of REPEATS runs
of each, in milliseconds.

    python bench/content_speed.py [REPEATS]
"""

import base64
import io
import sys
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailsrv.config import DEFAULT_BLOCKED_EXTENSIONS  # noqa: E402
from mailsrv.policy import content  # noqa: E402
from mailsrv.policy.checks.attachments import blocked  # noqa: E402
from mailsrv.policy.checks.mime import broken_headers  # noqa: E402

TEXT = "Hello, here is the report we talked about. Regards, Alice.\r\n"


def message(size):
    """A multipart/mixed message of about C{size} bytes."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.writestr("report.pdf", bytes(range(256)) * max(1, (size - 2600) * 3 // 4 // 256))
        z.writestr("notes.txt", b"notes")
    attached = base64.encodebytes(archive.getvalue()).replace(b"\n", b"\r\n")
    return (b"From: alice@remote.test\r\nTo: bob@example.test\r\nSubject: report\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"out\"\r\n\r\n"
            b"--out\r\nContent-Type: multipart/alternative; boundary=\"in\"\r\n\r\n"
            b"--in\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
            + (TEXT * 10).encode() + b"\r\n--in\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            b"<p>" + (TEXT * 10).encode() + b"</p>\r\n--in--\r\n"
            b"--out\r\nContent-Type: application/zip; name=\"report.zip\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=\"report.zip\"\r\n\r\n"
            + attached + b"--out--\r\n")


def cost(data, repeats):
    """The least CPU seconds of the analysis and both filters' judgements on C{data}."""
    extensions = frozenset(DEFAULT_BLOCKED_EXTENSIONS)
    best = None
    for _ in range(repeats):
        started = time.process_time()
        parsed = content.parse(data)
        broken_headers(parsed)
        blocked(parsed, extensions, frozenset())
        spent = time.process_time() - started
        best = spent if best is None else min(best, spent)
    return best


def main(repeats=20):
    for size in (5 << 10, 100 << 10, 5 << 20):
        data = message(size)
        print(f"{len(data):>9} bytes: {cost(data, repeats) * 1000:8.3f} ms")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
