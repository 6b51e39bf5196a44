"""
Config parsing: defaults, the errors an admin sees, and the example config.
"""

from pathlib import Path
from urllib.parse import quote

from hypothesis import given, strategies as st
from twisted.internet import task
from twisted.trial import unittest

from mailsrv import config, preflight
from mailsrv.config import Timeouts
from tests.fuzzing import examples

HOP_FORMS = config.NEXT_HOP_FORMS

ROOT = Path(__file__).resolve().parent.parent


def refuse(data):
    """What check-config and start-up check of the settings of C{data}, before the files."""
    preflight.check_settings(config.parse(data, Path("/c.toml")), task.Clock())


class DefaultsTests(unittest.TestCase):
    def test_empty_file_gets_safe_defaults(self):
        s = config.parse({}, Path("/etc/mailsrv/mailsrv.toml"))
        self.assertEqual(s.data_dir, Path("/etc/mailsrv/var"))
        self.assertEqual(s.relay.mode, "trusted")
        self.assertEqual(s.relay.trusted, ())
        self.assertFalse(s.auth.allow_plaintext_on_loopback)
        self.assertEqual(s.access.max_message_size, 36700160)
        self.assertEqual(s.pop_before_smtp.window, 1800)
        self.assertEqual(
            [(l.protocol, l.role, l.endpoint, l.tls) for l in s.listeners],
            [
                ("smtp", "mx", "tcp:25", "starttls"),
                ("smtp", "submission", "tcp:587", "starttls"),
                ("smtp", "submission", "tcp:465", "implicit"),
                ("pop3", "", "tcp:110", "starttls"),
                ("pop3", "", "tcp:995", "implicit"),
                ("imap", "", "tcp:143", "starttls"),
                ("imap", "", "tcp:993", "implicit"),
            ],
        )

    def test_listen_backlog(self):
        """[[listen]] backlog goes into the endpoint the service listens on."""
        s = config.parse({"listen": [
            {"protocol": "smtp", "endpoint": "tcp:2525:interface=127.0.0.1"},
            {"protocol": "smtp", "endpoint": "tcp6:2526", "backlog": 100},
            {"protocol": "smtp", "endpoint": "tcp:2527:backlog=7", "backlog": 100},
        ]}, Path("/x"))
        self.assertEqual(s.listeners[0].backlog, config.DEFAULT_BACKLOG)
        self.assertEqual([l.listen_endpoint for l in s.listeners], [
            f"tcp:2525:interface=127.0.0.1:backlog={config.DEFAULT_BACKLOG}",
            "tcp6:2526:backlog=100",
            "tcp:2527:backlog=7",  # the endpoint's own value wins
        ])
        self.assertEqual(s.listeners[0].name, "smtp/mx tcp:2525:interface=127.0.0.1")

    def test_listen_timeouts(self):
        """Each protocol's RFC idle timeout; stress at 80 % of max_connections."""
        s = config.parse({"listen": [
            {"protocol": "smtp", "endpoint": "tcp:25"},
            {"protocol": "pop3", "endpoint": "tcp:110", "max_connections": 50},
            {"protocol": "imap", "endpoint": "tcp:143", "idle_timeout": 900,
             "login_timeout": 30.5, "command_timeout": 20, "min_data_rate": 100,
             "stress_connections": 7, "stress_timeout": 3},
        ]}, Path("/x"))
        smtp, pop3, imap = (l.timeouts for l in s.listeners)
        self.assertEqual(smtp, Timeouts(idle=300, command=60, min_data_rate=500, login=None,
                                        stress_connections=160, stress=10))
        self.assertEqual((pop3.idle, pop3.login, pop3.stress_connections), (600, 60, 40))
        self.assertEqual(imap, Timeouts(idle=900, command=20, min_data_rate=100, login=30.5,
                                        stress_connections=7, stress=3))

    def test_relative_paths_are_relative_to_the_config_file(self):
        s = config.parse({"users": {"file": "u"}, "tls": {"cert": "/abs/c.pem"}},
                         Path("/srv/mail/mailsrv.toml"))
        self.assertEqual(s.users_file, Path("/srv/mail/u"))
        self.assertEqual(s.tls.cert, Path("/abs/c.pem"))

    def test_smart_host_forms(self):
        s = config.parse({"delivery": {"smart_host": "relay.example:2525"}}, Path("/x"))
        self.assertEqual(s.delivery.smart_hosts, (config.NextHop("relay.example", 2525),))
        s = config.parse({"delivery": {"smart_host": [
            {"host": "b", "port": 26, "preference": 20},
            {"host": "a", "preference": 10}]}}, Path("/x"))
        self.assertEqual([h.host for h in s.delivery.smart_hosts], ["a", "b"])
        self.assertEqual(s.delivery.smart_hosts[0].port, 25)

    def test_next_hop_lists(self):
        s = config.parse({"delivery": {
            "mx_port": 2500,
            "smart_host": ["relay.test", {"host": "mx:other.test", "port": 26, "preference": 5},
                           {"host": "mx:provider.test"}, "[10.0.0.9]:587"],
            "transports": {"Gateway.TEST.": ["10.0.0.5", "mx:relay.test:2526"],
                           "old.test": "gw.test:2525", "direct.test": "mx"},
        }}, Path("/x"))
        self.assertEqual([(h.host, h.port, h.mx, h.preference) for h in s.delivery.smart_hosts], [
            ("relay.test", 25, False, 0), ("provider.test", 2500, True, 0),
            ("10.0.0.9", 587, False, 0), ("other.test", 26, True, 5),
        ])
        self.assertEqual(
            [(domain, [(h.host, h.port, h.mx) for h in hops])
             for domain, hops in s.delivery.transports],
            [("direct.test", [("", 2500, True)]),
             ("gateway.test", [("10.0.0.5", 25, False), ("relay.test", 2526, True)]),
             ("old.test", [("gw.test", 2525, False)])])
        self.assertEqual(config.parse({"delivery": {"smart_host": []}}, Path("/x")
                                      ).delivery.smart_hosts, ())

    def test_smart_host_credentials_and_tls(self):
        directory = Path(self.mktemp())
        directory.mkdir()
        secret = directory / "relay.secret"
        secret.write_text("s3cret\n")
        secret.chmod(0o600)
        s = config.parse({"delivery": {
            "smart_host": "relay.example:587", "smart_host_username": "me",
            "smart_host_password_file": "relay.secret", "tls": "verify",
        }}, directory / "mailsrv.toml")
        [host] = s.delivery.smart_hosts
        self.assertEqual(host.outbound, config.OutboundTLS("verify", None, "me", "s3cret"))
        self.assertNotIn("s3cret", repr(host))
        self.assertEqual(s.delivery.outbound.tls, "verify")
        s = config.parse({"delivery": {
            "smart_host_username": "me", "smart_host_password_file": "relay.secret",
            "smart_host": [{"host": "a", "tls": "verify"}, {"host": "b", "username": ""}],
        }}, directory / "mailsrv.toml")
        self.assertEqual([(h.outbound.tls, h.outbound.username, h.outbound.password)
                          for h in s.delivery.smart_hosts],
                         [("verify", "me", "s3cret"), ("required", "", "")])
        secret.chmod(0o644)
        with self.assertRaises(config.ConfigError) as caught:
            config.parse({"delivery": {"smart_host_username": "me",
                                       "smart_host_password_file": "relay.secret"}},
                         directory / "mailsrv.toml")
        self.assertIn("[delivery] smart_host_password_file: ", str(caught.exception))
        self.assertIn("may be read by others (chmod 600 ", str(caught.exception))

    def test_example_config_is_valid(self):
        s = config.load(ROOT / "etc" / "mailsrv.toml")
        preflight.check_settings(s, task.Clock())
        self.assertEqual(s.local_domains, ("example.test",))
        self.assertTrue(all("127.0.0.1" in l.endpoint for l in s.listeners))

    def test_design_example_sections_are_accepted(self):
        s = config.parse({"antispam": {"dnsbl": {"lists": ["zen.example"]},
                                       "spf": {"action": "header"}}}, Path("/x"))
        self.assertEqual(s.antispam.dnsbl.lists[0].zone, "zen.example")
        self.assertEqual(dict(s.antispam.spf.actions)["fail"], "header")


# Every key's default, named as the admin writes it, read from an empty file
# at /etc/m/c.toml (antispam sections: from empty tables, which turn them on).
KEY_DEFAULTS = [
    ("[server] data_dir", lambda s: s.data_dir, Path("/etc/m/var")),
    ("[domains] local", lambda s: s.local_domains, ()),
    ("[users] file", lambda s: s.users_file, Path("/etc/m/users")),
    ("[aliases] file", lambda s: s.aliases_file, Path("/etc/m/aliases")),
    ("[tls] cert", lambda s: s.tls.cert, Path("/etc/m/tls/cert.pem")),
    ("[tls] key", lambda s: s.tls.key, Path("/etc/m/tls/key.pem")),
    ("[tls] client_ca", lambda s: s.tls.client_ca, None),
    ("[tls] client_cert", lambda s: s.tls.client_cert, "none"),
    ("[auth] allow_plaintext_on_loopback", lambda s: s.auth.allow_plaintext_on_loopback,
     False),
    ("[auth] max_failures", lambda s: s.auth.max_failures, 5),
    ("[auth] max_failures_per_ip", lambda s: s.auth.max_failures_per_ip, 100),
    ("[auth] failure_window", lambda s: s.auth.failure_window, 600),
    ("[auth] lockout", lambda s: s.auth.lockout, 900),
    ("[auth] cache_ttl", lambda s: s.auth.cache_ttl, 300),
    ("[pop_before_smtp] enabled", lambda s: s.pop_before_smtp.enabled, True),
    ("[pop_before_smtp] window", lambda s: s.pop_before_smtp.window, 1800),
    ("[server] workers", lambda s: s.workers, 1),
    ("[sessions] backend", lambda s: s.sessions.backend, "memory"),
    ("[sessions] redis_url", lambda s: s.sessions.redis_url,
     config.RedisAddress(host="127.0.0.1", port=6379, db=0)),
    ("[sessions] redis_timeout", lambda s: s.sessions.redis_timeout, 2.0),
    ("[sessions] redis_ca", lambda s: s.sessions.redis_ca, None),
    ("[sessions] redis_cert", lambda s: s.sessions.redis_cert, None),
    ("[sessions] redis_key", lambda s: s.sessions.redis_key, None),
    ("[relay] mode", lambda s: s.relay.mode, "trusted"),
    ("[relay] trusted", lambda s: s.relay.trusted, ()),
    ("[relay] trusted_file", lambda s: s.relay.trusted_file, None),
    ("[relay] refusal_text", lambda s: s.relay.refusal_text, "relaying denied for %s"),
    ("[relay] trusted_bypass_antispam", lambda s: s.relay.trusted_bypass_antispam, True),
    ("[dns] servers", lambda s: s.dns.servers, ()),
    ("[dns] timeout", lambda s: s.dns.timeout, 5.0),
    ("[delivery] smart_host", lambda s: s.delivery.smart_hosts, ()),
    ("[delivery] tls", lambda s: s.delivery.outbound.tls, "opportunistic"),
    ("[delivery] tls_ca_file", lambda s: s.delivery.outbound.ca_file, None),
    ("[delivery] mx_port", lambda s: s.delivery.mx_port, 25),
    ("[delivery] retry", lambda s: s.delivery.retry, (300, 900, 3600, 14400)),
    ("[delivery] max_age", lambda s: s.delivery.max_age, 432000),
    ("[delivery] transports", lambda s: s.delivery.transports, ()),
    ("[delivery] max_received", lambda s: s.delivery.max_received, 30),
    ("[delivery] max_connections", lambda s: s.delivery.max_connections, 100),
    ("[delivery] max_connections_per_destination",
     lambda s: s.delivery.max_connections_per_destination, 20),
    ("[delivery] delay_warning", lambda s: s.delivery.delay_warning, 14400),
    ("[delivery] reply_timeout", lambda s: s.delivery.reply_timeout, 300),
    ("[access] max_message_size", lambda s: s.access.max_message_size, 36700160),
    ("[access] max_recipients", lambda s: s.access.max_recipients, 100),
    ("[access] max_connections_per_ip", lambda s: s.access.max_connections_per_ip, 20),
    ("[access] kill_file", lambda s: s.access.kill_file, None),
    ("[access] refuse_null_sender", lambda s: s.access.refuse_null_sender, False),
    ("[access] check_valid_sender", lambda s: s.access.check_valid_sender, True),
    ("[access] verify_sender_domain", lambda s: s.access.verify_sender_domain, False),
    ("[access] local_sender_must_auth", lambda s: s.access.local_sender_must_auth, True),
    ("[access] sender_must_be_owned", lambda s: s.access.sender_must_be_owned, True),
    ("[lists] accept_remote", lambda s: s.lists.accept_remote, True),
    ("[lists] expn", lambda s: s.lists.expn, False),
    ("[journal] inbound", lambda s: s.journal.inbound, ""),
    ("[journal] outbound", lambda s: s.journal.outbound, ""),
    ("[antispam] subject_prefix", lambda s: s.antispam.subject_prefix, "[SPAM] "),
    ("[antispam] content_for_authenticated",
     lambda s: s.antispam.content_for_authenticated, False),
    ("[antispam] admins", lambda s: s.antispam.admins, ()),
    ("[antispam.dnsbl] threshold", lambda s: s.antispam.dnsbl.threshold, 1),
    ("[antispam.dnsbl] timeout", lambda s: s.antispam.dnsbl.timeout, 5.0),
    ("[antispam.dnsbl] received_headers", lambda s: s.antispam.dnsbl.received_headers, False),
    ("[antispam.dnsbl.lists] name, server, kind, codes, action",
     lambda s: [(bl.zone, bl.name, bl.server, bl.kind, bl.codes, str(bl.action))
                for bl in s.antispam.dnsbl.lists],
     [("z.example", "z.example", None, "standard", (), "header")]),
    ("[antispam.spf] action and each result",
     lambda s: [(result, str(action)) for result, action in s.antispam.spf.actions],
     [(result, "header") for result in
      ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")]),
    ("[antispam.spf] max_lookups", lambda s: s.antispam.spf.max_lookups, 10),
    ("[antispam.spf] max_void_lookups", lambda s: s.antispam.spf.max_void_lookups, 2),
    ("[antispam.spf] timeout", lambda s: s.antispam.spf.timeout, 20.0),
    ("[antispam.validation] action and each test",
     lambda s: [(name, str(action)) for name, action in s.antispam.validation.tests],
     [("helo-fqdn", "header"), ("helo-ours", "header"), ("reverse-dns", "header"),
      ("fcrdns", "header")]),
    ("[antispam.spamskip] file, applies_to",
     lambda s: (s.antispam.spamskip.file, s.antispam.spamskip.connection,
                s.antispam.spamskip.content), (Path("/etc/m/spamskip.txt"), True, True)),
    ("[antispam.whitelist] file, applies_to",
     lambda s: (s.antispam.whitelist.file, s.antispam.whitelist.connection,
                s.antispam.whitelist.content), (Path("/etc/m/whitelist.txt"), True, True)),
    ("[antispam.mime] action, subject_prefix",
     lambda s: (s.antispam.mime.action, s.antispam.mime.subject_prefix), ("header", None)),
    ("[antispam.attachments] action, extensions, content_types, subject_prefix",
     lambda s: (s.antispam.attachments.action, s.antispam.attachments.extensions,
                s.antispam.attachments.content_types, s.antispam.attachments.subject_prefix),
     ("header", ("exe", "scr", "js", "vbs", "bat", "com", "pif"), (), None)),
    ("[antispam.clamav] action, endpoint, on_error, timeout, subject_prefix",
     lambda s: s.antispam.clamav,
     config.ClamAVSettings(action="reject", endpoint="unix:/run/clamav/clamd.ctl",
                           on_error="tempfail", timeout=60.0, subject_prefix=None)),
]
# ... and each [[listen]] key's, for a table that names only its endpoint.
LISTEN_DEFAULTS = [
    ("protocol", lambda l: l.protocol, "smtp"),
    ("role", lambda l: l.role, "mx"),
    ("tls", lambda l: l.tls, "starttls"),
    ("max_connections", lambda l: l.max_connections, 200),
    ("auth", lambda l: l.auth, True),
    ("client_cert", lambda l: l.client_cert, None),
    ("backlog", lambda l: l.backlog, 1024),
    ("allow, deny, safe", lambda l: (l.access.allow, l.access.deny, l.access.safe),
     ((), (), ())),
    ("allow_file, deny_file", lambda l: (l.access.allow_file, l.access.deny_file),
     (None, None)),
    ("block_own_ips", lambda l: l.access.block_own_ips, False),
    ("require_auth", lambda l: l.access.require_auth, ""),
    ("proxy_protocol, proxy_from", lambda l: (l.proxy_protocol, l.proxy_from), (False, ())),
    ("timeouts", lambda l: l.timeouts,
     Timeouts(idle=300, command=60, min_data_rate=500, login=None, stress_connections=160,
              stress=10)),
]


class EveryDefaultTests(unittest.TestCase):
    """Each key's default as users see it, pinned before the loader is rearranged."""

    def test_every_key(self):
        s = config.parse({"antispam": {"dnsbl": {"lists": ["z.example"]}, "spf": {},
                                       "validation": {}, "spamskip": {}, "whitelist": {},
                                       "mime": {}, "attachments": {}, "clamav": {}}},
                         Path("/etc/m/c.toml"))
        empty = config.parse({}, Path("/etc/m/c.toml"))
        self.assertEqual(empty.antispam, config.AntispamSettings())
        for key, read, expected in KEY_DEFAULTS:
            self.assertEqual(read(s), expected, key)
            if not key.startswith("[antispam."):
                self.assertEqual(read(empty), expected, key)

    def test_every_listen_key(self):
        [listener] = config.parse({"listen": [{"endpoint": "tcp:25"}]}, Path("/c.toml")).listeners
        for key, read, expected in LISTEN_DEFAULTS:
            self.assertEqual(read(listener), expected, key)


LOCAL = {"domains": {"local": ["example.test", "example.org"]}}


class DomainTableTests(unittest.TestCase):
    """[domain."NAME"] tables: a local domain's own certificate."""

    def test_certificate_paths_are_relative_to_the_config_file(self):
        s = config.parse({**LOCAL, "domain": {
            "Example.ORG": {"tls_cert": "tls/org.pem", "tls_key": "/k/org.key"},
            "example.test": {}}}, Path("/etc/m/c.toml"))
        org, test = s.per_domain
        self.assertEqual((org.name, org.tls_cert, org.tls_key),
                         ("example.org", Path("/etc/m/tls/org.pem"), Path("/k/org.key")))
        self.assertEqual((test.name, test.tls_cert, test.tls_key), ("example.test", None, None))
        self.assertEqual(org.key("tls_cert"), '[domain."example.org"] tls_cert')

    def test_none_by_default(self):
        self.assertEqual(config.parse(LOCAL, Path("/c.toml")).per_domain, ())

    def test_antispam_sections_replace_the_global_ones(self):
        """A domain's section replaces the global one; enabled = false removes it."""
        s = config.parse({**LOCAL,
                          "antispam": {"subject_prefix": "[S] ", "mime": {},
                                       "dnsbl": {"lists": ["zen.example"]},
                                       "phrases": {"file": "p.txt"}},
                          "domain": {"example.org": {"antispam": {
                              "phrases": {"file": "org.txt", "action": "reject"},
                              "dnsbl": {"enabled": False}, "html": {"enabled": True}}},
                              "example.test": {"tls_cert": "c", "tls_key": "k"}}},
                         Path("/etc/m/c.toml"))
        org, test = s.per_domain
        self.assertIsNone(test.antispam)
        everywhere, own = s.antispam, org.antispam
        self.assertEqual((own.phrases.file, own.phrases.action),
                         (Path("/etc/m/org.txt"), "reject"))
        self.assertEqual((own.dnsbl, own.html.action), (None, "header"))
        self.assertIs(own.mime, everywhere.mime)
        self.assertEqual(own.subject_prefix, "[S] ")
        self.assertEqual(s.antispam_groups(), [("antispam", everywhere),
                                               ('domain."example.org".antispam', own)])
        self.assertIn(('[domain."example.org".antispam.phrases] action', "reject"),
                      own.actions)

    def test_enabled_false_turns_a_global_section_off(self):
        s = config.parse({"antispam": {"mime": {"enabled": False}}}, Path("/c.toml"))
        self.assertIsNone(s.antispam.mime)


class NodeDirTests(unittest.TestCase):
    def test_data_dir_alone_or_the_nodes_part(self):
        memory = config.parse({"server": {"node": "mx1"}}, Path("/etc/m/c.toml"))
        self.assertEqual(memory.node_dir, Path("/etc/m/var"))
        redis = config.parse({"server": {"node": "mx1"}, "sessions": {"backend": "redis"}},
                             Path("/etc/m/c.toml"))
        self.assertEqual(redis.node_dir, Path("/etc/m/var/nodes/mx1"))

    def test_a_worker_is_a_node_of_its_own(self):
        settings = config.parse({"server": {"node": "mx1", "workers": 2},
                                 "sessions": {"backend": "redis"}}, Path("/etc/m/c.toml"))
        self.assertEqual(settings.worker(2).node_dir, Path("/etc/m/var/nodes/mx1-2"))

    def test_the_default_node_is_this_machines_short_name(self):
        node = config.parse({}, Path("/c.toml")).node
        self.assertTrue(node and "." not in node and "/" not in node, node)


class RedisURLTests(unittest.TestCase):
    """[sessions] redis_url: every form, with what it may carry."""

    def test_forms(self):
        for url, address in [
            ("redis://10.0.0.7", config.RedisAddress(host="10.0.0.7")),
            ("redis://:secret@[::1]:6380/3",
             config.RedisAddress(host="::1", port=6380, db=3, password="secret")),
            ("rediss://mailsrv:secret@cache.example:6380/1",
             config.RedisAddress(host="cache.example", port=6380, db=1, tls=True,
                                 username="mailsrv", password="secret")),
            ("redis+sentinel://s1,S2:26380,[::1]:5000,10.0.0.1/mymaster",
             config.RedisAddress(sentinels=(("s1", 26379), ("s2", 26380), ("::1", 5000),
                                            ("10.0.0.1", 26379)), master="mymaster")),
            ("rediss+sentinel://u:p%40ss:x@s1:26379/m/4",
             config.RedisAddress(sentinels=(("s1", 26379),), master="m", db=4, tls=True,
                                 username="u", password="p@ss:x")),
            ("unix:///run/redis/redis.sock?db=2", config.RedisAddress(path="/run/redis/redis.sock", db=2)),
            ("unix://mailsrv:p%40ss@/run/r.sock",
             config.RedisAddress(path="/run/r.sock", username="mailsrv", password="p@ss")),
        ]:
            self.assertEqual(config.parse_redis_url(url), address, url)

    def test_the_log_never_shows_the_password(self):
        address = config.parse_redis_url("redis://u:secret@cache:6380/1")
        self.assertEqual(str(address), "redis://cache:6380/1")
        self.assertNotIn("secret", repr(address))
        self.assertEqual(str(config.parse_redis_url("unix://:secret@/r.sock")), "unix:///r.sock?db=0")
        self.assertEqual(str(config.parse_redis_url("rediss://:secret@cache")),
                         "rediss://cache:6379/0")
        address = config.parse_redis_url("redis+sentinel://:secret@s1,[::1]:5000/m")
        self.assertEqual(str(address), "redis+sentinel://s1:26379,[::1]:5000/m/0")
        self.assertNotIn("secret", repr(address))

    def test_what_a_sentinel_url_may_not_be(self):
        for url, problem in [
            ("redis+sentinel://s1", "no master name"),
            ("redis+sentinel://s1/", "no master name"),
            ("redis+sentinel:///m", "a sentinel without a host"),
            ("redis+sentinel://s1,,s2/m", "a sentinel without a host"),
            ("redis+sentinel://s1:0/m", "bad port in sentinel 's1:0'"),
            ("redis+sentinel://s1:26379x/m", "bad port in sentinel"),
            ("redis+sentinel://::1/m", "bad sentinel '::1' (write host:port or [IPv6]:port)"),
            ("redis+sentinel://[::1/m", "bad sentinel '[::1'"),
            ("redis+sentinel://s_1/m", "bad sentinel 's_1'"),
            ("redis+sentinel://s1/m/x", "the database 'x' is not a number"),
            ("redis+sentinel://s1/m/1/2", "the path is /MASTER/DB, nothing more"),
            ("redis+sentinel://s1/m%20x", "the master name 'm x' has spaces"),
            ("redis+sentinel://s1/m?db=1", "takes no ?query"),
        ]:
            with self.assertRaises(ValueError) as caught:
                config.parse_redis_url(url)
            self.assertIn(problem, str(caught.exception), url)


class RedisURLPropertyTests(unittest.TestCase):
    """Sentinel URLs, split by hand: what is written is read back; anything else is a ValueError."""

    @examples(200)
    @given(st.lists(st.tuples(st.sampled_from(["s1", "sentinel.example", "10.0.0.9", "::1"]),
                              st.integers(1, 65535)), min_size=1, max_size=4),
           st.text(st.characters(min_codepoint=33, max_codepoint=126,
                                 blacklist_characters="/%?#"), min_size=1, max_size=12),
           st.integers(0, 65535), st.text(max_size=8), st.text(max_size=8), st.booleans())
    def test_read_back(self, sentinels, master, db, username, password, tls):
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in sentinels)
        userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}@"
        url = f"{'rediss' if tls else 'redis'}+sentinel://{userinfo}{hosts}/{master}/{db}"
        self.assertEqual(config.parse_redis_url(url), config.RedisAddress(
            sentinels=tuple(sentinels), master=master, db=db, tls=tls, username=username,
            password=password))

    @examples(300)
    @given(st.sampled_from(["redis+sentinel://", "rediss+sentinel://", "redis://",
                            "rediss://", "unix://"]),
           st.text(st.sampled_from("s1:/,[]@%?#0.9ab-_ "), max_size=30))
    def test_anything_else_is_a_value_error(self, scheme, rest):
        try:
            address = config.parse_redis_url(scheme + rest)
        except ValueError:
            return
        self.assertIsInstance(address, config.RedisAddress)


class ErrorTests(unittest.TestCase):
    """Each bad config gives one line: file, key, problem."""

    cases = [
        ({"server": {"hostnme": "x"}}, "/c.toml: [server] hostnme: unknown key"),
        ({"access": {"max_recipients": "10"}},
         "/c.toml: [access] max_recipients: must be a whole number, not a string"),
        ({"access": {"max_recipients": True}},
         "/c.toml: [access] max_recipients: must be a whole number, not true/false"),
        ({"relay": {"mode": "open"}},
         "/c.toml: [relay] mode: unknown value 'open' (one of: none, trusted, anyone)"),
        ({"listen": [{"protocol": "pop3", "role": "mx", "endpoint": "tcp:110"}]},
         "/c.toml: [listen #1] role: only smtp listeners have a role"),
        ({"listen": [{"protocol": "smtp"}]}, "/c.toml: [listen #1] endpoint: missing"),
        ({"listen": [{"protocol": "smtp", "endpoint": "tcp:25", "backlog": 0}]},
         "/c.toml: [listen #1] backlog: must be at least 1, not 0"),
        ({"listen": []}, "/c.toml: [[listen]]: no listeners"),
        ({"listen": [{"protocol": "smtp", "endpoint": "tcp:25", "login_timeout": 5}]},
         "/c.toml: [listen #1] login_timeout: only pop3 and imap listeners have one"),
        # no default trust: a PROXY header from anyone lets any client claim any IP
        ({"listen": [{"endpoint": "tcp:25", "proxy_protocol": True}]},
         "/c.toml: [listen #1] proxy_from: missing: proxy_protocol = true takes the PROXY "
         "header only from the load balancers listed here (for example proxy_from = "),
        ({"listen": [{"endpoint": "tcp:25"},
                     {"endpoint": "tcp:26", "proxy_protocol": True, "proxy_from": []}]},
         "/c.toml: [listen #2] proxy_from: missing"),
        ({"listen": [{"endpoint": "tcp:25", "proxy_from": ["10.0.0.5"]}]},
         "/c.toml: [listen #1] proxy_from: set, but proxy_protocol is not true"),
        ({"listen": [{"endpoint": "tcp:25", "proxy_protocol": "yes"}]},
         "/c.toml: [listen #1] proxy_protocol: must be true or false, not a string"),
        ({"listen": [{"endpoint": "tcp:25", "proxy_protocol": True, "proxy_from": "10.0.0.5"}]},
         "/c.toml: [listen #1] proxy_from: must be a list, not a string"),
        ({"listen": [{"protocol": "imap", "endpoint": "tcp:143", "idle_timeout": 0}]},
         "/c.toml: [listen #1] idle_timeout: must be more than 0 seconds, not 0"),
        ({"listen": [{"protocol": "imap", "endpoint": "tcp:143", "command_timeout": "1m"}]},
         "/c.toml: [listen #1] command_timeout: must be a number, not a string"),
        ({"delivery": {"smart_host": "relay:99999"}},
         "/c.toml: [delivery] smart_host: bad port in 'relay:99999'"),
        ({"tls": {"client_cert": "require"}},
         "/c.toml: [tls] client_cert: 'require' needs [tls] client_ca"),
        ({"bogus": 1}, "/c.toml: bogus: unknown key"),
        ({"server": {"data_dir\n250 ok": 1}}, "/c.toml: [server] data_dir\\n250 ok: unknown key"),
        ({"relay": {"refusal_text": "no\r\n250 ok"}},
         "/c.toml: [relay] refusal_text: must be printable ASCII"),
        ({"journal": {"inbound": "archive"}},
         "/c.toml: [journal] inbound: 'archive' is not an address"),
        ({"lists": {"expn": "yes"}}, "/c.toml: [lists] expn: must be true or false"),
        ({"dns": {"servers": ["127.0.0.1:0"]}}, "/c.toml: [dns] servers: bad port"),
        ({"delivery": {"tls": "always"}},
         "/c.toml: [delivery] tls: unknown value 'always' (one of: opportunistic,"),
        ({"delivery": {"smart_host_username": "me"}},
         "/c.toml: [delivery] smart_host_password_file: missing"),
        ({"delivery": {"smart_host_username": "me",
                       "smart_host_password_file": "/nonexistent"}},
         "/c.toml: [delivery] smart_host_password_file: cannot read /nonexistent"),
        ({"server": {"data_dir": 3}},
         "/c.toml: [server] data_dir: must be a string, not a whole number"),
        ({"server": []}, "/c.toml: server: must be a table, not a list"),
        ({"domains": {"local": ["a", 3]}},
         "/c.toml: [domains] local: every entry must be a string, not a whole number"),
        ({"users": {"file": True}}, "/c.toml: [users] file: must be a string, not true or false"),
        ({"auth": {"max_failures": 0}}, "/c.toml: [auth] max_failures: must be at least 1, not 0"),
        ({"auth": {"lockout": -1}}, "/c.toml: [auth] lockout: must be at least 0, not -1"),
        ({"auth": {"cache_ttl": -1}}, "/c.toml: [auth] cache_ttl: must be at least 0, not -1"),
        ({"auth": {"allow_plaintext_on_loopback": 1}}, "/c.toml: [auth] "
         "allow_plaintext_on_loopback: must be true or false, not a whole number"),
        ({"pop_before_smtp": {"window": 0}},
         "/c.toml: [pop_before_smtp] window: must be at least 1, not 0"),
        ({"sessions": {"backend": "memcached"}},
         "/c.toml: [sessions] backend: unknown value 'memcached' (one of: memory, redis)"),
        ({"sessions": {"redis_url": "redis://cache:99999/0"}},
         "/c.toml: [sessions] redis_url: 'redis://cache:99999/0': the port is not a number"),
        ({"sessions": {"redis_url": "unix://run/redis.sock"}},
         "/c.toml: [sessions] redis_url: 'unix://run/redis.sock': unix:// takes a path, no host"),
        ({"sessions": {"redis_url": "unix:///run/redis.sock?database=1"}},
         "/c.toml: [sessions] redis_url: 'unix:///run/redis.sock?database=1': unix:// takes only"),
        ({"sessions": {"redis_url": "redis://cache/one"}},
         "/c.toml: [sessions] redis_url: 'redis://cache/one': the database 'one' is not a number"),
        ({"sessions": {"redis_url": "redis+sentinel://s1:26379"}},
         "/c.toml: [sessions] redis_url: 'redis+sentinel://s1:26379': no master name"),
        ({"sessions": {"redis_url": "127.0.0.1:6379"}},
         "/c.toml: [sessions] redis_url: '127.0.0.1:6379': not a redis://, rediss://, "
         "redis+sentinel:// or unix:// URL"),
        ({"sessions": {"redis_ca": "ca.pem"}},
         "/c.toml: [sessions] redis_ca: is for TLS to Redis, and redis_url has none (write "
         "rediss:// (or rediss+sentinel://), or remove redis_ca)"),
        ({"sessions": {"redis_url": "rediss://cache", "redis_cert": "c.pem"}},
         "/c.toml: [sessions] redis_key: missing (redis_cert needs redis_key: give both or "
         "neither)"),
        ({"sessions": {"redis_url": "rediss://cache", "redis_key": "c.key"}},
         "/c.toml: [sessions] redis_cert: missing (redis_key needs redis_cert"),
        ({"server": {"node": "../mx1"}},
         "/c.toml: [server] node: '../mx1' is not a node name"),
        ({"server": {"workers": 0}}, "/c.toml: [server] workers: must be at least 1, not 0"),
        ({"server": {"workers": 2}}, '/c.toml: [server] workers: 2 workers need [sessions] '
         'backend = "redis" (set [sessions] backend = "redis" and redis_url, or workers = 1)'),
        ({"sessions": {"redis_timeout": 0}},
         "/c.toml: [sessions] redis_timeout: must be a number of seconds above 0"),
        ({"tls": {"client_cert": "maybe"}}, "/c.toml: [tls] client_cert: unknown value 'maybe' "
         "(one of: none, request, require)"),
        ({"listen": [{"endpoint": "tcp:25", "client_cert": "require"}]},
         "/c.toml: [listen #1] client_cert: 'require' needs [tls] client_ca"),
        ({"listen": [{"endpoint": "tcp:25", "client_cert": "always"}]},
         "/c.toml: [listen #1] client_cert: unknown value 'always' (one of: none, request, "
         "require)"),
        ({"listen": [{"protocol": "pop3", "endpoint": "tcp:110", "require_auth": "any"}]},
         "/c.toml: [listen #1] require_auth: only smtp listeners take mail to send"),
        ({"listen": [{"endpoint": "tcp:25", "require_auth": "bob"}]},
         "/c.toml: [listen #1] require_auth: 'bob' is not an address "
         "(write \"user@domain\" or \"\")"),
        ({"listen": [{"endpoint": "tcp:25", "max_connections": 0}]},
         "/c.toml: [listen #1] max_connections: must be at least 1, not 0"),
        ({"listen": [{"protocol": "nntp", "endpoint": "tcp:25"}]},
         "/c.toml: [listen #1] protocol: unknown value 'nntp' (one of: smtp, pop3, imap)"),
        ({"listen": [{"endpoint": "tcp:25", "tls": "maybe"}]},
         "/c.toml: [listen #1] tls: unknown value 'maybe' (one of: starttls, implicit, "
         "required, none)"),
        ({"listen": [{"endpoint": "tcp:25", "min_data_rate": 0}]},
         "/c.toml: [listen #1] min_data_rate: must be at least 1, not 0"),
        ({"listen": [{"endpoint": "tcp:25", "stress_timeout": -1}]},
         "/c.toml: [listen #1] stress_timeout: must be more than 0 seconds, not -1"),
        ({"listen": [3]}, "/c.toml: listen: must be tables (write [[listen]])"),
        ({"listen": {"endpoint": "tcp:25"}}, "/c.toml: listen: must be a list, not a table"),
        ({"delivery": {"retry": []}},
         "/c.toml: [delivery] retry: must be a list of positive whole seconds"),
        ({"delivery": {"transports": {"a.example": 3}}},
         "/c.toml: [delivery] transports.a.example: must be a next hop or a list of next "
         f"hops ({HOP_FORMS})"),
        ({"delivery": {"transports": {"a.example": "host:0"}}},
         f"/c.toml: [delivery] transports.a.example: bad port in 'host:0' ({HOP_FORMS})"),
        ({"delivery": {"transports": {"a.example": []}}},
         "/c.toml: [delivery] transports.a.example: empty list "
         "(give at least one next hop, or \"mx\")"),
        ({"delivery": {"transports": {"a.example": ["gw.test", "mx:"]}}},
         "/c.toml: [delivery] transports.a.example: mx: needs a mail domain in 'mx:' "
         f"({HOP_FORMS})"),
        ({"delivery": {"transports": {"a.example": ["2001:db8:0:0:0:0:0:1:2525"]}}},
         "/c.toml: [delivery] transports.a.example: an IPv6 address with a port goes in "
         f"brackets in '2001:db8:0:0:0:0:0:1:2525' ({HOP_FORMS})"),
        ({"delivery": {"transports": {"a.example": ["gw.test", 25]}}},
         "/c.toml: [delivery] transports.a.example: must be a next hop or a list of next "
         f"hops ({HOP_FORMS})"),
        ({"delivery": {"smart_host": ["relay.test", "a b"]}},
         "/c.toml: [delivery] smart_host: not a host name or IP address in 'a b' "
         f"({HOP_FORMS})"),
        ({"delivery": {"smart_host": [{"host": "relay.test:26", "port": 26}]}},
         "/c.toml: [delivery.smart_host] host: 'relay.test:26' has a port, and so has "
         "port (give it once)"),
        ({"delivery": {"smart_host": [{"host": "mx"}]}},
         "/c.toml: [delivery.smart_host] host: \"mx\" alone is no smart host (list it as "
         "a string: smart_host = [{...}, \"mx\"])"),
        ({"delivery": {"max_age": 59}},
         "/c.toml: [delivery] max_age: must be at least 60, not 59"),
        ({"delivery": {"smart_host": [3]}},
         "/c.toml: [delivery] smart_host: list entries must be \"host:port\" or "
         "{host, port, preference}"),
        ({"delivery": {"smart_host": [{"port": 25}]}}, "/c.toml: [delivery.smart_host] host: "
         "missing"),
        ({"delivery": {"smart_host": [{"host": "a", "prot": 25}]}},
         "/c.toml: [delivery.smart_host] prot: unknown key (check the spelling against "
         "etc/mailsrv.toml)"),
        ({"dns": {"timeout": "5s"}}, "/c.toml: [dns] timeout: must be a number, not a string"),
        ({"antispam": {"subject_prefix": 3}},
         "/c.toml: [antispam] subject_prefix: must be a string, not a whole number"),
        ({"antispam": {"phrases": {"scan": "everything"}}},
         "/c.toml: [antispam.phrases] scan: unknown value 'everything' (one of: subject, "
         "headers, body, all)"),
        ({"antispam": {"html": {"features": ["blink_tag"]}}},
         "/c.toml: [antispam.html] features: unknown feature 'blink_tag' (one of: "
         "nested_table, hyperlink, script_tag, invalid_tag, image_tag, mailto_link, "
         "deceptive_url, embedded_comment, deceptive_text)"),
        ({"antispam": {"html": {"min_features": 0}}},
         "/c.toml: [antispam.html] min_features: must be at least 1, not 0"),
        ({"antispam": {"statistical": {"threshold": 1.5}}},
         "/c.toml: [antispam.statistical] threshold: must be above 0 and at most 1, not 1.5"),
        ({"antispam": {"admins": ["boss"]}},
         "/c.toml: [antispam] admins: 'boss' is not an address (write \"user@domain\")"),
        ({"antispam": {"spf": {"timeout": "x"}}},
         "/c.toml: [antispam.spf] timeout: must be a number, not a string"),
        ({"antispam": {"dnsbl": {"lists": [{"zone": "a.example", "server": "h:0"}]}}},
         "/c.toml: [antispam.dnsbl.lists] server: bad port in 'h:0' (write \"host:port\")"),
        ({"antispam": {"spamskip": {"file": 3}}},
         "/c.toml: [antispam.spamskip] file: must be a string, not a whole number"),
        ({"antispam": {"attachments": {"extensions": ["pdf.exe"]}}},
         "/c.toml: [antispam.attachments] extensions: 'pdf.exe' is not a file name extension "
         "(write them without the dot: [\"exe\", \"scr\"])"),
        ({"antispam": {"attachments": {"content_types": ["application"]}}},
         "/c.toml: [antispam.attachments] content_types: 'application' is not a content type "
         "(write \"type/subtype\" or \"type/*\")"),
        ({"antispam": {"mime": {"boundary": 70}}},
         "/c.toml: [antispam.mime] boundary: unknown key (check the spelling against "
         "etc/mailsrv.toml)"),
        ({"antispam": {"clamav": {"on_error": "reject"}}},
         "/c.toml: [antispam.clamav] on_error: unknown value 'reject' (one of: tempfail, "
         "accept)"),
        ({"antispam": {"clamav": {"timeout": 0}}},
         "/c.toml: [antispam.clamav] timeout: must be more than 0 seconds, not 0"),
        ({"antispam": {"clamav": {"socket": "/run/clamd"}}},
         "/c.toml: [antispam.clamav] socket: unknown key"),
        ({"access": {"max_message_size": 1023}},
         "/c.toml: [access] max_message_size: must be at least 1024, not 1023"),
        ({"access": {"kill_file": 3}},
         "/c.toml: [access] kill_file: must be a string, not a whole number"),
        ({"domain": {"example.org": {"tls_cert": "org.pem", "tls_key": "org.key"}}},
         '/c.toml: [domain."example.org"]: example.org is not a local domain (add it to '
         "[domains] local, or remove the table)"),
        ({**LOCAL, "domain": {"example.org": {"tls_cert": "org.pem"}}},
         '/c.toml: [domain."example.org"] tls_key: missing (give both tls_cert and tls_key)'),
        ({**LOCAL, "domain": {"example.org": {"tls_key": "org.key"}}},
         '/c.toml: [domain."example.org"] tls_cert: missing'),
        ({**LOCAL, "domain": {"example.org": {"tls_crt": "org.pem"}}},
         '/c.toml: [domain."example.org"] tls_crt: unknown key'),
        ({**LOCAL, "domain": {"example.org": {"tls_cert": 3}}},
         '/c.toml: [domain."example.org"] tls_cert: must be a string, not a whole number'),
        ({**LOCAL, "domain": {"example.org": {"antispam": {"subject_prefix": "[S] "}}}},
         '/c.toml: [domain."example.org".antispam] subject_prefix: is set for the whole '
         "server only (set it in [antispam]; per domain, give [antispam.*] sections)"),
        ({**LOCAL, "domain": {"example.org": {"antispam": {"phrase": {}}}}},
         '/c.toml: [domain."example.org".antispam] phrase: unknown section (one of: '
         "validation, dnsbl, spf, spamskip, whitelist, mime, attachments, statistical, "
         "phrases, urls, html, clamav, rspamd, dkim, dmarc)"),
        ({"antispam": {"dkim": {"max_signatures": 50}}},
         "/c.toml: [antispam.dkim] max_signatures: 50 is above the mailsrv limit of 5"),
        ({"antispam": {"dkim": {"failed": "reject"}}},
         "/c.toml: [antispam.dkim] failed: unknown key"),
        ({"antispam": {"dmarc": {"trusted_sealers": "lists.test"}}},
         "/c.toml: [antispam.dmarc] trusted_sealers: must be a list"),
        ({**LOCAL, "domain": {"example.org": {"antispam": {"spf": {"max_lookups": 5}}}}},
         '/c.toml: [domain."example.org".antispam.spf] max_lookups: is set for the whole '
         "server only (set it in [antispam.spf])"),
        ({**LOCAL, "domain": {"example.org": {"antispam": {"mime": {"enabled": "no"}}}}},
         '/c.toml: [domain."example.org".antispam.mime] enabled: must be true or false'),
        ({**LOCAL, "domain": {"example.org": {"antispam": {"phrases": {"fiel": "p.txt"}}}}},
         '/c.toml: [domain."example.org".antispam.phrases] fiel: unknown key '
         "(check the spelling against etc/mailsrv.toml)"),
        ({**LOCAL, "domain": {"example.org": "x"}},
         '/c.toml: domain."example.org": must be a table'),
        ({**LOCAL, "domain": {"example.org": {}, "Example.org.": {}}},
         '/c.toml: [domain."Example.org."]: example.org has two tables'),
        ({"domain": 3}, "/c.toml: domain: must be a table, not a whole number"),
    ]

    # Problems found by the server's own parsers (endpoints, IP entries,
    # actions) and files the config names: refused by check-config and
    # start-up alike.
    refused = [
        ({"antispam": {"dmarc": {"reject": "bounce"}}},
         "/c.toml: [antispam.dmarc] reject: "),
        ({"listen": [{"protocol": "smtp", "endpoint": "tcpp:25"}]},
         "/c.toml: [listen #1] endpoint: bad endpoint 'tcpp:25'"),
        ({"listen": [{"protocol": "smtp", "endpoint": "systemd:domain=INET:index=x"}]},
         "/c.toml: [listen #1] endpoint: bad endpoint 'systemd:domain=INET:index=x': give "
         "index=N"),
        ({"listen": [{"protocol": "smtp", "endpoint": "systemd:domain=IP:index=0"}]},
         "/c.toml: [listen #1] endpoint: bad endpoint 'systemd:domain=IP:index=0': domain "
         "must be INET, INET6 or UNIX"),
        ({"relay": {"trusted": ["10.0.0.0/33"]}},
         "/c.toml: [relay] trusted: bad network '10.0.0.0/33'"),
        ({"relay": {"trusted": ["not an entry!"]}}, "/c.toml: [relay] trusted: not an address, "
         "network, range, host name or domain: 'not an entry!'"),
        ({"listen": [{"endpoint": "tcp:25", "allow": ["10.0.0.0/33"]}]},
         "/c.toml: [listen #1] allow: bad network '10.0.0.0/33'"),
        ({"listen": [{"endpoint": "tcp:25", "safe": ["10.0.0.0/33"]}]},
         "/c.toml: [listen #1] safe: bad network '10.0.0.0/33'"),
        ({"listen": [{"endpoint": "tcp:25", "proxy_protocol": True,
                      "proxy_from": ["10.0.0.5", "10.0.0.0/33"]}]},
         "/c.toml: [listen #1] proxy_from: bad network '10.0.0.0/33'"),
        ({"listen": [{"endpoint": "unix:/run/mailsrv.sock", "proxy_protocol": True,
                      "proxy_from": ["10.0.0.5"]}]},
         "/c.toml: [listen #1] proxy_protocol: takes TCP listeners only: a UNIX socket's "
         "peer has no address that proxy_from could list"),
        ({"listen": [{"endpoint": "systemd:domain=UNIX:index=0", "proxy_protocol": True,
                      "proxy_from": ["10.0.0.5"]}]},
         "/c.toml: [listen #1] proxy_protocol: takes TCP listeners only"),
        ({"listen": [{"endpoint": "tcp:25", "proxy_protocol": True,
                      "proxy_from": ["balancer.example.test"]}]},
         "/c.toml: [listen #1] proxy_from: 'balancer.example.test' is a name, not an address "
         "(list addresses or networks, e.g. 10.1.0.0/24)"),
        ({"antispam": {"dnsbl": {"lists": [{"zone": "a.example", "action": "move:a.b"}]}}},
         "/c.toml: [antispam.dnsbl.lists] action: Folder names may not contain '.'"),
        ({"antispam": {"attachments": {"action": "move:a.b"}}},
         "/c.toml: [antispam.attachments] action: Folder names may not contain '.'"),
        ({"antispam": {"clamav": {"endpoint": "/run/clamav/clamd.ctl"}}},
         "/c.toml: [antispam.clamav] endpoint: bad endpoint '/run/clamav/clamd.ctl'"),
        ({"domains": {"local": ["example.org"]},
          "domain": {"example.org": {"antispam": {"clamav": {"endpoint": "/x/clamd.ctl"}}}}},
         '/c.toml: [domain."example.org".antispam.clamav] endpoint: bad endpoint'),
        ({"antispam": {"clamav": {"action": "junk"}}},
         "/c.toml: [antispam.clamav] action: unknown action 'junk'"),
        ({"antispam": {"mime": {"action": "junk"}}},
         "/c.toml: [antispam.mime] action: unknown action 'junk' (one of: none, header, "
         "subject, move:FOLDER, forward:ADDRESS, delete, tempfail, reject)"),
        ({"antispam": {"spf": {"fail": "move:../x"}}},
         "/c.toml: [antispam.spf] fail: Folder names may not contain '.'"),
        ({"antispam": {"dnsbl": {"lists": ["a.example"], "action": "junk"}}},
         "/c.toml: [antispam.dnsbl] action: unknown action 'junk' (one of: none, header, "
         "subject, move:FOLDER, forward:ADDRESS, delete, tempfail, reject)"),
        ({"antispam": {"spf": {"fail": "forward:nobody"}}},
         "/c.toml: [antispam.spf] fail: forward needs a full address, not 'nobody'"),
        ({"antispam": {"validation": {"action": "move:"}}},
         "/c.toml: [antispam.validation] action: move needs a target: move:FOLDER"),
        ({"antispam": {"validation": {"helo_fqdn": "junk"}}},
         "/c.toml: [antispam.validation] helo_fqdn: unknown action 'junk'"),
        ({"domains": {"local": ["example.org"]},
          "domain": {"example.org": {"antispam": {"mime": {"action": "bounce"}}}}},
         "/c.toml: [domain.\"example.org\".antispam.mime] action: unknown action 'bounce'"),
    ]

    def test_policy_defaults(self):
        s = config.parse({}, Path("/c.toml"))
        self.assertEqual((s.relay.refusal_text, s.relay.trusted_bypass_antispam),
                         ("relaying denied for %s", True))
        self.assertEqual((s.lists.accept_remote, s.lists.expn), (True, False))
        self.assertEqual((s.journal.inbound, s.journal.outbound), ("", ""))
        s = config.parse({"dns": {"servers": ["127.0.0.1:5353", "192.0.2.53"]},
                          "journal": {"inbound": "Archive@Example.test"}}, Path("/c.toml"))
        self.assertEqual(s.dns.servers, (("127.0.0.1", 5353), ("192.0.2.53", 53)))
        self.assertEqual(s.journal.inbound, "archive@example.test")
        # Regression: a bare IPv6 address of 8 groups was read as host:port.
        s = config.parse({"dns": {"servers": ["2001:db8:1:2:3:4:5:6", "[2001:db8::1]:5353",
                                              "::1"]}}, Path("/c.toml"))
        self.assertEqual(s.dns.servers, (("2001:db8:1:2:3:4:5:6", 53), ("2001:db8::1", 5353),
                                         ("::1", 53)))

    def assert_each_refused(self, check, cases):
        """C{check(data)} refuses each C{data} with one line starting as expected."""
        for data, expected in cases:
            with self.assertRaises(config.ConfigError, msg=repr(data)) as caught:
                check(data)
            self.assertTrue(str(caught.exception).startswith(expected),
                            f"{str(caught.exception)!r} does not start with {expected!r}")
            self.assertNotIn("\n", str(caught.exception))

    def test_errors(self):
        self.assert_each_refused(lambda data: config.parse(data, Path("/c.toml")), self.cases)

    def test_refused(self):
        self.assert_each_refused(refuse, self.refused)

    def test_systemd_endpoints_outside_systemd(self):
        """check-config (ExecStartPre) runs without the sockets: their syntax is enough."""
        for endpoint in ("systemd:domain=INET6:index=0", "systemd:domain=INET:name=smtp"):
            settings = config.parse({"listen": [{"endpoint": endpoint}]}, Path("/c.toml"))
            preflight.check_settings(settings, task.Clock())

    def test_missing_allow_file(self):
        directory = Path(self.mktemp())
        directory.mkdir()
        settings = config.parse({"server": {"data_dir": "var"},
                                 "listen": [{"endpoint": "tcp:25", "allow_file": "nope.txt"}]},
                                directory / "c.toml")
        with self.assertRaises(config.ConfigError) as caught:
            preflight.preflight(settings, task.Clock())
        self.assertEqual(str(caught.exception), f"{directory}/c.toml: [listen #1] allow_file: "
                                                f"{directory}/nope.txt does not exist")

    def test_missing_file(self):
        with self.assertRaises(config.ConfigError) as caught:
            config.load("/nonexistent/mailsrv.toml")
        self.assertEqual(str(caught.exception),
                         "/nonexistent/mailsrv.toml: file not found (pass --config PATH)")

    def test_not_utf8(self):
        path = Path(self.mktemp())
        path.write_bytes(b'[server]\nhostname = "\xff"\n')
        with self.assertRaises(config.ConfigError) as caught:
            config.load(path)
        self.assertEqual(str(caught.exception), f"{path.absolute()}: not UTF-8 text "
                                                "(invalid start byte at byte 21)")

    def test_bad_toml(self):
        path = Path(self.mktemp())
        path.write_text("[server\n")
        with self.assertRaises(config.ConfigError) as caught:
            config.load(path)
        self.assertIn("not valid TOML", str(caught.exception))


class NextHopSyntaxTests(unittest.TestCase):
    def test_table(self):
        for text, expected in [
            ("relay.test", ("relay.test", None, False)),
            ("Relay.TEST.:2525", ("relay.test", 2525, False)),
            ("10.0.0.5", ("10.0.0.5", None, False)),
            ("10.0.0.5:26", ("10.0.0.5", 26, False)),
            ("[2001:db8::1]:2525", ("2001:db8::1", 2525, False)),
            ("[2001:db8::1]", ("2001:db8::1", None, False)),
            ("2001:db8::1", ("2001:db8::1", None, False)),  # bare: no port
            ("[relay.test]:587", ("relay.test", 587, False)),  # Postfix's brackets
            ("mx:Relay.Test", ("relay.test", None, True)),
            ("MX:relay.test:2525", ("relay.test", 2525, True)),
            ("mx", ("", None, True)),
            ("", "not a host name or IP address"),
            ("host:0", "bad port"),
            ("host:65536", "bad port"),
            ("host:", "bad port"),
            ("host:x", "bad port"),
            (":25", "not a host name or IP address"),
            ("a b", "not a host name or IP address"),
            ("-a.test", "not a host name or IP address"),
            ("10.0.0.999", "not a host name or IP address"),
            ("2001:db8:0:0:0:0:0:1:2525:x", "an IPv6 address with a port goes in brackets"),
            ("[::1", "bad brackets"),
            ("[::1]25", "bad brackets"),
            ("mx:", "mx: needs a mail domain"),
            ("mx:10.0.0.5", "mx: needs a mail domain"),
            ("mx:2001:db8::1", "mx: needs a mail domain"),
            ("mx:[relay.test]", "mx: takes a domain, not a bracketed host"),
        ]:
            if isinstance(expected, tuple):
                self.assertEqual(config.parse_next_hop(text), expected, text)
            else:
                with self.assertRaises(ValueError, msg=text) as caught:
                    config.parse_next_hop(text)
                self.assertEqual(str(caught.exception), expected, text)

    @examples(300)
    @given(st.one_of(
        st.text(max_size=30),
        st.from_regex(r"(mx:)?(\[[0-9a-f:.]{0,20}\]|[a-z0-9.:-]{0,20})(:[0-9]{0,6})?",
                      fullmatch=True),
    ))
    def test_any_text_parses_or_says_why(self, text):
        """What parses is written back to the same hop; the rest is a ValueError."""
        try:
            host, port, mx = config.parse_next_hop(text)
        except ValueError:
            return
        shown = f"[{host}]" if ":" in host else host
        written = ("mx:" if mx else "") + shown + (f":{port}" if port is not None else "")
        self.assertEqual(config.parse_next_hop(written if host or not mx else "mx"),
                         (host, port, mx))
        self.assertTrue(port is None or 0 < port < 65536)
