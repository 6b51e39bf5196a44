"""
Fixtures for the SMTP tests: a MailServer over temporary directories with
the real directory, spool and Maildir store, and a connection driven
through a StringTransport. (No test cases here.)
"""

import dataclasses
from pathlib import Path

from twisted.internet import defer, task, threads
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransportWithDisconnection
from zope.interface import alsoProvides

from mailsrv.directory.passwords import hash_password
from mailsrv.service import build_mail_server
from mailsrv.smtp.server import build_factory
from tests.helpers import make_settings

PASSWORD = "correct horse"
_HASH = hash_password(PASSWORD)
USERS = ("alice@example.test", "bob@example.test")
ALIASES = "team@example.test: alice@example.test, bob@example.test\n" \
          "outside@example.test: carol@remote.test\n"

CLIENT_IP = "192.0.2.10"


class QueueRunnerSpy:
    """Counts wake() calls, and keeps what it is asked to bounce."""

    def __init__(self):
        self.wakes = 0
        self.bounces = []

    def wake(self):
        self.wakes += 1

    def bounce_refused(self, queue_id, sender, addresses, error, headers, client_ip, helo):
        self.bounces.append((sender, addresses, error, headers))
        return defer.succeed(None)


class TLSCapableTransport(StringTransportWithDisconnection):
    """A StringTransport that can "start TLS" and then says it is secure."""

    tls_context = None

    def startTLS(self, context):
        self.tls_context = context
        alsoProvides(self, ISSLTransport)


def run_threads_inline(testcase):
    """
    Make deferToThread (spool commit, password hashing) run at once, so a
    reply that waits on it is written before dataReceived returns.
    """
    testcase.patch(threads, "deferToThread",
                   lambda f, *args, **kwargs: defer.maybeDeferred(f, *args, **kwargs))


def make_mail_server(testcase, clock=None, more_users=(), **sections):
    """
    A MailServer like the service builds, over a fresh temporary directory,
    with users alice and bob (password L{PASSWORD}) in example.test, and
    C{more_users}.
    """
    root = Path(testcase.mktemp()).absolute()
    root.mkdir(parents=True)
    settings = make_settings(root, **sections)
    settings.users_file.write_text("".join(f"{u}:{_HASH}\n" for u in USERS + more_users))
    settings.aliases_file.write_text(ALIASES)
    server = build_mail_server(settings, clock or task.Clock())
    return dataclasses.replace(server, queue_runner=QueueRunnerSpy())


class Connection:
    """One client connection to a factory, fed bytes by the test."""

    def __init__(self, factory, ip=CLIENT_IP, secure=False):
        kind = IPv6Address if ":" in ip else IPv4Address
        self.transport = TLSCapableTransport(peerAddress=kind("TCP", ip, 40000))
        if secure:
            alsoProvides(self.transport, ISSLTransport)
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.transport.protocol = self.protocol
        self.protocol.makeConnection(self.transport)
        self.greeting = self.take()

    def take(self):
        """What the server wrote since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def send(self, data):
        """Feed C{data}; return what the server wrote in response."""
        self.protocol.dataReceived(data)
        return self.take()

    @property
    def closed(self):
        return not self.transport.connected


def connect(server, ip=CLIENT_IP, listener=0, secure=False):
    """A connection to C{server}'s listener number C{listener}."""
    factory = build_factory(server, server.settings.listeners[listener])
    return Connection(factory, ip, secure)


# Up to DATA: a message from a remote sender to alice.
TO_ALICE = (b"EHLO client.test\r\nMAIL FROM:<x@remote.test>\r\n"
            b"RCPT TO:<alice@example.test>\r\nDATA\r\n")


def send_to_alice(connection, message):
    """Send C{message} (CRLF lines) to alice: the reply to its final dot."""
    connection.send(TO_ALICE)
    return connection.send(message + b".\r\n")


def maildir_messages(server, user):
    """The contents of the files in C{user}'s INBOX new/, sorted."""
    new = Path(server.store.maildir(user)) / "new"
    if not new.exists():
        return []
    return sorted(p.read_bytes() for p in new.iterdir())


def files_on_disk(server):
    """Every file in the spool and in every Maildir: what a message left behind."""
    roots = [server.spool.root, server.settings.data_dir / "mail"]
    return sorted(p for root in roots if root.exists() for p in root.rglob("*") if p.is_file())
