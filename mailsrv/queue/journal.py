"""
Journaling: one extra copy of each message for an archive mailbox, with the
whole envelope (Bcc recipients included) in a header of the copy only.

Which messages, by the sender's domain, as Exchange classifies them:

- inbound (C{[journal] inbound}): a sender outside our domains (or <>) and
  at least one local recipient;
- outbound (C{[journal] outbound}): a sender in our domains and at least
  one remote recipient. On port 25 such a sender has authenticated, is
  trusted or has a POP-before-SMTP window
  (C{[access] local_sender_must_auth}); on submission, always.

Mail from our domains to our domains only is both (IMail journals
"every message"): one copy to the inbound archive, and one to the outbound
archive when that is another. The original delivery is untouched: each
copy is a separate file.
"""

from dataclasses import dataclass

from twisted.logger import Logger

from mailsrv.queue.intake import Destination

log = Logger()

# RFC 5322 asks for lines under 78 characters: fold the recipient list.
_FOLD = 76


@dataclass(frozen=True)
class JournalCopy:
    """
    @ivar header: the C{X-Mailsrv-Journal} header, CRLF-terminated.
    @ivar destination: the archive's L{mailsrv.queue.intake.Destination}:
        its mailboxes (a local archive) or addresses (a remote one).
    """

    header: bytes
    destination: Destination


def journal_header(sender, recipients):
    """C{X-Mailsrv-Journal: sender=<s>; recipients=<a>, <b>}, folded."""
    parts = [f"sender=<{sender}>;"]
    parts += [f"<{r}>," for r in recipients[:-1]] + [f"<{recipients[-1]}>"]
    parts[1] = "recipients=" + parts[1]
    lines, line = [], "X-Mailsrv-Journal:"
    for part in parts:
        if len(line) + 1 + len(part) > _FOLD and line.strip():
            lines.append(line)
            line = "\t" + part
        else:
            line += " " + part
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


class Journal:
    """Decides which archive copies a transaction gets (L{JournalCopy})."""

    def __init__(self, journal_settings, delivery):
        """@param delivery: the L{mailsrv.queue.intake.LocalDelivery} that routes the archive."""
        self.settings = journal_settings
        self.delivery = delivery

    def copies(self, transaction):
        sender = transaction.sender
        local_sender = bool(sender) and self.delivery.directory.is_local_address(sender)
        if local_sender and transaction.remote_addresses():
            archives = [self.settings.outbound]
        elif transaction.local_users():  # (from a local sender: mail between our users)
            archives = [self.settings.inbound] + ([self.settings.outbound] if local_sender
                                                  else [])
        else:
            archives = []
        copies = []
        header = journal_header(sender, [r.address for r in transaction.recipients])
        for archive in dict.fromkeys(a for a in archives if a):
            destination = self.delivery.route(archive)
            if destination is None:
                log.error("journal archive <{archive}> is not a user or an alias: "
                          "no copy kept", archive=archive)
                continue
            copies.append(JournalCopy(header, destination))
        return tuple(copies)
