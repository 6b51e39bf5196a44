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


def begin(judgement, session, queue_id, subject_prefix, write):
    """
    The judgement is final before the message is written: log it.

    @param subject_prefix: the text of the C{subject} action
        ([antispam] subject_prefix; a check may have its own:
        L{Judgement.subject_prefix}).
    @param write: where the message goes.
    @return: C{(headers to write on top of the message, a L{SubjectPrefixer}
        over C{write} that the message goes through, or L{None})}.
    """
    if judgement.checked:  # (a line a message: formatted here, mailsrv.logtext)
        ip, summary, action = session.ip, judgement.summary, judgement.action
        metrics.FILTER_VERDICTS.labels("yes" if judgement.spam else "no", action.kind).inc()
        log.info(literal(f"antispam {queue_id} from {ip}: X-Mailsrv-Spam: {summary} "
                         f"action={action}"),
                 queue_id=queue_id, ip=ip, summary=summary, action=action)
    prefixer = None
    prefix = judgement.subject_prefix(subject_prefix)
    if prefix:
        prefixer = SubjectPrefixer(write, prefix.encode("utf-8"))
    return judgement.header_block(), prefixer


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


class SubjectPrefixer:
    """
    Streams a message through, prefixing its Subject (adding one when it
    has none) in the header section.

    @param write: where the message goes.
    @param prefix: bytes put before the subject text.
    """

    def __init__(self, write, prefix):
        self.write = write
        self.prefix = prefix
        self._pending = bytearray()
        self._in_header = True
        self._done = False

    def feed(self, data):
        if not self._in_header:
            self.write(data)
            return
        self._pending += data
        while self._in_header:
            end = self._pending.find(b"\r\n")
            if end < 0:
                return
            line = bytes(self._pending[:end + 2])
            del self._pending[:end + 2]
            if line == b"\r\n":
                self._end_of_header()
                self.write(line)
            elif not self._done and line[:8].lower() == b"subject:":
                text = line[8:].lstrip(b" \t")
                self.write(b"Subject: " + self.prefix + text)
                self._done = True
            else:
                self.write(line)
        if self._pending:
            self.write(bytes(self._pending))
            self._pending.clear()

    def _end_of_header(self):
        self._in_header = False
        if not self._done:
            self.write(b"Subject: " + self.prefix.rstrip() + b"\r\n")
            self._done = True

    def close(self):
        """The message ended: a message with no body still gets its Subject."""
        if self._in_header:
            if self._pending:
                self.write(bytes(self._pending))
                self._pending.clear()
                self.write(b"\r\n")
            self._end_of_header()
