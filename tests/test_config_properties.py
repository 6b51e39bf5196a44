"""
Property tests of the config loader: whatever the TOML holds, the result is
L{Settings} or a L{ConfigError} that is one line naming the file and the
key, never another exception.
"""

import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import task
from twisted.trial import unittest

from mailsrv import config, preflight

# A directory that does not exist, so that no generated path names a real file.
CONFIG = Path("/nonexistent-mailsrv-test/c.toml")

# Keys the loader knows, per table, so that most examples get past the
# unknown-key check and into the value checks.
KEYS = {
    "server": ["hostname", "data_dir"],
    "domains": ["local"],
    "users": ["file"],
    "aliases": ["file"],
    "tls": ["cert", "key", "client_ca", "client_cert"],
    "auth": ["allow_plaintext_on_loopback", "max_failures", "max_failures_per_ip",
             "failure_window", "lockout", "cache_ttl"],
    "pop_before_smtp": ["enabled", "window"],
    "relay": ["mode", "trusted", "trusted_file", "refusal_text", "trusted_bypass_antispam"],
    "dns": ["servers", "timeout"],
    "delivery": ["smart_host", "smart_host_username", "smart_host_password_file",
                 "smart_host_tls", "tls", "tls_ca_file", "max_connections",
                 "max_connections_per_destination", "reply_timeout", "delay_warning",
                 "mx_port", "retry", "max_age", "transports", "max_received"],
    "access": ["max_message_size", "max_recipients", "max_connections_per_ip",
               "kill_file", "refuse_null_sender", "check_valid_sender",
               "verify_sender_domain", "local_sender_must_auth", "sender_must_be_owned"],
    "lists": ["accept_remote", "expn"],
    "journal": ["inbound", "outbound"],
}
LISTEN_KEYS = ["protocol", "role", "endpoint", "tls", "max_connections", "backlog", "auth",
               "client_cert", "allow", "deny", "safe", "allow_file", "deny_file",
               "block_own_ips", "require_auth"]
ANTISPAM_KEYS = {
    "dnsbl": ["lists", "action", "threshold", "timeout", "received_headers"],
    "spf": ["action", "fail", "softfail", "max_lookups", "max_void_lookups", "timeout"],
    "validation": ["action", "helo_fqdn", "reverse_dns"],
    "whitelist": ["file", "applies_to"],
    "spamskip": ["file", "applies_to"],
}

# Values the checks act on, besides arbitrary ones.
MEANINGFUL = st.sampled_from([
    "", "smtp", "pop3", "imap", "mx", "submission", "tcp:2525", "tcp:0:interface=127.0.0.1",
    "tcpp:25", "starttls", "implicit", "none", "require", "request", "trusted", "anyone",
    "10.0.0.0/8", "192.168.0.1-50", "10.1.0.0/255.255.0.0", "::1", "host.example:25",
    "host:99999", "[::1]:53", "127.0.0.1:0", "a@example.test", "any", "header", "reject",
    "move:Junk", "forward:x@y.test", "subject", "mx", "opportunistic", "verify", "required",
    "zen.example", "both", "content",
])
TEXT = st.text(alphabet=st.characters(blacklist_characters="/\x00"), max_size=12)
SCALARS = st.one_of(MEANINGFUL, TEXT, st.booleans(), st.floats(),
                    st.integers(min_value=-2, max_value=70000),
                    st.integers(min_value=-(2**63), max_value=2**63 - 1))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(MEANINGFUL, TEXT), inner, max_size=3)),
    max_leaves=6,
)


INTEGER_KEYS = {
    "max_failures", "max_failures_per_ip", "failure_window", "lockout", "cache_ttl",
    "window", "max_connections", "max_connections_per_destination", "reply_timeout",
    "delay_warning", "mx_port", "max_age", "max_received", "max_message_size",
    "max_recipients", "max_connections_per_ip", "backlog", "threshold", "max_lookups",
    "max_void_lookups",
}
BOOLEAN_KEYS = {
    "allow_plaintext_on_loopback", "enabled", "trusted_bypass_antispam", "refuse_null_sender",
    "check_valid_sender", "verify_sender_domain", "local_sender_must_auth",
    "sender_must_be_owned", "accept_remote", "expn", "auth", "block_own_ips",
    "received_headers", "helo_fqdn", "reverse_dns",
}
LIST_KEYS = {"local", "trusted", "servers", "allow", "deny", "safe", "lists", "codes"}
SMART_HOST = st.one_of(MEANINGFUL, st.lists(st.fixed_dictionaries(
    {"host": MEANINGFUL}, optional={"port": st.integers(-1, 70000), "preference": SCALARS,
                                    "tls": MEANINGFUL, "username": MEANINGFUL}), max_size=2))


def typed_value(key):
    """Mostly a value of the type C{key} takes (so checks past the type run)."""
    if key in INTEGER_KEYS:
        return st.integers(min_value=-2, max_value=100000)
    if key in BOOLEAN_KEYS:
        return st.booleans()
    if key in LIST_KEYS:
        return st.lists(st.one_of(MEANINGFUL, TEXT), max_size=3)
    if key == "timeout":
        return st.one_of(st.floats(), st.integers(-1, 100))
    if key == "retry":
        return st.lists(st.integers(-1, 100000), max_size=3)
    if key == "smart_host":
        return SMART_HOST
    if key == "transports":
        return st.dictionaries(MEANINGFUL, MEANINGFUL, max_size=2)
    return MEANINGFUL


def sometimes(rare, usual):
    """C{rare} about one time in ten, else C{usual}."""
    return st.integers(0, 9).flatmap(lambda n: rare if n == 0 else usual)


def table(keys):
    """A TOML table: known keys with values mostly of their type, now and then not."""
    entry = sometimes(st.tuples(TEXT, VALUES), st.sampled_from(keys).flatmap(
        lambda key: st.tuples(st.just(key), sometimes(VALUES, typed_value(key)))))
    return st.lists(entry, max_size=4).map(dict)


DOCUMENTS = st.fixed_dictionaries({}, optional={
    **{name: table(keys) for name, keys in KEYS.items()},
    "listen": st.lists(table(LISTEN_KEYS), max_size=3),
    "antispam": st.fixed_dictionaries(
        {}, optional={name: table(keys) for name, keys in ANTISPAM_KEYS.items()}),
})
BOUNDED = settings(max_examples=200, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow])


class LoaderProperties(unittest.TestCase):
    def assert_one_line_naming_file(self, error, key_expected=True):
        text = str(error)
        self.assertNotIn("\n", text)
        self.assertNotIn("\r", text)
        self.assertTrue(text.startswith(f"{error.path}: "), text)
        if key_expected:
            self.assertTrue(error.key, text)

    @BOUNDED
    @given(DOCUMENTS)
    def test_parse_gives_settings_or_one_line(self, document):
        try:
            result = config.parse(document, CONFIG)
            preflight.check_settings(result, task.Clock())
        except config.ConfigError as e:
            self.assert_one_line_naming_file(e)
        else:
            self.assertIsInstance(result, config.Settings)

    @BOUNDED
    @given(st.one_of(st.binary(max_size=200),
                     st.text(alphabet=string.printable, max_size=200).map(str.encode)))
    def test_load_of_any_bytes_gives_settings_or_one_line(self, content):
        path = Path(self.mktemp())
        path.write_bytes(content)
        try:
            result = config.load(path)
        except config.ConfigError as e:
            self.assert_one_line_naming_file(e, key_expected=False)
            self.assertEqual(e.path, path.absolute())
        else:
            self.assertIsInstance(result, config.Settings)
