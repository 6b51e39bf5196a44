"""
All users' folders: the shared L{Folder} of each open folder, creating,
deleting and renaming folders, subscriptions.
See docs/store.md.
"""

import os
import shutil
import weakref
from pathlib import Path

from twisted.internet import threads
from twisted.logger import Logger

from mailsrv.store.delivery import discard, write_file
from mailsrv.store.folder import Folder, FolderError, FolderExists, NoSuchFolder
from mailsrv.store.layout import ensure_maildir, folder_maildir, user_maildir

log = Logger()

# Folders every user has, with their RFC 6154 attribute.
SPECIAL_USE = {
    "Drafts": "\\Drafts",
    "Sent": "\\Sent",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
}

SUBSCRIPTIONS = "subscriptions"


class MailStore:
    """
    All users' folders. L{folder} hands out one shared L{Folder} per
    (user, folder) while anyone holds it, so that sessions see each other's
    changes at once.
    """

    def __init__(self, mail_root, clock):
        self.mail_root = Path(mail_root)
        self.clock = clock
        # tells other nodes of each delivery (L{mailsrv.redis.events}); one node: None
        self.publish = None
        self._folders = weakref.WeakValueDictionary()  # (user, NAME) -> Folder
        self._last_uidvalidity = 0
        self._recent = {}  # (user, NAME) -> set of UIDs, see Folder.claim_recent
        self._maildirs = {}  # (user, folder) -> Path, see maildir()

    def now(self):
        return int(self.clock.seconds())

    def new_uidvalidity(self, previous=0):
        """A UIDVALIDITY never handed out before by this process or C{previous}."""
        value = max(self.now(), self._last_uidvalidity + 1, previous + 1)
        self._last_uidvalidity = value
        return value

    def unseen_arrivals(self, user, name):
        """The set of UIDs of C{user}'s folder that are \\Recent for the next session."""
        return self._recent.setdefault((user, name), set())

    def maildir(self, user, folder="INBOX"):
        """
        Where mail for C{user}'s C{folder} is delivered (no I/O). Remembered:
        building the path costs more than the rest of a delivery's
        bookkeeping, and users and their folders are few.
        """
        key = (user, folder)
        path = self._maildirs.get(key)
        if path is None:
            path = folder_maildir(user_maildir(self.mail_root, user), folder)
            if len(self._maildirs) >= 10000:
                self._maildirs.clear()
            self._maildirs[key] = path
        return path

    def folder(self, user, name="INBOX"):
        """
        The shared L{Folder}. INBOX is created when missing; other folders
        must exist.

        @raise NoSuchFolder: it does not exist.
        @raise ValueError: C{name} is not a valid folder name.
        """
        name = _canonical(name)
        key = (user, name)
        folder = self._folders.get(key)
        if folder is not None:
            return folder
        path = self.maildir(user, name)
        if name != "INBOX" and not (path / "cur").is_dir():
            raise NoSuchFolder(f"no folder {name}")
        folder = Folder(self, user, name, path)
        self._folders[key] = folder
        return folder

    def notify(self, user, name="INBOX", names=()):
        """
        New mail was delivered to C{user}'s folder, as C{names} in C{new/}:
        an open folder takes them in now, without a listing (a folder
        nobody has open takes them in when next opened), and other nodes
        hear of it (L{publish}). Without C{names}, an open folder is synced.
        """
        if names and self.publish is not None:
            self.publish(user, name, names)
        folder = self._folders.get((user, _canonical(name)))
        if folder is None or not folder.listeners:
            return
        if names:
            folder.arrived(names)
        else:
            self._sync(folder)

    def delivered_elsewhere(self, user, name, names):
        """
        Another node delivered C{names} into C{user}'s folder: an open
        folder takes them in from C{new/}, or, when a process took one in
        already, is synced.
        """
        folder = self._folders.get((user, _canonical(name)))
        if folder is None or not folder.listeners:
            return
        if all(os.path.exists(folder.path / "new" / name) for name in names):
            folder.arrived(names)
        else:
            self._sync(folder)

    def sync_open_folders(self):
        """Sync every folder a session has open (new-mail events were missed)."""
        for folder in list(self._folders.values()):
            if folder.listeners:
                self._sync(folder)

    @staticmethod
    def _sync(folder):
        folder.sync().addErrback(
            lambda f: log.failure("{path}: sync after delivery", f, path=str(folder.path)))

    def folders(self, user):
        """The names of C{user}'s folders: C{"INBOX"} first, then sorted."""
        inbox = user_maildir(self.mail_root, user)
        names = []
        try:
            entries = os.listdir(inbox)
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if entry.startswith(".") and len(entry) > 1 and entry[1] != ".":
                if (inbox / entry / "cur").is_dir():
                    names.append(entry[1:].replace(".", "/"))
        return ["INBOX"] + sorted(names)

    def create_folder(self, user, name):
        """
        Create a folder and any missing parents (RFC 3501 CREATE).

        @raise FolderExists: it exists already.
        @raise ValueError: not a valid name.
        """
        name = _canonical(name).rstrip("/")
        path = self.maildir(user, name)
        if name == "INBOX" or (path / "cur").is_dir():
            raise FolderExists(f"folder {name} exists")
        parts = name.split("/")
        for depth in range(1, len(parts) + 1):
            parent = self.maildir(user, "/".join(parts[:depth]))
            if not (parent / "cur").is_dir():
                _make_folder(parent)

    def delete_folder(self, user, name):
        """
        Delete a folder and its messages. The directory is renamed out of
        sight at once and removed in a thread. A subscription stays (RFC
        3501 6.3.6: the server never removes a name from the list).

        @raise NoSuchFolder: it does not exist.
        @raise FolderError: it is INBOX or has subfolders.
        @return: a Deferred that fires when the files are gone.
        """
        name = _canonical(name)
        if name == "INBOX":
            raise FolderError("INBOX cannot be deleted")
        path = self.maildir(user, name)
        if not (path / "cur").is_dir():
            raise NoSuchFolder(f"no folder {name}")
        if any(n.startswith(name + "/") for n in self.folders(user)):
            raise FolderError(f"folder {name} has subfolders; delete them first")
        trash = path.parent / f"..deleted-{os.urandom(6).hex()}"
        os.rename(path, trash)
        folder = self._folders.pop((user, name), None)
        self._recent.pop((user, name), None)
        if folder is not None:
            folder.forget()
        return threads.deferToThread(shutil.rmtree, trash, True)

    def rename_folder(self, user, old, new):
        """
        Rename a folder with its subfolders; open folders follow.

        @raise NoSuchFolder, FolderExists, FolderError, ValueError
        """
        old, new = _canonical(old), _canonical(new).rstrip("/")
        if "INBOX" in (old, new):
            raise FolderError("INBOX cannot be renamed")
        if new.startswith(old + "/"):
            raise FolderError("a folder cannot be moved into itself")
        if not (self.maildir(user, old) / "cur").is_dir():
            raise NoSuchFolder(f"no folder {old}")
        if (self.maildir(user, new) / "cur").is_dir():
            raise FolderExists(f"folder {new} exists")
        self.maildir(user, new)  # validates the name
        moves = [
            (n, new + n[len(old):])
            for n in self.folders(user)
            if n == old or n.startswith(old + "/")
        ]
        parent = new.rpartition("/")[0]
        if parent and not (self.maildir(user, parent) / "cur").is_dir():
            self.create_folder(user, parent)
        for source, target in moves:
            os.rename(self.maildir(user, source), self.maildir(user, target))
            folder = self._folders.pop((user, source), None)
            recent = self._recent.pop((user, source), None)
            if recent is not None:
                self._recent[(user, target)] = recent
            if folder is not None:
                folder.moved(target, self.maildir(user, target))
                self._folders[(user, target)] = folder
            if source in self.subscriptions(user):
                self.unsubscribe(user, source)
                self.subscribe(user, target)

    def create_special_folders(self, user):
        """
        Create (and subscribe) the L{SPECIAL_USE} folders the user lacks:
        done at each IMAP login, so clients always find Drafts, Sent, Trash
        and Junk.
        """
        for name in SPECIAL_USE:
            if not (self.maildir(user, name) / "cur").is_dir():
                self.create_folder(user, name)
                self.subscribe(user, name)

    # Subscriptions (IMAP LSUB): one name a line in <inbox>/subscriptions.

    def subscriptions(self, user):
        path = user_maildir(self.mail_root, user) / SUBSCRIPTIONS
        try:
            text = path.read_text("utf-8")
        except FileNotFoundError:
            return ["INBOX"]
        return [line for line in text.splitlines() if line]

    def subscribe(self, user, name):
        names = self.subscriptions(user)
        if _canonical(name) not in names:
            self._write_subscriptions(user, names + [_canonical(name)])

    def unsubscribe(self, user, name):
        names = self.subscriptions(user)
        if _canonical(name) in names:
            names.remove(_canonical(name))
            self._write_subscriptions(user, names)

    def _write_subscriptions(self, user, names):
        inbox = user_maildir(self.mail_root, user)
        ensure_maildir(inbox)
        temporary = inbox / (SUBSCRIPTIONS + ".tmp")
        try:
            write_file(temporary, "".join(n + "\n" for n in names).encode("utf-8"))
            os.replace(temporary, inbox / SUBSCRIPTIONS)
        except OSError:
            discard(temporary)
            raise


def _make_folder(path):
    """
    A new Maildir++ folder, whole or not at all: C{cur/}, which makes a
    directory a folder, comes last, and a directory made here is removed
    again if a step fails (a full disk).
    """
    made = not os.path.isdir(path)
    try:
        for sub in ("new", "tmp"):
            os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
        write_file(os.path.join(path, "maildirfolder"), b"")
        os.mkdir(os.path.join(path, "cur"), mode=0o700)
    except OSError:
        if made:
            shutil.rmtree(path, ignore_errors=True)
        raise


def _canonical(name):
    """INBOX in any case is INBOX (RFC 3501); other names keep their case."""
    return "INBOX" if name.upper() == "INBOX" else name

