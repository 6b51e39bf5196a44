"""
The checks that `twistd mailsrv` start-up and `mailsrv check-config` share.

Start-up reads many files besides mailsrv.toml: list files, certificates,
the data directory. Each is loaded here with the loader start-up uses, so
a config check-config calls ok starts, and one that cannot start is refused
by both with the same one line (a L{ConfigError}) instead of a traceback.

Values in mailsrv.toml that only the server's own parsers understand
(endpoints, IP list entries, filter actions) are checked here too, by
those parsers: the config module reads plain values and imports nothing
of the server.

Nothing here writes: what start-up would create (data_dir, a self-signed
certificate) is only checked to be creatable, and reported as a note.
"""

import grp
import os
import pwd
import stat
from dataclasses import replace
from typing import Callable, NamedTuple
from urllib.parse import urlsplit

from twisted.internet import endpoints

from mailsrv import dkimkeys, signing, tls
from mailsrv.address import domain_of
from mailsrv.config import ANTISPAM_SECTIONS, ConfigError
from mailsrv.directory.listfile import ListFileError
from mailsrv.policy.actions import parse_action
from mailsrv.policy.bayes import Table, parse_exclude
from mailsrv.policy.lists import read_phrases, read_urls
from mailsrv.netaddr import parse_entry
from mailsrv.queue.spool import SPOOL_DIRECTORIES
from mailsrv.store.layout import check_folder_name

USERS_FILE_HINT = "fix or remove the line; `mailsrv user` writes it"


def preflight(settings, reactor, warnings=True):
    """
    Check the values only the server parses (L{check_settings}), then
    everything start-up loads from files.

    @param reactor: the one the endpoints are parsed for, and the list
        files' clock.
    @param warnings: whether to work out list-file warnings (skipped users
        lines, dead aliases...); start-up logs those itself when it loads
        the files, so it asks for none.
    @return: notes for the admin (lines): what start-up will create, and
        list-file warnings.
    @raise ConfigError: naming the config key of the first problem.
    """
    check_settings(settings, reactor)
    notes = _check_data_dir(settings)
    for listed in list_files(settings, reactor):
        notes += _check_list_file(settings, listed, warnings)
    notes += _check_tls(settings)
    _check_delivery_cas(settings)
    _check_auth_files(settings)
    tls.redis_client_tls(settings)
    dkim_signer(settings)
    return notes


def check_settings(settings, reactor):
    """
    The values of mailsrv.toml that the server's parsers must accept:
    every command of C{mailsrv} checks these, start-up through L{preflight}.

    @param reactor: the one the endpoints are parsed for (nothing listens).
    @raise ConfigError: naming the config key of the first problem.
    """
    _check_account(settings)
    for listener in settings.listeners:
        key = f"[listen #{listener.index + 1}]"
        _check_endpoint(settings, reactor, f"{key} endpoint", listener.endpoint)
        for kind in ("allow", "deny", "safe"):
            _check_ip_entries(settings, f"{key} {kind}", getattr(listener.access, kind))
        _check_ip_entries(settings, f"{key} proxy_from", listener.proxy_from, names=False)
        if listener.proxy_protocol and _is_unix_endpoint(listener.endpoint):
            raise ConfigError(settings.path, f"{key} proxy_protocol",
                              "takes TCP listeners only: a UNIX socket's peer has no "
                              "address that proxy_from could list")
    _check_ip_entries(settings, "[relay] trusted", settings.relay.trusted)
    if settings.metrics.endpoint:
        _check_endpoint(settings, reactor, "[metrics] endpoint",
                        settings.metrics.listen_endpoint)
    for name, antispam in _own_sections(settings):
        if antispam.clamav is not None:
            _check_client_endpoint(settings, reactor, f"[{name}.clamav] endpoint",
                                   antispam.clamav.endpoint)
        if antispam.rspamd is not None:
            _check_http_url(settings, f"[{name}.rspamd] url", antispam.rspamd.url)
    for key, text in {key: text for _, antispam in settings.antispam_groups()
                      for key, text in antispam.actions}.items():
        try:
            action = parse_action(text)
            if action.kind == "move":
                check_folder_name(action.argument)
        except ValueError as e:
            raise ConfigError(settings.path, key, str(e))


def _check_account(settings):
    """[server] user and group name an account of this machine."""
    if settings.group and not settings.user:
        raise ConfigError(settings.path, "[server] group", "needs [server] user")
    for key, lookup in (("user", pwd.getpwnam), ("group", grp.getgrnam)):
        name = getattr(settings, key)
        if name:
            try:
                lookup(name)
            except KeyError:
                raise ConfigError(settings.path, f"[server] {key}", f"no such {key} {name!r}",
                                  f"create it, or name another ({key}s are in /etc/"
                                  f"{'passwd' if key == 'user' else 'group'})")


def _check_endpoint(settings, reactor, key, endpoint):
    """Parse the endpoint string the way the service will, without listening."""
    if endpoint.lower().startswith("systemd:") and not _under_systemd():
        return _check_systemd_endpoint(settings, key, endpoint)
    try:
        endpoints.serverFromString(reactor, endpoint)
    except Exception as e:
        raise ConfigError(settings.path, key, f"bad endpoint {endpoint!r}: {e}",
                          'Twisted endpoint syntax, e.g. "tcp:2525:interface=127.0.0.1"')


def _is_unix_endpoint(endpoint):
    kind, _, options = endpoint.partition(":")
    return kind.lower() == "unix" or (kind.lower() == "systemd"
                                      and "domain=UNIX" in options.split(":"))


def _under_systemd():
    """Whether systemd handed this process its sockets (sd_listen_fds(3))."""
    return os.environ.get("LISTEN_PID") == str(os.getpid())


SYSTEMD_DOMAINS = ("INET", "INET6", "UNIX")


def _check_systemd_endpoint(settings, key, endpoint):
    """
    A systemd: endpoint outside systemd (`mailsrv check-config`, ExecStartPre):
    Twisted's parser looks the inherited socket up, so only its syntax is
    checked here: domain=INET|INET6|UNIX and index=N or name=NAME.
    """
    options = dict(part.partition("=")[::2] for part in endpoint.split(":")[1:])
    hint = 'e.g. "systemd:domain=INET:index=0" (docs/config.md, "Running as a service")'
    if options.get("domain") not in SYSTEMD_DOMAINS:
        raise ConfigError(settings.path, key, f"bad endpoint {endpoint!r}: domain must be "
                          "INET, INET6 or UNIX", hint)
    if not (options.get("index", "").isdigit() or options.get("name")):
        raise ConfigError(settings.path, key, f"bad endpoint {endpoint!r}: give index=N "
                          "(the socket's place in the unit's ListenStream= lines) or "
                          "name=NAME (its FileDescriptorName=)", hint)
    unknown = set(options) - {"domain", "index", "name"}
    if unknown:
        raise ConfigError(settings.path, key, f"bad endpoint {endpoint!r}: unknown option "
                          f"{sorted(unknown)[0]!r}", hint)


def _check_client_endpoint(settings, reactor, key, endpoint):
    """Parse a client endpoint string the way the server will, without connecting."""
    try:
        endpoints.clientFromString(reactor, endpoint)
    except Exception as e:
        raise ConfigError(settings.path, key, f"bad endpoint {endpoint!r}: {e}",
                          'Twisted endpoint syntax, e.g. "unix:/run/clamav/clamd.ctl" '
                          'or "tcp:127.0.0.1:3310"')


def _check_http_url(settings, key, url):
    """An http:// URL with a host: what the scanner's HTTP client can ask."""
    try:
        parts = urlsplit(url)
        usable = parts.scheme == "http" and parts.hostname and parts.port != 0
    except ValueError:  # (a port that is no number)
        usable = False
    if not usable:
        raise ConfigError(settings.path, key, f"bad URL {url!r}",
                          'an http:// URL with host and port, e.g. "http://127.0.0.1:11333"')


def _check_ip_entries(settings, key, entries, names=True):
    """
    @param names: whether host names and domains may be listed (a list
        that must answer without a DNS lookup takes none).
    """
    for entry in entries:
        try:
            kind = parse_entry(entry)[0]
        except ValueError as e:
            raise ConfigError(settings.path, key, str(e))
        if kind in ("host", "domain") and not names:
            raise ConfigError(settings.path, key, f"{entry!r} is a name, not an address",
                              "list addresses or networks, e.g. 10.1.0.0/24")


class ListFile(NamedTuple):
    """
    A list file the config names.

    @ivar what: its name for people ("kill list").
    @ivar key: the config key that names it ("[access] kill_file").
    @ivar load: from the path to C{(entries, skipped)}, as start-up reads
        the file: C{skipped} are the lines it skips rather than refuses
        (L{ListFileError}s: warnings for check-config, errors for C{lists
        check}); raises L{ListFileError} for a file it refuses.
    @ivar must_exist: whether a missing file is an error (else it is empty).
    @ivar warnings: from the parsed entries to lines worth showing.
    @ivar hint: how to fix a bad file, for the error line.
    """

    what: str
    key: str
    path: os.PathLike
    load: Callable
    must_exist: bool
    warnings: Callable = lambda entries: []
    hint: str = ""


def _whole(parse):
    """A L{ListFile} loader for a file start-up takes whole or refuses."""
    return lambda path: (parse(path), [])


def list_files(settings, clock):
    """
    The L{ListFile}s of C{settings}, in config order.

    @param clock: the clock of the users and aliases files the alias
        warnings read.
    """
    from mailsrv.directory.aliases import parse_aliases
    from mailsrv.directory.senderlist import parse_kill_list, parse_whitelist
    from mailsrv.directory.users import read_users, refused_hashes
    from mailsrv.netaddr import read_entries

    files = [ListFile("users", "[users] file", settings.users_file, read_users, False,
                      lambda users: [f"warning: {problem}"
                                     for problem in refused_hashes(settings.users_file)],
                      USERS_FILE_HINT),
             ListFile("aliases", "[aliases] file", settings.aliases_file,
                      _whole(parse_aliases), False,
                      lambda entries: _alias_problems(settings, clock))]
    if settings.access.kill_file is not None:
        files.append(ListFile("kill list", "[access] kill_file", settings.access.kill_file,
                              _whole(parse_kill_list), False))
    if settings.relay.trusted_file is not None:
        files.append(ListFile("trusted IPs", "[relay] trusted_file",
                              settings.relay.trusted_file, _whole(read_entries), True))
    for listener in settings.listeners:
        for kind in ("allow", "deny"):
            path = getattr(listener.access, f"{kind}_file")
            if path is not None:
                files.append(ListFile(f"{kind} list of {listener.name}",
                                      f"[listen #{listener.index + 1}] {kind}_file", path,
                                      _whole(read_entries), True))
    for name, antispam in _own_sections(settings):
        if antispam.spamskip is not None:
            files.append(ListFile("spamskip", f"[{name}.spamskip] file",
                                  antispam.spamskip.file, _whole(read_entries), False))
        if antispam.whitelist is not None:
            files.append(ListFile("sender whitelist", f"[{name}.whitelist] file",
                                  antispam.whitelist.file, _whole(parse_whitelist), False,
                                  lambda entries: _local_whitelisted(settings, entries)))
        if antispam.statistical is not None:
            files.append(ListFile("word table", f"[{name}.statistical] table",
                                  antispam.statistical.table, _whole(_table_words), False))
            files.append(ListFile("excluded words", f"[{name}.statistical] exclude",
                                  antispam.statistical.exclude, _whole(parse_exclude), False))
        if antispam.phrases is not None:
            files.append(ListFile("phrase list", f"[{name}.phrases] file",
                                  antispam.phrases.file, read_phrases, False))
        if antispam.urls is not None:
            files.append(ListFile("URL list", f"[{name}.urls] file", antispam.urls.file,
                                  read_urls, False))
    return files


def _own_sections(settings):
    """
    C{(table name, L{AntispamSettings})} of the global [antispam] and of
    each domain's, the latter with only the sections the domain sets (the
    others are the global ones, checked once).
    """
    groups = settings.antispam_groups()
    everywhere = groups[0][1]
    own = [groups[0]]
    for name, antispam in groups[1:]:
        own.append((name, replace(antispam, **{
            section: None for section in ANTISPAM_SECTIONS
            if getattr(antispam, section) is getattr(everywhere, section)})))
    return own


def _table_words(path):
    """The words of a word table (what `lists check` counts)."""
    return list(Table.parse(path).counts)


def file_problem(error, path):
    """The words for a list file at C{path} that could not be loaded."""
    if isinstance(error, UnicodeDecodeError):
        return f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"
    if isinstance(error, OSError):
        return f"cannot read {error.filename}: {error.strerror}"
    return str(error)


def _check_list_file(settings, listed, warnings):
    try:
        if not listed.path.exists():
            if listed.must_exist:
                raise ConfigError(settings.path, listed.key, f"{listed.path} does not exist")
            return []
        entries, skipped = listed.load(listed.path)
    except (ListFileError, OSError, UnicodeDecodeError) as e:
        raise ConfigError(settings.path, listed.key, file_problem(e, listed.path),
                          listed.hint)
    if not warnings:
        return []
    return ([f"{listed.what}: warning: start-up skips {problem}" for problem in skipped]
            + [f"{listed.what}: {line}" for line in listed.warnings(entries)])


def _alias_problems(settings, clock):
    """Warnings for aliases with dead members, loops, or no mailbox at all."""
    from mailsrv.directory import AliasMap, Directory, UserDB

    directory = Directory(settings.local_domains, UserDB(settings.users_file, clock),
                          AliasMap(settings.aliases_file, clock))
    return [f"warning: {line}" for line in directory.alias_problems()]


def _local_whitelisted(settings, entries):
    """Warnings for whitelisted addresses and domains of our own."""
    lines = []
    for entry in sorted(entries):
        domain = domain_of(entry)
        if settings.is_local_domain(domain):
            shown = entry if not entry.startswith("@") else domain
            lines.append(f"warning: {shown} is in our own domain {domain}: spammers forge "
                         "such senders, so only clients that log in, are trusted or have a "
                         "POP-before-SMTP window benefit; remove it")
    return lines


def _check_tls(settings):
    """
    What L{tls.ServerTLS} loads, or, when it would generate the [tls] pair,
    that it can write it (and the rest).
    """
    if not tls.pair_missing(settings):
        tls.load_files(settings)
        return []
    cert, key = settings.tls.cert, settings.tls.key
    creatable_below(settings, "[tls] cert", cert)
    creatable_below(settings, "[tls] key", key)
    tls.load_client_cas(settings)
    tls.load_domain_certificates(settings)
    return [f"tls: {cert} and {key} do not exist: start-up generates a self-signed "
            f"certificate for {settings.hostname}"]


def _check_delivery_cas(settings):
    """The CA file "verify" hops chain to: read when the first such hop is met, so checked here."""
    try:
        tls.trust_root(settings.delivery.outbound.ca_file)
    except ValueError as e:
        raise ConfigError(settings.path, "[delivery] tls_ca_file", str(e),
                          "give the CA certificates (PEM) that issue the next hops' certificates")


def _check_auth_files(settings):
    """The files of [auth.ldap] and [auth.smtp]: the bind password readable, the CAs PEM."""
    auth = settings.auth
    source = auth.ldap if auth.source == "ldap" else auth.smtp
    if auth.source == "ldap" and auth.ldap.bind_password_file is not None:
        path = auth.ldap.bind_password_file
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise ConfigError(settings.path, "[auth.ldap] bind_password_file",
                              file_problem(e, path))
    if source is not None and source.ca_file is not None:
        try:
            tls.trust_root(source.ca_file)
        except ValueError as e:
            raise ConfigError(settings.path, f"[auth.{auth.source}] ca_file", str(e))


def dkim_signer(settings):
    """
    The L{signing.Signer} of [[dkim.sign]] (L{None}: no table), each key
    file read: start-up and reload use it, so check-config refuses what
    they would. A key other users may read is refused, as OpenDKIM does;
    its group may (0640, the group the server runs as).

    @raise ConfigError: naming the table's key and the file's problem.
    """
    keys = []
    for index, entry in enumerate(settings.dkim.sign):
        name, path = f"[dkim.sign #{index + 1}] key", entry.key
        try:
            if os.stat(path).st_mode & stat.S_IROTH:
                raise ConfigError(settings.path, name, f"{path} is readable by every user",
                                  f"chmod 600 {path}; a key others could read is best replaced")
            keys.append(signing.SigningKey(entry.domain, entry.selector,
                                           dkimkeys.read_key(path)))
        except OSError as e:
            raise ConfigError(settings.path, name, file_problem(e, path),
                              f"mailsrv dkim keygen {entry.domain} {entry.selector} writes it")
        except dkimkeys.DKIMKeyError as e:
            raise ConfigError(settings.path, name, str(e))
    return signing.Signer(keys) if keys else None


def _check_data_dir(settings):
    """
    data_dir and the directories start-up makes in it are directories we
    may write, or can be created.
    """
    data_dir = settings.data_dir
    try:
        if not data_dir.exists():
            creatable_below(settings, "[server] data_dir", data_dir)
            return [f"data_dir {data_dir} does not exist yet: start-up creates it"]
        queue = settings.node_dir / "queue"
        for path in (data_dir, data_dir / "mail", settings.node_dir, queue,
                     *(queue / name for name in SPOOL_DIRECTORIES)):
            if path.exists():
                _writable_directory(settings, "[server] data_dir", path)
    except OSError as e:
        raise ConfigError(settings.path, "[server] data_dir",
                          f"cannot use {e.filename}: {e.strerror}")
    return []


def creatable_below(settings, key, path):
    """
    C{path} does not exist; its nearest existing ancestor must be a
    directory we may write.
    """
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(settings.path, key,
                          f"cannot create {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(settings.path, key,
                          f"cannot create {path}: {parent} is not writable")


def _writable_directory(settings, key, path):
    if not path.is_dir():
        raise ConfigError(settings.path, key, f"{path} is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(settings.path, key, f"{path} is not writable")
