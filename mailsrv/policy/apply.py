"""
Carrying out a message's judgement: the one place the configured action of
the checks' findings is applied, never by a check. C{reject} refuses
(at MAIL FROM, or after the final dot for findings on the message), and
C{tempfail} likewise with a temporary refusal (451: the client tries
again later),
C{delete} accepts and drops, C{subject} rewrites the Subject as the
message is written, C{header} adds the findings' headers; C{move:} and
C{forward:} are where the delivery agent places the message
(L{mailsrv.queue.intake.LocalDelivery.destination} takes the action).
"""

from twisted.logger import Logger

from mailsrv import metrics
from mailsrv.logtext import literal
from mailsrv.policy import authentication
from mailsrv.policy.verdict import Verdict

log = Logger()


def at_sender(judgement):
    """
    The judgement at MAIL FROM: a refusal for C{reject} or C{tempfail}
    (its reasons for the client, the summary for the log), else L{None}.
    """
    kind = judgement.action.kind
    if kind not in ("reject", "tempfail"):
        return None
    reasons = ", ".join(judgement.reasons).encode("ascii", "replace").decode()
    summary = f"X-Mailsrv-Spam: {judgement.summary}"
    if kind == "tempfail":
        return Verdict.refuse(451, "4.7.1", f"Try again later: {reasons}", summary)
    return Verdict.refuse(550, "5.7.1", f"Refused as spam: {reasons}", summary)


def begin(judgement, session, queue_id, subject_prefix, authserv_id, write):
    """
    The judgement is final before the message is written: log it.

    @param subject_prefix: the text of the C{subject} action
        ([antispam] subject_prefix; a check may have its own:
        L{Judgement.subject_prefix}).
    @param authserv_id: our host name, which our Authentication-Results
        header carries (and no other may).
    @param write: where the message goes.
    @return: C{(headers to write on top of the message, a L{HeaderRewriter}
        over C{write} that the message goes through)}.
    """
    if judgement.checked:  # (a line a message: formatted here, mailsrv.logtext)
        ip, summary, action = session.ip, judgement.summary, judgement.action
        metrics.FILTER_VERDICTS.labels("yes" if judgement.spam else "no", action.kind).inc()
        log.info(literal(f"antispam {queue_id} from {ip}: X-Mailsrv-Spam: {summary} "
                         f"action={action}"),
                 queue_id=queue_id, ip=ip, summary=summary, action=action)
    prefix = judgement.subject_prefix(subject_prefix)
    rewriter = HeaderRewriter(write, authserv_id, prefix.encode("utf-8") if prefix else None)
    return judgement.header_block(authserv_id), rewriter


def at_end(judgement, session, transaction, queue_id):
    """
    The final dot has come: a L{Verdict} when the message goes no further
    (refused for C{reject} and C{tempfail}, accepted and dropped for
    C{delete}), logged; else L{None}, and the message is delivered.
    """
    kind, ip, sender = judgement.action.kind, session.ip, transaction.sender
    if kind in ("reject", "tempfail"):  # by a finding on the message
        log.info("{refused} message from {ip} sender=<{sender}>: X-Mailsrv-Spam: {summary}",
                 refused="refused" if kind == "reject" else "deferred",
                 ip=ip, sender=sender, summary=judgement.summary)
        summary = f"X-Mailsrv-Spam: {judgement.summary}"
        if kind == "tempfail":
            return Verdict.refuse(451, "4.7.1", "Message refused for now, try again later",
                                  summary)
        refusals = [f.refusal for f in judgement.findings
                    if f.refusal and f.action.kind == "reject"]
        if refusals:  # what the message holds is refused (RFC 5321 4.2.5: 554 after DATA)
            return Verdict.refuse(554, "5.7.1", _reply_text("; ".join(refusals)), summary)
        if judgement.outbound_action is not None:  # our own user, told why
            reasons = ", ".join(judgement.reasons)
            return Verdict.refuse(550, "5.7.1", _reply_text(
                f"Message not sent: it looks like spam ({reasons})"), summary)
        return Verdict.refuse(550, "5.7.1", "Message refused as spam", summary)
    if kind == "delete":
        log.info("deleted {queue_id} from {ip} sender=<{sender}> as spam",
                 queue_id=queue_id, ip=ip, sender=sender)
        return Verdict(True, 250, "2.0.0", f"Ok: queued as {queue_id}", "deleted as spam")
    return None


def _reply_text(text, limit=400):
    """C{text} as one reply line may carry it: printable ASCII, cut at C{limit} characters."""
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# A header field (or line) longer than this is passed on as it is, unread:
# nothing we rewrite (a Subject, our Authentication-Results) needs more, and
# what is held while a field is read stays bounded.
MAX_FIELD = 65536


class HeaderRewriter:
    """
    Streams a message through, rewriting its header section: fields of
    C{Authentication-Results} that carry our host name are dropped (RFC
    8601 5: only our own checks may speak in our name), and the Subject is
    prefixed (one added when there is none) for a C{prefix}.

    @param write: where the message goes.
    @param authserv_id: our host name, lower case.
    @param prefix: bytes put before the subject text, or L{None}.
    """

    def __init__(self, write, authserv_id, prefix=None):
        self.write = write
        self.authserv_id = authserv_id.lower()
        self.prefix = prefix
        self._pending = bytearray()
        self._field = []  # the lines of the field being read (it may go on)
        self._field_size = 0
        self._in_header = True

    def feed(self, data):
        if not self._in_header:
            self.write(data)
            return
        self._pending += data
        while self._in_header:
            end = self._pending.find(b"\n")
            if end < 0:
                if len(self._pending) > MAX_FIELD:  # no header: the rest goes as it is
                    self._flush()
                    self._end_of_header()
                    break
                return
            line = bytes(self._pending[:end + 1])
            del self._pending[:end + 1]
            self._header_line(line)
        if self._pending:
            self.write(bytes(self._pending))
            self._pending.clear()

    def _header_line(self, line):
        if line[:1] in (b" ", b"\t") and self._field:
            if self._field_size + len(line) > MAX_FIELD:  # kept as it is
                self._flush()
                self.write(line)
                return
            self._field.append(line)
            self._field_size += len(line)
            return
        self._flush()
        if line in (b"\r\n", b"\n"):
            self._end_of_header()
            self.write(line)
        else:
            self._field, self._field_size = [line], len(line)

    def _flush(self):
        """The field read so far goes out: dropped, rewritten or as it is."""
        field, self._field, self._field_size = b"".join(self._field), [], 0
        if not field:
            return
        name = field.split(b":", 1)[0].strip().lower()
        if name == b"authentication-results" and self._ours(field):
            return
        if name == b"subject" and self.prefix is not None:
            text = field.split(b":", 1)[1].lstrip(b" \t")
            field, self.prefix = b"Subject: " + self.prefix + text, None
        self.write(field)

    def _ours(self, field):
        value = field.split(b":", 1)[1].decode("ascii", "replace")
        return authentication.authserv_id(value) == self.authserv_id

    def _end_of_header(self):
        self._in_header = False
        if self.prefix is not None:
            self.write(b"Subject: " + self.prefix.rstrip() + b"\r\n")
            self.prefix = None

    def close(self):
        """The message ended: a message with no body still gets its Subject."""
        if self._in_header:
            self._flush()
            if self._pending:
                self.write(bytes(self._pending))
                self._pending.clear()
                self.write(b"\r\n")
            self._end_of_header()
