"""
Slow clients against the real server with its default limits and timeouts
(issue 13, finding 1; a soak, not part of the test suite).

TRICKLERS connections from ADDRESSES loopback addresses (127.0.0.2, ...)
each read the greeting, then send one byte of a command line every EVERY
seconds, never its end; a trickler that is cut connects again at once, so
the pressure lasts the whole run (with --once it does not: then the run
shows how long the first crowd lasts). Every PROBE_EVERY seconds a client
from a fresh address (127.0.1.N) connects and waits for its greeting.

Prints how long the longest trickler connection lived, how many were cut
for a timeout and how many made room for another, and how many probes were
greeted. The goal: every probe greeted, no trickler kept over 120 s.

    python bench/slow_clients.py [--once] [smtp|pop3|imap] [SECONDS] [TRICKLERS] [ADDRESSES]
"""

import select
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.harness import MailServerProcess  # noqa: E402

EVERY = 10
PROBE_EVERY = 5
GREETINGS = {"smtp": b"220 ", "pop3": b"+OK", "imap": b"* OK"}


class Trickler:
    def __init__(self, address, source, reconnect):
        self.address, self.source, self.reconnect = address, source, reconnect
        self.open = True
        self.lifetimes = []
        self.reasons = []
        self.connect()

    def connect(self):
        self.socket = socket.create_connection(self.address, 10, source_address=(self.source, 0))
        self.socket.setblocking(False)
        self.opened = self.next_byte = time.monotonic()
        self.received = b""

    def step(self, now):
        if now >= self.next_byte:
            self.next_byte = now + EVERY
            try:
                self.socket.send(b"X")
            except OSError:
                return self.cut(now)
        try:
            data = self.socket.recv(4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if data:
            self.received += data
            return None
        return self.cut(now)

    def cut(self, now):
        self.lifetimes.append(now - self.opened)
        lines = self.received.splitlines()
        self.reasons.append(lines[-1].decode(errors="replace") if len(lines) > 1 else "(none)")
        self.socket.close()
        if self.reconnect:
            self.connect()
        else:
            self.open = False
        return self.lifetimes[-1]


def probe(address, protocol, n):
    started = time.monotonic()
    try:
        source = (f"127.0.1.{n % 250 + 1}", 0)
        with socket.create_connection(address, 10, source_address=source) as s:
            s.settimeout(10)
            line = s.makefile("rb").readline()
    except OSError as e:
        return False, f"error {e}", time.monotonic() - started
    return line.startswith(GREETINGS[protocol]), line.strip().decode(errors="replace"), \
        time.monotonic() - started


def main(argv):
    once = "--once" in argv
    argv = [a for a in argv if a != "--once"]
    protocol = argv[1] if len(argv) > 1 else "smtp"
    seconds = float(argv[2]) if len(argv) > 2 else 180
    count = int(argv[3]) if len(argv) > 3 else 300
    addresses = int(argv[4]) if len(argv) > 4 else 15
    server = MailServerProcess().start()
    try:
        address = server.address(protocol)
        sources = [f"127.0.0.{n}" for n in range(2, 2 + addresses)]
        tricklers = [Trickler(address, sources[i % addresses], not once) for i in range(count)]
        print(f"{protocol}: {count} tricklers from {addresses} addresses, one byte every "
              f"{EVERY} s, {'once' if once else 'reconnecting when cut'}; {seconds:g} s",
              flush=True)
        start = time.monotonic()
        next_probe, probes = start + PROBE_EVERY, []
        while time.monotonic() < start + seconds:
            live = [t for t in tricklers if t.open]
            select.select([t.socket for t in live], [], [], 0.5)
            now = time.monotonic()
            for t in live:
                t.step(now)
            if now >= next_probe:
                next_probe = now + PROBE_EVERY
                probes.append(probe(address, protocol, len(probes)))
        end = time.monotonic()
        lifetimes = [x for t in tricklers for x in t.lifetimes]
        still_open = [end - t.opened for t in tricklers if t.open]
        reasons = {}
        for t in tricklers:
            for reason in t.reasons:
                key = reason.split(" Error")[0].split(";")[0][:60]
                reasons[key] = reasons.get(key, 0) + 1
        greeted = [p for p in probes if p[0]]
        print(f"connections cut: {len(lifetimes)}; longest lived "
              f"{max(lifetimes or [0]):.1f} s; open now: {len(still_open)}, the oldest "
              f"{max(still_open, default=0):.1f} s")
        for reason, n in sorted(reasons.items(), key=lambda item: -item[1]):
            print(f"  {n:6d}  {reason}")
        print(f"fresh clients greeted: {len(greeted)} of {len(probes)}; slowest greeting "
              f"{max((p[2] for p in probes), default=0):.2f} s")
        for p in probes:
            if not p[0]:
                print(f"  refused: {p[1]}")
        for t in tricklers:
            if t.open:
                t.socket.close()
    finally:
        server.cleanup()


if __name__ == "__main__":
    main(sys.argv)
