"""
Do slow DNS blacklist lookups slow down unrelated connections? (issue 7)

Starts the real server on loopback and has one client on 127.0.0.1 send
MESSAGES messages, one connection each, three times:

1. filters off, nothing else going on (the baseline);
2. filters off, while BACKGROUND clients send as fast as they can from
   fresh 127.0.x.y addresses;
3. [antispam.dnsbl] on, with a zone whose answers take DELAY seconds, and
   the same background clients (each new address waits DELAY for its
   lookup; 127.0.0.1's answer is cached after a warm-up).

Prints the client's messages/s in each run and the ratio of run 3 to run
1 (the goal: at least 0.8).

    python bench/dnsbl_speed.py [MESSAGES]
"""

import smtplib
import sys
import threading
from pathlib import Path

import dns.message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.busy import foreground_rate  # noqa: E402
from tests.dnsserver import TinyDNSServer  # noqa: E402
from tests.integration.harness import MailServerProcess  # noqa: E402

DELAY = 0.5
BACKGROUND = 8
MESSAGE = "From: x@remote.test\r\nSubject: bench\r\n\r\nhello\r\n"


class SlowDNSServer(TinyDNSServer):
    """Answers every name under slow.test with 127.0.0.2, DELAY seconds late."""

    def _answer(self, query):
        name = query.question[0].name.to_text(omit_final_dot=True).lower()
        if not name.endswith(".slow.test"):
            return super()._answer(query)
        self.records[(name, "A")] = ["127.0.0.2"]
        reply = super()._answer(query)
        peer = self._peer
        threading.Timer(DELAY, self.socket.sendto, (reply.to_wire(), peer)).start()
        return None

    def _serve(self):
        while not self.closed:
            try:
                data, self._peer = self.socket.recvfrom(4096)
            except TimeoutError:
                continue
            reply = self._answer(dns.message.from_wire(data))
            if reply is not None:
                self.socket.sendto(reply.to_wire(), self._peer)


def send(server, source):
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=60,
                      source_address=(source, 0)) as client:
        client.sendmail("x@remote.test", ["alice@example.test"], MESSAGE)


def run(messages, antispam, background_clients):
    dns = SlowDNSServer({})
    server = MailServerProcess(extra={"dns": {"servers": [dns.address], "timeout": 5}})
    if antispam:
        with open(server.config, "a") as config:
            config.write('\n[antispam.dnsbl]\nlists = ["slow.test"]\naction = "none"\n')
    server.start()
    counter = iter(range(2, 1 << 16))

    def from_a_new_address():
        n = next(counter)
        send(server, f"127.0.{n // 250}.{n % 250 + 2}")

    try:  # (the warm-up caches the answer for 127.0.0.1)
        return foreground_rate(lambda: send(server, "127.0.0.1"), from_a_new_address,
                               background_clients, messages)
    finally:
        server.cleanup()
        dns.close()


def main():
    messages = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    idle = run(messages, antispam=False, background_clients=0)
    busy = run(messages, antispam=False, background_clients=BACKGROUND)
    slow = run(messages, antispam=True, background_clients=BACKGROUND)
    print(f"filters off, idle server: {idle:.1f} messages/s")
    print(f"filters off, {BACKGROUND} busy clients: {busy:.1f} messages/s")
    print(f"DNSBL on ({DELAY * 1000:.0f} ms zone), {BACKGROUND} slow clients: "
          f"{slow:.1f} messages/s")
    print(f"ratio to the idle server: {slow / idle:.2f}")


if __name__ == "__main__":
    main()
