"""
mailsrv.toml -> validated, immutable settings.

Every key has a safe default (see ../docs/config.md), declared once, on the
field of the settings class its table becomes. Any problem raises
L{ConfigError}, whose text is one line naming the file, the key, the problem
and a hint, so that C{twistd mailsrv} and C{mailsrv check-config} can print it
and exit non-zero instead of showing a traceback.

The settings are plain values, and this module imports nothing of the server
(tests/test_architecture.py): what only the server's own parsers can check
(endpoints, IP list entries, filter actions) and the files the config names
are checked by L{mailsrv.preflight}, which start-up and check-config share.
"""

import ipaddress
import re
import socket
import tomllib
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, unquote, urlsplit

from mailsrv.address import is_address, is_host_name, normalise


PROTOCOLS = ("smtp", "pop3", "imap")
SMTP_ROLES = ("mx", "submission")
TLS_MODES = ("starttls", "implicit", "required", "none")
CLIENT_CERT_MODES = ("none", "request", "require")
RELAY_MODES = ("none", "trusted", "anyone")
SESSION_BACKENDS = ("memory", "redis")
REDIS_PORT = 6379
SENTINEL_PORT = 26379


class ConfigError(Exception):
    """
    A problem in the configuration, worded for the admin who must fix it.
    """

    def __init__(self, path, key, problem, hint=""):
        self.path = path
        self.key = key
        self.problem = problem
        self.hint = hint
        text = f"{path}: {key}: {problem}" if key else f"{path}: {problem}"
        if hint:
            text += f" ({hint})"
        super().__init__(_one_line(text))


def _one_line(text):
    """C{text} with control characters (a key or value may hold them) escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


# Each key is declared once, as a field of the settings class its table
# becomes: the default, and how the loader reads and checks the value
# (L{_declared} reads every declared field of a table). Keys whose check
# needs other keys (a listener's role needs its protocol) are read by hand,
# their defaults still written once.


def _key(read, default=MISSING, **where):
    """
    A field read from one key by C{read(table, key, base)}; C{base} is the
    directory that relative paths start from.

    @param where: C{key}, when the key is not named as the field is;
        C{table}, for a L{Settings} field, the table that holds the key.
    """
    return field(default=default, metadata={"read": read, **where})


def _flag(default, **where):
    return _key(lambda table, key, base: table.boolean(key, default), default, **where)


def _whole(default, minimum=0, **where):
    return _key(lambda table, key, base: table.integer(key, default, minimum), default,
                **where)


def _number(default, **where):
    return _key(lambda table, key, base: table.get(key, float, float(default)),
                float(default), **where)


def _choice(default, choices, **where):
    return _key(lambda table, key, base: table.string(key, default, choices), default,
                **where)


def _text(default, **where):
    return _key(lambda table, key, base: table.string(key, default), default, **where)


def _texts(**where):
    return _key(lambda table, key, base: table.strings(key, ()), (), **where)


def _file(default="", **where):
    """
    A path relative to the config file; without a C{default} name, the key
    is off (L{None}) unless set.
    """
    return _key(lambda table, key, base: table.file_path(key, default, base),
                MISSING if default else None, **where)


def _mail_address(**where):
    """An optional mail address: "" (off) or user@domain, lower-cased."""
    return _key(lambda table, key, base: _address(table, key), "", **where)


def _mail_addresses(**where):
    """A list of mail addresses (user@domain), lower-cased."""
    def read(table, key, base):
        addresses = tuple(normalise(entry) for entry in table.strings(key, ()))
        for address in addresses:
            if not is_address(address):
                raise table.error(key, f"{address!r} is not an address", 'write "user@domain"')
        return addresses
    return _key(read, (), **where)


def _host_ports(default_port, **where):
    """A list of "host" or "host:port" (IPv6 in brackets), as C{(host, port)}s."""
    return _key(lambda table, key, base: tuple(
        _host_port(table, key, entry, default_port) for entry in table.strings(key, ())),
        (), **where)


def _domain_names(**where):
    return _key(lambda table, key, base: tuple(
        name.lower().rstrip(".") for name in table.strings(key, ())), (), **where)


def _positive_seconds(default, **where):
    """A non-empty list of whole seconds above 0."""
    def read(table, key, base):
        value = table.get(key, list, list(default))
        if not value or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in value
        ):
            raise table.error(key, "must be a list of positive whole seconds")
        return tuple(value)
    return _key(read, default, **where)


def _rfc_limit(limit, minimum, rfc="RFC 7208", **where):
    """An RFC's limit (the default) that the config may lower, never raise."""
    def read(table, key, base):
        value = table.integer(key, limit, minimum)
        if value > limit:
            raise table.error(key, f"{value} is above the {rfc} limit of {limit}",
                              "it may be lowered, never raised")
        return value
    return _key(read, limit, **where)


def _node_name(**where):
    """A name that is a directory of its own: letters, digits, ".", "_" and "-"."""
    def read(table, key, base):
        name = table.string(key, "")
        if name and (_safe_node_name(name) != name or name.startswith(".")):
            raise table.error(key, f"{name!r} is not a node name",
                              'letters, digits, ".", "_" and "-", e.g. "mx1"')
        return name
    return _key(read, "", **where)


def _safe_node_name(name):
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-"
                   for c in name).lstrip(".") or "node"


def _declared(table, cls, base=None):
    """
    C{{field name: value}} of the fields of C{cls} declared (L{_key}) for
    C{table}, read in the order they are declared.
    """
    return {f.name: f.metadata["read"](table, f.metadata.get("key", f.name), base)
            for f in fields(cls)
            if "read" in f.metadata and f.metadata.get("table", table.name) == table.name}


# [[listen]] backlog: the kernel's queue of connections not yet accepted.
# Twisted's default of 50 overflows when hundreds of clients connect at once
# (a client then waits for a greeting that never comes); Linux caps the
# value at net.core.somaxconn (4096 on current kernels).
DEFAULT_BACKLOG = 1024
_BACKLOG_ENDPOINTS = frozenset({"tcp", "tcp6", "ssl", "unix"})

# [[listen]] idle_timeout: RFC 5321 4.5.3.2.7 (SMTP, at least 5 minutes),
# RFC 1939 3 (POP3, at least 10), RFC 3501 5.4 (IMAP, at least 30).
DEFAULT_IDLE_TIMEOUTS = {"smtp": 300, "pop3": 600, "imap": 1800}


@dataclass(frozen=True)
class Timeouts:
    """
    One listener's time limits, in seconds (docs/config.md, "Timeouts").

    @ivar idle: silence allowed between commands (after login for POP3/IMAP);
        by default L{DEFAULT_IDLE_TIMEOUTS}.
    @ivar stress_connections: open connections at which the listener is
        under stress; by default 80 % of its max_connections.
    @ivar command: time from the first byte of a command line to its end;
        also the longest pause in message data.
    @ivar min_data_rate: bytes per second that message data must average
        (Postfix's smtpd_min_data_rate).
    @ivar login: POP3/IMAP: time from connecting to a successful login;
        L{None} for SMTP.
    @ivar stress: every limit above is at most this while under stress
        (Postfix's smtpd_timeout under stress).
    """

    idle: float
    stress_connections: int
    command: float = 60
    min_data_rate: int = 500
    login: Optional[float] = 60
    stress: float = 10


@dataclass(frozen=True)
class ListenerAccessSettings:
    """
    Who may connect to one listener (docs/config.md, "Listener access").

    @ivar allow: when not empty, only these clients may connect.
    @ivar deny: these clients may not.
    @ivar safe: these clients pass every restriction of the listener.
    @ivar block_own_ips: refuse clients that come from the address they
        connected to (a forged local source).
    @ivar require_auth: smtp: "" (the role decides), "any" (every client
        must log in before MAIL) or one account's address.
    """

    allow: tuple = _texts()
    allow_file: Optional[Path] = _file()
    deny: tuple = _texts()
    deny_file: Optional[Path] = _file()
    safe: tuple = _texts()
    block_own_ips: bool = _flag(False)
    require_auth: str = ""

    @property
    def restricted(self):
        """Whether a connection must be checked before it is served."""
        return bool(self.allow or self.allow_file or self.deny or self.deny_file
                    or self.block_own_ips)


@dataclass(frozen=True)
class Listener:
    """
    One C{[[listen]]} table.

    @ivar role: smtp: C{"mx"} (the default) or C{"submission"}; "" for the
        other protocols.
    @ivar client_cert: the listener's own C{client_cert}, or L{None} to take
        the global one (which an C{mx} listener never does).
    @ivar timeouts: L{None} for the protocol's defaults (L{default_timeouts}).
    @ivar proxy_protocol: every connection starts with a PROXY protocol
        header from a load balancer (L{mailsrv.proxyprotocol}).
    @ivar proxy_from: the balancers' addresses and networks: no one else may
        send the header.
    """

    index: int
    endpoint: str = _text("")
    protocol: str = _choice("smtp", PROTOCOLS)
    role: str = "mx"
    tls: str = _choice("starttls", TLS_MODES)
    max_connections: int = _whole(200, minimum=1)
    auth: bool = _flag(True)
    client_cert: Optional[str] = _choice(None, CLIENT_CERT_MODES)
    access: ListenerAccessSettings = ListenerAccessSettings()
    backlog: int = _whole(DEFAULT_BACKLOG, minimum=1)
    timeouts: Optional[Timeouts] = None
    proxy_protocol: bool = _flag(False)
    proxy_from: tuple = _texts()

    def __post_init__(self):
        if self.timeouts is None:
            object.__setattr__(self, "timeouts",
                               default_timeouts(self.protocol, self.max_connections))

    @property
    def listen_endpoint(self):
        """
        The endpoint string the service listens on: C{endpoint} with
        C{:backlog=N} added for the types that take one, unless it names
        its own backlog.
        """
        kind = self.endpoint.split(":", 1)[0].lower()
        if kind not in _BACKLOG_ENDPOINTS or "backlog=" in self.endpoint:
            return self.endpoint
        return f"{self.endpoint}:backlog={self.backlog}"

    @property
    def name(self):
        """A name for log lines and errors: C{smtp/mx tcp:25}."""
        kind = f"{self.protocol}/{self.role}" if self.role else self.protocol
        return f"{kind} {self.endpoint}"


def default_timeouts(protocol, max_connections):
    """A listener's time limits when its table sets none."""
    timeouts = Timeouts(idle=DEFAULT_IDLE_TIMEOUTS[protocol],
                        stress_connections=max(1, max_connections * 4 // 5))
    return replace(timeouts, login=None) if protocol == "smtp" else timeouts


@dataclass(frozen=True)
class TLSSettings:
    cert: Path = _file("tls/cert.pem")
    key: Path = _file("tls/key.pem")
    client_ca: Optional[Path] = _file()
    client_cert: str = _choice("none", CLIENT_CERT_MODES)


@dataclass(frozen=True)
class DomainSettings:
    """
    One C{[domain."NAME"]} table: what a local domain does differently.

    @ivar name: the domain, lower-case, without the root's dot.
    @ivar tls_cert: the certificate (with C{tls_key}) served by SNI to
        clients asking for one of the domain's names; L{None}: the global one.
    @ivar antispam: the L{AntispamSettings} for mail to the domain's
        recipients when its table has [antispam.*] sections (the global
        ones with those replaced); L{None}: the global settings.
    """

    name: str
    tls_cert: Optional[Path] = _file()
    tls_key: Optional[Path] = _file()
    antispam: Optional["AntispamSettings"] = None

    def key(self, key):
        """How errors name one of the table's keys."""
        return f'[domain."{self.name}"] {key}'


AUTH_SOURCES = ("file", "ldap", "smtp")
SMTP_AUTH_TLS = ("starttls", "implicit", "none")


@dataclass(frozen=True)
class LDAPSettings:
    """
    C{[auth.ldap]}: passwords checked by binding as the user's entry, and
    the local addresses the directory holds (docs/auth.md).

    @ivar url: C{ldap://host[:port]} or C{ldaps://host[:port]}.
    @ivar filter: finds a user's entry; C{{address}} is the address,
        escaped (RFC 4515).
    @ivar bind_password_file: a file (mode 0600) holding C{bind_dn}'s password.
    @ivar ca_file: the CAs that sign the server's certificate (ldaps:// or
        starttls); empty: the system's.
    @ivar users_filter: the entries whose addresses are local mailboxes.
    @ivar address_attribute: an entry's mailbox address.
    @ivar alias_attributes: an entry's other addresses, delivered to its mailbox.
    @ivar refresh: seconds between two reads of the addresses.
    """

    url: str = _text("ldap://127.0.0.1:389")
    base: str = _text("")
    filter: str = _text("(mail={address})")
    bind_dn: str = _text("")
    bind_password_file: Optional[Path] = _file()
    starttls: bool = _flag(False)
    ca_file: Optional[Path] = _file()
    timeout: float = _number(5.0)
    users_filter: str = _text("(mail=*)")
    address_attribute: str = _text("mail")
    alias_attributes: tuple = _key(lambda table, key, base: table.strings(
        key, ("mailAlternateAddress", "mailLocalAddress")),
        ("mailAlternateAddress", "mailLocalAddress"))
    refresh: int = _whole(60, minimum=1)


@dataclass(frozen=True)
class SMTPAuthSettings:
    """
    C{[auth.smtp]}: passwords checked by AUTH PLAIN against another SMTP
    server (docs/auth.md).

    @ivar host: C{(host, port)}; its certificate must name the host.
    @ivar tls: C{starttls}, C{implicit}, or C{none} (loopback only).
    @ivar ca_file: the CAs that sign its certificate; empty: the system's.
    """

    host: tuple = _key(lambda table, key, base: _host_port(
        table, key, table.string(key, "127.0.0.1:587"), 587), ("127.0.0.1", 587))
    tls: str = _choice("starttls", SMTP_AUTH_TLS)
    ca_file: Optional[Path] = _file()
    timeout: float = _number(10.0)


@dataclass(frozen=True)
class AuthSettings:
    """
    Login protection (docs/config.md, "Login protection") and where
    passwords are checked.

    @ivar cache_ttl: seconds a correct password is remembered, 0 for never
        (Dovecot's auth_cache_ttl is an hour; a few minutes covers clients
        that reconnect for each message or poll).
    @ivar source: C{file} (the users file), C{ldap} or C{smtp}.
    @ivar ldap: the L{LDAPSettings} (source ldap), else L{None}.
    @ivar smtp: the L{SMTPAuthSettings} (source smtp), else L{None}.
    """

    allow_plaintext_on_loopback: bool = _flag(False)
    max_failures: int = _whole(5, minimum=1)
    max_failures_per_ip: int = _whole(100, minimum=1)
    failure_window: int = _whole(600, minimum=1)
    lockout: int = _whole(900)
    cache_ttl: int = _whole(300)
    source: str = _choice("file", AUTH_SOURCES)
    ldap: Optional[LDAPSettings] = None
    smtp: Optional[SMTPAuthSettings] = None


@dataclass(frozen=True)
class PopBeforeSmtpSettings:
    """
    @ivar counts_as_auth: whether a window also satisfies submission
        listeners and [[listen]] require_auth, as if its user had logged in
        over SMTP (IceWarp's "same rights"); off by default: a shared IP
        (NAT) would let its neighbours submit.
    """

    enabled: bool = _flag(True)
    window: int = _whole(1800, minimum=1)
    counts_as_auth: bool = _flag(False)


@dataclass(frozen=True)
class RedisAddress:
    """
    Where Redis listens, read from C{[sessions] redis_url}: a TCP C{host}
    and C{port} (over TLS when C{tls}), a UNIX socket C{path}, or the
    C{sentinels} (C{(host, port)}s) that name the current master of
    C{master}; the database number and the credentials to send first (to
    the master, never to a sentinel).
    """

    host: str = ""
    port: int = REDIS_PORT
    path: str = ""
    db: int = 0
    username: str = ""
    password: str = field(default="", repr=False)
    tls: bool = False
    sentinels: tuple = ()
    master: str = ""

    def __str__(self):
        """For the log: never the password."""
        if self.path:
            return f"unix://{self.path}?db={self.db}"
        scheme = "rediss" if self.tls else "redis"
        if self.sentinels:
            hosts = ",".join(f"{_bracketed(host)}:{port}" for host, port in self.sentinels)
            return f"{scheme}+sentinel://{hosts}/{self.master}/{self.db}"
        return f"{scheme}://{_bracketed(self.host)}:{self.port}/{self.db}"


def _bracketed(host):
    return f"[{host}]" if ":" in host else host


def _redis_url(default):
    """
    C{redis[s]://[[user]:password@]host[:port][/db]},
    C{redis[s]+sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db]}
    or C{unix://[[user]:password@]/path[?db=N]}.
    """
    def read(table, key, base):
        text = table.string(key, default)
        try:
            return parse_redis_url(text)
        except ValueError as e:
            raise table.error(key, f"{text!r}: {e}",
                              'write "redis://host:6379/0", "rediss://host:6379/0", '
                              '"redis+sentinel://host1:26379,host2:26379/MASTER/0" or '
                              '"unix:///run/redis/redis.sock?db=0"')
    return _key(read, parse_redis_url(default))


def parse_redis_url(text):
    """
    @return: the L{RedisAddress} of a redis://, rediss://, redis+sentinel://,
        rediss+sentinel:// or unix:// URL.
    @raise ValueError: it is none of them, or its parts are wrong.
    """
    scheme, _, rest = text.partition("://")
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        return _sentinel_url(scheme, rest)
    parts = urlsplit(text)
    query = parse_qs(parts.query)
    try:
        port = parts.port
        if port == 0:
            raise ValueError
    except ValueError:
        raise ValueError("the port is not a number from 1 to 65535")
    credentials = {"username": unquote(parts.username or ""),
                   "password": unquote(parts.password or "")}
    if parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ValueError("no host")
        if set(query) or parts.fragment:
            raise ValueError(f"{parts.scheme}:// takes no ?query or #fragment")
        db = parts.path.strip("/") or "0"
        return RedisAddress(host=parts.hostname, port=port or REDIS_PORT,
                            db=_redis_db(db), tls=parts.scheme == "rediss", **credentials)
    if parts.scheme == "unix":
        if parts.hostname or port:
            raise ValueError("unix:// takes a path, no host (three slashes: unix:///path)")
        if not parts.path.startswith("/"):
            raise ValueError("the socket's path must be absolute")
        if set(query) - {"db"} or parts.fragment:
            raise ValueError("unix:// takes only ?db=N")
        return RedisAddress(path=parts.path, db=_redis_db(query.get("db", ["0"])[-1]),
                            **credentials)
    raise ValueError("not a redis://, rediss://, redis+sentinel:// or unix:// URL")


def _sentinel_url(scheme, rest):
    """
    The L{RedisAddress} of C{SCHEME://REST}, a redis+sentinel:// URL: split
    here, as urlsplit reads one host, not a list of them.
    """
    if "?" in rest or "#" in rest:
        raise ValueError(f"{scheme}:// takes no ?query or #fragment")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = tuple(_sentinel(entry) for entry in hosts.split(","))
    path = path.split("/")  # "master/db"
    if not path[0]:
        raise ValueError("no master name (write /MASTER/DB after the sentinels, "
                         "MASTER as in their \"sentinel monitor\" line)")
    if len(path) > 2:
        raise ValueError("the path is /MASTER/DB, nothing more")
    master = unquote(path[0])
    if not master.isprintable() or any(c.isspace() for c in master):
        raise ValueError(f"the master name {master!r} has spaces or control characters")
    return RedisAddress(sentinels=sentinels, master=master,
                        db=_redis_db(path[1] if len(path) == 2 and path[1] else "0"),
                        tls=scheme == "rediss+sentinel", username=unquote(username),
                        password=unquote(password))


def _sentinel(text):
    """One sentinel's C{(host, port)} from C{host}, C{host:port} or C{[IPv6]:port}."""
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError(f"bad sentinel {text!r} (write [IPv6]:port)")
        port = port[1:]
    else:
        host, _, port = text.partition(":")
    if not (is_host_name(host) or _is_ip(host, 4) or _is_ip(host, 6)):
        raise ValueError(f"bad sentinel {text!r} (write host:port or [IPv6]:port)" if text
                         else "a sentinel without a host")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"bad port in sentinel {text!r}")
    return host.lower(), int(port) if port else SENTINEL_PORT


def _redis_db(text):
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"the database {text!r} is not a number")
    return int(text)


def _positive_number(default, **where):
    """Seconds above 0, whole or not."""
    def read(table, key, base):
        value = table.get(key, float, float(default))
        if not value > 0:
            raise table.error(key, "must be a number of seconds above 0")
        return value
    return _key(read, float(default), **where)


@dataclass(frozen=True)
class SessionsSettings:
    """
    C{[sessions]} (docs/scale-out.md): where the state that nodes share
    lives: POP-before-SMTP windows, login failures and lockouts, POP3
    maildrop locks.

    @ivar backend: C{memory} (this process alone) or C{redis}.
    @ivar redis_url: the L{RedisAddress} (read even when the backend is
        memory, so a typo is found before the switch).
    @ivar redis_timeout: seconds a Redis command may take before Redis is
        taken for away.
    @ivar redis_ca: with TLS (rediss://), the CA certificates (PEM) the
        server's certificate must chain to; L{None}: the system's.
    @ivar redis_cert: with TLS, the client certificate (PEM) to show
        (Redis's C{tls-auth-clients yes}), with C{redis_key}; L{None}: none.
    """

    backend: str = _choice("memory", SESSION_BACKENDS)
    redis_url: RedisAddress = _redis_url("redis://127.0.0.1:6379/0")
    redis_timeout: float = _positive_number(2)
    redis_ca: Optional[Path] = _file()
    redis_cert: Optional[Path] = _file()
    redis_key: Optional[Path] = _file()


@dataclass(frozen=True)
class RelaySettings:
    """
    @ivar refusal_text: what a refused relay recipient is told after
        C{<address>: }; C{%s} stands for the client's IP.
    @ivar trusted_bypass_antispam: whether clients that may relay skip
        the anti-spam stages.
    """

    mode: str = _choice("trusted", RELAY_MODES)
    trusted: tuple = _texts()
    trusted_file: Optional[Path] = _file()
    refusal_text: str = _text("relaying denied for %s")
    trusted_bypass_antispam: bool = _flag(True)


@dataclass(frozen=True)
class ListsSettings:
    """
    @ivar accept_remote: whether senders from other domains may post to
        local lists (aliases with several members).
    @ivar expn: whether EXPN shows a list's members.
    """

    accept_remote: bool = _flag(True)
    expn: bool = _flag(False)


@dataclass(frozen=True)
class JournalSettings:
    """The archive mailboxes that get a copy of each message; "" = off."""

    inbound: str = _mail_address()
    outbound: str = _mail_address()


@dataclass(frozen=True)
class DKIMSigningKey:
    """
    One C{[[dkim.sign]]} table: mail whose From: is of C{domain} is signed
    with C{key}, published at C{selector}._domainkey.C{domain}.

    @ivar key: the PEM key file; by default C{dkim/DOMAIN.SELECTOR.key}
        beside the config, where C{mailsrv dkim keygen} writes it.
    """

    domain: str
    selector: str
    key: Path


@dataclass(frozen=True)
class DKIMSigningSettings:
    """[[dkim.sign]]: the signing keys, in file order; two of a domain both sign (RFC 8463)."""

    sign: tuple = ()


@dataclass(frozen=True)
class MetricsSettings:
    """
    C{[metrics]} (docs/config.md, "Metrics").

    @ivar endpoint: where /metrics, /healthz and /readyz are served ("":
        nowhere); a tcp: endpoint without an interface is on 127.0.0.1.
    @ivar min_free: bytes free on data_dir's disk below which /readyz
        says the server is not ready.
    """

    endpoint: str = _text("")
    min_free: int = _whole(100 * 1024 * 1024)

    @property
    def listen_endpoint(self):
        kind = self.endpoint.split(":", 1)[0].lower()
        if kind in ("tcp", "tcp6") and "interface=" not in self.endpoint:
            return self.endpoint + (":interface=127.0.0.1" if kind == "tcp"
                                    else ":interface=\\:\\:1")
        return self.endpoint


LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class LogSettings:
    """
    C{[log]} (docs/config.md, "Logs").

    @ivar format: C{text} (twistd's lines) or C{json} (one object a line).
    @ivar file: where the log goes; L{None}: where twistd puts it (stdout
        under C{twistd -n}, twistd.log when it daemonizes).
    @ivar max_size: bytes at which C{file} is rotated.
    @ivar max_files: rotated files kept (C{file.1} the newest).
    """

    format: str = _choice("text", LOG_FORMATS)
    file: Optional[Path] = _file()
    max_size: int = _whole(10 * 1024 * 1024, minimum=4096)
    max_files: int = _whole(10, minimum=1)


@dataclass(frozen=True)
class DNSSettings:
    servers: tuple = _host_ports(53)  # of (host, port); none: the system's
    timeout: float = _number(5.0)


# Actions are kept as the admin wrote them ("header", "move:Junk", ...): the
# the policy parses them (mailsrv.policy.actions), and preflight checks them.
DEFAULT_ACTION = "header"
DNSBL_KINDS = ("standard", "trusted")
# What becomes of outbound mail found spam ([antispam] outbound_action).
OUTBOUND_ACTIONS = ("hold", "reject", "header")
# What a list is asked about: the client's address (and Received IPs), or a
# name (RHSBL): the sender's domain, or the HELO name.
DNSBL_LOOKUPS = ("ip", "sender", "helo")


@dataclass(frozen=True)
class DNSBLList:
    """
    One entry of [antispam.dnsbl] lists.

    @ivar name: for headers and the log (default: the zone).
    @ivar server: C{(host, port)} of the list's own server, or L{None}.
    @ivar kind: "standard" (hits add up to the threshold) or "trusted"
        (one hit is enough).
    @ivar codes: the answers that count as listed; empty: any 127.0.0.0/8.
    @ivar action: the action's text (default: the section's action).
    @ivar lookup: what is looked up, one of L{DNSBL_LOOKUPS}.
    """

    zone: str = _text("")
    name: str = ""
    server: Optional[tuple] = None
    kind: str = _choice("standard", DNSBL_KINDS)
    codes: tuple = _texts()
    action: str = DEFAULT_ACTION
    lookup: str = _choice("ip", DNSBL_LOOKUPS)


@dataclass(frozen=True)
class DNSBLSettings:
    """
    @ivar lists: L{DNSBLList}s.
    @ivar threshold: standard-list hits that make a message spam.
    @ivar timeout: seconds before a list that has not answered is skipped.
    @ivar received_headers: whether the IP a trusted client received the
        message from (its Received headers) is looked up too.
    """

    lists: tuple
    threshold: int = _whole(1, minimum=1)
    timeout: float = _number(5.0)
    received_headers: bool = _flag(False)


# [antispam.validation] keys and the names of their tests.
VALIDATION_TESTS = (("helo_fqdn", "helo-fqdn"), ("helo_not_ours", "helo-ours"),
                    ("reverse_dns", "reverse-dns"), ("forward_confirmed", "fcrdns"))


@dataclass(frozen=True)
class ValidationSettings:
    """
    @ivar tests: C{(name, action text)} of the enabled tests, names of
        L{VALIDATION_TESTS}; the action applies when the count reaches the
        threshold.
    """

    tests: tuple


WHITELIST_SCOPES = ("both", "connection", "content")


@dataclass(frozen=True)
class WhitelistSettings:
    """
    [antispam.spamskip] (client IPs) or [antispam.whitelist] (senders).

    @ivar file: the list file; missing = empty.
    @ivar connection: whether listed mail skips the connection filters.
    @ivar content: whether listed mail skips the content filters.
    """

    file: Path
    connection: bool
    content: bool


SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")


@dataclass(frozen=True)
class SPFSettings:
    """
    @ivar actions: C{(SPF result, action text)}, in L{SPF_RESULTS} order.
    @ivar max_lookups: DNS-querying mechanisms allowed (RFC 7208: 10).
    @ivar max_void_lookups: lookups with no answer allowed (RFC 7208: 2).
    @ivar timeout: seconds for one whole check.
    """

    actions: tuple
    max_lookups: int = _rfc_limit(10, minimum=1)
    max_void_lookups: int = _rfc_limit(2, minimum=0)
    timeout: float = _number(20.0)


DKIM_RESULTS = ("pass", "fail", "neutral", "none", "permerror", "temperror")


@dataclass(frozen=True)
class DKIMSettings:
    """
    [antispam.dkim]: every DKIM signature of a message is verified.

    @ivar actions: C{(DKIM result, action text)}, in L{DKIM_RESULTS} order.
    @ivar max_signatures: signatures verified per message (the rest are not).
    """

    actions: tuple
    max_signatures: int = _rfc_limit(5, minimum=1, rfc="mailsrv")


DMARC_RESULTS = ("pass", "fail", "none", "permerror", "temperror")


@dataclass(frozen=True)
class DMARCSettings:
    """
    [antispam.dmarc]: the From: domain's DMARC policy (RFC 7489).

    @ivar actions: C{(outcome, action text)}: each of L{DMARC_RESULTS}
        (C{fail}: a failure under C{p=none}), then C{reject} and
        C{quarantine}, a failure under that policy.
    @ivar trusted_sealers: domains whose passing ARC seal makes a failure
        take the C{pass} action (mailing lists that rewrite mail).
    """

    actions: tuple
    trusted_sealers: tuple = _domain_names()


def _extensions(default):
    """File name extensions: lower case, without the dot."""
    def read(table, key, base):
        extensions = tuple(e.strip().lstrip(".").lower() for e in table.strings(key, default))
        for extension in extensions:
            if not extension or any(c in extension for c in " ./\\"):
                raise table.error(key, f"{extension!r} is not a file name extension",
                                  'write them without the dot: ["exe", "scr"]')
        return extensions
    return _key(read, default)


def _media_types(**where):
    """Content types, "type/subtype" or "type/*", lower case."""
    def read(table, key, base):
        types = tuple(t.strip().lower() for t in table.strings(key, ()))
        for kind in types:
            major, slash, minor = kind.partition("/")
            if not (major and slash and minor) or major == "*" or " " in kind:
                raise table.error(key, f"{kind!r} is not a content type",
                                  'write "type/subtype" or "type/*"')
        return types
    return _key(read, (), **where)


@dataclass(frozen=True)
class MIMESettings:
    """
    [antispam.mime]: IMail's four broken-MIME-header checks.

    @ivar action: the action's text.
    @ivar subject_prefix: this filter's text for the subject action
        (L{None}: [antispam] subject_prefix).
    """

    action: str
    subject_prefix: Optional[str] = _text(None)


def _probability(default, **where):
    """A probability above 0, at most 1."""
    def read(table, key, base):
        value = table.get(key, float, float(default))
        if not 0.0 < value <= 1.0:
            raise table.error(key, f"must be above 0 and at most 1, not {value}")
        return value
    return _key(read, float(default), **where)


@dataclass(frozen=True)
class StatisticalSettings:
    """
    [antispam.statistical]: the Bayesian word filter.

    @ivar action: the action's text.
    @ivar table: the word table ("word spam_count good_count" lines).
    @ivar exclude: the words never counted (a missing file: none).
    @ivar threshold: the spam probability at or above which the message is spam.
    @ivar subject_prefix: as L{MIMESettings.subject_prefix}.
    """

    action: str
    table: Path = _file("antispam-table.txt")
    exclude: Path = _file("antispam-exclude.txt")
    threshold: float = _probability(0.9)
    subject_prefix: Optional[str] = _text(None)


PHRASE_SCANS = ("subject", "headers", "body", "all")


@dataclass(frozen=True)
class PhraseSettings:
    """
    [antispam.phrases]: the phrase filter.

    @ivar action: the action's text.
    @ivar file: the phrase list (one phrase a line, 3-32 characters).
    @ivar normalize: compare the letters of words only ("v.i.a.g.r.a").
    @ivar scan: what is read: subject, headers, body or all.
    @ivar subject_prefix: as L{MIMESettings.subject_prefix}.
    """

    action: str
    file: Path = _file("phrase-list.txt")
    normalize: bool = _flag(True)
    scan: str = _choice("all", PHRASE_SCANS)
    subject_prefix: Optional[str] = _text(None)


URL_SCANS = ("html", "all")
# IMail's HTML features ([antispam.html] features; policy/htmltext.py finds them).
HTML_FEATURES = ("nested_table", "hyperlink", "script_tag", "invalid_tag", "image_tag",
                 "mailto_link", "deceptive_url", "embedded_comment", "deceptive_text")


def _html_features(default):
    """Names of L{HTML_FEATURES}, each once."""
    def read(table, key, base):
        names = tuple(dict.fromkeys(table.strings(key, default)))
        for name in names:
            if name not in HTML_FEATURES:
                raise table.error(key, f"unknown feature {name!r}",
                                  "one of: " + ", ".join(HTML_FEATURES))
        if not names:
            raise table.error(key, "empty", "name at least one feature")
        return names
    return _key(read, default)


@dataclass(frozen=True)
class HTMLSettings:
    """
    [antispam.html]: IMail's HTML features.

    @ivar action: the action's text.
    @ivar features: the features that count (L{HTML_FEATURES}).
    @ivar min_features: how many of them make the message spam.
    @ivar subject_prefix: as L{MIMESettings.subject_prefix}.
    """

    action: str
    features: tuple = _html_features(("embedded_comment", "deceptive_url"))
    min_features: int = _whole(2, minimum=1)
    subject_prefix: Optional[str] = _text(None)


@dataclass(frozen=True)
class URLSettings:
    """
    [antispam.urls]: the URL filter.

    @ivar action: the action's text.
    @ivar file: the URL list (domains and IP addresses).
    @ivar scan: html (HREF and IMG SRC) or all (URLs in the text too).
    @ivar subject_prefix: as L{MIMESettings.subject_prefix}.
    """

    action: str
    file: Path = _file("url-domain-bl.txt")
    scan: str = _choice("html", URL_SCANS)
    subject_prefix: Optional[str] = _text(None)


DEFAULT_BLOCKED_EXTENSIONS = ("exe", "scr", "js", "vbs", "bat", "com", "pif")


@dataclass(frozen=True)
class AttachmentSettings:
    """
    [antispam.attachments]: attachments refused by name or type.

    @ivar action: the action's text.
    @ivar extensions: file name extensions (the last one of a name, also
        of the names inside zip files).
    @ivar content_types: content types ("type/*" for a whole type).
    @ivar subject_prefix: as L{MIMESettings.subject_prefix}.
    """

    action: str
    extensions: tuple = _extensions(DEFAULT_BLOCKED_EXTENSIONS)
    content_types: tuple = _media_types()
    subject_prefix: Optional[str] = _text(None)


SCANNER_ON_ERROR = ("tempfail", "accept")


def _timeout(default, **where):
    """Seconds, more than 0."""
    return _key(lambda table, key, base: _seconds(table, key, default), float(default),
                **where)


@dataclass(frozen=True)
class ScannerSettings:
    """
    What the sections of the scanners that ask a daemon share.

    @ivar action: the action's text for what the daemon finds: C{reject}
        unless set.
    @ivar on_error: when the daemon cannot say: C{tempfail} (451, the
        client sends again later) or C{accept} (delivered unscanned).
    @ivar timeout: seconds for the whole scan, connection included.
    @ivar subject_prefix: as L{MIMESettings.subject_prefix}.
    """

    action: str = "reject"
    on_error: str = _choice("tempfail", SCANNER_ON_ERROR)
    timeout: float = _timeout(60)
    subject_prefix: Optional[str] = _text(None)


@dataclass(frozen=True)
class ClamAVSettings(ScannerSettings):
    """
    [antispam.clamav]: a real clamd scans each message (INSTREAM). Its
    C{action} is C{reject} (not C{header}, as for the spam filters: a
    virus is refused, never delivered with a mark; the sender is told
    which).

    @ivar endpoint: clamd's socket, a Twisted client endpoint string
        ("unix:PATH" or "tcp:HOST:PORT").
    """

    endpoint: str = _text("unix:/run/clamav/clamd.ctl")


@dataclass(frozen=True)
class RspamdSettings(ScannerSettings):
    """
    [antispam.rspamd]: a real rspamd judges each message (HTTP, /checkv2).
    Its C{action} is for rspamd's own reject (rspamd's other actions have
    fixed counterparts: L{mailsrv.policy.checks.rspamd.ACTIONS}).

    @ivar url: rspamd's normal worker, C{http://HOST:PORT}.
    """

    timeout: float = _timeout(30)
    url: str = _text("http://127.0.0.1:11333")


@dataclass(frozen=True)
class AntispamSettings:
    """
    @ivar subject_prefix: what the subject action puts before the Subject.
    @ivar content_for_authenticated: whether the content filters (the body
        hook's) also judge mail from clients that skip the others
        (authenticated, trusted, POP-before-SMTP, a safe list).
    @ivar admins: senders the content filters never judge even then (an
        admin forwarding a misfiled message is not filtered twice).
    @ivar outbound: whether the content filters also judge mail such
        clients send to remote domains.
    @ivar outbound_action: what becomes of such a message found spam:
        hold (queued, held for an admin), reject, or header.
    @ivar dnsbl: L{DNSBLSettings}, or L{None} when [antispam.dnsbl] is absent.
    @ivar spf: L{SPFSettings}, or L{None} when [antispam.spf] is absent.
    @ivar validation: L{ValidationSettings}, or L{None} when absent.
    @ivar spamskip: L{WhitelistSettings} of client IPs, or L{None}.
    @ivar whitelist: L{WhitelistSettings} of senders, or L{None}.
    @ivar mime: L{MIMESettings}, or L{None} when [antispam.mime] is absent.
    @ivar attachments: L{AttachmentSettings}, or L{None} when absent.
    @ivar statistical: L{StatisticalSettings}, or L{None} when absent.
    @ivar phrases: L{PhraseSettings}, or L{None} when absent.
    @ivar urls: L{URLSettings}, or L{None} when absent.
    @ivar html: L{HTMLSettings}, or L{None} when absent.
    @ivar clamav: L{ClamAVSettings}, or L{None} when absent.
    @ivar rspamd: L{RspamdSettings}, or L{None} when absent.
    @ivar dkim: L{DKIMSettings}, or L{None} when [antispam.dkim] is absent.
    @ivar dmarc: L{DMARCSettings}, or L{None} when [antispam.dmarc] is absent.
    @ivar actions: C{(config key, action text)} of every action the
        [antispam] tables write, in file order, for preflight to check.
    """

    subject_prefix: str = _text("[SPAM] ")
    content_for_authenticated: bool = _flag(False)
    admins: tuple = _mail_addresses()
    outbound: bool = _flag(False)
    outbound_action: str = _choice("hold", OUTBOUND_ACTIONS)
    dnsbl: Optional[DNSBLSettings] = None
    spf: Optional[SPFSettings] = None
    validation: Optional[ValidationSettings] = None
    spamskip: Optional[WhitelistSettings] = None
    whitelist: Optional[WhitelistSettings] = None
    actions: tuple = ()
    mime: Optional[MIMESettings] = None
    attachments: Optional[AttachmentSettings] = None
    statistical: Optional[StatisticalSettings] = None
    phrases: Optional[PhraseSettings] = None
    urls: Optional[URLSettings] = None
    html: Optional[HTMLSettings] = None
    clamav: Optional[ClamAVSettings] = None
    rspamd: Optional[RspamdSettings] = None
    dkim: Optional[DKIMSettings] = None
    dmarc: Optional[DMARCSettings] = None


OUTBOUND_TLS_MODES = ("opportunistic", "required", "verify")


@dataclass(frozen=True)
class OutboundTLS:
    """
    How a courier treats one next hop.

    @ivar tls: C{"opportunistic"} (STARTTLS when offered, certificate not
        checked, plain SMTP when the handshake fails), C{"required"} (no
        TLS, no delivery) or C{"verify"} (required, and the certificate must
        match the host name and chain to C{ca_file} or the system's CAs).
    @ivar username: for SMTP AUTH; "" for none. Credentials are only ever
        sent over TLS.
    """

    tls: str = "opportunistic"
    ca_file: Optional[Path] = None
    username: str = ""
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class NextHop:
    """
    One next hop of a route (C{[delivery] smart_host}, C{[delivery.transports]}),
    tried in order (docs/queue.md, "Routes and failover").

    @ivar host: a host name or an IP address to connect to; with C{mx}, the
        domain whose MX hosts are the hops ("" for each recipient's own).
    @ivar port: the port; for an MX hop, that of every MX host.
    @ivar preference: a smart host table's place in the list, lowest first.
    @ivar mx: C{host} is a mail domain to look up (RFC 5321 5.1).
    """

    host: str = _text("")
    port: int = _whole(25, minimum=1)
    preference: int = _whole(0)
    outbound: OutboundTLS = OutboundTLS()
    mx: bool = False


@dataclass(frozen=True)
class DeliverySettings:
    """
    @ivar smart_hosts: L{NextHop}s, sorted by preference.
    @ivar transports: C{(domain, (NextHop, ...))}s; C{"mx"} in the file is
        one MX hop for the recipient's own domain.
    @ivar max_received: more Received headers than this: a mail loop, bounced.
    @ivar outbound: the L{OutboundTLS} of MX and transport hops.
    @ivar delay_warning: seconds before a "delayed" DSN; 0 for none.
    @ivar reply_timeout: seconds a next hop may take for any one reply.
    """

    smart_hosts: tuple = ()
    mx_port: int = _whole(25, minimum=1)
    retry: tuple = _positive_seconds((300, 900, 3600, 14400))
    max_age: int = _whole(432000, minimum=60)
    transports: tuple = ()
    max_received: int = _whole(30, minimum=1)
    outbound: OutboundTLS = OutboundTLS()
    max_connections: int = _whole(100, minimum=1)
    max_connections_per_destination: int = _whole(20, minimum=1)
    delay_warning: int = _whole(14400)
    reply_timeout: int = _whole(300, minimum=1)


@dataclass(frozen=True)
class AccessSettings:
    max_message_size: int = _whole(36700160, minimum=1024)
    max_recipients: int = _whole(100, minimum=1)
    max_connections_per_ip: int = _whole(20, minimum=1)
    kill_file: Optional[Path] = _file()
    refuse_null_sender: bool = _flag(False)
    check_valid_sender: bool = _flag(True)
    verify_sender_domain: bool = _flag(False)
    local_sender_must_auth: bool = _flag(True)
    sender_must_be_owned: bool = _flag(True)


@dataclass(frozen=True)
class Settings:
    """
    @ivar hostname: [server] hostname; "" in the file is this machine's name.
    @ivar user: [server] user: started as root, run as this user after
        binding the ports (mailsrv/privileges.py); "": stay who we are.
    @ivar group: [server] group; "": the user's own group.
    @ivar allow_root: [server] allow_root: running as root is meant (no warning).
    @ivar per_domain: the L{DomainSettings} of the C{[domain."NAME"]} tables.
    @ivar node: [server] node: this node's name among those that share
        data_dir ([sessions] backend = "redis"); "" in the file is this
        machine's short name. A worker of [server] workers is node
        C{NODE-K} (L{worker}).
    @ivar workers: [server] workers: reactor processes on this machine
        (mailsrv/workers.py); more than one needs the redis backend.
    @ivar dkim: the L{DKIMSigningSettings}: [[dkim.sign]].
    """

    path: Path
    data_dir: Path = _file("var", table="server")
    users_file: Path = _file("users", table="users", key="file")
    aliases_file: Path = _file("aliases", table="aliases", key="file")
    listeners: tuple
    tls: TLSSettings
    auth: AuthSettings
    pop_before_smtp: PopBeforeSmtpSettings
    sessions: SessionsSettings
    relay: RelaySettings
    dns: DNSSettings
    delivery: DeliverySettings
    access: AccessSettings
    lists: ListsSettings
    journal: JournalSettings
    log: LogSettings
    metrics: MetricsSettings
    hostname: str = _text("", table="server")
    node: str = _node_name(table="server")
    workers: int = _whole(1, minimum=1, table="server")
    user: str = _text("", table="server")
    group: str = _text("", table="server")
    allow_root: bool = _flag(False, table="server")
    local_domains: tuple = _domain_names(table="domains", key="local")
    antispam: AntispamSettings = AntispamSettings()
    per_domain: tuple = ()
    dkim: DKIMSigningSettings = DKIMSigningSettings()

    @property
    def node_dir(self):
        """
        Where this server keeps what is its own (the data_dir lock, the
        spool, the control socket, import requests): data_dir itself, or
        with [sessions] backend = "redis", where several nodes share
        data_dir, C{data_dir/nodes/NODE} (docs/scale-out.md).
        """
        if self.sessions.backend == "redis":
            return self.data_dir / "nodes" / self.node
        return self.data_dir

    def worker(self, number):
        """These settings as worker C{number} (from 1) of [server] workers runs them."""
        return replace(self, node=f"{self.node}-{number}")

    def nodes_here(self):
        """
        The settings of each node this config runs on this machine: itself,
        or with [server] workers, each worker (for the `mailsrv` command).
        """
        if self.workers > 1:
            return tuple(self.worker(number) for number in range(1, self.workers + 1))
        return (self,)

    def is_local_domain(self, domain):
        """As L{mailsrv.directory.Directory.is_local_domain}: case and the root's dot do not count."""
        return domain.lower().rstrip(".") in self.local_domains

    def antispam_groups(self):
        """
        C{(table name, L{AntispamSettings})}: the global [antispam], then
        each domain's that has its own sections.
        """
        return [("antispam", self.antispam)] + [
            (f'domain."{d.name}".antispam', d.antispam)
            for d in self.per_domain if d.antispam is not None]

    def client_cert_mode(self, listener):
        """
        A listener's effective client_cert: its own, else the global one,
        which an mx listener never takes (it would refuse Internet mail).
        """
        if listener.client_cert is not None:
            return listener.client_cert
        return "none" if listener.role == "mx" else self.tls.client_cert


# Listeners used when the file has no [[listen]] table: the standard ports.
DEFAULT_LISTENERS = (
    {"protocol": "smtp", "role": "mx", "endpoint": "tcp:25"},
    {"protocol": "smtp", "role": "submission", "endpoint": "tcp:587"},
    {"protocol": "smtp", "role": "submission", "endpoint": "tcp:465", "tls": "implicit"},
    {"protocol": "pop3", "endpoint": "tcp:110"},
    {"protocol": "pop3", "endpoint": "tcp:995", "tls": "implicit"},
    {"protocol": "imap", "endpoint": "tcp:143"},
    {"protocol": "imap", "endpoint": "tcp:993", "tls": "implicit"},
)


class _Table:
    """
    Typed reads of one TOML table, remembering which keys were used so that
    unknown keys (usually typos) are reported instead of silently ignored.
    """

    def __init__(self, path, name, data):
        self.path = path
        self.name = name
        self.data = data if data is not None else {}
        self.used = set()
        if not isinstance(self.data, dict):
            raise ConfigError(path, name, "must be a table", f"write [{name}]")

    def key(self, key):
        return f"[{self.name}] {key}" if self.name else key

    def error(self, key, problem, hint=""):
        return ConfigError(self.path, self.key(key), problem, hint)

    def get(self, key, kind, default):
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is int and isinstance(value, bool):
            raise self.error(key, "must be a whole number, not true/false")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            wanted = " or ".join(_KIND_NAMES[k] for k in kinds)
            raise self.error(key, f"must be {wanted}, not {_describe(value)}")
        return value

    def string(self, key, default, choices=None):
        """A string; one of C{choices} when given (or the default, which may be L{None})."""
        value = self.get(key, str, default)
        if choices and value is not None and value not in choices:
            raise self.error(
                key, f"unknown value {value!r}", "one of: " + ", ".join(choices)
            )
        return value

    def integer(self, key, default, minimum=0):
        value = self.get(key, int, default)
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, not {value}")
        return value

    def boolean(self, key, default):
        return self.get(key, bool, default)

    def strings(self, key, default):
        value = self.get(key, list, list(default))
        for item in value:
            if not isinstance(item, str):
                raise self.error(
                    key, f"every entry must be a string, not {_describe(item)}"
                )
        return tuple(value)

    def file_path(self, key, default, base):
        value = self.string(key, default)
        return (base / value) if value else None

    def check_unknown(self):
        for key in self.data:
            if key not in self.used:
                raise self.error(
                    key, "unknown key", "check the spelling against etc/mailsrv.toml"
                )


_KIND_NAMES = {
    str: "a string",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}


def _describe(value):
    for kind, name in _KIND_NAMES.items():
        if type(value) is kind:
            return name
    return type(value).__name__


def load(path, worker=0):
    """
    Read and validate a config file.

    @param path: the TOML file.
    @param worker: read it as worker C{worker} of [server] workers runs it
        (L{Settings.worker}); 0: as the node the file names.
    @return: L{Settings}
    @raise ConfigError: on any problem, unreadable file included.
    """
    path = Path(path).absolute()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found", "pass --config PATH")
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror}")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}")
    except UnicodeDecodeError as e:
        raise ConfigError(path, "", f"not UTF-8 text ({e.reason} at byte {e.start})")
    settings = parse(data, path)
    return settings.worker(worker) if worker else settings


def parse(data, path):
    """Validate an already-decoded TOML document that came from C{path}."""
    path = Path(path)
    base = path.parent
    top = _Table(path, "", data)
    values = {}
    for name in ("server", "domains", "users", "aliases"):
        table = _Table(path, name, top.get(name, dict, {}))
        values.update(_declared(table, Settings, base))
        table.check_unknown()
    values["hostname"] = values["hostname"] or socket.gethostname()
    values["node"] = values["node"] or _safe_node_name(socket.gethostname().split(".")[0])
    listeners = _listeners(path, top.get("listen", list, None), base)
    antispam = _antispam(path, top.get("antispam", dict, {}))
    settings = Settings(
        path=path,
        listeners=listeners,
        tls=_tls(path, top.get("tls", dict, {}), base, listeners),
        auth=_auth(path, top.get("auth", dict, {}), base),
        pop_before_smtp=_plain_table(path, top, "pop_before_smtp", PopBeforeSmtpSettings,
                                     base),
        sessions=_sessions(path, top, base),
        relay=_relay(path, top.get("relay", dict, {}), base),
        dns=_plain_table(path, top, "dns", DNSSettings, base),
        delivery=_delivery(path, top.get("delivery", dict, {}), base),
        access=_plain_table(path, top, "access", AccessSettings, base),
        lists=_plain_table(path, top, "lists", ListsSettings, base),
        journal=_plain_table(path, top, "journal", JournalSettings, base),
        log=_plain_table(path, top, "log", LogSettings, base),
        metrics=_plain_table(path, top, "metrics", MetricsSettings, base),
        antispam=antispam,
        per_domain=_per_domain(path, top.get("domain", dict, {}), base,
                               values["local_domains"], antispam),
        dkim=_dkim_signing(path, top.get("dkim", dict, {}), base),
        **values,
    )
    top.check_unknown()
    if settings.workers > 1 and settings.sessions.backend != "redis":
        raise ConfigError(path, "[server] workers",
                          f"{settings.workers} workers need [sessions] backend = \"redis\"",
                          'set [sessions] backend = "redis" and redis_url, or workers = 1')
    return settings


def _plain_table(path, top, name, cls, base):
    """The C{cls} of table C{name}, all of whose keys are declared."""
    table = _Table(path, name, top.get(name, dict, {}))
    settings = cls(**_declared(table, cls, base))
    table.check_unknown()
    return settings


def _sessions(path, top, base):
    """[sessions]: the TLS files only with a TLS URL, the client certificate with its key."""
    sessions = _plain_table(path, top, "sessions", SessionsSettings, base)
    for key in ("redis_ca", "redis_cert", "redis_key"):
        if getattr(sessions, key) is not None and not sessions.redis_url.tls:
            raise ConfigError(path, f"[sessions] {key}", "is for TLS to Redis, and redis_url has "
                              "none", f"write rediss:// (or rediss+sentinel://), or remove {key}")
    if (sessions.redis_cert is None) != (sessions.redis_key is None):
        given, missing = (("redis_cert", "redis_key") if sessions.redis_key is None
                          else ("redis_key", "redis_cert"))
        raise ConfigError(path, f"[sessions] {missing}", "missing",
                          f"{given} needs {missing}: give both or neither")
    return sessions


def _tls(path, data, base, listeners):
    table = _Table(path, "tls", data)
    tls = TLSSettings(**_declared(table, TLSSettings, base))
    table.check_unknown()
    if tls.client_cert != "none" and tls.client_ca is None:
        raise table.error("client_cert", f"{tls.client_cert!r} needs [tls] client_ca")
    for listener in listeners:
        if listener.client_cert not in (None, "none") and tls.client_ca is None:
            raise ConfigError(path, f"[listen #{listener.index + 1}] client_cert",
                              f"{listener.client_cert!r} needs [tls] client_ca")
    return tls


def _auth(path, data, base):
    """[auth], with [auth.ldap] or [auth.smtp] as C{source} says."""
    table = _Table(path, "auth", data)
    values = _declared(table, AuthSettings, base)
    sources = {}
    for name, cls in (("ldap", LDAPSettings), ("smtp", SMTPAuthSettings)):
        if name in table.data:
            if values["source"] != name:
                raise table.error(name, f'[auth.{name}] is used only with source = "{name}"',
                                  f'set [auth] source = "{name}", or remove [auth.{name}]')
            inner = _Table(path, f"auth.{name}", table.get(name, dict, {}))
            sources[name] = cls(**_declared(inner, cls, base))
            inner.check_unknown()
    table.check_unknown()
    source = values["source"]
    if source == "ldap":
        sources["ldap"] = ldap = sources.get("ldap") or LDAPSettings()
        if not ldap.url.startswith(("ldap://", "ldaps://")):
            raise ConfigError(path, "[auth.ldap] url", f"{ldap.url!r} is not an LDAP URL",
                              'write "ldap://host:389" or "ldaps://host:636"')
        if ldap.url.startswith("ldaps://") and ldap.starttls:
            raise ConfigError(path, "[auth.ldap] starttls", "ldaps:// is TLS already",
                              "remove starttls, or use ldap://")
        if "{address}" not in ldap.filter:
            raise ConfigError(path, "[auth.ldap] filter", "must contain {address}",
                              'e.g. "(mail={address})"')
        if ldap.bind_dn and ldap.bind_password_file is None:
            raise ConfigError(path, "[auth.ldap] bind_password_file", "missing",
                              "bind_dn needs the file that holds its password")
    if source == "smtp":
        sources["smtp"] = smtp = sources.get("smtp") or SMTPAuthSettings()
        if smtp.tls == "none" and not _is_loopback(smtp.host[0]):
            raise ConfigError(path, "[auth.smtp] tls", "passwords go in plain text only to "
                              "loopback", 'use "starttls" or "implicit"')
    return AuthSettings(**values, **sources)


def _is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _per_domain(path, data, base, local_domains, antispam):
    """
    The C{[domain."NAME"]} tables, each of a local domain, in file order.

    @param antispam: the global L{AntispamSettings}, which a domain's
        [antispam.*] sections replace section by section.
    """
    domains = {}
    for name, raw in data.items():
        table = _Table(path, f'domain."{name}"', raw)
        domain = name.lower().rstrip(".")
        if domain not in local_domains:
            raise ConfigError(path, f"[{table.name}]", f"{name} is not a local domain",
                              "add it to [domains] local, or remove the table")
        if domain in domains:
            raise ConfigError(path, f"[{table.name}]", f"{domain} has two tables",
                              "merge them")
        own = None
        if "antispam" in table.data:
            own = _domain_antispam(table, antispam)
        settings = DomainSettings(name=domain, antispam=own,
                                  **_declared(table, DomainSettings, base))
        table.check_unknown()
        if (settings.tls_cert is None) != (settings.tls_key is None):
            missing = "tls_key" if settings.tls_key is None else "tls_cert"
            raise table.error(missing, "missing", "give both tls_cert and tls_key")
        domains[domain] = settings
    return tuple(domains.values())


# A selector is one or more DNS labels (RFC 6376 3.1).
_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z")


def _dkim_signing(path, data, base):
    """[dkim] with its [[dkim.sign]] tables (docs/dkim.md)."""
    table = _Table(path, "dkim", data)
    entries = table.get("sign", list, [])
    table.check_unknown()
    keys, seen = [], set()
    for index, raw in enumerate(entries):
        if not isinstance(raw, dict):
            raise ConfigError(path, "[dkim] sign", "must be tables", "write [[dkim.sign]]")
        entry = _Table(path, f"dkim.sign #{index + 1}", raw)
        domain = entry.string("domain", "").lower().rstrip(".")
        selector = entry.string("selector", "")
        if not is_host_name(domain):
            raise entry.error("domain", f"{domain!r} is not a domain name" if domain
                              else "missing", 'e.g. domain = "example.org"')
        if not _SELECTOR.match(selector):
            raise entry.error("selector", f"{selector!r} is not a selector" if selector
                              else "missing", 'DNS labels, e.g. selector = "s2026"')
        if (domain, selector) in seen:
            raise entry.error("selector", f"{domain} has two tables for {selector}",
                              "remove one")
        seen.add((domain, selector))
        key = entry.file_path("key", f"dkim/{domain}.{selector}.key", base)
        entry.check_unknown()
        keys.append(DKIMSigningKey(domain, selector, key))
    return DKIMSigningSettings(tuple(keys))


def _relay(path, data, base):
    table = _Table(path, "relay", data)
    relay = RelaySettings(**_declared(table, RelaySettings, base))
    if not relay.refusal_text.isascii() or not relay.refusal_text.isprintable():
        raise table.error("refusal_text", "must be printable ASCII (it is an SMTP reply)")
    table.check_unknown()
    return relay


def _listeners(path, tables, base):
    if tables is None:
        tables = DEFAULT_LISTENERS
    if not tables:
        raise ConfigError(path, "[[listen]]", "no listeners", "add a [[listen]] table")
    listeners = []
    for index, raw in enumerate(tables):
        if not isinstance(raw, dict):
            raise ConfigError(path, "listen", "must be tables", "write [[listen]]")
        table = _Table(path, f"listen #{index + 1}", raw)
        values = _declared(table, Listener, base)
        if not values["endpoint"]:
            raise table.error("endpoint", "missing", 'for example endpoint = "tcp:2525"')
        _check_proxy(table, values)
        protocol = values["protocol"]
        if protocol == "smtp":
            role = table.string("role", Listener.role, SMTP_ROLES)
        else:
            role = ""
            if "role" in raw:
                raise table.error("role", "only smtp listeners have a role")
            table.used.add("role")
        listeners.append(Listener(
            index=index,
            role=role,
            access=_listener_access(table, protocol, base),
            timeouts=_timeouts(table, protocol, values["max_connections"]),
            **values,
        ))
        table.check_unknown()
    return tuple(listeners)


def _check_proxy(table, values):
    """
    A PROXY header names any address its sender likes (a trusted relay's,
    making the server an open relay), so it is taken only from the
    addresses proxy_from lists, and there is no default.
    """
    if values["proxy_protocol"] and not values["proxy_from"]:
        raise table.error("proxy_from", "missing: proxy_protocol = true takes the PROXY "
                          "header only from the load balancers listed here",
                          'for example proxy_from = ["10.0.0.5", "10.1.0.0/24"]')
    if values["proxy_from"] and not values["proxy_protocol"]:
        raise table.error("proxy_from", "set, but proxy_protocol is not true",
                          "set proxy_protocol = true, or remove proxy_from")


def _timeouts(table, protocol, max_connections):
    """A listener's time limits (docs/config.md, "Timeouts")."""
    default = default_timeouts(protocol, max_connections)
    if default.login is None and "login_timeout" in table.data:
        raise table.error("login_timeout", "only pop3 and imap listeners have one",
                          "SMTP clients need not log in; see command_timeout")
    return Timeouts(
        idle=_seconds(table, "idle_timeout", default.idle),
        command=_seconds(table, "command_timeout", default.command),
        min_data_rate=table.integer("min_data_rate", default.min_data_rate, 1),
        login=default.login and _seconds(table, "login_timeout", default.login),
        stress_connections=table.integer("stress_connections", default.stress_connections, 1),
        stress=_seconds(table, "stress_timeout", default.stress),
    )


def _seconds(table, key, default):
    value = table.get(key, float, float(default))
    if value <= 0:
        raise table.error(key, f"must be more than 0 seconds, not {value:g}")
    return value


def _listener_access(table, protocol, base):
    values = _declared(table, ListenerAccessSettings, base)
    require_auth = table.string("require_auth", "").lower()
    if require_auth and protocol != "smtp":
        raise table.error("require_auth", "only smtp listeners take mail to send")
    if require_auth not in ("", "any"):
        require_auth = _address(table, "require_auth")
    return ListenerAccessSettings(require_auth=require_auth, **values)


def _address(table, key):
    """An optional mail address: "" (off) or user@domain, lower-cased."""
    value = normalise(table.string(key, ""))
    if value and not is_address(value):
        raise table.error(key, f"{value!r} is not an address", 'write "user@domain" or ""')
    return value


def _host_port(table, key, text, default_port):
    host, sep, port = text.rpartition(":")
    if not sep or host.endswith(":") or _is_ipv6(text):  # bare host, or a bare IPv6 address
        return text.strip("[]"), default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise table.error(key, f"bad port in {text!r}", 'write "host:port"')
    return host.strip("[]"), int(port)


def _is_ipv6(text):
    """Whether C{text} is an IPv6 address without brackets (2001:db8:1:2:3:4:5:6 has no port)."""
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def _action(table, key, default, actions):
    """The text of an action, noted in C{actions} when the table writes one."""
    text = table.string(key, default)
    if key in table.data:
        actions.append((table.key(key), text))
    return text


# The [antispam.*] sections: each may be switched off (enabled = false)
# and each may differ per domain ([domain."NAME".antispam.*]).
CONTENT_SECTIONS = (("mime", MIMESettings), ("attachments", AttachmentSettings),
                    ("statistical", StatisticalSettings), ("phrases", PhraseSettings),
                    ("urls", URLSettings), ("html", HTMLSettings),
                    ("clamav", ClamAVSettings), ("rspamd", RspamdSettings))
ANTISPAM_SECTIONS = ("validation", "dnsbl", "spf", "spamskip", "whitelist",
                     *(name for name, _ in CONTENT_SECTIONS), "dkim", "dmarc")


def _antispam(path, data):
    """
    @return: L{AntispamSettings}.
    """
    table = _Table(path, "antispam", data)
    declared = _declared(table, AntispamSettings)
    antispam = _antispam_sections(table, AntispamSettings(**declared))
    table.check_unknown()
    return antispam


def _antispam_sections(table, antispam):
    """
    C{antispam} with the sections that C{table} (an [antispam] table) has:
    each present one replaces C{antispam}'s, or turns it off
    (C{enabled = false}); the others are left as they are.
    """
    path, sections, actions = table.path, {}, []
    for name in ANTISPAM_SECTIONS:
        if name not in table.data:
            continue
        data = dict(table.get(name, dict, {}))
        key = f"{table.name}.{name}"
        enabled = data.pop("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(path, f"[{key}] enabled", "must be true or false")
        if not enabled:
            sections[name] = None
        elif name == "validation":
            sections[name] = _validation(path, key, data, actions)
        elif name == "dnsbl":
            validation = sections.get("validation", antispam.validation)
            tests = len(validation.tests) if validation is not None else 0
            sections[name] = _dnsbl(path, key, data, tests, actions)
        elif name == "spf":
            sections[name] = _spf(path, key, data, actions)
        elif name == "dkim":
            sections[name] = _dkim(path, key, data, actions)
        elif name == "dmarc":
            sections[name] = _dmarc(path, key, data, actions)
        elif name in ("spamskip", "whitelist"):
            sections[name] = _whitelist(path, key, data)
        else:
            cls = dict(CONTENT_SECTIONS)[name]
            sections[name] = _content_filter(path, key, data, cls, actions)
    return replace(antispam, actions=antispam.actions + tuple(actions), **sections)


def _domain_antispam(table, antispam):
    """
    A domain's C{[domain."NAME".antispam.*]} sections over the global
    L{AntispamSettings} C{antispam}: only sections may differ (the
    [antispam] keys themselves are the server's).
    """
    data = table.get("antispam", dict, {})
    inner = _Table(table.path, f"{table.name}.antispam", data)
    for key, value in data.items():
        if key not in ANTISPAM_SECTIONS:
            if isinstance(value, dict):
                raise inner.error(key, "unknown section",
                                  "one of: " + ", ".join(ANTISPAM_SECTIONS))
            raise inner.error(key, "is set for the whole server only",
                              "set it in [antispam]; per domain, give [antispam.*] sections")
    spf = data.get("spf")
    for key in ("max_lookups", "max_void_lookups"):
        if isinstance(spf, dict) and key in spf:  # (pyspf's limits are the process's)
            raise ConfigError(table.path, f"[{inner.name}.spf] {key}",
                              "is set for the whole server only", "set it in [antispam.spf]")
    return _antispam_sections(inner, antispam)


def _content_filter(path, name, data, cls, actions):
    """
    A body filter's section: on when present, with its action (the class's
    own default, else L{DEFAULT_ACTION}) and declared keys.

    @param name: the table's name (C{antispam.NAME}, or a domain's).
    """
    table = _Table(path, name, data)
    default = getattr(cls, "action", DEFAULT_ACTION)
    settings = cls(action=_action(table, "action", default, actions),
                   **_declared(table, cls, Path(path).parent))
    table.check_unknown()
    return settings


def _validation(path, name, data, actions):
    """Each test: true (on, with the section's action), false, or its own action."""
    table = _Table(path, name, data)
    default = _action(table, "action", DEFAULT_ACTION, actions)
    tests = []
    for key, name in VALIDATION_TESTS:
        value = table.get(key, (bool, str), True)
        if value is not False:
            tests.append((name, default if value is True
                          else _action(table, key, default, actions)))
    table.check_unknown()
    return ValidationSettings(tuple(tests))


def _whitelist(path, name, data):
    table = _Table(path, name, data)
    scope = table.string("applies_to", "both", WHITELIST_SCOPES)
    file = table.file_path("file", f"{name.rpartition('.')[2]}.txt", Path(path).parent)
    if file is None:
        raise table.error("file", "empty", f"name the list file, or delete [{name}]")
    settings = WhitelistSettings(
        file=file,
        connection=scope in ("both", "connection"),
        content=scope in ("both", "content"),
    )
    table.check_unknown()
    return settings


def _per_result(cls, results):
    """
    The reader of a section with an action per result (SPF's, DKIM's):
    C{action} is the default of each result's own key.
    """
    def read(path, name, data, actions):
        table = _Table(path, name, data)
        default = _action(table, "action", DEFAULT_ACTION, actions)
        settings = cls(actions=tuple((result, _action(table, result, default, actions))
                                     for result in results),
                       **_declared(table, cls))
        table.check_unknown()
        return settings
    return read


_spf = _per_result(SPFSettings, SPF_RESULTS)
_dkim = _per_result(DKIMSettings, DKIM_RESULTS)


def _dmarc(path, name, data, actions):
    """The domain's own policy decides: C{reject} and C{quarantine} default to it."""
    table = _Table(path, name, data)
    default = _action(table, "action", DEFAULT_ACTION, actions)
    outcomes = [(result, _action(table, result, default, actions)) for result in DMARC_RESULTS]
    outcomes.append(("reject", _action(table, "reject", "reject", actions)))
    outcomes.append(("quarantine", _action(table, "quarantine", "move:Junk", actions)))
    settings = DMARCSettings(tuple(outcomes), **_declared(table, DMARCSettings))
    table.check_unknown()
    return settings


def _dnsbl(path, name, data, tests, actions):
    """@param tests: how many validation tests count with the lists."""
    table = _Table(path, name, data)
    action = _action(table, "action", DEFAULT_ACTION, actions)
    entries = table.get("lists", list, [])
    if not entries:
        raise table.error("lists", "no list given", 'write lists = ["zone.example"]')
    lists = tuple(_dnsbl_list(table, entry, action, actions) for entry in entries)
    values = _declared(table, DNSBLSettings)
    checks = sum(1 for bl in lists if bl.kind == "standard") + tests
    threshold = values["threshold"]
    if "threshold" in table.data and threshold > checks:
        raise table.error(
            "threshold", f"{threshold} is more than the {checks} standard lists and "
            "validation tests", "the count could never reach it")
    table.check_unknown()
    return DNSBLSettings(lists, **values)


def _dnsbl_list(parent, entry, default_action, actions):
    if isinstance(entry, str):
        entry = {"zone": entry}
    if not isinstance(entry, dict):
        raise parent.error("lists", f"every entry must be a zone or a table, not "
                                    f"{_describe(entry)}")
    table = _Table(parent.path, f"{parent.name}.lists", entry)
    values = _declared(table, DNSBLList)
    zone = values.pop("zone").strip(".").lower()
    if not zone:
        raise table.error("zone", "missing", 'write zone = "zen.example"')
    for code in values["codes"]:
        try:
            socket.inet_aton(code)
        except OSError:
            raise table.error("codes", f"{code!r} is not an IPv4 address")
    server = table.string("server", "")
    bl = DNSBLList(
        zone=zone,
        name=table.string("name", zone),
        server=_host_port(table, "server", server, 53) if server else None,
        action=_action(table, "action", default_action, actions),
        **values,
    )
    table.check_unknown()
    return bl


def _delivery(path, data, base):
    table = _Table(path, "delivery", data)
    declared = _declared(table, DeliverySettings, base)
    ca_file = table.file_path("tls_ca_file", "", base)
    outbound = _outbound(table, "tls", ca_file, OutboundTLS.tls)
    smart_outbound = _outbound(table, "smart_host_tls", ca_file, outbound.tls,
                               table.string("smart_host_username", ""),
                               table.file_path("smart_host_password_file", "", base))
    delivery = DeliverySettings(
        smart_hosts=_smart_hosts(path, table, ca_file, smart_outbound, outbound,
                                 declared["mx_port"], base),
        transports=_transports(table, outbound, declared["mx_port"]),
        outbound=outbound,
        **declared,
    )
    table.check_unknown()
    return delivery


def _smart_hosts(path, table, ca_file, outbound, mx_outbound, mx_port, base):
    """
    C{[delivery] smart_host}: one next hop, or a list of next hops and
    C{{host, port, preference, tls, username, password_file}} tables, sorted
    by preference (a string's is 0; equal ones keep their order). C{"mx"}
    alone is delivery to the recipients' MX hosts, with C{mx_outbound}: the
    smart hosts' credentials never go there.
    """
    raw = table.get("smart_host", (str, list), "")
    entries = ([raw] if raw else []) if isinstance(raw, str) else raw
    hops = []
    for entry in entries:
        if isinstance(entry, str):
            hop = _next_hop(table, "smart_host", entry, outbound, mx_port)
            hops.append(replace(hop, outbound=mx_outbound) if hop.mx and not hop.host else hop)
            continue
        if not isinstance(entry, dict):
            raise table.error(
                "smart_host", 'list entries must be "host:port" or {host, port, preference}'
            )
        sub = _Table(path, "delivery.smart_host", entry)
        values = _declared(sub, NextHop)
        if not values["host"]:
            raise sub.error("host", "missing")
        if values["host"].lower() == "mx":
            raise sub.error("host", '"mx" alone is no smart host',
                            'list it as a string: smart_host = [{...}, "mx"]')
        hops.append(_next_hop(
            sub, "host", values["host"],
            _outbound(sub, "tls", ca_file, outbound.tls,
                      sub.string("username", outbound.username),
                      sub.file_path("password_file", "", base), outbound),
            mx_port, values["port"] if "port" in entry else None, values["preference"],
        ))
        sub.check_unknown()
    hops.sort(key=lambda h: h.preference)
    return tuple(hops)


def _transports(table, outbound, mx_port):
    """C{[delivery.transports]}: per domain, a next hop or a list of them, or "mx"."""
    routes = []
    for domain, value in table.get("transports", dict, {}).items():
        key = f"transports.{domain}"
        hops = [value] if isinstance(value, str) else value
        if not isinstance(hops, list) or not all(isinstance(h, str) for h in hops):
            raise table.error(key, "must be a next hop or a list of next hops", NEXT_HOP_FORMS)
        if not hops:
            raise table.error(key, "empty list", 'give at least one next hop, or "mx"')
        routes.append((domain.lower().rstrip("."),
                       tuple(_next_hop(table, key, hop, outbound, mx_port) for hop in hops)))
    return tuple(sorted(routes, key=lambda route: route[0]))


NEXT_HOP_FORMS = 'write "host", "host:port", "[2001:db8::1]:port", "mx:domain" or "mx"'


def _next_hop(table, key, text, outbound, mx_port, port=None, preference=0):
    """
    The L{NextHop} C{text} names (L{parse_next_hop}); without a port, C{port}
    (a table's own key), else [delivery] mx_port for MX hops and 25 for hosts.
    """
    try:
        host, written_port, mx = parse_next_hop(text)
    except ValueError as e:
        raise table.error(key, f"{e} in {text!r}", NEXT_HOP_FORMS)
    if written_port is not None and port is not None:
        raise table.error(key, f"{text!r} has a port, and so has port", "give it once")
    port = written_port or port or (mx_port if mx else NextHop.port)
    return NextHop(host, port, preference, outbound, mx)


def parse_next_hop(text):
    """
    One next hop as the config writes it: C{"host"}, C{"host:port"}, an IPv4
    address with an optional port, an IPv6 address (with a port only in
    brackets: C{"[2001:db8::1]:2525"}), a host name in brackets (Postfix's
    way of saying "no MX lookup", which is what a host means here anyway),
    C{"mx:domain"}, C{"mx:domain:port"}, or C{"mx"} alone (the recipient's
    own domain).

    @return: C{(host, port or None, mx)}; host names lower-cased, the
        root's dot dropped; C{""} with C{"mx"} alone.
    @raise ValueError: what is wrong, in words for the admin.
    """
    if text.lower() == "mx":
        return "", None, True
    mx = text[:3].lower() == "mx:"
    rest = text[3:] if mx else text
    if rest.startswith("["):
        inside, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError("bad brackets")
        if mx:
            raise ValueError("mx: takes a domain, not a bracketed host")
        host, port = inside, tail[1:] if tail else None
    elif rest.count(":") > 1:
        if not _is_ip(rest, 6):
            raise ValueError("an IPv6 address with a port goes in brackets")
        host, port = rest, None
    else:
        host, colon, port = rest.partition(":")
        port = port if colon else None
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError("bad port")
    host = host.lower().removesuffix(".") if not _is_ip(host, 6) else host
    if mx and (not is_host_name(host) or _is_ip(host, 4)):
        raise ValueError("mx: needs a mail domain")
    if not (_is_ip(host, 4) or _is_ip(host, 6) or
            is_host_name(host) and not host.replace(".", "").isdigit()):
        raise ValueError("not a host name or IP address")
    return host, int(port) if port is not None else None, mx


def _is_ip(text, version):
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def _outbound(table, key, ca_file, default, username="", password_file=None,
              inherited=None):
    """
    The L{OutboundTLS} of a hop from C{key} (a TLS mode) and credentials;
    credentials make TLS required, since a password never goes in clear.

    @param inherited: the L{OutboundTLS} whose password applies when this
        table names a user but no password file of its own.
    """
    tls = table.string(key, default, OUTBOUND_TLS_MODES)
    if not username:
        return OutboundTLS(tls, ca_file)
    if password_file is not None:
        password = _read_secret(table, key.replace("tls", "password_file"), password_file)
    elif inherited is not None and inherited.password:
        password = inherited.password
    else:
        raise table.error(key.replace("tls", "password_file"), "missing",
                          "a smart host username needs a file holding its password")
    if tls == "opportunistic":
        if table.data.get(key) == "opportunistic":
            raise table.error(key, "must be \"required\" or \"verify\" with a username",
                              "credentials are only sent over TLS")
        tls = "required"
    return OutboundTLS(tls, ca_file, username, password)


def _read_secret(table, key, path):
    """The first line of a password file that only its owner may read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise table.error(key, f"cannot read {path}: {e.strerror}")
    if mode & 0o077:
        raise table.error(key, f"{path} may be read by others",
                          f"chmod 600 {path}")
    password = text.splitlines()[0] if text.strip() else ""
    if not password:
        raise table.error(key, f"{path} is empty", "write the password on its first line")
    return password
