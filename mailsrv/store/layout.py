"""
Where a user's mail lives: C{<data_dir>/mail/<domain>/<localpart>/} is the
user's Maildir (INBOX); IMAP folder C{A/B} is the Maildir++ subfolder
C{.A.B} inside it (see docs/store.md).
"""

import os
import socket
import threading
import time
from pathlib import Path

from mailsrv.address import parse_mailbox

MAILDIR_SUBDIRS = ("cur", "new", "tmp")


def user_maildir(mail_root, user):
    """
    The INBOX Maildir of C{user} (an address) under C{mail_root}.

    @raise mailsrv.address.AddressError: (a C{ValueError}) C{user} is no
        mailbox name, so it cannot be a directory of ours.
    """
    address = parse_mailbox(user)
    return Path(mail_root) / address.domain.lower() / address.local.lower()


def folder_maildir(inbox, folder):
    """The Maildir of IMAP C{folder} ("INBOX" or a "/"-separated name)."""
    if folder.upper() == "INBOX":
        return Path(inbox)
    parts = folder.split("/")
    if any(not p or p in (".", "..") or "." in p or "\0" in p for p in parts):
        raise ValueError(f"unsupported folder name {folder!r}")
    return Path(inbox) / ("." + ".".join(parts))


def ensure_maildir(path):
    """Create C{cur/ new/ tmp/} (mode 0700) if missing."""
    for sub in MAILDIR_SUBDIRS:
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)


_counter = 0
_counter_lock = threading.Lock()
_hostname = socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def unique_name(size):
    """
    A Maildir file name unique on this host: time, microseconds, process and
    counter, host name, and the size (C{,S=}) so that listings need no stat.
    """
    global _counter
    with _counter_lock:
        _counter += 1
        count = _counter
    now = time.time()
    seconds = int(now)
    micro = int((now - seconds) * 1_000_000)
    return f"{seconds}.M{micro}P{os.getpid()}Q{count}.{_hostname},S={size}"
