"""
Config parsing: defaults, the errors an admin sees, and the example config.
"""

from pathlib import Path

from twisted.trial import unittest

from mailsrv import config
from mailsrv.deadline import Timeouts

ROOT = Path(__file__).resolve().parent.parent


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
        self.assertEqual(s.delivery.smart_hosts, (config.SmartHost("relay.example", 2525),))
        s = config.parse({"delivery": {"smart_host": [
            {"host": "b", "port": 26, "preference": 20},
            {"host": "a", "preference": 10}]}}, Path("/x"))
        self.assertEqual([h.host for h in s.delivery.smart_hosts], ["a", "b"])
        self.assertEqual(s.delivery.smart_hosts[0].port, 25)

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
        self.assertEqual(s.local_domains, ("example.test",))
        self.assertTrue(all("127.0.0.1" in l.endpoint for l in s.listeners))

    def test_design_example_sections_are_accepted(self):
        s = config.parse({"antispam": {"dnsbl": {"lists": ["zen.example"]},
                                       "spf": {"action": "header"}}}, Path("/x"))
        self.assertEqual(s.antispam.dnsbl.lists[0].zone, "zen.example")
        self.assertEqual(s.antispam.spf.action_for("fail").kind, "header")


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
        ({"relay": {"trusted": ["10.0.0.0/33"]}},
         "/c.toml: [relay] trusted: bad network '10.0.0.0/33'"),
        ({"listen": [{"protocol": "smtp", "endpoint": "tcpp:25"}]},
         "/c.toml: [listen #1] endpoint: bad endpoint 'tcpp:25'"),
        ({"listen": [{"protocol": "pop3", "role": "mx", "endpoint": "tcp:110"}]},
         "/c.toml: [listen #1] role: only smtp listeners have a role"),
        ({"listen": [{"protocol": "smtp"}]}, "/c.toml: [listen #1] endpoint: missing"),
        ({"listen": [{"protocol": "smtp", "endpoint": "tcp:25", "backlog": 0}]},
         "/c.toml: [listen #1] backlog: must be at least 1, not 0"),
        ({"listen": []}, "/c.toml: [[listen]]: no listeners"),
        ({"listen": [{"protocol": "smtp", "endpoint": "tcp:25", "login_timeout": 5}]},
         "/c.toml: [listen #1] login_timeout: only pop3 and imap listeners have one"),
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

    def test_errors(self):
        for data, expected in self.cases:
            with self.assertRaises(config.ConfigError, msg=repr(data)) as caught:
                config.parse(data, Path("/c.toml"))
            self.assertTrue(str(caught.exception).startswith(expected),
                            f"{str(caught.exception)!r} does not start with {expected!r}")
            self.assertNotIn("\n", str(caught.exception))

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
