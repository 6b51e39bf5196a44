"""
How does IMAP cope with a big folder? (issue 8)

Writes COUNT messages (50,000 by default) straight into a user's INBOX
Maildir, as delivery would, starts the real server and measures with
imaplib, each in a fresh connection:

1. the first SELECT, which gives the messages their UIDs and writes the
   index (a one-time cost);
2. SELECT once the index exists (goal: under 1 s), with the server
   restarted so that nothing is cached in the process;
3. UID FETCH 1:* (FLAGS) (goal: under 2 s);
4. SEARCH HEADER X-Bench-Tag (goal: under 3 s), a field the header cache
   does not keep, so every file is read;
5. SEARCH SUBJECT twice: the first fills the header cache (reads every
   file), the second answers from it (goal: under 0.2 s);

and the server's resident memory before the folder is opened and while
it is open (goal: grows by less than 50 MB). Prints the figures.

    python bench/imap_bigfolder.py [COUNT]
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.harness import PASSWORD, MailServerProcess  # noqa: E402

ALICE = "alice@example.test"
BODY = b"".join(b"line %d of a message body that goes on for a while\r\n" % n
                for n in range(40))


def message(n):
    tag = b"special" if n % 1000 == 0 else b"common"
    return (
        b"Return-Path: <sender%d@remote.test>\r\n" % n
        + b"Received: from client.remote.test by mail.example.test; "
          b"Mon, 23 Nov 2026 09:00:00 +0000\r\n"
        + b"From: Sender %d <sender%d@remote.test>\r\n" % (n, n)
        + b"To: Alice <alice@example.test>\r\n"
        + b"Subject: message number %d\r\n" % n
        + b"Date: Mon, 23 Nov 2026 09:00:00 +0000\r\n"
        + b"Message-ID: <%d@remote.test>\r\n" % n
        + b"X-Bench-Tag: " + tag + b"\r\n"
        + b"\r\n" + BODY
    )


def build_folder(maildir, count):
    """Write COUNT messages into cur/ with Maildir names, a tenth of them seen."""
    for sub in ("cur", "new", "tmp"):
        os.makedirs(maildir / sub, exist_ok=True)
    start = int(time.time()) - count
    for n in range(count):
        data = message(n)
        flags = "S" if n % 10 else ""
        name = f"{start + n}.M{n}P1Q{n}.bench,S={len(data)}:2,{flags}"
        with open(maildir / "cur" / name, "wb") as f:
            f.write(data)


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def timed(what, f):
    start = time.perf_counter()
    result = f()
    elapsed = time.perf_counter() - start
    print(f"{what:<40} {elapsed:7.3f} s")
    return result, elapsed


def session():
    imap = server.imap()
    imap.login(ALICE, PASSWORD)
    return imap


def select(imap):
    typ, data = imap.select("INBOX")
    assert typ == "OK", data
    return int(data[0])


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    server = MailServerProcess()
    try:
        maildir = server.data_dir / "mail" / "example.test" / "alice"
        _, build = timed(f"write {count} messages to disk", lambda: build_folder(maildir, count))
        server.start()
        exists, _ = timed("first SELECT (assigns UIDs)", lambda: select(session()))
        assert exists == count, exists
        server.stop()
        server.start()
        before = rss_mb(server.process.pid)
        imap = session()
        _, select_time = timed("SELECT", lambda: select(imap))
        (typ, data), fetch_time = timed("UID FETCH 1:* (FLAGS)",
                                        lambda: imap.uid("FETCH", "1:*", "(FLAGS)"))
        assert len(data) == count, len(data)
        (typ, data), search_time = timed(
            "SEARCH HEADER X-Bench-Tag special",
            lambda: imap.search(None, "HEADER", "X-Bench-Tag", "special"))
        assert len(data[0].split()) == (count + 999) // 1000, data
        for what in ("fills the cache", "from the cache"):
            (typ, data), subject_time = timed(
                f'SEARCH SUBJECT "number 4" ({what})',
                lambda: imap.search(None, "SUBJECT", '"number 4"'))
            assert typ == "OK" and data[0], data
        during = rss_mb(server.process.pid)
        imap.logout()
        print(f"{'server RSS before / with the folder open':<40} "
              f"{before:7.1f} / {during:.1f} MB (+{during - before:.1f} MB)")
        goals = [("SELECT < 1 s", select_time < 1), ("FETCH FLAGS < 2 s", fetch_time < 2),
                 ("SEARCH HEADER < 3 s", search_time < 3),
                 ("SEARCH SUBJECT from the cache < 0.2 s", subject_time < 0.2),
                 ("RSS growth < 50 MB", during - before < 50)]
        print("goals: " + ", ".join(f"{name}: {'met' if ok else 'MISSED'}"
                                    for name, ok in goals))
    finally:
        server.cleanup()
