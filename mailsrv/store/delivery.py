"""
Durable Maildir delivery of a spooled message to local mailboxes.

The message is written and fsync'd once, in the spool; each mailbox gets a
hard link to it in C{new/} (a copy, written and fsync'd in C{tmp/} first,
when the mailbox is on another file system). Every C{new/} directory is
fsync'd before the function returns, so the links survive a crash.

Call it off the reactor thread.
"""

import errno
import os
import shutil

from mailsrv.store.layout import ensure_maildir, unique_name


def fsync_directory(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd, data):
    """
    Write all of C{data} to file descriptor C{fd}: C{os.write} may take
    only part (a nearly full disk takes what fits, then refuses the rest
    with ENOSPC).
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_file(path, data, fsync=False):
    """Create or replace C{path} (mode 0600) with C{data}, fsync'd if asked."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def discard(path, ignore=FileNotFoundError):
    """Unlink C{path}, a clean-up after a failure: errors of type C{ignore} pass."""
    try:
        os.unlink(path)
    except ignore:
        pass


# Maildirs this process has made sure of (cur/ new/ tmp/ exist), so that a
# delivery does not pay three makedirs calls each time. One that has gone
# since (removed by hand) is noticed by the failing link and made again.
_ready = set()
_MAX_READY = 10000


def _ensure(maildir):
    if maildir not in _ready:
        ensure_maildir(maildir)
        if len(_ready) >= _MAX_READY:
            _ready.clear()
        _ready.add(maildir)


def deliver_file(source, maildirs):
    """
    Put the (already fsync'd) file C{source} into C{new/} of each Maildir.

    @param maildirs: Maildir paths; created when missing.
    @return: the delivered paths, in the order of C{maildirs}.
    """
    size = os.path.getsize(source)
    delivered = []
    try:
        for maildir in maildirs:
            _ensure(maildir)
            name = unique_name(size)
            target = os.path.join(maildir, "new", name)
            try:
                try:
                    os.link(source, target)
                except FileNotFoundError:
                    if not os.path.exists(source):
                        raise
                    _ready.discard(maildir)  # the Maildir went away: make it again
                    _ensure(maildir)
                    os.link(source, target)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                _copy_into(source, maildir, name, target)
            delivered.append(target)
        for directory in {os.path.dirname(p) for p in delivered}:
            fsync_directory(directory)
    except BaseException:
        for path in delivered:  # all or nothing: the client will retry
            os.unlink(path)
        raise
    return delivered


def _copy_into(source, maildir, name, target):
    temporary = os.path.join(maildir, "tmp", name)
    try:
        with open(source, "rb") as src, open(temporary, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.rename(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
