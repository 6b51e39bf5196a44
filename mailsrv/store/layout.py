"""
Where a user's mail lives: C{<data_dir>/mail/<domain>/<localpart>/} is the
user's Maildir (INBOX); IMAP folder C{A/B} is the Maildir++ subfolder
C{.A.B} inside it (see docs/store.md).
"""

import os
import socket
import threading
import time
import unicodedata
from pathlib import Path

from mailsrv.address import parse_mailbox

MAILDIR_SUBDIRS = ("cur", "new", "tmp")
# A folder A/B/C is one directory, .A.B.C: its name (UTF-8) may have this
# many bytes on every common file system.
NAME_MAX = 255
MAX_FOLDER_LEVELS = 16


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
    check_folder_name(folder)
    return Path(inbox) / ("." + folder.replace("/", "."))


def check_folder_name(folder):
    """
    Refuse a folder name the store cannot keep as one Maildir++ directory
    (C{.A.B} for C{A/B}) inside the user's Maildir: empty levels, dots
    (the Maildir++ separator, and C{..}), control characters (they hid
    the folder from LIST and could split lines of the subscriptions
    file), names longer than a directory name may be, and too many levels.

    @raise ValueError: with a reason for the client (ASCII, without the name).
    """
    parts = folder.split("/")
    if any(not p for p in parts):
        raise ValueError("Folder names may not have empty levels or a leading '/'")
    if "." in folder:
        raise ValueError("Folder names may not contain '.'")
    if any(_unsafe_character(c) for c in folder):
        raise ValueError("Folder names may not contain control characters")
    if len(parts) > MAX_FOLDER_LEVELS:
        raise ValueError(f"Folder names may have at most {MAX_FOLDER_LEVELS} levels")
    if len(folder.encode("utf-8")) + 1 > NAME_MAX:
        raise ValueError(f"Folder names may be at most {NAME_MAX - 1} bytes long")


def _unsafe_character(c):
    """Controls (C0, DEL, C1), line and paragraph separators, lone surrogates."""
    return unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs")


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
