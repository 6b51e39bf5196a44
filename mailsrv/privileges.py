"""
Binding ports 25, 110, 143 ... as root, then running as `[server] user`
and `group`, as Postfix and Dovecot do (docs/config.md, "Running as a
service").

Start-up as root builds everything first (data_dir, the spool, the
generated certificate, the lock file), the listeners bind in
L{twisted.application.service.IService.privilegedStartService}, and then
L{DropPrivileges} (the last such step) hands data_dir to the user (owner
of every file and directory in it, modes kept; and the certificate this
start generated) and switches the process
for good: supplementary groups, group, user. A file the config names
outside data_dir that the user could not read (the users file, a key, a
list) stops start-up with one line saying what to chown, before anything
runs as the user.

Started as root without a `user`, the server runs as root and says so at
every start (a critical line, as for an open relay) unless `[server]
allow_root = true`: refusing would stop every deployment that started as
root before the key existed (docs/config.md says why).
"""

import grp
import os
import pwd
import stat
import sys
from pathlib import Path

from twisted.application import service
from twisted.logger import Logger

log = Logger()


def account(settings):
    """C{(uid, gid, user name)} of [server] user and group; group defaults to the user's."""
    user = pwd.getpwnam(settings.user)
    gid = grp.getgrnam(settings.group).gr_gid if settings.group else user.pw_gid
    return user.pw_uid, gid, user.pw_name


def give_made_files(settings, made):
    """
    As root with a [server] user: files this start made outside data_dir
    (the generated certificate and key) become the user's, who reads them
    again on SIGHUP.
    """
    if os.geteuid() != 0 or not settings.user:
        return
    uid, gid, _ = account(settings)
    for path in made:
        os.lchown(path, uid, gid)


def unreadable(paths, uid, gids):
    """The first of C{paths} (existing files) that C{uid} with C{gids} cannot read, or L{None}."""
    for path in paths:
        path = Path(path).absolute()
        if not path.exists():
            continue
        for directory in reversed(path.parents):
            if not _allowed(directory.stat(), uid, gids, stat.S_IXUSR, stat.S_IXGRP,
                            stat.S_IXOTH):
                return directory
        if not _allowed(path.stat(), uid, gids, stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH):
            return path
    return None


def _allowed(info, uid, gids, owner_bit, group_bit, other_bit):
    if info.st_uid == uid:
        return bool(info.st_mode & owner_bit)
    if info.st_gid in gids:
        return bool(info.st_mode & group_bit)
    return bool(info.st_mode & other_bit)


def hand_over(directory, uid, gid):
    """Make C{uid}:C{gid} the owner of C{directory} and everything in it (links not followed)."""
    os.lchown(directory, uid, gid)
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


class DropPrivileges(service.Service):
    """
    @param files: the files outside data_dir the server reads while it
        runs (the users and aliases files, keys, lists).
    @param made: files outside data_dir this start made (the generated
        certificate and key): given to the user too.
    """

    def __init__(self, settings, files, made=()):
        self.settings = settings
        self.files = files
        self.made = made

    def privilegedStartService(self):
        super().privilegedStartService()
        settings = self.settings
        if os.geteuid() != 0 or not settings.user:
            return
        give_made_files(settings, self.made)
        uid, gid, name = account(settings)
        gids = {gid, *(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)}
        blocked = unreadable(self.files, uid, gids)
        if blocked is not None:
            sys.stderr.write(
                f"mailsrv: {settings.path}: [server] user: {blocked} is not readable by "
                f"{name}: chown {name} {blocked} (or give its group {name}'s group "
                f"and read access)\n")
            raise SystemExit(1)
        hand_over(settings.data_dir, uid, gid)
        os.initgroups(name, gid)
        os.setgid(gid)
        os.setuid(uid)
        log.info("running as {user} (uid {uid}, gid {gid}); data_dir {data_dir} is theirs",
                 user=name, uid=uid, gid=gid, data_dir=settings.data_dir)

    def startService(self):
        super().startService()
        if os.geteuid() == 0 and not self.settings.allow_root:
            log.critical("WARNING: running as root: a flaw in mailsrv would give the attacker "
                         "the machine; set [server] user (e.g. \"mail\"), or allow_root = "
                         "true to say it is meant")
