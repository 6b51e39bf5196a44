"""
How many messages a second can this disk take, written as mailsrv writes
them? (issue 22: why a second worker does not raise SMTP intake on disk)

Each message is written the way local intake writes it (mailsrv's own
functions, no server): a 4 KB spool file written and fsync'd, linked into
one Maildir's new/, new/ fsync'd, the spool file removed. THREADS threads
do that at once for SECONDS each, in a temporary folder under DIRECTORY
(default: the system's temporary folder, where the bench's servers keep
their data), for 1, 2, 4, 8 and 16 threads.

    python bench/fsync_speed.py [DIRECTORY [SECONDS]]

The rate at 20-odd threads is about the most any number of server
processes can accept on this disk with 20 clients; on tmpfs (/dev/shm) an
fsync costs nothing and the CPU is the limit instead.
"""

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailsrv.store.delivery import deliver_file, write_file  # noqa: E402

MESSAGE = b"x" * 4096


def rate(directory, threads, seconds):
    """Messages a second that C{threads} threads wrote in C{seconds}."""
    root = Path(tempfile.mkdtemp(prefix="fsync-speed-", dir=directory))
    (root / "spool").mkdir()
    maildir = str(root / "Maildir")
    written = [0] * threads
    stop = time.monotonic() + seconds

    def write(number):
        count = 0
        while time.monotonic() < stop:
            spooled = root / "spool" / f"{number}.{count}"
            write_file(spooled, MESSAGE, fsync=True)
            deliver_file(str(spooled), [maildir])
            os.unlink(spooled)
            count += 1
        written[number] = count

    workers = [threading.Thread(target=write, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for path in sorted(root.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    root.rmdir()
    return sum(written) / seconds


def main(argv):
    directory = argv[1] if len(argv) > 1 else tempfile.gettempdir()
    seconds = float(argv[2]) if len(argv) > 2 else 3
    print(f"# messages a second written as local intake writes them, in {directory}")
    for threads in (1, 2, 4, 8, 16):
        print(f"{threads:3} threads: {rate(directory, threads, seconds):8.0f} msg/s", flush=True)


if __name__ == "__main__":
    main(sys.argv)
