"""
[antispam.clamav]: the message scanned by a real clamd over its socket
(unix or TCP), with its INSTREAM command: C{zINSTREAM\\0}, then the
message in chunks, each after its length (4 bytes, big-endian), then a
chunk of length 0; clamd answers one line ending in NUL: C{stream: OK},
C{stream: NAME FOUND}, or C{... ERROR}.

clamd decodes the MIME parts (base64, quoted-printable) and opens the
archives itself: it reads the message as the client sent it, as the
content filters do, and costs no parse of ours (it needs none of them).
The message is read a chunk at a time, and the next chunk only when the
socket has taken the last one (the scanner is the transport's pull
producer): at most one chunk of it is in memory here. A small message is
read on the reactor thread (it is in memory, L{hooks.INLINE}), a bigger
one in a thread per chunk (it may be on disk).

When clamd cannot say (no connection, no answer in time, an ERROR reply,
the connection closed early), the admin's C{on_error} decides: C{tempfail}
(451: the client sends again later) or C{accept} (the message goes
through, unscanned, its X-Mailsrv-Spam saying so); one log line names the
endpoint and what went wrong.
"""

import struct

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IPullProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from mailsrv.logtext import printable
from mailsrv.policy.scanning import DaemonScanner, MessageChunks, ScanError
from mailsrv.policy.verdict import Verdict

# A reply longer than this without its NUL is not clamd's.
MAX_REPLY = 4096
INSTREAM = b"zINSTREAM\0"
END_OF_STREAM = struct.pack(">I", 0)


def parse_reply(reply):
    """
    What clamd's reply (without its NUL) says: the name of what it found,
    or L{None} for a clean message.

    @raise ScanError: for an ERROR reply, or any it does not give.
    """
    text = reply.decode("ascii", "replace").strip()
    if text == "stream: OK":
        return None
    if text.startswith("stream: ") and text.endswith(" FOUND"):
        name = text[len("stream: "):-len(" FOUND")].strip()
        if name:
            return printable(name)
    raise ScanError(f"clamd answered {printable(text)!r}")


@implementer(IPullProducer)
class InstreamClient(protocol.Protocol):
    """
    One INSTREAM scan on one connection; the transport's pull producer
    (it asks for the next chunk when it has sent the last).

    @ivar result: a Deferred of clamd's reply (bytes, without its NUL);
        it fails with L{ScanError} when the connection ends first, or as
        reading the message failed. Cancelling it aborts the connection.
    """

    def __init__(self, chunks):
        self.chunks = chunks
        self.result = defer.Deferred(lambda _: self._abort())
        self._reply = bytearray()
        self._reading = False
        self._producing = False

    def connectionMade(self):
        self.transport.write(INSTREAM)
        self._producing = True
        self.transport.registerProducer(self, False)

    def resumeProducing(self):
        if self._producing and not self._reading:
            self._reading = True
            self.chunks.next().addCallbacks(self._send, self._read_failed)

    def stopProducing(self):
        self._producing = False

    def _send(self, chunk):
        self._reading = False
        if not self._producing:  # (answered or closed meanwhile)
            return
        if not chunk:
            self._stop_producing()
            self.transport.write(END_OF_STREAM)
            return
        self.transport.writeSequence([struct.pack(">I", len(chunk)), chunk])

    def _read_failed(self, failure):
        self._reading = False
        self._done(failure)
        self._abort()

    def dataReceived(self, data):
        if self.result.called:
            return
        self._reply += data
        end = self._reply.find(b"\0")
        if end >= 0:
            self._done(bytes(self._reply[:end]))
            self.transport.loseConnection()
        elif len(self._reply) > MAX_REPLY:
            self._done(ScanError(f"no reply end in {MAX_REPLY} bytes"))
            self._abort()

    def connectionLost(self, reason):
        self._producing = False
        if not self.result.called:
            self._done(ScanError(f"connection closed before the reply "
                                 f"({reason.getErrorMessage()})"))

    def _done(self, outcome):
        self._stop_producing()
        self.chunks.close()
        if not self.result.called:
            if isinstance(outcome, (Exception, Failure)):
                self.result.errback(outcome)
            else:
                self.result.callback(outcome)

    def _stop_producing(self):
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()

    def _abort(self):
        self._stop_producing()
        self.chunks.close()
        self.transport.abortConnection()


class _OneScan(protocol.Factory):
    """
    The factory of one connection's L{InstreamClient}: quiet (a factory's
    start and stop would be two log lines per message).
    """

    noisy = False

    def __init__(self, client):
        self.client = client

    def buildProtocol(self, addr):
        return self.client


class ClamAVScanner(DaemonScanner):
    """
    A body check: the message is spam (a virus) when clamd finds something
    in it.

    @param endpoint: the client endpoint of clamd's socket.
    @param name: how the log names it (the endpoint's string).
    @param args: L{DaemonScanner}'s, after C{where}.
    """

    token = "clamav"

    def __init__(self, endpoint, name, *args, **kwargs):
        super().__init__(name, *args, **kwargs)
        self.endpoint = endpoint

    def check(self, session, transaction, message):
        chunks = MessageChunks(message, self.in_thread)
        d = self.endpoint.connect(_OneScan(InstreamClient(chunks)))
        d.addCallback(lambda client: client.result)
        d.addTimeout(self.timeout, self.clock)
        d.addCallback(self._judge)
        return d.addErrback(self._unscanned, session)

    def _judge(self, reply):
        found = parse_reply(reply)
        if found is None:
            return Verdict.found(False)
        return Verdict.found(True, self.action, (f"clamav {found}",),
                             subject_prefix=self.subject_prefix,
                             refusal=f"Virus found: {found}")
