"""
mailsrv.toml -> validated, immutable settings.

Every key has a safe default (see ../docs/config.md). Any problem raises
L{ConfigError}, whose text is one line naming the file, the key, the problem
and a hint, so that C{twistd mailsrv} and C{mailsrv check-config} can print it
and exit non-zero instead of showing a traceback.
"""

import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mailsrv.address import is_address, normalise


PROTOCOLS = ("smtp", "pop3", "imap")
SMTP_ROLES = ("mx", "submission")
TLS_MODES = ("starttls", "implicit", "required", "none")
CLIENT_CERT_MODES = ("none", "request", "require")
RELAY_MODES = ("none", "trusted", "anyone")


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

    @ivar idle: silence allowed between commands (after login for POP3/IMAP).
    @ivar command: time from the first byte of a command line to its end;
        also the longest pause in message data.
    @ivar min_data_rate: bytes per second that message data must average.
    @ivar login: POP3/IMAP: time from connecting to a successful login;
        L{None} for SMTP.
    @ivar stress_connections: open connections at which the listener is
        under stress.
    @ivar stress: every limit above is at most this while under stress.
    """

    idle: float
    command: float
    min_data_rate: int
    login: Optional[float]
    stress_connections: int
    stress: float


@dataclass(frozen=True)
class Listener:
    """
    One C{[[listen]]} table.

    @ivar client_cert: the listener's own C{client_cert}, or L{None} to take
        the global one (which an C{mx} listener never does).
    """

    index: int
    protocol: str
    role: str
    endpoint: str
    tls: str
    max_connections: int
    auth: bool
    client_cert: Optional[str]
    access: "ListenerAccessSettings" = field(default_factory=lambda: ListenerAccessSettings())
    backlog: int = DEFAULT_BACKLOG
    timeouts: Optional[Timeouts] = None  # None: the protocol's defaults

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

    allow: tuple = ()
    allow_file: Optional[Path] = None
    deny: tuple = ()
    deny_file: Optional[Path] = None
    safe: tuple = ()
    block_own_ips: bool = False
    require_auth: str = ""

    @property
    def restricted(self):
        """Whether a connection must be checked before it is served."""
        return bool(self.allow or self.allow_file or self.deny or self.deny_file
                    or self.block_own_ips)


@dataclass(frozen=True)
class TLSSettings:
    cert: Path
    key: Path
    client_ca: Optional[Path]
    client_cert: str


@dataclass(frozen=True)
class AuthSettings:
    allow_plaintext_on_loopback: bool
    max_failures: int
    max_failures_per_ip: int
    failure_window: int
    lockout: int
    cache_ttl: int = 300


@dataclass(frozen=True)
class PopBeforeSmtpSettings:
    enabled: bool
    window: int


@dataclass(frozen=True)
class RelaySettings:
    """
    @ivar refusal_text: what a refused relay recipient is told after
        C{<address>: }; C{%s} stands for the client's IP.
    @ivar trusted_bypass_antispam: whether clients that may relay skip
        the anti-spam stages.
    """

    mode: str
    trusted: tuple
    trusted_file: Optional[Path]
    refusal_text: str
    trusted_bypass_antispam: bool


@dataclass(frozen=True)
class ListsSettings:
    """
    @ivar accept_remote: whether senders from other domains may post to
        local lists (aliases with several members).
    @ivar expn: whether EXPN shows a list's members.
    """

    accept_remote: bool
    expn: bool


@dataclass(frozen=True)
class JournalSettings:
    """The archive mailboxes that get a copy of each message; "" = off."""

    inbound: str
    outbound: str


@dataclass(frozen=True)
class DNSSettings:
    servers: tuple  # of (host, port)
    timeout: float


# Actions are kept as the admin wrote them ("header", "move:Junk", ...): the
# filters parse them (mailsrv.filters.actions), and preflight checks them.
DEFAULT_ACTION = "header"


@dataclass(frozen=True)
class DNSBLList:
    """
    One entry of [antispam.dnsbl] lists.

    @ivar name: for headers and the log (default: the zone).
    @ivar server: C{(host, port)} of the list's own server, or L{None}.
    @ivar kind: "standard" (hits add up to the threshold) or "trusted"
        (one hit is enough).
    @ivar codes: the answers that count as listed; empty: any 127.0.0.0/8.
    @ivar action: the action's text.
    """

    zone: str
    name: str
    server: Optional[tuple]
    kind: str
    codes: tuple
    action: str


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
    threshold: int
    timeout: float
    received_headers: bool = False


@dataclass(frozen=True)
class ValidationSettings:
    """
    @ivar tests: C{(name, action text)} of the enabled tests, names of
        L{VALIDATION_TESTS}; the action applies when the count reaches the
        threshold.
    """

    tests: tuple


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


@dataclass(frozen=True)
class SPFSettings:
    """
    @ivar actions: C{(SPF result, action text)}, in L{SPF_RESULTS} order.
    @ivar max_lookups: DNS-querying mechanisms allowed (RFC 7208: 10).
    @ivar max_void_lookups: lookups with no answer allowed (RFC 7208: 2).
    @ivar timeout: seconds for one whole check.
    """

    actions: tuple
    max_lookups: int
    max_void_lookups: int
    timeout: float


@dataclass(frozen=True)
class AntispamSettings:
    """
    @ivar subject_prefix: what the subject action puts before the Subject.
    @ivar dnsbl: L{DNSBLSettings}, or L{None} when [antispam.dnsbl] is absent.
    @ivar spf: L{SPFSettings}, or L{None} when [antispam.spf] is absent.
    @ivar validation: L{ValidationSettings}, or L{None} when absent.
    @ivar spamskip: L{WhitelistSettings} of client IPs, or L{None}.
    @ivar whitelist: L{WhitelistSettings} of senders, or L{None}.
    @ivar actions: C{(config key, action text)} of every action the
        [antispam] tables write, in file order, for preflight to check.
    """

    subject_prefix: str = "[SPAM] "
    dnsbl: Optional[DNSBLSettings] = None
    spf: Optional[SPFSettings] = None
    validation: Optional[ValidationSettings] = None
    spamskip: Optional[WhitelistSettings] = None
    whitelist: Optional[WhitelistSettings] = None
    actions: tuple = ()


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
class SmartHost:
    host: str
    port: int
    preference: int = 0
    outbound: OutboundTLS = OutboundTLS()


@dataclass(frozen=True)
class DeliverySettings:
    smart_hosts: tuple  # of SmartHost, sorted by preference
    mx_port: int
    retry: tuple
    max_age: int
    transports: tuple  # of (domain, "host:port" | "mx")
    max_received: int  # more Received headers: a mail loop, bounced
    outbound: OutboundTLS = OutboundTLS()  # MX and transport hops
    max_connections: int = 100
    max_connections_per_destination: int = 20
    delay_warning: int = 14400  # seconds before a "delayed" DSN; 0: none
    reply_timeout: int = 300  # seconds a next hop may take for any one reply


@dataclass(frozen=True)
class AccessSettings:
    max_message_size: int
    max_recipients: int
    max_connections_per_ip: int
    kill_file: Optional[Path]
    refuse_null_sender: bool
    check_valid_sender: bool
    verify_sender_domain: bool
    local_sender_must_auth: bool
    sender_must_be_owned: bool


@dataclass(frozen=True)
class Settings:
    path: Path
    hostname: str
    data_dir: Path
    local_domains: tuple
    users_file: Path
    aliases_file: Path
    listeners: tuple
    tls: TLSSettings
    auth: AuthSettings
    pop_before_smtp: PopBeforeSmtpSettings
    relay: RelaySettings
    dns: DNSSettings
    delivery: DeliverySettings
    access: AccessSettings
    lists: ListsSettings
    journal: JournalSettings
    antispam: AntispamSettings = field(default_factory=AntispamSettings)

    def is_local_domain(self, domain):
        return domain.lower() in self.local_domains

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

DNSBL_KINDS = ("standard", "trusted")
# [antispam.validation] keys and the names of their tests.
VALIDATION_TESTS = (("helo_fqdn", "helo-fqdn"), ("helo_not_ours", "helo-ours"),
                    ("reverse_dns", "reverse-dns"), ("forward_confirmed", "fcrdns"))
SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
WHITELIST_SCOPES = ("both", "connection", "content")


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
        value = self.get(key, str, default)
        if choices and value not in choices:
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


def load(path):
    """
    Read and validate a config file.

    @param path: the TOML file.
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
    return parse(data, path)


def parse(data, path):
    """Validate an already-decoded TOML document that came from C{path}."""
    path = Path(path)
    base = path.parent
    top = _Table(path, "", data)

    server = _Table(path, "server", top.get("server", dict, {}))
    hostname = server.string("hostname", "") or socket.gethostname()
    data_dir = server.file_path("data_dir", "var", base)
    server.check_unknown()

    domains = _Table(path, "domains", top.get("domains", dict, {}))
    local_domains = tuple(d.lower().rstrip(".") for d in domains.strings("local", ()))
    domains.check_unknown()

    users = _Table(path, "users", top.get("users", dict, {}))
    users_file = users.file_path("file", "users", base)
    users.check_unknown()
    aliases = _Table(path, "aliases", top.get("aliases", dict, {}))
    aliases_file = aliases.file_path("file", "aliases", base)
    aliases.check_unknown()

    listen_tables = top.get("listen", list, None)
    listeners = _listeners(path, listen_tables)

    tls_table = _Table(path, "tls", top.get("tls", dict, {}))
    tls = TLSSettings(
        cert=tls_table.file_path("cert", "tls/cert.pem", base),
        key=tls_table.file_path("key", "tls/key.pem", base),
        client_ca=tls_table.file_path("client_ca", "", base),
        client_cert=tls_table.string("client_cert", "none", CLIENT_CERT_MODES),
    )
    tls_table.check_unknown()
    if tls.client_cert != "none" and tls.client_ca is None:
        raise tls_table.error("client_cert", f"{tls.client_cert!r} needs [tls] client_ca")
    for listener in listeners:
        if listener.client_cert not in (None, "none") and tls.client_ca is None:
            raise ConfigError(path, f"[listen #{listener.index + 1}] client_cert",
                              f"{listener.client_cert!r} needs [tls] client_ca")

    auth_table = _Table(path, "auth", top.get("auth", dict, {}))
    auth = AuthSettings(
        allow_plaintext_on_loopback=auth_table.boolean(
            "allow_plaintext_on_loopback", False
        ),
        max_failures=auth_table.integer("max_failures", 5, 1),
        max_failures_per_ip=auth_table.integer("max_failures_per_ip", 100, 1),
        failure_window=auth_table.integer("failure_window", 600, 1),
        lockout=auth_table.integer("lockout", 900, 0),
        cache_ttl=auth_table.integer("cache_ttl", 300, 0),
    )
    auth_table.check_unknown()

    pbs_table = _Table(path, "pop_before_smtp", top.get("pop_before_smtp", dict, {}))
    pop_before_smtp = PopBeforeSmtpSettings(
        enabled=pbs_table.boolean("enabled", True),
        window=pbs_table.integer("window", 1800, 1),
    )
    pbs_table.check_unknown()

    relay_table = _Table(path, "relay", top.get("relay", dict, {}))
    relay = RelaySettings(
        mode=relay_table.string("mode", "trusted", RELAY_MODES),
        trusted=relay_table.strings("trusted", ()),
        trusted_file=relay_table.file_path("trusted_file", "", base),
        refusal_text=relay_table.string("refusal_text", "relaying denied for %s"),
        trusted_bypass_antispam=relay_table.boolean("trusted_bypass_antispam", True),
    )
    if not relay.refusal_text.isascii() or not relay.refusal_text.isprintable():
        raise relay_table.error("refusal_text", "must be printable ASCII (it is an SMTP reply)")
    relay_table.check_unknown()

    dns_table = _Table(path, "dns", top.get("dns", dict, {}))
    dns = DNSSettings(
        servers=tuple(_host_port(dns_table, "servers", entry, 53)
                      for entry in dns_table.strings("servers", ())),
        timeout=dns_table.get("timeout", float, 5.0),
    )
    dns_table.check_unknown()

    delivery = _delivery(path, top.get("delivery", dict, {}), base)

    access_table = _Table(path, "access", top.get("access", dict, {}))
    access = AccessSettings(
        max_message_size=access_table.integer("max_message_size", 36700160, 1024),
        max_recipients=access_table.integer("max_recipients", 100, 1),
        max_connections_per_ip=access_table.integer("max_connections_per_ip", 20, 1),
        kill_file=access_table.file_path("kill_file", "", base),
        refuse_null_sender=access_table.boolean("refuse_null_sender", False),
        check_valid_sender=access_table.boolean("check_valid_sender", True),
        verify_sender_domain=access_table.boolean("verify_sender_domain", False),
        local_sender_must_auth=access_table.boolean("local_sender_must_auth", True),
        sender_must_be_owned=access_table.boolean("sender_must_be_owned", True),
    )
    access_table.check_unknown()

    lists_table = _Table(path, "lists", top.get("lists", dict, {}))
    lists = ListsSettings(
        accept_remote=lists_table.boolean("accept_remote", True),
        expn=lists_table.boolean("expn", False),
    )
    lists_table.check_unknown()

    journal_table = _Table(path, "journal", top.get("journal", dict, {}))
    journal = JournalSettings(
        inbound=_address(journal_table, "inbound"),
        outbound=_address(journal_table, "outbound"),
    )
    journal_table.check_unknown()

    antispam = _antispam(path, top.get("antispam", dict, {}))
    top.check_unknown()

    return Settings(
        path=path,
        hostname=hostname,
        data_dir=data_dir,
        local_domains=local_domains,
        users_file=users_file,
        aliases_file=aliases_file,
        listeners=listeners,
        tls=tls,
        auth=auth,
        pop_before_smtp=pop_before_smtp,
        relay=relay,
        dns=dns,
        delivery=delivery,
        access=access,
        lists=lists,
        journal=journal,
        antispam=antispam,
    )


def _listeners(path, tables):
    if tables is None:
        tables = DEFAULT_LISTENERS
    if not tables:
        raise ConfigError(path, "[[listen]]", "no listeners", "add a [[listen]] table")
    listeners = []
    for index, raw in enumerate(tables):
        if not isinstance(raw, dict):
            raise ConfigError(path, "listen", "must be tables", "write [[listen]]")
        table = _Table(path, f"listen #{index + 1}", raw)
        protocol = table.string("protocol", "smtp", PROTOCOLS)
        if protocol == "smtp":
            role = table.string("role", "mx", SMTP_ROLES)
        else:
            role = ""
            if "role" in raw:
                raise table.error("role", "only smtp listeners have a role")
            table.used.add("role")
        endpoint = table.string("endpoint", "")
        if not endpoint:
            raise table.error("endpoint", "missing", 'for example endpoint = "tcp:2525"')
        client_cert = table.get("client_cert", str, None)
        if client_cert is not None and client_cert not in CLIENT_CERT_MODES:
            raise table.error(
                "client_cert",
                f"unknown value {client_cert!r}",
                "one of: " + ", ".join(CLIENT_CERT_MODES),
            )
        max_connections = table.integer("max_connections", 200, 1)
        listeners.append(
            Listener(
                index=index,
                protocol=protocol,
                role=role,
                endpoint=endpoint,
                tls=table.string("tls", "starttls", TLS_MODES),
                max_connections=max_connections,
                auth=table.boolean("auth", True),
                client_cert=client_cert,
                access=_listener_access(table, protocol, Path(path).parent),
                backlog=table.integer("backlog", DEFAULT_BACKLOG, 1),
                timeouts=_timeouts(table, protocol, max_connections),
            )
        )
        table.check_unknown()
    return tuple(listeners)


def default_timeouts(protocol, max_connections):
    """A listener's time limits when its table sets none."""
    return Timeouts(
        idle=DEFAULT_IDLE_TIMEOUTS[protocol],
        command=60,
        min_data_rate=500,  # Postfix's smtpd_min_data_rate
        login=None if protocol == "smtp" else 60,
        stress_connections=max(1, max_connections * 4 // 5),
        stress=10,  # Postfix's smtpd_timeout under stress
    )


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
    lists = {}
    for key in ("allow", "deny", "safe"):
        lists[key] = table.strings(key, ())
    for key in ("allow_file", "deny_file"):
        lists[key] = table.file_path(key, "", base)
    require_auth = table.string("require_auth", "").lower()
    if require_auth and protocol != "smtp":
        raise table.error("require_auth", "only smtp listeners take mail to send")
    if require_auth not in ("", "any"):
        require_auth = _address(table, "require_auth")
    return ListenerAccessSettings(
        block_own_ips=table.boolean("block_own_ips", False),
        require_auth=require_auth,
        **lists,
    )


def _address(table, key):
    """An optional mail address: "" (off) or user@domain, lower-cased."""
    value = normalise(table.string(key, ""))
    if value and not is_address(value):
        raise table.error(key, f"{value!r} is not an address", 'write "user@domain" or ""')
    return value


def _host_port(table, key, text, default_port):
    host, sep, port = text.rpartition(":")
    if not sep or host.endswith(":"):  # bare host, or a bare IPv6 address
        return text.strip("[]"), default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise table.error(key, f"bad port in {text!r}", 'write "host:port"')
    return host.strip("[]"), int(port)


def _action(table, key, default, actions):
    """The text of an action, noted in C{actions} when the table writes one."""
    text = table.string(key, default)
    if key in table.data:
        actions.append((table.key(key), text))
    return text


def _antispam(path, data):
    """
    @return: L{AntispamSettings}.
    """
    table = _Table(path, "antispam", data)
    subject_prefix = table.string("subject_prefix", "[SPAM] ")
    dnsbl = spf = validation = spamskip = whitelist = None
    actions = []
    if "validation" in table.data:
        validation = _validation(path, table.get("validation", dict, {}), actions)
    if "dnsbl" in table.data:
        tests = len(validation.tests) if validation is not None else 0
        dnsbl = _dnsbl(path, table.get("dnsbl", dict, {}), tests, actions)
    if "spf" in table.data:
        spf = _spf(path, table.get("spf", dict, {}), actions)
    if "spamskip" in table.data:
        spamskip = _whitelist(path, "spamskip", table.get("spamskip", dict, {}))
    if "whitelist" in table.data:
        whitelist = _whitelist(path, "whitelist", table.get("whitelist", dict, {}))
    table.check_unknown()
    return AntispamSettings(subject_prefix, dnsbl, spf, validation, spamskip, whitelist,
                            tuple(actions))


def _validation(path, data, actions):
    """Each test: true (on, with the section's action), false, or its own action."""
    table = _Table(path, "antispam.validation", data)
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
    table = _Table(path, f"antispam.{name}", data)
    scope = table.string("applies_to", "both", WHITELIST_SCOPES)
    file = table.file_path("file", f"{name}.txt", Path(path).parent)
    if file is None:
        raise table.error("file", "empty", f"name the list file, or delete [antispam.{name}]")
    settings = WhitelistSettings(
        file=file,
        connection=scope in ("both", "connection"),
        content=scope in ("both", "content"),
    )
    table.check_unknown()
    return settings


def _spf(path, data, actions):
    table = _Table(path, "antispam.spf", data)
    default = _action(table, "action", DEFAULT_ACTION, actions)
    settings = SPFSettings(
        actions=tuple((result, _action(table, result, default, actions))
                      for result in SPF_RESULTS),
        max_lookups=_at_most(table, "max_lookups", 10, 1),
        max_void_lookups=_at_most(table, "max_void_lookups", 2, 0),
        timeout=table.get("timeout", float, 20.0),
    )
    table.check_unknown()
    return settings


def _at_most(table, key, limit, minimum):
    """An RFC limit the config may lower, never raise."""
    value = table.integer(key, limit, minimum)
    if value > limit:
        raise table.error(key, f"{value} is above the RFC 7208 limit of {limit}",
                          "it may be lowered, never raised")
    return value


def _dnsbl(path, data, tests, actions):
    """@param tests: how many validation tests count with the lists."""
    table = _Table(path, "antispam.dnsbl", data)
    action = _action(table, "action", DEFAULT_ACTION, actions)
    entries = table.get("lists", list, [])
    if not entries:
        raise table.error("lists", "no list given", 'write lists = ["zone.example"]')
    lists = tuple(_dnsbl_list(table, entry, action, actions) for entry in entries)
    checks = sum(1 for bl in lists if bl.kind == "standard") + tests
    threshold = table.integer("threshold", 1, minimum=1)
    if "threshold" in table.data and threshold > checks:
        raise table.error(
            "threshold", f"{threshold} is more than the {checks} standard lists and "
            "validation tests", "the count could never reach it")
    timeout = table.get("timeout", float, 5.0)
    received_headers = table.boolean("received_headers", False)
    table.check_unknown()
    return DNSBLSettings(lists, threshold, timeout, received_headers)


def _dnsbl_list(parent, entry, default_action, actions):
    if isinstance(entry, str):
        entry = {"zone": entry}
    if not isinstance(entry, dict):
        raise parent.error("lists", f"every entry must be a zone or a table, not "
                                    f"{_describe(entry)}")
    table = _Table(parent.path, "antispam.dnsbl.lists", entry)
    zone = table.string("zone", "").strip(".").lower()
    if not zone:
        raise table.error("zone", "missing", 'write zone = "zen.example"')
    server = table.string("server", "")
    codes = table.strings("codes", ())
    for code in codes:
        try:
            socket.inet_aton(code)
        except OSError:
            raise table.error("codes", f"{code!r} is not an IPv4 address")
    bl = DNSBLList(
        zone=zone,
        name=table.string("name", zone),
        server=_host_port(table, "server", server, 53) if server else None,
        kind=table.string("kind", "standard", DNSBL_KINDS),
        codes=codes,
        action=_action(table, "action", default_action, actions),
    )
    table.check_unknown()
    return bl


def _delivery(path, data, base):
    table = _Table(path, "delivery", data)
    ca_file = table.file_path("tls_ca_file", "", base)
    outbound = _outbound(table, "tls", ca_file, "opportunistic")
    smart_outbound = _outbound(table, "smart_host_tls", ca_file, outbound.tls,
                               table.string("smart_host_username", ""),
                               table.file_path("smart_host_password_file", "", base))
    raw = table.get("smart_host", (str, list), "")
    smart_hosts = []
    if isinstance(raw, str):
        if raw:
            host, port = _host_port(table, "smart_host", raw, 25)
            smart_hosts.append(SmartHost(host, port, outbound=smart_outbound))
    else:
        for entry in raw:
            if not isinstance(entry, dict):
                raise table.error(
                    "smart_host", "list entries must be {host, port, preference}"
                )
            sub = _Table(path, "delivery.smart_host", entry)
            host = sub.string("host", "")
            if not host:
                raise sub.error("host", "missing")
            smart_hosts.append(SmartHost(
                host, sub.integer("port", 25, 1), sub.integer("preference", 0),
                _outbound(sub, "tls", ca_file, smart_outbound.tls,
                          sub.string("username", smart_outbound.username),
                          sub.file_path("password_file", "", base), smart_outbound),
            ))
            sub.check_unknown()
    smart_hosts.sort(key=lambda h: h.preference)

    retry = table.get("retry", list, [300, 900, 3600, 14400])
    if not retry or not all(
        isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in retry
    ):
        raise table.error("retry", "must be a list of positive whole seconds")
    transports = table.get("transports", dict, {})
    for domain, route in transports.items():
        if not isinstance(route, str):
            raise table.error(f"transports.{domain}", 'must be "host:port" or "mx"')
        if route != "mx":
            _host_port(table, f"transports.{domain}", route, 25)
    delivery = DeliverySettings(
        smart_hosts=tuple(smart_hosts),
        mx_port=table.integer("mx_port", 25, 1),
        retry=tuple(retry),
        max_age=table.integer("max_age", 432000, 60),
        transports=tuple((d.lower(), r) for d, r in sorted(transports.items())),
        max_received=table.integer("max_received", 30, 1),
        outbound=outbound,
        max_connections=table.integer("max_connections", 100, 1),
        max_connections_per_destination=table.integer(
            "max_connections_per_destination", 20, 1),
        delay_warning=table.integer("delay_warning", 14400, 0),
        reply_timeout=table.integer("reply_timeout", 300, 1),
    )
    table.check_unknown()
    return delivery


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
