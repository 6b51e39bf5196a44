"""
The whole config again, on SIGHUP or `mailsrv reload` (docs/config.md,
"Reloading"): the file is read and checked as start-up checks it, and only
a config that passes replaces the running one; a bad one is logged and
the server runs on as it was.

What a reload swaps: each listener's protocol factory (built anew on the
new settings, so new connections get them while open ones keep the
settings they started with, their factory's), the directory's domains and
files, the password checker, the trusted IPs, the queue's [delivery]
settings, the DKIM keys (read again), and the certificates
(mailsrv/tls.py). What it cannot swap is
kept as it runs and logged as needing a restart: the listeners, data_dir,
the account, the log, the metrics endpoint, the password source, and the
login throttling and POP-before-SMTP windows (state kept in memory).
"""

from dataclasses import fields, is_dataclass, replace

from twisted.logger import Logger

from mailsrv import config
from mailsrv.directory import AliasMap, Directory, UserDB
from mailsrv.directory.checker import UserPasswordChecker
from mailsrv.logtext import literal
from mailsrv.policy.checks.connect import ListenerAccess
from mailsrv.preflight import dkim_signer, preflight
from mailsrv.queue.courier import SMTPCourier
from mailsrv.queue.intake import LocalDelivery

log = Logger()

# Settings fields a running server cannot take: (field, how the change is named).
RESTART = {
    "listeners": "[[listen]]",
    "data_dir": "[server] data_dir",
    "user": "[server] user",
    "group": "[server] group",
    "log": "[log]",
    "metrics": "[metrics]",
    "pop_before_smtp": "[pop_before_smtp]",
    "sessions": "[sessions]",
}
# [auth] keys kept by the session store and the password source.
AUTH_RESTART = ("max_failures", "max_failures_per_ip", "failure_window", "lockout",
                "source", "ldap", "smtp")


def changes(old, new):
    """The config keys whose values differ, as C{"[table] key"} (or a table's name)."""
    found = []
    for f in fields(old):
        if f.name == "path":
            continue
        before, after = getattr(old, f.name), getattr(new, f.name)
        if before == after:
            continue
        table = f.metadata.get("table")
        if table is not None:  # a [server], [domains], [users] or [aliases] key
            found.append(f"[{table}] {f.metadata.get('key', f.name)}")
        elif is_dataclass(before) and is_dataclass(after):
            found += [f"[{f.name}] {g.name}" for g in fields(before)
                      if getattr(before, g.name) != getattr(after, g.name)]
        else:
            found.append(RESTART.get(f.name, "[domain]" if f.name == "per_domain"
                                     else f"[{f.name}]"))
    return found


def needs_restart(change):
    """Whether a change named by L{changes} waits for a restart."""
    table, _, key = change.partition(" ")  # (a whole table: "[log] format" is in "[log]")
    if change in RESTART.values() or table in RESTART.values():
        return True
    return table == "[auth]" and key in AUTH_RESTART


def running_part(old, new):
    """C{new}, but with what waits for a restart as it runs (C{old}'s)."""
    kept = {name: getattr(old, name) for name in RESTART}
    auth = replace(new.auth, **{key: getattr(old.auth, key) for key in AUTH_RESTART})
    return replace(new, auth=auth, **kept)


class Reloader:
    """
    @param server: the running L{mailsrv.context.MailServer}.
    @param limits: each listener's L{mailsrv.service.ConnectionLimits},
        whose factory a reload replaces.
    @param builders: protocol -> its C{build_factory(server, listener)}.
    @param reload_tls: reloads the certificates (L{mailsrv.tls.ServerTLS.reload}).
    @param trusted_clients: C{(settings, resolvers, clock)} -> the [relay]
        trusted clients (as start-up builds them).
    @param worker: the number of the worker of [server] workers this process
        is, or 0: the config read again is that worker's (its node).
    """

    def __init__(self, server, limits, builders, reload_tls, reactor, trusted_clients,
                 worker=0):
        self.worker = worker
        self.server = server
        self.limits = limits
        self.builders = builders
        self.reload_tls = reload_tls
        self.reactor = reactor
        self.trusted_clients = trusted_clients

    def reload(self):
        """
        Read the config again and apply it.

        @return: C{{"changed": [...], "restart": [...]}}.
        @raise config.ConfigError: the new config is refused (nothing changed).
        """
        old = self.server.settings
        try:
            new = config.load(old.path, self.worker)
            preflight(new, self.reactor, warnings=False)
        except config.ConfigError as e:
            log.error("reload refused: {error}; running on as before", error=str(e))
            raise
        self.reload_tls()
        changed = changes(old, new)
        restart = [change for change in changed if needs_restart(change)]
        applied = [change for change in changed if change not in restart]
        if applied:
            self._apply(running_part(old, new))
        log.info(literal(f"reloaded {old.path}: "
                         + (f"changed: {', '.join(applied)}" if applied else "no change")
                         + (f"; needs a restart: {', '.join(restart)}" if restart else "")),
                 changed=applied, restart=restart)
        return {"changed": applied, "restart": restart}

    def on_hangup(self):
        """SIGHUP: L{reload}, a refusal logged (by L{reload}) and not raised."""
        try:
            self.reload()
        except config.ConfigError:
            pass

    def _apply(self, settings):
        """A new server on C{settings} (state kept), and new factories for new connections."""
        old = self.server
        directory = _directory(old, settings)
        delivery = LocalDelivery(old.spool, old.store, directory)
        trusted = self._trusted(old, settings)
        signer = dkim_signer(settings)
        server = replace(
            old, settings=settings, directory=directory, delivery=delivery, trusted=trusted,
            signer=signer,
            checker=UserPasswordChecker(directory, old.sessions, old.clock,
                                        settings.auth.cache_ttl, source=old.checker.source),
            listener_access={listener.index: ListenerAccess(
                listener.access, old.resolvers(settings.dns), old.clock)
                for listener in settings.listeners})
        old.queue_runner.reconfigure(settings, SMTPCourier.from_settings(settings, self.reactor),
                                     old.resolvers(settings.dns), delivery, signer)
        for listener, limits in zip(settings.listeners, self.limits):
            factory = self.builders[listener.protocol](server, listener)
            factory.load = limits
            limits.wrappedFactory = factory
            limits.max_per_ip = settings.access.max_connections_per_ip
            limits.access = server.listener_access[listener.index]
        self.server = server


    def _trusted(self, old, settings):
        before = old.settings.relay
        if (settings.relay.trusted, settings.relay.trusted_file) == (before.trusted,
                                                                      before.trusted_file):
            return old.trusted
        trusted = self.trusted_clients(settings, old.resolvers, old.clock)
        trusted.resolve()
        return trusted


def _directory(old, settings):
    """The directory on C{settings}: the same files' readers when their paths are the same."""
    before = old.settings
    users = old.directory.users if settings.users_file == before.users_file \
        else UserDB(settings.users_file, old.clock)
    aliases = old.directory.aliases if settings.aliases_file == before.aliases_file \
        else AliasMap(settings.aliases_file, old.clock)
    return Directory(settings.local_domains, users, aliases, old.directory.book)


