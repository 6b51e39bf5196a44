"""
Couriers carry one queued message to one host. The interface is small on
purpose (chasquid's courier; smart hosts, transports and MX share it): the queue
runner decides routing, retries and state; a courier only says, per
recipient, what the host answered.
"""

from dataclasses import dataclass

from twisted.internet import defer, ssl
from twisted.mail import smtp
from zope.interface import Interface, implementer

from mailsrv.queue.dotstuff import DotStuffer

OK = "ok"
TEMPORARY = "temporary"
PERMANENT = "permanent"


@dataclass(frozen=True)
class Result:
    """
    What happened to one recipient at one host.

    @ivar status: L{OK}, L{TEMPORARY} or L{PERMANENT}.
    @ivar code: the host's SMTP reply code, or -1 when there was none.
    @ivar text: the host's reply text, or what went wrong.
    @ivar host_failed: the host took no part in the decision (no connection,
        refused session, timeout): another host of the same route may do
        better. Replies about this recipient in particular are final for
        this attempt.
    """

    address: str
    status: str
    code: int
    text: str
    host_failed: bool = False


def status_of(code):
    if 200 <= code < 300:
        return OK
    if 500 <= code < 600:
        return PERMANENT
    return TEMPORARY


class ICourier(Interface):
    def deliver(envelope, message_path, recipients, host, port):
        """
        Hand the message to C{host}:C{port} for C{recipients} in one
        transaction.

        @param envelope: the L{mailsrv.queue.spool.Envelope} (its sender).
        @param message_path: the spooled message file.
        @param recipients: addresses, a subset of the envelope's.
        @return: a Deferred of a list of L{Result}, one per recipient in
            order; it does not fail.
        """


class _Sender(smtp.ESMTPSender):
    """
    Twisted's ESMTP sender with a transfer that sends the spool file as it
    is (Twisted's transformChunk turns CRLF into CR CR LF and misses dots at
    chunk boundaries) and that remembers the reply to DATA.
    """

    def smtpState_data(self, code, resp):
        self._stuffer = DotStuffer()
        smtp.ESMTPSender.smtpState_data(self, code, resp)

    def transformChunk(self, chunk):
        self.resetTimeout()
        return self._stuffer.feed(chunk)

    def finishedFileTransfer(self, lastsent):
        self.transport.write(self._stuffer.finish())

    def sentMail(self, code, resp, numOk, addresses, log):
        self.factory.data_reply = (code, resp)
        smtp.ESMTPSender.sentMail(self, code, resp, numOk, addresses, log)


class _SenderFactory(smtp.ESMTPSenderFactory):
    protocol = _Sender
    data_reply = None
    noisy = False  # the runner logs one line per recipient instead


def _text(resp):
    if isinstance(resp, bytes):
        resp = resp.decode("utf-8", "replace")
    return " ".join(str(resp).split())


@implementer(ICourier)
class SMTPCourier:
    """
    Delivers over SMTP with Twisted's ESMTP client, HELO fallback for old
    hosts. STARTTLS is used whenever the host offers it, without checking
    its certificate (opportunistic TLS, RFC 7435: MX hosts seldom have a
    certificate for the name we looked up, and refusing would only make us
    send in plain text); a host that does not offer it gets plain SMTP.

    @ivar hostname: the name we give in EHLO.
    @ivar timeout: seconds to wait for any one reply.
    @ivar tls_options: the client TLS options for STARTTLS, or L{None} for
        never.
    """

    connect_timeout = 30

    def __init__(self, hostname, reactor=None, timeout=300, starttls=True):
        if reactor is None:
            from twisted.internet import reactor
        self.hostname = hostname
        self.reactor = reactor
        self.timeout = timeout
        self.tls_options = ssl.CertificateOptions(verify=False) if starttls else None

    def deliver(self, envelope, message_path, recipients, host, port):
        try:
            encoded = [r.encode("ascii") for r in recipients]
            envelope.sender.encode("ascii")
        except UnicodeEncodeError:
            return defer.succeed([
                Result(r, PERMANENT, -1,
                       "non-ASCII address needs SMTPUTF8, which is not supported yet")
                for r in recipients
            ])
        try:
            message = open(message_path, "rb")
        except OSError as e:
            return defer.succeed(
                [Result(r, TEMPORARY, -1, f"cannot read the queued message: {e}")
                 for r in recipients]
            )
        done = defer.Deferred()
        factory = _SenderFactory(
            None, None, envelope.sender, encoded, message, done,
            retries=0, timeout=self.timeout, contextFactory=self.tls_options,
            heloFallback=True,
            requireAuthentication=False, requireTransportSecurity=False,
        )
        factory.domain = self.hostname.encode("ascii", "replace")
        self.reactor.connectTCP(host, port, factory, timeout=self.connect_timeout)
        done.addCallbacks(
            lambda result: self._sent(recipients, result[1], factory.data_reply),
            lambda failure: self._failed(recipients, failure),
        )
        done.addBoth(lambda results: (message.close(), results)[1])
        return done

    def _sent(self, recipients, replies, data_reply):
        data_code, data_text = data_reply
        results = []
        for address, (_, code, resp) in zip(recipients, replies):
            if 200 <= code < 300:
                code, resp = data_code, data_text
            results.append(Result(address, status_of(code), code, _text(resp)))
        return results

    def _failed(self, recipients, failure):
        error = failure.value
        if isinstance(error, smtp.SMTPDeliveryError):
            if error.addresses:
                return self._sent(recipients, error.addresses, (error.code, error.resp))
            # MAIL FROM refused: the same answer for everyone
            status = status_of(error.code)
            return [Result(r, status, error.code, _text(error.resp)) for r in recipients]
        if isinstance(error, smtp.SMTPClientError):
            text = _text(error.resp)
            code = error.code
        else:
            text, code = failure.getErrorMessage(), -1
        return [Result(r, TEMPORARY, code, text, host_failed=True) for r in recipients]
