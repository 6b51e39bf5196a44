"""
imaptest's stress mode against the real server while SMTP delivers into the
same INBOX (issue 14's acceptance run; a soak, not part of the test suite,
which runs a 20 s stress without deliveries: tests/integration/test_imaptest.py).

Ten imaptest clients run random commands on one mailbox for SECONDS, every
reply checked against what the others did; meanwhile one SMTP client
delivers a message every 100 ms to the same user. Prints imaptest's error
count (by kind), the deliveries, and the server log's tracebacks and index
rebuilds. The goal: 0 of each, with and without pipelining.

    python bench/imap_stress.py [SECONDS] [no_pipelining] [nodeliver]

imaptest must be built first: tests/imaptest/build.sh.
"""

import collections
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.harness import PASSWORD, MailServerProcess  # noqa: E402
from tests.integration.test_imaptest import IMAPTEST, VENDORED  # noqa: E402

USER = "stress@example.test"
DELIVERY_EVERY = 0.1


def deliver_until(server, stop, sent, errors):
    """Send to USER every DELIVERY_EVERY seconds until C{stop} is set."""
    while not stop.is_set():
        try:
            client = server.smtp()
            while not stop.is_set():
                client.sendmail("a@example.org", [USER],
                                b"Subject: d%d\r\nFrom: a@example.org\r\n\r\nbody\r\n" % sent[0])
                sent[0] += 1
                time.sleep(DELIVERY_EVERY)
            client.quit()
        except Exception as e:  # a soak reports what went wrong and goes on
            errors.append(repr(e))
            time.sleep(DELIVERY_EVERY)


def main(argv):
    seconds = next((a for a in argv if a.isdigit()), "60")
    deliver = "nodeliver" not in argv
    extra = [a for a in argv if a == "no_pipelining"]
    if not IMAPTEST.exists():
        sys.exit(f"{IMAPTEST} is missing: run tests/imaptest/build.sh first")
    server = MailServerProcess(users=(USER,))
    server.start()
    stop, sent, errors = threading.Event(), [0], []
    try:
        mbox = tempfile.mktemp(suffix=".mbox")
        subprocess.run([sys.executable, str(VENDORED / "gen_mbox.py"), mbox, "50"], check=True)
        if deliver:
            threading.Thread(target=deliver_until, args=(server, stop, sent, errors),
                             daemon=True).start()
        run = subprocess.run(
            [str(IMAPTEST), "host=127.0.0.1", f"port={server.ports['imap']}",
             f"pass={PASSWORD}", f"user={USER}", f"mbox={mbox}", "clients=10",
             f"secs={seconds}", *extra],
            capture_output=True, text=True, timeout=int(seconds) + 120)
        stop.set()
        lines = (run.stdout + run.stderr).splitlines()
        failures = [line for line in lines if line.startswith("Error:")]
        kinds = collections.Counter(re.sub(r"\[\d+\]|\d+", "N", line)[:90] for line in failures)
        for kind, count in kinds.most_common(15):
            print(count, kind)
        log = server.log_text()
        print(f"imaptest errors: {len(failures)}")
        print(f"delivered: {sent[0]}; SMTP errors: {errors[:5]}")
        print(f"server log: {log.count('Traceback')} tracebacks, "
              f"{log.count('rebuilding')} rebuilds, {log.count('new UIDVALIDITY')} new UIDVALIDITY")
    finally:
        stop.set()
        server.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
