"""
What does LIST-STATUS (RFC 5819) cost, and does it hold up other clients?

Writes FOLDERS folders of PER_FOLDER messages each (200 x 250 by default:
50,000 messages) straight into a user's Maildir, starts the real server
and measures with imaplib, after a restart (so every folder is loaded
from disk):

1. LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN SIZE)), the one round
   trip a client needs for every folder's counts;
2. the same again (the folders were let go: loaded again);
3. LIST, then one STATUS per folder, as a client without LIST-STATUS
   does;

while another connection sends NOOPs in a loop: the longest NOOP shows
how long the server's reactor was held at once.

    python bench/imap_liststatus.py [FOLDERS [PER_FOLDER]]
"""

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.imap_bigfolder import ALICE, build_folder  # noqa: E402
from tests.integration.harness import PASSWORD, MailServerProcess  # noqa: E402

STATUS = "(MESSAGES UNSEEN SIZE)"


def session(server):
    imap = server.imap()
    imap.login(ALICE, PASSWORD)
    return imap


class NoopPoller(threading.Thread):
    """NOOPs on their own connection until stopped; the longest round trip."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.imap = session(server)
        self.imap.select("INBOX")
        self.longest = 0.0
        self.running = True

    def run(self):
        while self.running:
            start = time.perf_counter()
            self.imap.noop()
            self.longest = max(self.longest, time.perf_counter() - start)
            time.sleep(0.005)


def measure(what, server, f):
    poller = NoopPoller(server)
    poller.start()
    start = time.perf_counter()
    result = f()
    elapsed = time.perf_counter() - start
    poller.running = False
    poller.join()
    poller.imap.logout()
    print(f"{what:<48} {elapsed:7.3f} s   longest NOOP meanwhile {poller.longest * 1000:6.0f} ms")
    return result


def list_status(imap):
    typ, data = imap.list('""', '"*" RETURN (STATUS ' + STATUS + ")")
    assert typ == "OK", data
    statuses = imap.untagged_responses.pop("STATUS", [])
    assert len(statuses) == len(data), (len(statuses), len(data))
    return data


def list_then_status(imap):
    typ, data = imap.list()
    names = [line.rsplit(b' "/" ', 1)[1].strip(b'"').decode() for line in data]
    for name in names:
        typ, status = imap.status('"%s"' % name, STATUS)
        assert typ == "OK", status
    return names


if __name__ == "__main__":
    folders = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    per_folder = int(sys.argv[2]) if len(sys.argv) > 2 else 250
    server = MailServerProcess()
    try:
        root = server.data_dir / "mail" / "example.test" / "alice"
        start = time.perf_counter()
        for n in range(folders):
            build_folder(root / f".Folder{n:04d}", per_folder)
            (root / f".Folder{n:04d}" / "maildirfolder").touch()
        print(f"wrote {folders} folders x {per_folder} messages in "
              f"{time.perf_counter() - start:.1f} s")
        server.start()
        first = session(server)  # indexes the folders once (first UIDs)
        list_status(first)
        first.logout()
        server.stop()
        server.start()
        imap = session(server)
        measure("LIST-STATUS, after a restart", server, lambda: list_status(imap))
        measure("LIST-STATUS again", server, lambda: list_status(imap))
        names = measure("LIST, then STATUS of each folder", server,
                        lambda: list_then_status(imap))
        print(f"{len(names)} folders listed")
        imap.logout()
    finally:
        server.cleanup()
