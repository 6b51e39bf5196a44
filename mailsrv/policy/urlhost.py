"""
Where a link really goes, for the URL filter ([antispam.urls], issue 17):
the host of an HREF, IMG SRC or plain-text URL once the forms spammers use
to hide it are undone (HTML entities, percent-encoding, C{user@host},
decimal, hex and octal IP addresses, a trailing dot, upper case, Unicode
names), in the form the URL list keeps (L{mailsrv.policy.lists.url_entry}),
and whether the list covers it (a listed domain covers its subdomains).
"""

import functools
import html
import ipaddress
import re
import socket
from urllib.parse import unquote, urlsplit

from mailsrv.policy.lists import url_entry

_SCHEMES = ("http", "https", "ftp")
_NUMERIC = re.compile(r"[0-9a-fx.]+\Z")
_CONTROL = re.compile(r"[\x00-\x20\x7f]+")
# A URL written without a scheme, in plain text.
_BARE = re.compile(r"www\.", re.IGNORECASE)


@functools.lru_cache(maxsize=4096)
def host_of(url):
    """
    The host C{url} (as written in a message: entities and percent-escapes
    included) goes to, normalised; L{None} for other schemes (mailto:,
    cid:, ...) and for what is no URL. Remembered for the URLs seen last:
    a message repeats its links, and mail its senders'.
    """
    # browsers drop control characters and read a backslash as a slash
    text = _CONTROL.sub("", html.unescape(url)).replace("\\", "/")
    if _BARE.match(text):
        text = "http://" + text
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    if parts.scheme.lower() not in _SCHEMES:
        return None
    netloc = unquote(parts.netloc).split("/")[0]
    host = netloc.rpartition("@")[2]  # http://www.bank.example@evil.example/
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else ""
    else:
        host = host.partition(":")[0]
    host = host.strip().rstrip(".").lower()
    if not host:
        return None
    numeric = _numeric_ip(host)
    if numeric is not None:
        return numeric
    try:
        return url_entry(host)
    except ValueError:
        return None


def _numeric_ip(host):
    """An IPv4 address written as C{inet_aton} reads it (3221225985, 0xC0.0.2.1, 0300.0.2.1)."""
    if not host[0].isdigit() and ":" not in host:  # (a name: no exception to raise and catch)
        return None
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _NUMERIC.match(host):
        return None
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return None


def listed(host, entries):
    """
    The entry of C{entries} (a set of L{url_entry} forms) that covers
    C{host}: the host itself, or a domain it is under; else L{None}.
    """
    if host in entries:
        return host
    if ":" in host or host.replace(".", "").isdigit():
        return None  # an IP address is covered by itself only
    labels = host.split(".")
    for start in range(1, len(labels) - 1):
        parent = ".".join(labels[start:])
        if parent in entries:
            return parent
    return None
