"""
Users kept in an LDAP directory ([auth] source = "ldap", docs/auth.md):
a password is checked the way every LDAP-backed mail server checks it
(search for the user's entry by C{filter} under C{base}, as C{bind_dn} or
anonymously, then bind as that entry with the password), and the
directory's addresses are the local mailboxes and their aliases.

ldap3 (pure Python) does the protocol, its blocking calls in the reactor's
thread pool, one at a time per connection. ldaptor, Twisted's own LDAP
client, would spare the threads but requires the unmaintained passlib,
which installs over libpass (the maintained fork the users file's crypt(3)
hashes use). Two connections are kept open and reused: one bound as
C{bind_dn} that searches, one that binds as each user in turn. A server
that is down, slow (C{timeout}) or whose certificate does not verify makes
a check fail with L{SourceUnavailable}: a temporary refusal, never a
success and never a wrong password.
"""

import math
import ssl
import threading
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as ldap_errors
from ldap3.utils.conv import escape_filter_chars
from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger

from mailsrv.address import AddressError, parse_mailbox
from mailsrv.directory.checker import SourceUnavailable

log = Logger()


def read_bind_password(path):
    """The password of C{bind_dn}: the file's first line."""
    with open(path, encoding="utf-8") as f:
        return f.readline().rstrip("\r\n")


class LDAPConnections:
    """
    The connections to one LDAP server (L{LDAPSettings}), each opened when
    first needed, and used by one thread at a time; an error on one that
    was open already is tried once more on a new one (the server may have
    dropped it meanwhile). Every method blocks: call them in a thread.
    """

    def __init__(self, settings, bind_password=""):
        self.settings = settings
        self.bind_password = bind_password
        url = urlsplit(settings.url)
        self._secure = url.scheme == "ldaps"
        self._host = url.hostname or "127.0.0.1"
        self._port = url.port or (636 if self._secure else 389)
        self._tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, version=ssl.PROTOCOL_TLS_CLIENT,
                              ca_certs_file=str(settings.ca_file) if settings.ca_file else None)
        self._searcher = self._binder = None
        self._search_lock = threading.Lock()
        self._bind_lock = threading.Lock()

    def _open(self, user=None, password=None):
        # A new Server each time: ldap3's remembers an address that failed
        # as unavailable for 5 s, which would outlast the directory's restart.
        server = ldap3.Server(self._host, port=self._port, use_ssl=self._secure, tls=self._tls,
                              get_info=ldap3.NONE, connect_timeout=self.settings.timeout)
        connection = ldap3.Connection(server, user=user, password=password,
                                      receive_timeout=math.ceil(self.settings.timeout),
                                      raise_exceptions=True, read_only=True,
                                      auto_referrals=False)
        connection.open()
        if self.settings.starttls:
            connection.start_tls()
        if user:
            connection.bind()
        return connection

    def _search(self, search_filter, attributes, paged=False):
        """The entries found, on the searching connection (a reused one retried once)."""
        settings = self.settings
        with self._search_lock:
            while True:
                reused = self._searcher is not None
                try:
                    if not reused:
                        self._searcher = self._open(settings.bind_dn or None,
                                                    self.bind_password or None)
                    if paged:
                        return list(self._searcher.extend.standard.paged_search(
                            settings.base, search_filter, attributes=attributes,
                            paged_size=500, generator=False))
                    self._searcher.search(settings.base, search_filter, attributes=attributes,
                                          size_limit=2, time_limit=math.ceil(settings.timeout))
                    return list(self._searcher.response or ())
                except ldap_errors.LDAPSizeLimitExceededResult:
                    return [{"type": "searchResEntry"}] * 2  # (more than one: ambiguous)
                except ldap_errors.LDAPNoSuchObjectResult:
                    return []
                except ldap_errors.LDAPException as e:
                    self._searcher = _closed(self._searcher)
                    if not reused:  # (a reused one may have been dropped meanwhile)
                        raise SourceUnavailable(f"ldap search: {_text(e)}") from None

    def check(self, address, password):
        """
        Whether C{password} is C{address}'s.

        @raise SourceUnavailable: the directory did not answer.
        """
        if not password:  # an empty password is an anonymous bind (RFC 4513 5.1.2): never
            return False
        search_filter = self.settings.filter.replace("{address}", escape_filter_chars(address))
        entries = [e for e in self._search(search_filter, ldap3.NO_ATTRIBUTES)
                   if e.get("type") == "searchResEntry"]
        if len(entries) != 1:
            if entries:
                log.warn("ldap: {count} entries match {filter}: refused", count=len(entries),
                         filter=search_filter)
            return False
        return self._bind(entries[0]["dn"], password)

    def _bind(self, dn, password):
        with self._bind_lock:
            while True:
                reused = self._binder is not None
                try:
                    if not reused:
                        self._binder = self._open()
                    return self._binder.rebind(user=dn, password=password)
                except ldap_errors.LDAPInvalidCredentialsResult:
                    return False
                except ldap_errors.LDAPException as e:
                    if getattr(e, "result", None) in _REFUSED:
                        return False
                    self._binder = _closed(self._binder)
                    if not reused:
                        raise SourceUnavailable(f"ldap bind: {_text(e)}") from None

    def addresses(self, local_domains):
        """
        C{(mailboxes, aliases)}: the local addresses of the entries
        C{users_filter} finds, and each alias's mailbox.
        """
        settings = self.settings
        attributes = [settings.address_attribute, *settings.alias_attributes]
        mailboxes, aliases = set(), {}
        for entry in self._search(settings.users_filter, attributes, paged=True):
            if entry.get("type") != "searchResEntry":
                continue
            values = entry.get("attributes", {})
            mailbox = _local(_first(values.get(settings.address_attribute)), local_domains)
            if mailbox is None:
                continue
            mailboxes.add(mailbox)
            for name in settings.alias_attributes:
                for alias in _all(values.get(name)):
                    alias = _local(alias, local_domains)
                    if alias is not None and alias != mailbox:
                        aliases.setdefault(alias, mailbox)
        return frozenset(mailboxes), aliases

    def close(self):
        self._searcher = _closed(self._searcher)
        self._binder = _closed(self._binder)


# Bind results that refuse this user (RFC 4511 4.1.9): inappropriateAuthentication,
# invalidCredentials, insufficientAccessRights, unwillingToPerform.
_REFUSED = frozenset({48, 49, 50, 53})


def _closed(connection):
    if connection is not None:
        try:
            connection.unbind()
        except ldap_errors.LDAPException:
            pass
    return None


def _text(error):
    return str(error) or type(error).__name__


def _first(value):
    values = _all(value)
    return values[0] if values else None


def _all(value):
    if value is None:
        return []
    return [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]


def _local(address, local_domains):
    """C{address} normalised when it is a mailbox name in one of our domains, else L{None}."""
    if not address:
        return None
    try:
        mailbox = parse_mailbox(address)
    except AddressError:
        return None
    return mailbox.normalised if mailbox.domain.lower() in local_domains else None


class LDAPSource:
    """
    The password source of [auth] source = "ldap": a check runs in a
    thread, one at a time (the connections are shared).
    """

    name = "ldap"

    def __init__(self, connections):
        self.connections = connections
        self._one_at_a_time = defer.DeferredLock()

    def check(self, address, password):
        """A Deferred of whether C{password} is C{address}'s; fails with L{SourceUnavailable}."""
        return self._one_at_a_time.run(threads.deferToThread, self.connections.check,
                                       address, password)


class LDAPAddressBook(service.Service):
    """
    The local mailboxes and aliases the directory holds, read every
    C{refresh} seconds in a thread. Until the first read succeeds the
    book is not L{loaded}: an address it might hold is refused for now
    (451), not as unknown. A failed read keeps the last addresses.
    """

    def __init__(self, connections, local_domains, refresh, clock):
        self.connections = connections
        self.local_domains = frozenset(local_domains)
        self.loaded = False
        self._mailboxes = frozenset()
        self._aliases = {}
        self._failing = False
        self._loop = task.LoopingCall(self.refresh)
        self._loop.clock = clock
        self._refresh = refresh

    def startService(self):
        super().startService()
        self._loop.start(self._refresh, now=True)

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        return threads.deferToThread(self.connections.close)

    def refresh(self):
        d = threads.deferToThread(self.connections.addresses, self.local_domains)
        d.addCallbacks(self._read, self._not_read)
        return d

    def _read(self, addresses):
        self._mailboxes, self._aliases = addresses
        if self._failing or not self.loaded:
            log.info("ldap: {count} addresses read", count=len(self._mailboxes))
        self.loaded, self._failing = True, False

    def _not_read(self, failure):
        if not self._failing:  # (one line per outage, not one per refresh)
            log.warn("ldap: cannot read the addresses ({error}); keeping the last ones",
                     error=failure.getErrorMessage())
        self._failing = True

    def exists(self, address):
        return address in self._mailboxes

    def mailbox_of(self, alias):
        """The mailbox an alias delivers to, or L{None}."""
        return self._aliases.get(alias)

    def addresses(self):
        return sorted(self._mailboxes)
