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
6. a QRESYNC resync (RFC 7162): another session changes 10 messages (6
   flag changes, 4 expunges), then a fresh connection sends ENABLE
   QRESYNC and SELECT INBOX (QRESYNC (uidvalidity modseq 1:N)) (goal:
   under 50 ms, a reply of only those changes): right after the changes
   (the SELECT lists cur/ again, changed under 2 s ago), once the folder
   has settled (another session's NOOP listed it), and after a restart
   (the index read again); beside it, the bytes a client without QRESYNC
   fetches to learn the same (UID FETCH 1:* (FLAGS));

and the server's resident memory before the folder is opened and while
it is open (goal: grows by less than 50 MB). Prints the figures.

    python bench/imap_bigfolder.py [COUNT]
    python bench/imap_bigfolder.py --dovecot [COUNT]   (step 5 against Dovecot)
"""

import os
import re
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailsrv.store.folder import SETTLED  # noqa: E402
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


class RawIMAP:
    """A client that sends command lines and keeps the exact bytes of each reply."""

    def __init__(self, port, user, password):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buffer = b""
        self.tags = 0
        self.read_until(b"* OK")
        self.command(b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))

    def read_until(self, start):
        """The bytes up to and including the first line that starts with C{start}."""
        pos = 0
        while True:
            end = self.buffer.find(b"\r\n", pos)
            if end < 0:
                data = self.sock.recv(1 << 20)
                if not data:
                    raise ConnectionError(self.buffer[-200:])
                self.buffer += data
            elif self.buffer.startswith(start, pos):
                reply, self.buffer = self.buffer[:end + 2], self.buffer[end + 2:]
                return reply
            else:
                pos = end + 2

    def command(self, line):
        self.tags += 1
        tag = b"q%d" % self.tags
        self.sock.sendall(tag + b" " + line + b"\r\n")
        reply = self.read_until(tag + b" ")
        last = reply[reply.rfind(tag + b" "):]
        assert last.startswith(tag + b" OK"), last
        return reply

    def close(self):
        self.sock.close()


def _code(reply, name):
    return int(re.search(rb"\[" + name + rb" (\d+)\]", reply).group(1))


def change_ten(port, user, password, count):
    """
    In one session: 6 flag changes and 4 expunges, spread over the
    folder. Returns C{(session, uidvalidity, modseq before, UIDNEXT)}: the
    session stays open, so the folder stays loaded in the server.
    """
    changer = RawIMAP(port, user, password)
    reply = changer.command(b"SELECT INBOX (CONDSTORE)")
    uidvalidity, uidnext = _code(reply, b"UIDVALIDITY"), _code(reply, b"UIDNEXT")
    modseq = _code(reply, b"HIGHESTMODSEQ")
    step = count // 10
    flagged = b",".join(b"%d" % (step * i + 3) for i in range(6))
    doomed = b",".join(b"%d" % (step * i + 7) for i in range(6, 10))
    changer.command(b"UID STORE " + flagged + b" +FLAGS.SILENT (\\Flagged)")
    changer.command(b"UID STORE " + doomed + b" +FLAGS.SILENT (\\Deleted)")
    changer.command(b"UID EXPUNGE " + doomed)
    return changer, uidvalidity, modseq, uidnext


def qresync(port, user, password, uidvalidity, modseq, uidnext):
    """A fresh connection's ENABLE QRESYNC + SELECT (QRESYNC ...): seconds, reply."""
    client = RawIMAP(port, user, password)
    start = time.perf_counter()
    client.command(b"ENABLE QRESYNC")
    reply = client.command(b"SELECT INBOX (QRESYNC (%d %d 1:%d))"
                           % (uidvalidity, modseq, uidnext - 1))
    elapsed = time.perf_counter() - start
    client.close()
    assert reply.count(b" FETCH (") == 6 and b"VANISHED (EARLIER)" in reply, reply
    return elapsed, reply


def full_flags_bytes(port, user, password):
    """What a client without QRESYNC fetches to see the same: every message's flags."""
    client = RawIMAP(port, user, password)
    client.command(b"SELECT INBOX")
    reply = client.command(b"UID FETCH 1:* (FLAGS)")
    client.close()
    return len(reply)


def qresync_runs(port, user, password, count, name):
    """Step 5: right after the changes, then settled. The changer session and the settled time."""
    changer, *state = change_ten(port, user, password, count)
    report_qresync(f"{name}QRESYNC right after 10 changes", *qresync(port, user, password, *state))
    time.sleep(SETTLED + 0.5)
    changer.command(b"NOOP")  # lists the settled folder: the next SELECT need not
    elapsed, reply = qresync(port, user, password, *state)
    report_qresync(f"{name}QRESYNC after 10 changes, settled", elapsed, reply)
    return changer, state, elapsed


def report_qresync(label, elapsed, reply):
    print(f"{label:<40} {elapsed * 1000:7.1f} ms, SELECT reply {len(reply)} bytes")
    for line in reply.split(b"\r\n"):
        if line.startswith(b"* VANISHED"):
            print(f"{'':<40} {line.decode()}")


def dovecot_qresync(count):
    """Step 5 against Dovecot (bench/systems.py starts it; root needed)."""
    from bench.systems import DOMAIN, PASSWORD as DOVECOT_PASSWORD, Dovecot

    system = Dovecot(tempfile.mkdtemp(prefix="qresync-"), ["alice"], install=False)
    system.ensure_installed()
    maildir = system.maildir("alice")
    build_folder(maildir, count)
    owner = system.mailbox_owner()
    for path in [maildir.parent, *maildir.rglob("*"), maildir]:
        os.chown(path, *owner)
    system.start()
    try:
        port, user = system.ports["imap"], f"alice@{DOMAIN}"
        timed("first SELECT (Dovecot indexes)",
              lambda: RawIMAP(port, user, DOVECOT_PASSWORD).command(b"SELECT INBOX"))
        changer, _, _ = qresync_runs(port, user, DOVECOT_PASSWORD, count, "Dovecot ")
        changer.close()
    finally:
        system.stop()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--dovecot"]
    count = int(args[0]) if args else 50_000
    if "--dovecot" in sys.argv:
        dovecot_qresync(count)
        sys.exit(0)
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
        port = server.ports["imap"]
        changer, state, warm_time = qresync_runs(port, ALICE, PASSWORD, count, "")
        print(f"{'without QRESYNC: UID FETCH 1:* (FLAGS)':<40} "
              f"{full_flags_bytes(port, ALICE, PASSWORD)} bytes")
        changer.close()
        server.stop()
        server.start()
        report_qresync("QRESYNC after a restart (index read)",
                       *qresync(server.ports["imap"], ALICE, PASSWORD, *state))
        print(f"{'server RSS before / with the folder open':<40} "
              f"{before:7.1f} / {during:.1f} MB (+{during - before:.1f} MB)")
        goals = [("SELECT < 1 s", select_time < 1), ("FETCH FLAGS < 2 s", fetch_time < 2),
                 ("SEARCH HEADER < 3 s", search_time < 3),
                 ("SEARCH SUBJECT from the cache < 0.2 s", subject_time < 0.2),
                 ("RSS growth < 50 MB", during - before < 50),
                 ("QRESYNC < 50 ms", warm_time < 0.05)]
        print("goals: " + ", ".join(f"{name}: {'met' if ok else 'MISSED'}"
                                    for name, ok in goals))
    finally:
        server.cleanup()
