"""
Twisted's own ESMTP protocol (twisted.mail.smtp) with a minimal
IMessageDelivery that writes Maildir files: what the stock `twistd mail`
would do if its Maildir domain worked on Python 3 (it does not: see
docs/performance.md). The message is written to C{tmp/}, fsync'd in the
reactor's thread pool, linked into C{new/} of each recipient and C{new/}
fsync'd before the 250, as mailsrv does.

    python -m bench.peers.twisted_smtp_maildir --port P --root DIR --users a,b
"""

import argparse
import os

from twisted.internet import defer, endpoints, reactor, threads
from twisted.mail import smtp
from zope.interface import implementer

from bench.peers.aiosmtpd_maildir import deliver


@implementer(smtp.IMessage)
class Message:
    def __init__(self, maildirs):
        self.maildirs = maildirs
        self.lines = []

    def lineReceived(self, line):
        self.lines.append(line)

    def eomReceived(self):
        self.lines.append(b"")
        data = b"\r\n".join(self.lines)
        return threads.deferToThread(deliver, data, self.maildirs).addCallback(
            lambda _: b"queued")

    def connectionLost(self):
        self.lines = []


@implementer(smtp.IMessage)
class NullMessage:
    """The other recipients of a transaction: the first one's Message writes."""

    def lineReceived(self, line):
        pass

    def eomReceived(self):
        return defer.succeed(b"queued")

    def connectionLost(self):
        pass


@implementer(smtp.IMessageDelivery)
class Delivery:
    def __init__(self, root, domain, users):
        self.root, self.domain, self.users = root, domain, set(users)
        self.maildirs = []

    def receivedHeader(self, helo, origin, recipients):
        return None

    def validateFrom(self, helo, origin):
        self.maildirs = []
        return origin

    def validateTo(self, user):
        local = user.dest.local.decode().lower()
        if user.dest.domain.decode().lower() != self.domain or local not in self.users:
            raise smtp.SMTPBadRcpt(user)
        self.maildirs.append(os.path.join(self.root, self.domain, local))
        if len(self.maildirs) == 1:
            maildirs = self.maildirs  # complete by the time DATA ends
            return lambda: Message(maildirs)
        return NullMessage


class ESMTP(smtp.ESMTP):
    def connectionMade(self):
        self.transport.setTcpNoDelay(True)  # as mailsrv does; else replies wait on Nagle
        super().connectionMade()


class Factory(smtp.SMTPFactory):
    protocol = ESMTP

    def __init__(self, delivery_args):
        super().__init__()
        self.delivery_args = delivery_args

    def buildProtocol(self, addr):
        p = super().buildProtocol(addr)
        p.delivery = Delivery(*self.delivery_args)
        p.host = b"twisted.bench.test"
        return p


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--domain", default="example.test")
    parser.add_argument("--users", required=True)
    args = parser.parse_args()
    users = args.users.split(",")
    for user in users:
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(args.root, args.domain, user, sub), exist_ok=True)
    reactor.suggestThreadPoolSize(10)
    # Twisted's default listen backlog (50), as mailsrv has.
    endpoint = endpoints.TCP4ServerEndpoint(reactor, args.port, interface="127.0.0.1")
    endpoint.listen(Factory((args.root, args.domain, users)))
    reactor.run()


if __name__ == "__main__":
    main()
