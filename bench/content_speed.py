"""
What the content filters cost (issue 17), two ways.

1. In process, per message: the whole body hook with every content filter
   on, configured as `python -m bench --mailsrv-content-filters` has them
   (bench/systems.py content_filter_tables): the shared analysis and the
   six filters' judgements, through L{mailsrv.policy.hooks.Message} as the
   server runs them. Two shapes of about 5 KB, 100 KB and 5 MB: a
   newsletter (text and HTML alternatives with links, tables and images
   making up the size: the text filters' worst case) and a short text
   with a base64 zip attachment making up the size. The least CPU time of
   REPEATS runs, the caches of earlier runs cleared (a message seen for
   the first time).

2. Through the real server: does judging big messages slow other clients?
   One client on 127.0.0.1 sends small messages, one connection each, as
   bench/dnsbl_speed.py does for slow DNS: on an idle server, then while
   BACKGROUND clients send 5 MB newsletters as fast as they can, with the
   filters off and then on. A 5 MB message is judged in a thread
   (hooks.INLINE), so with the filters on the small client should keep
   about the rate it has with them off under the same load.

    python bench/content_speed.py [REPEATS [MESSAGES]]    (REPEATS 0: part 2 only)
"""

import base64
import io
import smtplib
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import task  # noqa: E402

from bench.busy import foreground_rate  # noqa: E402
from bench.systems import content_filter_tables  # noqa: E402
from mailsrv import config  # noqa: E402
from mailsrv.policy import hooks, htmltext, reading, urlhost  # noqa: E402
from mailsrv.policy.listener import content_filters  # noqa: E402
from tests.integration.harness import MailServerProcess  # noqa: E402

SIZES = (5 << 10, 100 << 10, 5 << 20)
BACKGROUND = 2
SMALL = "From: x@remote.test\r\nSubject: bench\r\n\r\nhello\r\n"
TEXT = "Hello, here is the report we talked about. Regards, Alice.\r\n"
TOP = (b"From: News <news@remote.test>\r\nTo: bob@example.test\r\nSubject: This week\r\n"
       b"Date: Sun, 6 Dec 2026 10:00:00 +0000\r\nMessage-ID: <n1@remote.test>\r\n"
       b"MIME-Version: 1.0\r\n")


def newsletter(size):
    """About C{size} bytes of text/plain and text/html alternatives, half each."""
    paragraph = ("Our <b>team</b> met the customers in the north office this week; "
                 "read the <a href=\"https://news.example.com/item?id={n}\">whole story</a> "
                 "and see the <img src=\"https://img.example.com/{n}.png\" alt=\"photo\"> "
                 "pictures.\r\n")
    plain_paragraph = ("Our team met the customers in the north office this week; read the "
                       "whole story at https://news.example.com/item?id={n}\r\n")
    count = max(1, size // (len(paragraph) + len(plain_paragraph) + 16))
    html = ("<html><body><table><tr><td>"
            + "".join("<p>" + paragraph.format(n=n) + "</p>" for n in range(count))
            + "</td></tr></table></body></html>\r\n")
    plain = "".join(plain_paragraph.format(n=n) for n in range(count))
    return (TOP + b"Content-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n"
            b"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + plain.encode()
            + b"\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html.encode()
            + b"--alt--\r\n")


def with_attachment(size):
    """A short text and HTML, and a base64 zip attachment making up C{size} bytes."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.writestr("report.pdf", bytes(range(256)) * max(1, (size - 2600) * 3 // 4 // 256))
        z.writestr("notes.txt", b"notes")
    attached = base64.encodebytes(archive.getvalue()).replace(b"\n", b"\r\n")
    return (TOP + b"Content-Type: multipart/mixed; boundary=\"out\"\r\n\r\n"
            b"--out\r\nContent-Type: multipart/alternative; boundary=\"in\"\r\n\r\n"
            b"--in\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
            + (TEXT * 10).encode() + b"\r\n--in\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            b"<p>" + (TEXT * 10).encode() + b"</p>\r\n--in--\r\n"
            b"--out\r\nContent-Type: application/zip; name=\"report.zip\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=\"report.zip\"\r\n\r\n"
            + attached + b"--out--\r\n")


def every_filter(directory):
    """The body hook's checks with every content filter on, as the bench's server has them."""
    tables = content_filter_tables(directory)
    data = {"server": {"hostname": "mail.example.test", "data_dir": str(Path(directory) / "var")},
            "domains": {"local": ["example.test"]},
            "antispam": {name.split(".", 1)[1]: table for name, table in tables.items()}}
    settings = config.parse(data, Path(directory) / "mailsrv.toml")
    return content_filters(settings.antispam, task.Clock())


def judge_once(checks, data):
    """Every check's verdict on C{data}, as the body hook asks them (threads run inline)."""
    htmltext.read_html.cache_clear()
    reading._decoded_fields.cache_clear()
    urlhost.host_of.cache_clear()
    message = hooks.Message(len(data), lambda: io.BytesIO(data))
    limits = hooks.INLINE, hooks.INLINE_HTML
    hooks.INLINE = hooks.INLINE_HTML = len(data)  # (the work, not the thread hops)
    try:
        return [check.check(None, None, message) for check in checks]
    finally:
        hooks.INLINE, hooks.INLINE_HTML = limits


def cost(checks, data, repeats):
    """The least CPU seconds of L{judge_once} on C{data}."""
    best = None
    for _ in range(repeats):
        started = time.process_time()
        judge_once(checks, data)
        spent = time.process_time() - started
        best = spent if best is None else min(best, spent)
    return best


def send(server, data):
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=120) as client:
        client.sendmail("x@remote.test", ["alice@example.test"], data)


def small_client_rate(messages, filters, background_clients):
    """Messages/s of one client sending small messages while others send 5 MB newsletters."""
    server = MailServerProcess()
    if filters:
        tables = content_filter_tables(server.dir)
        with open(server.config, "a") as f:
            for name, table in tables.items():
                f.write(f"\n[{name}]\n" + "".join(
                    f'{key} = "{value}"\n' for key, value in table.items()))
    server.start()
    big = newsletter(5 << 20)
    try:
        return foreground_rate(lambda: send(server, SMALL), lambda: send(server, big),
                               background_clients, messages)
    finally:
        server.cleanup()


def main(repeats=10, messages=200):
    checks = every_filter(tempfile.mkdtemp(prefix="mailsrv-content-speed-"))
    print("1. Every content filter on, in process (least CPU time of "
          f"{repeats} runs), ms a message:")
    for shape in (newsletter, with_attachment) if repeats else ():
        for size in SIZES:
            data = shape(size)
            print(f"   {shape.__name__:16} {len(data):>9} bytes: "
                  f"{cost(checks, data, repeats) * 1000:9.3f} ms", flush=True)
    print(f"2. One client's small messages/s, {BACKGROUND} others sending 5 MB newsletters:")
    idle = small_client_rate(messages, filters=True, background_clients=0)
    print(f"   filters on, idle server: {idle:.1f}", flush=True)
    off = small_client_rate(messages, filters=False, background_clients=BACKGROUND)
    print(f"   filters off, busy: {off:.1f}", flush=True)
    on = small_client_rate(messages, filters=True, background_clients=BACKGROUND)
    print(f"   filters on, busy: {on:.1f}")
    print(f"   ratio on/off under the same load: {on / off:.2f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
