"""
[antispam.rspamd]: the message judged by a real rspamd over its HTTP
protocol: a POST of the message as the client sent it to C{URL/checkv2},
with what rspamd cannot read from the message in request headers (the
client's C{IP}, its C{Helo}, the envelope's C{From} and one C{Rcpt} per
recipient, the C{User} it authenticated as); rspamd answers JSON: its
C{action}, C{score}, C{required_score}, the C{symbols} that matched, each
with its score, and for C{rewrite subject} the new C{subject}.

rspamd's actions become ours: C{reject} the section's C{action}
(C{reject} unless set), C{rewrite subject} C{subject}, C{add header}
C{header}, C{greylist} and C{soft reject} C{tempfail} (451: rspamd wants
the client to come back later), C{no action} none. The reason names the
action, the score against the required one and the few symbols that
weigh most: C{rspamd add_header 8.90/15 MAILSRV_HEADER(8) MISSING_DATE(1)}.

The message is read as the clamav scanner reads it (L{MessageChunks}: a
chunk at a time, in a thread each for a big one), the next chunk when the
connection has taken the last. When rspamd cannot say (no connection, no
answer in time, an HTTP error, a reply that is not its JSON) the admin's
C{on_error} decides, as for clamav (L{mailsrv.policy.scanning.unscanned}).
"""

import json
from dataclasses import dataclass

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import (
    Agent,
    PartialDownloadError,
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from mailsrv.logtext import printable
from mailsrv.policy.actions import HEADER, NONE, Action
from mailsrv.policy.scanning import TEMPFAIL, DaemonScanner, MessageChunks, ScanError
from mailsrv.policy.verdict import Verdict

# How many of the symbols that weigh most the reason names.
TOP_SYMBOLS = 3
SUBJECT = Action("subject")
# How the Agent wraps what ends a request.
WRAPPED = (ResponseFailed, ResponseNeverReceived, RequestGenerationFailed,
           RequestTransmissionFailed)
# rspamd's actions but reject (the section's action): ours, and whether
# the message counts as spam.
ACTIONS = {
    "no action": (NONE, False),
    "greylist": (TEMPFAIL, False),
    "soft reject": (TEMPFAIL, False),
    "add header": (HEADER, True),
    "rewrite subject": (SUBJECT, True),
}
REJECT = "reject"


@dataclass(frozen=True)
class Reply:
    """
    What rspamd's /checkv2 reply says.

    @ivar action: rspamd's action (C{"add header"}, ...).
    @ivar score: the message's score.
    @ivar required: the score of rspamd's reject.
    @ivar symbols: C{(name, score)} of the symbols that matched, those that
        weigh most first.
    @ivar message: the text rspamd has for the client (its
        C{messages.smtp_message}), or "".
    """

    action: str
    score: float
    required: float
    symbols: tuple
    message: str

    def reason(self):
        """The reason token: action, score/required, the top symbols."""
        top = " ".join(f"{name}({score:g})" for name, score in self.symbols[:TOP_SYMBOLS])
        return " ".join(filter(None, (
            "rspamd", self.action.replace(" ", "_"), f"{self.score:.2f}/{self.required:g}",
            top)))


def parse_reply(body):
    """
    @param body: the bytes of rspamd's JSON reply.
    @return: a L{Reply}.
    @raise ScanError: for anything that is not rspamd's reply.
    """
    try:
        reply = json.loads(body)
        action = reply["action"]
        if action != REJECT and action not in ACTIONS:
            raise ScanError(f"rspamd answered an unknown action {printable(action)!r}")
        score, required = float(reply["score"]), float(reply["required_score"])
        symbols = reply.get("symbols") or {}
        weighed = sorted(((printable(str(name)), float(symbol.get("score", 0)))
                          for name, symbol in symbols.items()),
                         key=lambda pair: (-pair[1], pair[0]))
        message = (reply.get("messages") or {}).get("smtp_message", "")
        return Reply(action, score, required, tuple(weighed), printable(str(message)))
    except ScanError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ScanError(f"not rspamd's reply ({type(e).__name__}: {printable(str(e))[:80]}): "
                        f"{printable(body[:80].decode('utf-8', 'replace'))!r}")


@implementer(IBodyProducer)
class MessageBody:
    """
    The request's body: the message's L{MessageChunks}, the next when the
    connection has taken the last and is not paused.
    """

    def __init__(self, chunks, length):
        self.chunks = chunks
        self.length = length
        self._consumer = None
        self._finished = None
        self._paused = False
        self._reading = False
        self._stopped = False

    def startProducing(self, consumer):
        self._consumer = consumer
        self._finished = defer.Deferred()
        self._read_next()
        return self._finished

    def _read_next(self):
        if self._paused or self._reading or self._stopped:
            return
        self._reading = True
        self.chunks.next().addCallbacks(self._send, self._read_failed)

    def _send(self, chunk):
        self._reading = False
        if self._stopped:
            return
        if not chunk:
            self.chunks.close()
            self._stopped = True
            self._finished.callback(None)
            return
        self._consumer.write(chunk)
        self._read_next()

    def _read_failed(self, failure):
        self._reading = False
        self.chunks.close()
        if not self._stopped:
            self._stopped = True
            self._finished.errback(failure)

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._read_next()

    def stopProducing(self):
        self._stopped = True
        self.chunks.close()


class RspamdScanner(DaemonScanner):
    """
    A body check: rspamd's verdict on the message.

    @param agent: the HTTP client (L{quiet_agent}).
    @param url: rspamd's base URL (the normal worker's), without /checkv2.
    @param args: L{DaemonScanner}'s, after C{where}; C{action} is for
        rspamd's reject, C{subject_prefix} for its rewrite subject
        (rspamd's own C{subject} is not used: our C{subject} action puts a
        prefix before the Subject as the message streams to the mailbox,
        and rspamd's is the whole new Subject).
    """

    token = "rspamd"

    def __init__(self, agent, url, *args, **kwargs):
        super().__init__(url.rstrip("/"), *args, **kwargs)
        self.agent = agent

    def check(self, session, transaction, message):
        body = MessageBody(MessageChunks(message, self.in_thread), message.size)
        d = self.agent.request(b"POST", f"{self.where}/checkv2".encode("ascii"),
                               request_headers(session, transaction), body)
        d.addCallback(self._read)
        d.addErrback(_unwrapped)
        d.addTimeout(self.timeout, self.clock)
        d.addCallback(self._judge)
        return d.addErrback(self._unscanned, session)

    def _read(self, response):
        return readBody(response).addCallback(lambda body: (response.code, body))

    def _judge(self, answer):
        code, body = answer
        if code != 200:
            raise ScanError(f"HTTP {code}: "
                            f"{printable(body[:80].decode('utf-8', 'replace'))!r}")
        reply = parse_reply(body)
        if reply.action == REJECT:
            action, spam = self.action, True
        else:
            action, spam = ACTIONS[reply.action]
        refusal = reply.message if spam and action.kind == "reject" else ""
        return Verdict.found(spam, action, (reply.reason(),),
                             subject_prefix=self.subject_prefix if spam else None,
                             refusal=refusal)

    def _why(self, failure):
        if failure.check(*WRAPPED):
            return "connection lost: " + "; ".join(
                reason.getErrorMessage() for reason in failure.value.reasons)
        if failure.check(PartialDownloadError):
            return "reply cut short"
        return super()._why(failure)


def _unwrapped(failure):
    """
    What the Agent wraps (L{WRAPPED}), where it is not rspamd's doing: a cancelled
    request as L{defer.CancelledError} (which C{addTimeout} turns into its
    TimeoutError), and a failure to read the message as itself (ours, not
    rspamd's: the framework's 451 4.3.0, not C{on_error}).
    """
    if failure.check(*WRAPPED):
        for reason in failure.value.reasons:
            if reason.check(defer.CancelledError):
                raise defer.CancelledError()
            if not reason.check(error.ConnectionLost, error.ConnectionDone):
                return reason
    return failure


def request_headers(session, transaction):
    """rspamd's request headers: what it cannot read from the message."""
    headers = Headers({b"IP": [session.ip.encode("ascii")]})
    if session.helo:
        headers.addRawHeader(b"Helo", session.helo.encode("utf-8"))
    if transaction.sender:
        headers.addRawHeader(b"From", transaction.sender.encode("utf-8"))
    for recipient in transaction.recipients:
        headers.addRawHeader(b"Rcpt", recipient.address.encode("utf-8"))
    if session.user:
        headers.addRawHeader(b"User", session.user.encode("utf-8"))
    return headers



@implementer(IAgentEndpointFactory)
class _QuietEndpoints:
    """
    The Agent's endpoints (plain HTTP: rspamd's normal worker speaks no
    TLS), each making its connection's factory quiet: a factory's start
    and stop would be two log lines a message.
    """

    def __init__(self, reactor, timeout):
        self.reactor = reactor
        self.timeout = timeout

    def endpointForURI(self, uri):
        return _QuietEndpoint(HostnameEndpoint(self.reactor, uri.host, uri.port,
                                               timeout=self.timeout))


@implementer(IStreamClientEndpoint)
class _QuietEndpoint:
    def __init__(self, endpoint):
        self.endpoint = endpoint

    def connect(self, factory):
        factory.noisy = False
        return self.endpoint.connect(factory)


def quiet_agent(reactor, timeout):
    """
    The scanner's HTTP client: quiet, a connection per scan (none kept
    alive that rspamd may close as the next request starts: that request
    would fail).
    """
    return Agent.usingEndpointFactory(reactor, _QuietEndpoints(reactor, timeout))
