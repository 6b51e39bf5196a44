"""
A tiny authoritative DNS server on 127.0.0.1 for tests, so that no lookup
leaves loopback. It runs in a thread (integration tests block the test
thread with real clients) and answers from a dict; names listed in
C{silent} get no answer (a timeout), names in C{failing} get SERVFAIL.
"""

import socket
import threading

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

TTL = 300


class TinyDNSServer:
    """
    @param records: C{{(name, type): [text, ...]}}, e.g.
        C{{("mx.example.test", "A"): ["127.0.0.1"]}}; a name with no entry
        at all is NXDOMAIN, a name with other types only is "no data".
    """

    def __init__(self, records, silent=(), failing=()):
        self.records = {(n.lower().rstrip("."), t): v for (n, t), v in records.items()}
        self.silent = set(silent)
        self.failing = set(failing)
        self.queries = []
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.1)
        self.closed = False
        self.port = self.socket.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self):
        """For C{[dns] servers}."""
        return f"127.0.0.1:{self.port}"

    def _serve(self):
        while not self.closed:
            try:
                data, peer = self.socket.recvfrom(4096)
            except TimeoutError:
                continue
            reply = self._answer(dns.message.from_wire(data))
            if reply is not None:
                self.socket.sendto(reply.to_wire(), peer)

    def _answer(self, query):
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if name in self.silent:
            return None
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        if name in self.failing:
            reply.set_rcode(dns.rcode.SERVFAIL)
        elif (name, rdtype) in self.records:
            values = self.records[(name, rdtype)]
            reply.answer.append(dns.rrset.from_text_list(question.name, TTL, "IN", rdtype, values))
        elif not any(n == name for n, _ in self.records):
            reply.set_rcode(dns.rcode.NXDOMAIN)
        return reply

    def close(self):
        self.closed = True
        self.thread.join(5)
        self.socket.close()
