"""
Whitelists (spamskip.txt by client IP, whitelist.txt by sender): what they
match, which filters they let a message skip, the forged local sender that
never benefits, re-reading on change, and their config.
"""

from pathlib import Path

from twisted.internet import defer, task
from twisted.trial import unittest

from mailsrv import config
from mailsrv.directory.senderlist import SenderList, parse_whitelist
from mailsrv.policy.actions import HEADER
from mailsrv.policy.hooks import SENDER
from mailsrv.policy.judgement import Whitelisting
from mailsrv.policy.listener import ListenerPolicy
from mailsrv.policy.verdict import Verdict
from mailsrv.policy.whitelist import ClientWhitelist, SenderWhitelist, Whitelists
from mailsrv.netaddr import ListedClients
from mailsrv.preflight import preflight
from mailsrv.smtp.state import Session, Transaction
from tests.helpers import result
from tests.test_smtp.support import make_mail_server



def scope(applies_to):
    return config.WhitelistSettings(Path("unused"), applies_to in ("both", "connection"),
                                    applies_to in ("both", "content"))


class Directory:
    def is_local_address(self, address):
        return address.endswith("@example.test")


class Standing:
    """Sessions of user "alice" stand; others do not."""

    def reason(self, session):
        return defer.succeed("authenticated" if session.user else None)

    def skips_antispam(self, session):
        return defer.succeed(False)


class WhitelistTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.spamskip = Path(self.mktemp())
        self.spamskip.write_text("# partners\n192.168.1.0 255.255.255.0\n10.0.0.0/8\n")
        self.senders = Path(self.mktemp())
        self.senders.write_text("partner.test\nboss@friend.test # one address\nexample.test\n")

    def whitelists(self, spamskip="both", senders="both"):
        return Whitelists([
            ClientWhitelist(ListedClients((), self.spamskip, None, self.clock), scope(spamskip)),
            SenderWhitelist(SenderList(self.senders, parse_whitelist, self.clock),
                            scope(senders)),
        ], Directory(), Standing())

    def match(self, ip, sender, user=None, **scopes):
        session = Session(ip=ip, user=user)
        return result(self.whitelists(**scopes).match(session, Transaction(sender)))

    def test_nothing_listed(self):
        self.assertEqual(self.match("192.0.2.1", "x@other.test"), Whitelisting())

    def test_client_ip_and_netmask(self):
        self.assertEqual(self.match("192.168.1.200", "x@other.test"),
                         Whitelisting(("whitelist:spamskip",), True, True))
        self.assertEqual(self.match("10.1.2.3", "").reasons, ("whitelist:spamskip",))
        self.assertFalse(self.match("192.168.2.1", "x@other.test").connection)

    def test_sender_domain_and_address(self):
        for sender, listed in [("anyone@partner.test", True), ("X@Partner.Test", True),
                               ("x@sub.partner.test", False), ("boss@friend.test", True),
                               ("other@friend.test", False), ("", False)]:
            found = self.match("192.0.2.1", sender)
            self.assertEqual(found.reasons, ("whitelist:sender",) if listed else (), sender)

    def test_scopes(self):
        connection = self.match("10.0.0.1", "x@other.test", spamskip="connection")
        self.assertEqual((connection.connection, connection.content), (True, False))
        content = self.match("10.0.0.1", "x@other.test", spamskip="content")
        self.assertEqual((content.connection, content.content), (False, True))
        both = self.match("10.0.0.1", "x@partner.test", spamskip="content",
                          senders="connection")
        self.assertEqual(both, Whitelisting(("whitelist:spamskip", "whitelist:sender"),
                                            True, True))

    def test_forged_local_sender_never_benefits(self):
        # example.test is ours: listed by mistake, or the client is in spamskip
        for ip in ("192.0.2.1", "10.0.0.1"):
            found = self.match(ip, "alice@example.test")
            self.assertEqual(found, Whitelisting(
                ("whitelist ignored: unauthenticated local sender",)), ip)
        self.assertTrue(self.match("10.0.0.1", "alice@example.test", user="alice").connection)

    def test_files_are_re_read(self):
        whitelists = self.whitelists()
        session, transaction = Session(ip="192.0.2.1"), Transaction("new@newpartner.test")
        self.assertFalse(result(whitelists.match(session, transaction)).reasons)
        self.senders.write_text("newpartner.test\n")
        self.spamskip.write_text("192.0.2.0 255.255.255.0\n")
        self.clock.advance(1)
        self.assertEqual(result(whitelists.match(session, transaction)).reasons,
                         ("whitelist:spamskip", "whitelist:sender"))


class Counting:
    """A filter check of the sender hook that counts its calls."""

    calls = 0

    def check(self, session, transaction, sender):
        self.calls += 1
        return defer.succeed(Verdict.found(True, HEADER, ("dnsbl a 127.0.0.2",)))


class Fixed:
    def __init__(self, whitelisting):
        self.whitelisting = whitelisting

    def match(self, session, transaction):
        return defer.succeed(self.whitelisting)


class PipelineTests(unittest.TestCase):
    def judge(self, whitelisting):
        self.filter = Counting()
        policy = ListenerPolicy({}, {SENDER: [self.filter]}, Standing(), "[SPAM] ", 1,
                                Fixed(whitelisting))
        transaction = Transaction("x@partner.test")
        self.assertTrue(result(policy.sender(Session(ip="192.0.2.1"), transaction)).accepted)
        return transaction.judgement

    def test_connection_whitelist_skips_the_connection_filters(self):
        found = self.judge(Whitelisting(("whitelist:spamskip",), connection=True))
        self.assertEqual(self.filter.calls, 0)
        self.assertEqual(found.header_block("mx.test"), b"X-Mailsrv-Spam: no; reasons=whitelist:spamskip\r\n")
        self.assertFalse(found.whitelist.content)

    def test_content_whitelist_is_a_flag_for_content_filters(self):
        found = self.judge(Whitelisting(("whitelist:sender",), content=True))
        self.assertEqual(self.filter.calls, 1)
        self.assertTrue(found.whitelist.content)
        self.assertEqual(found.summary, "yes; reasons=whitelist:sender, dnsbl a 127.0.0.2")


def parse(antispam):
    return config.parse({"antispam": antispam}, Path("/etc/mailsrv.toml")).antispam


class ConfigTests(unittest.TestCase):
    def test_absent_is_off(self):
        s = parse({})
        self.assertEqual((s.spamskip, s.whitelist), (None, None))

    def test_defaults(self):
        s = parse({"spamskip": {}, "whitelist": {"file": "lists/white.txt",
                                                 "applies_to": "content"}})
        self.assertEqual(s.spamskip, config.WhitelistSettings(Path("/etc/spamskip.txt"),
                                                              True, True))
        self.assertEqual(s.whitelist, config.WhitelistSettings(Path("/etc/lists/white.txt"),
                                                               False, True))

    def test_errors(self):
        for table, text in [
            ({"spamskip": {"applies_to": "all"}}, "[antispam.spamskip] applies_to: unknown "
                                                  "value 'all'"),
            ({"whitelist": {"file": ""}}, "[antispam.whitelist] file: empty"),
            ({"whitelist": {"files": "x"}}, "[antispam.whitelist] files: unknown key"),
        ]:
            with self.assertRaises(config.ConfigError) as caught:
                parse(table)
            self.assertIn(text, str(caught.exception))

    def test_a_bad_file_stops_start_up(self):
        """Start-up's preflight, which check-config runs too, refuses it."""
        server = make_mail_server(self, antispam={"spamskip": {}})
        path = server.settings.antispam.spamskip.file
        path.write_text("10.0.0.0/33\n")
        with self.assertRaises(config.ConfigError) as caught:
            preflight(server.settings, server.clock)
        self.assertIn(f"[antispam.spamskip] file: {path}:1: bad network '10.0.0.0/33'",
                      str(caught.exception))
