"""
Twisted's IMAP interfaces over our store: L{Account} (a user's folders),
L{Mailbox} (one session's view of a selected folder) and L{Message}.

A L{Mailbox} keeps the session's own list of UIDs, so sequence numbers stay
what the client was told: messages expunged by another session (or POP3)
stay in the view until the server may announce them with EXPUNGE (see
L{Mailbox.take_expunges}).
"""

import bisect
import email.parser
import errno
import email.policy
import email.utils
import functools
import gc
import io
import operator
import re
import weakref
from array import array

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.mail import imap4
from zope.interface import implementer

from mailsrv import ranges
from mailsrv.imap import listing, mime
from mailsrv.imap.listing import DELIMITER
from mailsrv.imap.search import compile_search
from mailsrv.imap.sequence import SequenceSet
from mailsrv.imap.sort import Record, Rows
from mailsrv.store import headercache, headerfields
from mailsrv.store.folder import FolderError, FolderExists, NoSuchFolder
from mailsrv.store.mailstore import SPECIAL_USE
from mailsrv.store.names import PERMANENT_FLAGS
from mailsrv.store.layout import check_folder_name

log = Logger()

_CRLF_POLICY = email.policy.compat32.clone(linesep="\r\n")


def write_failure(command, error):
    """
    The text of the NO for C{command} (bytes) whose write failed with
    L{OSError} C{error}, logged in one line: C{[OVERQUOTA]} for a full
    disk or quota (the client may free space), C{[SERVERBUG]} otherwise.
    """
    log.error("IMAP {command} failed: {error}", command=command.decode(), error=error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return b"[OVERQUOTA] " + command + b" failed: disk full"
    return b"[SERVERBUG] " + command + b" failed: server error"


def _written(command, change, *args):
    """Run C{change}; an L{OSError} becomes the NO of L{write_failure}."""
    try:
        return change(*args)
    except OSError as e:
        raise imap4.MailboxException(write_failure(command, e).decode())


class _Info:
    """What LIST shows about one folder."""

    def __init__(self, flags=()):
        self.flags = list(flags)

    def getFlags(self):
        return self.flags

    def getHierarchicalDelimiter(self):
        return DELIMITER


@implementer(imap4.IAccount, imap4.INamespacePresenter)
class Account:
    """
    A user's folders, for one IMAP session.
    """

    def __init__(self, store, user):
        self.store = store
        self.user = user

    def _synced(self, name):
        """
        A Deferred of folder C{name} once synced (the listing runs in a
        thread), or L{None} when there is no such folder.

        @raise imap4.MailboxException: no folder can have that name (SELECT
            and STATUS answer NO with the reason, not "no such mailbox").
        """
        try:
            folder = self.store.folder(self.user, name)
        except NoSuchFolder:
            return None
        except ValueError as e:
            raise imap4.MailboxException(str(e))
        return folder.sync().addCallback(lambda _: folder)

    def select(self, name, readwrite=1):
        """A Deferred of the L{Mailbox}, or L{None} (see L{_synced})."""
        synced = self._synced(name)
        if synced is None:
            return None
        return synced.addCallback(lambda folder: Mailbox(folder, bool(readwrite)).take_recent())

    def target(self, name):
        """
        The L{Mailbox} that APPEND, COPY or MOVE puts messages into, or
        L{None}: not synced, as nothing reads its messages (they wait for
        its folder's load, see L{Folder.opened}).
        """
        try:
            folder = self.store.folder(self.user, name)
        except (NoSuchFolder, ValueError):
            return None
        return Mailbox(folder, True)

    def find_message(self, name, uidvalidity, uid):
        """
        A Deferred of the L{Message} with C{uid} in folder C{name} (an URL
        of CATENATE's), or of L{None}: no such folder or message, or its
        UIDVALIDITY is not C{uidvalidity} (when not L{None}).
        """
        try:
            folder = self.store.folder(self.user, name)
        except (NoSuchFolder, ValueError):
            return defer.succeed(None)

        def found(folder):
            if uidvalidity not in (None, folder.uidvalidity) or folder.entry(uid) is None:
                return None
            return Message(folder, folder.message(uid))
        return folder.opened().addCallback(found)

    def addMailbox(self, name, mbox=None):
        raise imap4.MailboxException("not supported")

    def create(self, pathspec):
        try:
            _written(b"CREATE", self.store.create_folder, self.user, pathspec)
        except FolderExists:
            raise imap4.MailboxCollision(pathspec)
        except ValueError as e:
            raise imap4.MailboxException(str(e))
        return True

    def check_name(self, name):
        """
        Refuse a name no folder can have, so that APPEND, COPY and MOVE to
        it get a plain NO, not C{[TRYCREATE]}.

        @raise imap4.MailboxException: with the reason.
        """
        if name.upper() == "INBOX":
            return
        try:
            check_folder_name(name.rstrip("/"))
        except ValueError as e:
            raise imap4.MailboxException(str(e))

    def delete(self, name):
        try:
            d = _written(b"DELETE", self.store.delete_folder, self.user, name)
        except (FolderError, ValueError) as e:
            raise imap4.MailboxException(str(e))
        d.addErrback(
            lambda f: log.failure("removing deleted folder {name}", f, name=name)
        )

    def rename(self, oldname, newname):
        try:
            _written(b"RENAME", self.store.rename_folder, self.user, oldname, newname)
        except (FolderError, ValueError) as e:
            raise imap4.MailboxException(str(e))

    def isSubscribed(self, name):
        return name in self.store.subscriptions(self.user)

    def subscribe(self, name):
        self.check_name(name)
        _written(b"SUBSCRIBE", self.store.subscribe, self.user, name)

    def unsubscribe(self, name):
        _written(b"UNSUBSCRIBE", self.store.unsubscribe, self.user, name)

    def list(self, ref, patterns, options):
        """
        The L{listing.Listed} names of a LIST: C{ref} joined to each of
        C{patterns} (several with RFC 5258); C{LIST "" ""} asks for the
        hierarchy delimiter (not so in an extended LIST, where C{""}
        matches nothing).
        """
        if patterns == [""] and not options.extended:
            return [listing.Listed("", ("\\Noselect",), (), False)]
        compiled = [imap4.wildcardToRegexp(ref + p, DELIMITER) for p in patterns if p]
        return listing.select(compiled, self.store.folders(self.user),
                              self.store.subscriptions(self.user), options)

    def status(self, name, items):
        """
        A Deferred of the STATUS values (a dict by item) the store holds
        of folder C{name}, once synced; L{None} when there is no such
        folder (see L{_synced}). SIZE may read files (L{Folder.total_size}).
        """
        synced = self._synced(name)
        if synced is None:
            return None
        return synced.addCallback(_status_values, items)

    def lsub(self, ref, wildcard):
        """
        LSUB: the subscribed names matching, existing or not, and (RFC 3501
        6.3.9) an unsubscribed parent that C{%} stops at above a
        subscribed name, as C{\\Noselect}: C{LSUB "" "A/%"} with only
        C{A/B/C} subscribed gives C{A/B}.
        """
        pattern = imap4.wildcardToRegexp(ref + wildcard, DELIMITER)
        subscribed = self.store.subscriptions(self.user)
        found = {}
        for name in subscribed:
            if pattern.fullmatch(name):
                found[name] = [SPECIAL_USE[name]] if name in SPECIAL_USE else []
                continue
            levels = name.split(DELIMITER)
            for depth in range(len(levels) - 1, 0, -1):
                parent = DELIMITER.join(levels[:depth])
                if pattern.fullmatch(parent) and parent not in subscribed:
                    found.setdefault(parent, ["\\Noselect"])
                    break
        order = sorted(found, key=lambda name: (name.upper() != "INBOX", name))
        return [(name, _Info(found[name])) for name in order]

    def getPersonalNamespaces(self):
        return [["", DELIMITER]]

    def getSharedNamespaces(self):
        return None

    def getUserNamespaces(self):
        return None


@implementer(
    imap4.IMailbox, imap4.ISearchableMailbox, imap4.IMessageCopier,
    imap4.ICloseableMailbox,
)
class Mailbox:
    """
    One session's view of a L{mailsrv.store.folder.Folder}.

    @ivar view: the UIDs the client knows, by sequence number - 1.
    @ivar pending: UIDs gone from the folder but still in C{view}.
    @ivar pending_since: the folder's HIGHESTMODSEQ before the first of
        the C{pending} expunges (a client that saw a later MODSEQ has not
        seen them: RFC 7162 3.2).
    @ivar recent: the UIDs in C{view} that are \\Recent for this session:
        it was the first to see them (RFC 3501; EXAMINE shows them, leaving
        them to the next SELECT).
    """

    def __init__(self, folder, writeable):
        self.folder = folder
        self.writeable = writeable
        self.view = folder.uids()
        self.pending = set()
        self.pending_since = None
        self.recent = set()  # see take_recent()
        self.listeners = []
        self._moving_here = False  # see move()
        self._unannounced = False

    # Info

    def getFlags(self):
        """The system flags and the keywords in use here (SELECT's FLAGS)."""
        return list(PERMANENT_FLAGS) + self.folder.keywords()

    def getHierarchicalDelimiter(self):
        return DELIMITER

    def getUIDValidity(self):
        return self.folder.uidvalidity

    def getUIDNext(self):
        return self.folder.uidnext

    def getUID(self, message):
        return self.view[message - 1]

    def getMessageCount(self):
        return len(self.view)

    def take_recent(self):
        """Selected: the messages no session saw are \\Recent here (SELECT takes them)."""
        self.recent = self.folder.claim_recent(take=self.writeable)
        return self

    def getRecentCount(self):
        return len(self.recent)

    def getUnseenCount(self):
        return sum(1 for u in self.folder.unseen(self.view) if u not in self.pending)

    def first_unseen(self):
        """The sequence number of the first unseen message, or L{None}."""
        for uid in self.folder.unseen(self.view):
            if uid not in self.pending:
                return self.seq(uid)
        return None

    def isWriteable(self):
        return self.writeable

    def destroy(self):
        raise imap4.MailboxException("not supported")

    # Listeners: the IMAP server of the session

    def addListener(self, listener):
        if not self.listeners:
            self.folder.add_listener(self)
        self.listeners.append(listener)

    def removeListener(self, listener):
        if listener in self.listeners:
            self.listeners.remove(listener)
        if not self.listeners:
            self.folder.remove_listener(self)

    def close(self):
        self.listeners = []
        self.folder.remove_listener(self)

    def messages_added(self, uids):
        known = set(self.view)
        fresh = sorted(u for u in uids if u not in known)
        if fresh:
            self.view.extend(fresh)
            self.recent |= self.folder.claim_recent(fresh, take=self.writeable)
            self._unannounced = True
            if not self._moving_here:
                self.announce_arrivals()

    def announce_arrivals(self):
        """EXISTS and RECENT for the messages added to the view, if any."""
        if not self._unannounced:
            return
        self._unannounced = False
        for listener in self.listeners:
            listener.newMessages(len(self.view), len(self.recent))

    def messages_expunged(self, uids):
        known = set(self.view)
        if not self.pending:
            self.pending_since = self.folder.highestmodseq - 1
        self.pending.update(u for u in uids if u in known)
        if self.pending:
            for listener in self.listeners:
                listener.expunges_pending()

    def flags_changed(self, changes):
        updates = {}
        for uid, flags in changes.items():
            seq = self.seq(uid)
            if seq is not None and uid not in self.pending:
                updates[seq] = sorted(flags)
        if updates:
            for listener in self.listeners:
                listener.flagsChanged(updates)

    def take_expunges(self):
        """
        Drop the messages others expunged from the view.

        @return: their UIDs, ascending, and their sequence numbers in the
            order to announce them (highest first, so each number is right
            when it is sent).
        """
        uids = sorted(self.pending)
        self.pending.clear()
        self.pending_since = None
        return uids, self._forget(uids)

    # Messages

    def fetch(self, messages, uid):
        """
        C{(seq, Message)} pairs, made as they are consumed (a FETCH of a big
        folder may take several reactor turns: a message expunged
        meanwhile is left out); a L{ChangedSince} set keeps only messages
        changed after its MODSEQ (RFC 7162 CHANGEDSINCE).
        """
        since = getattr(messages, "changedsince", None)
        for seq, u in self._fetched(messages, uid):
            if u not in self.pending:
                info = self.folder.message(u)
                if since is None or info.modseq > since:
                    yield seq, Message(self.folder, info, u in self.recent)

    def fetch_entries(self, messages, uid):
        """
        L{fetch} without the L{Message} objects: C{(seq, entry)} pairs with
        the folder's own record of each message (see L{Folder.entry}),
        looked up as they are consumed.
        """
        since = getattr(messages, "changedsince", None)
        pending = self.pending
        entry = self.folder.entry
        for seq, u in self._fetched(messages, uid):
            if u not in pending:
                found = entry(u)
                if found is not None and (since is None or found.modseq > since):
                    yield seq, found

    def store(self, messages, flags, mode, uid, unchangedsince=None):
        """
        Set, add (C{mode} > 0) or remove (< 0) flags.

        @param unchangedsince: a MODSEQ: messages changed since are left
            alone (RFC 7162 UNCHANGEDSINCE).
        @return: C{({seq: MessageInfo}, [seqs left alone])}: the messages
            stored, and those C{unchangedsince} protected.
        @raise OSError: a change could not be written; the session hears
            of those made before it as flag changes.
        """
        flags = set(flags)
        result, modified = {}, []
        for seq, u in self.resolve(messages, uid):
            if u in self.pending:
                continue
            current = self.folder.message(u)
            if unchangedsince is not None and current.modseq > unchangedsince:
                modified.append(seq)
                continue
            if mode > 0:
                wanted = current.flags | flags
            elif mode < 0:
                wanted = current.flags - flags
            else:
                wanted = flags
            try:
                self.folder.set_flags(u, wanted, origin=self)
            except FileNotFoundError:
                continue  # removed under us: the next sync tells the client
            except OSError:
                self.flags_changed({info.uid: info.flags for info in result.values()})
                raise
            result[seq] = self.folder.message(u)
        return result, modified

    def mark_seen(self, seqs):
        """
        Set \\Seen on messages fetched with BODY[] or RFC822 (RFC 3501 6.4.5).
        Other sessions hear of it; this one gets FLAGS in the FETCH itself.
        A FETCH is a read: if \\Seen cannot be written (a full disk), the
        messages are sent without it.
        """
        for seq in seqs:
            u = self.view[seq - 1]
            if u in self.pending:
                continue
            flags = self.folder.flags(u)
            if "\\Seen" not in flags:
                try:
                    self.folder.set_flags(u, flags | {"\\Seen"}, origin=self)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    log.error("{path}: cannot set \\Seen: {error}",
                              path=str(self.folder.path), error=e)
                    return

    def expunge(self, uids=None):
        """
        Remove the messages marked \\Deleted; with C{uids} (UID EXPUNGE,
        RFC 4315), only those among them.

        @return: their UIDs, ascending, and sequence numbers, highest first.
        """
        doomed = [
            u for u in self.view if u not in self.pending
            and (uids is None or u in uids)
            and "\\Deleted" in self.folder.flags(u)
        ]
        removed = self.folder.delete(doomed, origin=self)
        return removed, self._forget(removed)

    def move(self, messages, uid, target):
        """
        Move messages into Mailbox C{target} (RFC 6851).

        @return: a Deferred of C{([(uid, new uid)], [expunged seqs])}: the
            pairs in UID order, the sequence numbers highest first.
        """
        uids = [u for _, u in self.resolve(messages, uid) if u not in self.pending]
        d = target.folder.opened()
        d.addCallback(self._move, uids)
        return d.addCallback(lambda pairs: (pairs, self._forget(u for u, _ in pairs)))

    def _move(self, target, uids):
        """L{move} once the target folder is loaded."""
        # into this very folder: EXISTS after the EXPUNGEs (announce_arrivals)
        self._moving_here = target is self.folder
        try:
            return self.folder.move(uids, target, origin=self)
        finally:
            self._moving_here = False

    def addMessage(self, message, flags=(), date=None):
        return self.folder.add(message, flags, date)

    def add_messages(self, messages):
        """
        Store C{(data, flags, date)} each, all or none (MULTIAPPEND): a
        Deferred of their UIDs (L{Folder.add_all}).
        """
        return self.folder.add_all(messages)

    def copy(self, message):
        return message.folder.copy(message.getUID(), self.folder)

    def search(self, query, uid, saved=frozenset()):
        """
        @param uid: unused (Twisted's L{imap4.ISearchableMailbox} has it).
        @param saved: the UIDs C{$} stands for (RFC 5182).
        @return: C{(sequence numbers, uses_modseq)} or a Deferred of it
            (criteria on headers or text are evaluated in a thread: from
            the folder's header cache where it can, else from the files,
            each read at most once); C{uses_modseq} says whether MODSEQ
            was a criterion.
        @raise imap4.IllegalQueryError: the criteria are malformed.
        """
        matcher = self._matcher(query, saved)
        folder, view = self.folder, list(self.view)
        pending, recent = frozenset(self.pending), frozenset(self.recent)
        if not (matcher.needs_text or matcher.uses_fields):
            return [seq for seq, u in enumerate(view, 1) if u not in pending
                    and matcher(seq, Message(folder, folder.message(u), u in recent))
                    ], matcher.uses_modseq

        def run():
            if matcher.uses_fields:
                # the others are ruled out by the cache
                found, unknown = folder.headers.lookup(view, matcher.narrow)
                wanted = found.keys() | unknown
                if len(wanted) * 8 < len(view):  # a few: found by bisecting
                    candidates = [(bisect.bisect_left(view, u) + 1, u) for u in sorted(wanted)]
                else:
                    candidates = [(seq, u) for seq, u in enumerate(view, 1) if u in wanted]
            else:
                found, candidates = {}, enumerate(view, 1)
            seqs, records = [], folder.headers.records()
            with folder.cur_directory() as cur:
                for seq, u in candidates:
                    entry = folder.entry(u)  # before any read: the file the cache names
                    if entry is None or u in pending:
                        continue  # expunged (maybe while the search ran)
                    fields = found.get(u)
                    try:
                        message = _Searched(folder, u, u in recent, fields, cur)
                        if matcher.reads_body:
                            message.whole = True
                        if fields is None and matcher.uses_fields:
                            message.fields = headerfields.parse(message.header_bytes(),
                                                                keys=False)
                            records.add(u, entry.key, message.fields)
                        if matcher(seq, message):
                            seqs.append(seq)
                    except (KeyError, OSError):
                        continue  # expunged while the search ran
            records.flush()
            return seqs

        def searched(seqs):
            folder.headers.kick()  # writes what the search learned
            return seqs, matcher.uses_modseq

        d = folder.headers.ready() if matcher.uses_fields else defer.succeed(None)
        d.addCallback(lambda _: threads.deferToThread(run))
        return d.addCallback(searched)

    # QRESYNC (RFC 7162)

    def vanished(self, modseq, known, seq_match=None):
        """
        The UIDs of C{known} (ranges) expunged after C{modseq}, as ranges.
        When the folder's history does not reach back that far, those of
        C{known} below UIDNEXT that are not here (RFC 7162 3.2.5.1 allows
        it; it costs a walk over the UIDs in C{known}). C{seq_match}, the
        client's C{(sequence numbers, UIDs)}, leaves out the UIDs up to
        the last pair that still holds (3.2.5.2).
        """
        since = self.folder.expunged_since(modseq)
        if since is None:
            below_next = ranges.intersect(known, [(1, self.folder.uidnext - 1)])
            gone = ranges.missing(below_next, self.view)
        else:
            gone = ranges.intersect(since, known)
        if seq_match is not None and gone:
            gone = ranges.above(gone, self._matched_uid(*seq_match))
        return gone

    def _matched_uid(self, seqs, uids):
        """
        The UID of the last pair of C{seqs} and C{uids} (ranges of equal
        size, paired in order) such that it and every pair before it
        match the view: the client knows every expunge up to it. Within a
        stretch where both sets run on by one, the view's UID minus the
        client's never decreases (UIDs ascend), so the matching pairs are
        found by bisection, not one by one.
        """
        view = self.view
        matched = 0
        i = j = 0
        seq, uid = seqs[0][0], uids[0][0]
        while i < len(seqs) and j < len(uids):
            length = min(seqs[i][1] - seq, uids[j][1] - uid, len(view) - seq) + 1
            if length <= 0 or view[seq - 1] != uid:
                return matched
            # the first k of the stretch where view[seq - 1 + k] > uid + k
            k = bisect.bisect_right(range(length), 0,
                                    key=lambda k: view[seq - 1 + k] - uid - k)
            matched = uid + k - 1
            if k < length:
                return matched
            seq, uid = seq + length, uid + length
            if seq > seqs[i][1]:
                i += 1
                seq = seqs[i][0] if i < len(seqs) else seq
            if uid > uids[j][1]:
                j += 1
                uid = uids[j][0] if j < len(uids) else uid
        return matched

    def changed(self, modseq, known):
        """
        C{(seq, entry)} of the messages of C{known} (UID ranges) changed
        after C{modseq}, ascending: from the folder's changes since, not
        a look at every message.
        """
        member = SequenceSet(known).matcher(None)
        return self._changed_pairs(modseq, lambda seq, uid: uid in member)

    def _changed_pairs(self, modseq, wanted):
        """C{(seq, entry)} of the messages in the view changed after C{modseq} that C{wanted(seq, uid)}."""
        pairs = []
        for uid in self.folder.changed_since(modseq):
            seq = self.seq(uid)
            if seq is not None and uid not in self.pending and wanted(seq, uid):
                pairs.append((seq, self.folder.entry(uid)))
        return pairs

    def arrange(self, query, order, saved=frozenset(), columns=None, name=None):
        """
        SORT and THREAD: a Deferred of C{(order(rows), uses_modseq)},
        where C{rows} are the L{Rows} of the messages matching C{query}
        (as L{search} takes it), in sequence order. Searching, reading
        their header fields and C{order} all run in a thread; criteria
        that are only C{ALL} (most SORT and THREAD commands) try no
        message at all.

        @param columns: the L{headerfields.Fields} attributes C{order}
            reads (only those are decoded from the header cache), or
            L{None} for all. An order that reads none, or only the date
            that every message already knows (L{Rows} column C{"sent"}),
            reads no header cache: a SORT by date, arrival or size.
        @param name: names C{order} (as C{("THREAD", "REFERENCES", uid)})
            when its answer depends only on the messages it is given: the
            folder keeps its last answer by that name, the answer again
            for exactly the same messages (the same UIDs at the same
            sequence numbers; a message's header never changes under its
            UID). Webmail sends the same THREAD for every page it shows.

        @raise imap4.IllegalQueryError: the criteria are malformed.
        """
        matcher = self._matcher(query, saved)
        pairs = [(seq, u) for seq, u in enumerate(self.view, 1) if u not in self.pending]
        recent = frozenset(self.recent)
        folder = self.folder
        indexes = None if columns is None else headercache.column_indexes(columns)
        dates_only = columns is not None and set(columns) <= {"date"}
        answers = _answers.setdefault(folder, {})

        @_collector_paused
        def run():
            found = pairs if matcher.everything else [
                (seq, u) for seq, u in pairs if _matches_uid(matcher, folder, seq, u, recent)]
            if name is not None:
                given = (array("I", [seq for seq, _ in found]), array("I", [u for _, u in found]))
                last = answers.get(name)
                if last is not None and last[0] == given:
                    return last[1]
                answer, whole = answered(found)
                if whole:  # (not when some were expunged meanwhile)
                    answers[name] = (given, answer)
                return answer
            return answered(found)[0]

        def answered(found):
            """C{(order's answer, whether it had all of C{found})}."""
            entries = [folder.entry(u) for _, u in found]
            fields = None
            if not dates_only or "date" in columns and any(e.sent is None for e in entries
                                                           if e is not None):
                fields = folder.fields([u for _, u in found], indexes)
            whole = True
            if fields is not None or None in entries:  # expunged meanwhile
                kept = [at for at, (_, u) in enumerate(found) if entries[at] is not None
                        and (fields is None or u in fields)]
                whole = len(kept) == len(found)
                found, entries = [found[at] for at in kept], [entries[at] for at in kept]
            return order(_rows(folder, found, entries, fields)), whole

        def arranged(result):
            folder.headers.kick()  # writes what was read from files
            return result, matcher.uses_modseq

        d = folder.headers.ready()  # (the header cache's, where it has them)
        d.addCallback(lambda _: threads.deferToThread(run))
        return d.addCallback(arranged)

    def _matcher(self, query, saved):
        return compile_search(query, len(self.view), self.view[-1] if self.view else 0, saved)

    # Internals

    def _fetched(self, messages, uid):
        """
        L{resolve} for a FETCH; with CHANGEDSINCE, the folder's changes
        since, kept if in the set (a CONDSTORE client's C{1:*} of a big
        folder looks at what changed, not at every message).
        """
        since = getattr(messages, "changedsince", None)
        if since is None:
            return self.resolve(messages, uid)
        star = (self.view[-1] if uid else len(self.view)) if self.view else 0
        member = messages.matcher(star)
        return [(seq, entry.uid) for seq, entry in self._changed_pairs(
            since, lambda seq, u: (u if uid else seq) in member)]

    def _forget(self, uids):
        """Drop C{uids} from the view; their sequence numbers, highest first."""
        uids = set(uids)
        self.recent -= uids
        seqs = sorted((self.seq(u) for u in uids), reverse=True)
        for seq in seqs:
            del self.view[seq - 1]
        return seqs

    def seq(self, uid):
        """The sequence number the client knows C{uid} by, or L{None}."""
        i = bisect.bisect_left(self.view, uid)
        if i < len(self.view) and self.view[i] == uid:
            return i + 1
        return None

    def resolve(self, messages, uid):
        """
        C{(seq, uid)} pairs, ascending, for a L{SequenceSet} of UIDs or
        sequence numbers: its ranges intersected with the view, so the
        cost follows the view's size, not the numbers in the set.
        """
        view = self.view
        if uid:
            return [(i + 1, view[i]) for i in messages.indexes(view)]
        return [(seq, view[seq - 1]) for seq in messages.numbers(len(view))]


@implementer(imap4.IMessage, imap4.IMessageFile)
class Message:
    """
    A stored message. Headers are read on first use, the whole message
    read and parsed only for MIME structure and sections
    (L{mailsrv.imap.mime}).
    """

    cur = None  # a descriptor of the folder's cur/ to read the header in (SEARCH)
    whole = False  # read the whole file at once (SEARCH BODY or TEXT)

    def __init__(self, folder, info, recent=False, fields=None):
        self.folder = folder
        self.info = info
        self.recent = recent  # \\Recent in the session that fetches it
        # the headerfields.Fields of the header cache (SEARCH), or None
        self.fields = fields
        self._header = None
        self._body = None
        self._data = None
        self._tree = None

    def getUID(self):
        return self.info.uid

    def getFlags(self):
        return sorted(self.info.flags | {"\\Recent"} if self.recent else self.info.flags)

    def getInternalDate(self):
        return email.utils.formatdate(self.info.internaldate)

    def getSize(self):
        return self.info.size

    def open(self):
        """The message as sent: a file with bare LF (L{mime_bytes}) in memory, with CRLF."""
        if self.info.converted:
            return io.BytesIO(self.mime_bytes())
        return self.folder.open(self.info.uid)

    def header_bytes(self):
        """The header block as stored, with its ending empty line."""
        if self._header is None:
            if self.whole:
                self.body_bytes()
            else:
                self._header = self.folder.read_header(self.getUID(), self.cur)
        return self._header

    def body_bytes(self):
        """
        The body as sent (CRLF line ends), read once with the header: a
        SEARCH with several BODY and TEXT keys reads the file once.
        """
        if self._body is None:
            with self.folder.open(self.getUID()) as f:
                data = f.read()
            if self._header is None:
                end = headerfields.header_end(data)
                self._header = data if end is None else data[:end]
            body = data[len(self._header):]
            self._body = mime.crlf(body) if self.info.converted else body
        return self._body

    def header(self, name):
        """
        The first C{name} field's value, unfolded, as text (UTF-8, or
        Latin-1 bytes kept as they are), or L{None}.
        """
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name):
        """
        Every C{name} field's value (SEARCH looks in all of them: a header
        may be repeated), from L{fields} when it has them: much cheaper
        than L{getHeaders}, and the same as the file says.
        """
        name = name.lower()
        if self.fields is not None and name in headerfields.CACHED:
            return self.fields.values(name)
        return [headerfields.field_value(m.group(1))
                for m in _field_pattern(name).finditer(self.header_bytes())]

    def getHeaders(self, negate, *names):
        return _headers(parse_header_bytes(self.header_bytes()), negate, names)

    def getBodyFile(self):
        f = self.open()
        header = self.header_bytes()
        f.seek(len(mime.crlf(header) if self.info.converted else header))
        return f

    def mime_bytes(self):
        """
        The whole message with CRLF line ends (a copy from another server's
        Maildir may have bare LF), read once: sections are slices of it.
        """
        if self._data is None:
            with self.folder.open(self.info.uid) as f:
                self._data = mime.crlf(f.read())
        return self._data

    def mime_tree(self):
        """The root L{mime.Entity} of L{mime_bytes}, parsed once (may be slow: see L{mime.costly})."""
        if self._tree is None:
            self._tree = mime.parse(self.mime_bytes())
        return self._tree


class _Searched(Message):
    """
    A message as SEARCH sees it: its L{MessageInfo} is made only if a
    key needs it (flags, size, dates), as most searches are on fields.
    """

    def __init__(self, folder, uid, recent, fields, cur):
        # (not Message's: there is one per message searched, and no info)
        self.folder, self.uid, self.recent, self.fields, self.cur = (
            folder, uid, recent, fields, cur)
        self._header = self._body = self._data = self._tree = None

    def getUID(self):
        return self.uid

    @functools.cached_property
    def info(self):
        return self.folder.message(self.uid)


def _status_values(folder, items):
    """The STATUS values of a synced folder: a dict, or a Deferred of one for SIZE."""
    values = {
        "MESSAGES": len(folder),
        "RECENT": folder.recent_count(),
        "UIDNEXT": folder.uidnext,
        "UIDVALIDITY": folder.uidvalidity,
        "UNSEEN": folder.unseen_count(),
        "HIGHESTMODSEQ": folder.highestmodseq,
    }
    if "SIZE" not in items:
        return values
    return folder.total_size().addCallback(lambda size: dict(values, SIZE=size))


# Folder -> {name: (the messages given, the answer)}: see Mailbox.arrange's name.
_answers = weakref.WeakKeyDictionary()


def _rows(folder, found, entries, fields):
    """
    The L{Rows} of the messages C{found} (C{(seq, uid)} pairs) whose
    folder entries are C{entries}, and header L{Fields} C{fields} (by
    UID; L{None} when no column of them is read).
    """
    uids = [u for _, u in found]

    def column(name):
        if name == "sent":
            return [e.sent for e in entries]
        if name == "arrival":
            return [e.internaldate for e in entries]
        if name == "size":
            return [folder.wire_size(e) for e in entries]
        value = operator.attrgetter(name)
        return [value(fields[u]) for u in uids]

    def records():
        return [Record(seq, u, folder.wire_size(e), e.internaldate, fields[u])
                for (seq, u), e in zip(found, entries)]

    return Rows([seq for seq, _ in found], uids, column, records)


def _collector_paused(work):
    """
    C{work} run with Python's cycle collector off (if no one else turned
    it off). SORT and THREAD of a big folder make some 100,000 objects
    that live until the answer is sent; each collection they trigger
    meanwhile walks every object of the process, every open folder's
    records included: that was two thirds of the CPU time of a SORT of
    50,000 messages, and half of a THREAD's. What they make has no cycle
    to free before they end (a thread tree's are freed by the next
    collection).
    """
    @functools.wraps(work)
    def paused(*args):
        if not gc.isenabled():
            return work(*args)
        gc.disable()
        try:
            return work(*args)
        finally:
            gc.enable()
    return paused


def _matches(matcher, seq, message):
    try:
        return matcher(seq, message)
    except (KeyError, OSError):
        return False  # expunged while the search ran


def _matches_uid(matcher, folder, seq, uid, recent):
    """L{_matches} for a UID, its L{Message} made here (in a thread: a folder's worth)."""
    try:
        message = Message(folder, folder.message(uid), uid in recent)
    except KeyError:
        return False
    return _matches(matcher, seq, message)


class ChangedSince(SequenceSet):
    """A message set for FETCH with the CHANGEDSINCE modifier (RFC 7162)."""

    def __init__(self, messages, changedsince):
        super().__init__(messages.ranges)
        self.changedsince = changedsince




@functools.lru_cache(maxsize=64)
def _field_pattern(name):
    """A pattern whose group 1 is the (folded) value of header field C{name}."""
    return re.compile(
        rb"^" + re.escape(name.encode("ascii", "replace")) + rb"[ \t]*:(.*(?:\r?\n[ \t].*)*)",
        re.IGNORECASE | re.MULTILINE,
    )


def parse_header_bytes(data):
    return email.parser.BytesHeaderParser(policy=_CRLF_POLICY).parsebytes(data)


def _headers(message, negate, names):
    """
    The C{getHeaders} contract: lower-case name -> value (the first of
    repeated fields), values limited to ASCII because Twisted writes them
    with C{networkString}.
    """
    wanted = {n.lower() if isinstance(n, str) else n.decode("ascii", "replace").lower()
              for n in names}
    result = {}
    for name, value in message.items():
        lower = name.lower()
        if (lower in wanted) != bool(negate) and lower not in result:
            text = str(value)
            result[lower] = text.encode("ascii", "replace").decode("ascii")
    return result
