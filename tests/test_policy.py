"""
The hook runner and the checks of the sender and recipient hooks, tested
without any transport.
"""

from types import SimpleNamespace

from twisted.internet import defer, task
from twisted.trial import unittest

from mailsrv.directory import Route
from mailsrv.netaddr import IPList
from mailsrv.sessions import MemorySessionStore
from mailsrv.policy.standing import Standing
from mailsrv.policy.checks import recipient as recipient_checks
from mailsrv.policy.checks import sender as sender_checks
from mailsrv.policy.hooks import run
from mailsrv.policy.verdict import Verdict
from mailsrv.smtp.state import Recipient, Session, Transaction
from tests.helpers import fresh_error_log, result

REMOTE = Recipient("carol@remote.test", Route(remote=("carol@remote.test",),
                                               is_local_domain=False))
LOCAL = Recipient("alice@example.test", Route(local=("alice@example.test",)))
UNKNOWN = Recipient("nobody@example.test", None)


class Fixed:
    def __init__(self, verdict):
        self.verdict = verdict
        self.calls = 0

    def check(self, session, transaction, subject):
        self.calls += 1
        return defer.succeed(self.verdict)


def result_of(checks, session, transaction, subject):
    """L{run}'s verdict, whether it answered at once or through a Deferred."""
    return defer.maybeDeferred(run, list(checks), session, transaction, subject)


class Broken:
    def check(self, session, transaction, subject):
        raise RuntimeError("lookup exploded")


class HookRunnerTests(unittest.TestCase):
    def test_all_accept(self):
        stages = [Fixed(Verdict.accept("one")), Fixed(Verdict.accept()),
                  Fixed(Verdict.accept("two"))]
        verdict = result(result_of(stages, None, None, None))
        self.assertEqual(verdict, Verdict.accept("one; two"))

    def test_the_first_refusal_stops_the_hook(self):
        refusal = Verdict.refuse(550, "5.7.1", "no", "because")
        later = Fixed(Verdict.accept())
        verdict = result(result_of([Fixed(Verdict.accept()), Fixed(refusal), later],
                                       None, None, None))
        self.assertEqual(verdict, refusal)
        self.assertEqual(later.calls, 0)

    def test_a_failing_stage_is_a_temporary_refusal(self):
        fresh_error_log(self)
        verdict = result(result_of([Broken()], None, None, None))
        self.assertEqual((verdict.accepted, verdict.code, verdict.enhanced),
                         (False, 451, "4.3.0"))
        self.assertIn("lookup exploded", verdict.reason)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_synchronous_stages_need_no_deferred(self):
        class Now:
            def __init__(self, verdict):
                self.verdict = verdict

            def check(self, session, transaction, subject):
                return self.verdict

        verdict = run([Now(Verdict.accept("a")), Now(Verdict.accept())],
                                    None, None, None)
        self.assertEqual(verdict, Verdict.accept("a"))
        refusal = Verdict.refuse(550, "5.7.1", "no")
        self.assertIs(run([Now(refusal), Broken()], None, None, None), refusal)

    def test_reasons_join_across_synchronous_and_asynchronous_stages(self):
        pending = defer.Deferred()

        class Slow:
            def check(self, session, transaction, subject):
                return pending

        class Now:
            def check(self, session, transaction, subject):
                return Verdict.accept("three")

        d = run([Fixed(Verdict.accept("one")), Slow(), Now()], None, None, None)
        self.assertNoResult(d)
        pending.callback(Verdict.accept("two"))
        self.assertEqual(result(d), Verdict.accept("one; two; three"))

    def test_waits_for_asynchronous_stages(self):
        pending = defer.Deferred()

        class Slow:
            def check(self, session, transaction, subject):
                return pending

        d = result_of([Slow(), Fixed(Verdict.refuse(452, "4.5.3", "x"))], None, None, None)
        self.assertNoResult(d)
        pending.callback(Verdict.accept())
        self.assertEqual(result(d).code, 452)


class SenderStageTests(unittest.TestCase):
    def test_valid_sender(self):
        stage = sender_checks.ValidSender()
        for sender, accepted in [("a@b.test", True), ("", True), ("alice", False)]:
            verdict = result(stage.check(Session("192.0.2.1"), None, sender))
            self.assertEqual(verdict.accepted, accepted, sender)
        verdict = result(stage.check(Session("192.0.2.1"), None, "alice"))
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text),
                         (553, "5.1.7", "<alice>: sender address must be a full user@domain"))

    def test_auth_required(self):
        stage = sender_checks.AuthRequired()
        verdict = result(stage.check(Session("192.0.2.1"), None, "a@b.test"))
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text),
                         (530, "5.7.0", "Authentication required"))
        session = Session("192.0.2.1", user="a@b.test")
        self.assertTrue(result(stage.check(session, None, "a@b.test")).accepted)


class RecipientStageTests(unittest.TestCase):
    def test_local_recipient(self):
        stage = recipient_checks.LocalRecipient(SimpleNamespace(complete=True))
        self.assertTrue(result(stage.check(None, None, LOCAL)).accepted)
        self.assertTrue(result(stage.check(None, None, REMOTE)).accepted)
        verdict = result(stage.check(None, None, UNKNOWN))
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text),
                         (550, "5.1.1", "<nobody@example.test>: user unknown"))

    def test_recipient_limit(self):
        stage = recipient_checks.RecipientLimit(2)
        transaction = Transaction("a@b.test", recipients=[LOCAL])
        self.assertTrue(result(stage.check(None, transaction, LOCAL)).accepted)
        transaction.recipients.append(LOCAL)
        verdict = result(stage.check(None, transaction, LOCAL))
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text),
                         (452, "4.5.3", "Too many recipients"))


class RelayTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.sessions = MemorySessionStore(1800, self.clock)
        self.trusted = IPList(["192.168.0.1-50", "10.1.0.0/255.255.0.0"])

    def standing(self, mode="trusted", pop_before_smtp=True):
        return Standing(mode, self.trusted, self.sessions, pop_before_smtp)

    def check(self, mode, ip, user=None, recipient=REMOTE, pop_before_smtp=True):
        stage = recipient_checks.RelayPermission(self.standing(mode, pop_before_smtp))
        return result(stage.check(Session(ip, user=user), None, recipient))

    def test_table(self):
        self.sessions.record_login("bob@example.test", "192.0.2.77", "pop3")
        # mode, client IP, authenticated user -> may relay
        for mode, ip, user, accepted in [
            ("trusted", "192.168.0.20", None, True),
            ("trusted", "::ffff:192.168.0.20", None, True),
            ("trusted", "10.1.200.3", None, True),
            ("trusted", "192.168.0.51", None, False),
            ("trusted", "127.0.0.1", None, False),  # loopback only when listed
            ("trusted", "203.0.113.9", "alice@example.test", True),
            ("trusted", "192.0.2.77", None, True),  # POP-before-SMTP window
            ("none", "192.168.0.20", None, False),
            ("none", "203.0.113.9", "alice@example.test", True),
            ("none", "192.0.2.77", None, True),
            ("anyone", "203.0.113.9", None, True),
        ]:
            verdict = self.check(mode, ip, user)
            self.assertEqual(verdict.accepted, accepted, (mode, ip, user))

    def test_refusal_names_the_client(self):
        verdict = self.check("trusted", "203.0.113.9")
        self.assertEqual(
            (verdict.code, verdict.enhanced, verdict.text),
            (550, "5.7.1", "<carol@remote.test>: relaying denied for 203.0.113.9"),
        )

    def test_local_domains_are_not_relaying(self):
        self.assertTrue(self.check("none", "203.0.113.9", recipient=LOCAL).accepted)

    def test_window_closes(self):
        self.sessions.record_login("bob@example.test", "192.0.2.77", "imap")
        self.assertTrue(self.check("trusted", "192.0.2.77").accepted)
        self.clock.advance(1801)
        self.assertFalse(self.check("trusted", "192.0.2.77").accepted)

    def test_window_user_is_noted_on_the_session(self):
        self.sessions.record_login("bob@example.test", "192.0.2.77", "pop3")
        stage = recipient_checks.RelayPermission(self.standing())
        session = Session("192.0.2.77")
        verdict = result(stage.check(session, None, REMOTE))
        self.assertEqual(session.pop_user, "bob@example.test")
        self.assertIn("POP-before-SMTP window of bob@example.test", verdict.reason)

    def test_pop_before_smtp_disabled(self):
        self.sessions.record_login("bob@example.test", "192.0.2.77", "pop3")
        self.assertFalse(self.check("trusted", "192.0.2.77", pop_before_smtp=False).accepted)


def make_directory(testcase, aliases):
    """A Directory of example.test with users alice and bob and C{aliases} (file text)."""
    from mailsrv.directory import AliasMap, Directory, UserDB

    users_path, aliases_path = testcase.mktemp(), testcase.mktemp()
    with open(users_path, "w") as f:
        f.write("alice@example.test:hash\nbob@example.test:hash\n")
    with open(aliases_path, "w") as f:
        f.write(aliases)
    clock = task.Clock()
    return Directory(["example.test"], UserDB(users_path, clock), AliasMap(aliases_path, clock))


class SenderOwnershipTests(unittest.TestCase):
    """Local senders must stand (mx); authenticated users send as themselves."""

    def setUp(self):
        self.directory = make_directory(
            self, "sales@example.test: alice@example.test, bob@example.test\n")
        self.clock = task.Clock()
        self.sessions = MemorySessionStore(1800, self.clock)
        self.standing = Standing("trusted", IPList(["192.168.0.1"]),
                                        self.sessions, True)

    def test_local_sender_must_authenticate(self):
        stage = sender_checks.LocalSenderMustAuthenticate(self.directory, self.standing)
        self.sessions.record_login("bob@example.test", "192.0.2.77", "imap")
        # sender, client IP, authenticated user -> accepted
        for sender, ip, user, accepted in [
            ("alice@example.test", "203.0.113.9", None, False),
            ("ALICE@Example.TEST", "203.0.113.9", None, False),
            ("alice@example.test", "203.0.113.9", "alice@example.test", True),
            ("alice@example.test", "192.168.0.1", None, True),   # trusted IP
            ("alice@example.test", "192.0.2.77", None, True),    # POP-before-SMTP
            ("someone@remote.test", "203.0.113.9", None, True),  # not ours
            ("", "203.0.113.9", None, True),                     # bounces
        ]:
            verdict = result(stage.check(Session(ip, user=user), None, sender))
            self.assertEqual(verdict.accepted, accepted, (sender, ip, user))
        verdict = result(stage.check(Session("203.0.113.9"), None, "alice@example.test"))
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text),
                         (553, "5.7.1",
                          "<alice@example.test>: authentication required for local senders"))

    def test_sender_must_be_owned(self):
        stage = sender_checks.SenderOwnedByUser(self.directory)
        alice = "alice@example.test"
        for sender, user, accepted in [
            ("alice@example.test", alice, True),
            ("Alice@Example.test", alice, True),
            ("sales@example.test", alice, True),     # an alias that points to her
            ("bob@example.test", alice, False),
            ("ceo@remote.test", alice, False),
            ("", alice, True),
            ("bob@example.test", None, True),        # not authenticated: not this stage
        ]:
            verdict = result(stage.check(Session("203.0.113.9", user=user), None, sender))
            self.assertEqual(verdict.accepted, accepted, (sender, user))
        verdict = result(stage.check(Session("203.0.113.9", user=alice), None,
                                     "bob@example.test"))
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text),
                         (553, "5.7.1", "<bob@example.test>: sender address not owned "
                                        "by user alice@example.test"))


class KillListTests(unittest.TestCase):
    def setUp(self):
        from mailsrv.directory.senderlist import SenderList, parse_kill_list

        self.path = self.mktemp()
        with open(self.path, "w") as f:
            f.write("# spammers\nspam@bad.test, @worse.test ; Boss@Phish.test\n")
        self.clock = task.Clock()
        self.stage = sender_checks.KilledSender(SenderList(self.path, parse_kill_list, self.clock))

    def verdict(self, sender):
        return result(self.stage.check(Session("192.0.2.1"), None, sender))

    def test_addresses_and_hosts(self):
        for sender, accepted in [("spam@bad.test", False), ("SPAM@Bad.Test", False),
                                 ("other@bad.test", True), ("any@worse.test", False),
                                 ("any@sub.worse.test", True), ("boss@phish.test", False),
                                 ("", True)]:
            self.assertEqual(self.verdict(sender).accepted, accepted, sender)
        verdict = self.verdict("any@worse.test")
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text, verdict.reason),
                         (501, "5.1.8", "<any@worse.test>: unacceptable mail address",
                          "sender <any@worse.test> is in the kill list as @worse.test"))

    def test_edits_take_effect(self):
        with open(self.path, "a") as f:
            f.write("other@bad.test\n")
        self.clock.advance(1)
        self.assertFalse(self.verdict("other@bad.test").accepted)

    def test_bad_entry(self):
        from mailsrv.directory.listfile import ListFileError
        from mailsrv.directory.senderlist import parse_kill_list

        with open(self.path, "w") as f:
            f.write("ok@bad.test\n\nnot-an-address\n")
        with self.assertRaises(ListFileError) as caught:
            parse_kill_list(self.path)
        self.assertEqual(str(caught.exception),
                         f"{self.path}:3: 'not-an-address': not userid@host or @host")


class NullSenderTests(unittest.TestCase):
    def test_refused(self):
        stage = sender_checks.NullSenderRefused()
        verdict = result(stage.check(Session("192.0.2.1"), None, ""))
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text),
                         (550, "5.7.1", "<>: null sender not accepted here"))
        self.assertTrue(result(stage.check(Session("192.0.2.1"), None, "a@b.test")).accepted)


class FakeResolver:
    """accepts_mail from a dict; an exception value is raised."""

    def __init__(self, answers):
        self.answers = answers

    def accepts_mail(self, domain):
        answer = self.answers[domain]
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)


class SenderDomainTests(unittest.TestCase):
    def setUp(self):
        from mailsrv.directory import Directory
        from mailsrv.dns import TemporaryDNSError

        directory = Directory(["example.test"], None, None)
        self.stage = sender_checks.SenderDomainExists(directory, FakeResolver({
            "good.test": True, "gone.test": False,
            "slow.test": TemporaryDNSError("MX slow.test: timeout"),
        }))

    def verdict(self, sender):
        return result(self.stage.check(Session("192.0.2.1"), None, sender))

    def test_table(self):
        for sender, expected in [
            ("a@good.test", (True, 250, "2.0.0")),
            ("a@example.test", (True, 250, "2.0.0")),  # ours: no lookup
            ("", (True, 250, "2.0.0")),
            ("a@gone.test", (False, 553, "5.1.8")),
            ("a@slow.test", (False, 451, "4.4.3")),
        ]:
            verdict = self.verdict(sender)
            self.assertEqual((verdict.accepted, verdict.code, verdict.enhanced), expected, sender)
        self.assertEqual(self.verdict("a@gone.test").text,
                         "<a@gone.test>: sender domain gone.test does not accept mail")
        self.assertIn("timeout", self.verdict("a@slow.test").reason)


class RoutingTricksTests(unittest.TestCase):
    def test_table(self):
        stage = recipient_checks.RoutingTricksRefused()
        for address, accepted in [
            ("user%other.test@example.test", False),
            ("other.test!user@example.test", False),
            ('"user@other.test"@example.test', False),
            ('"user%other"@remote.test', False),
            ("alice@example.test", True),
            ('"alice smith"@example.test', True),
        ]:
            verdict = result(stage.check(Session("192.0.2.1"), None, Recipient(address, None)))
            self.assertEqual(verdict.accepted, accepted, address)
            if not accepted:
                self.assertEqual((verdict.code, verdict.enhanced), (550, "5.7.1"))


class ListAndRelayDomainTests(unittest.TestCase):
    def setUp(self):
        self.directory = make_directory(
            self, "team@example.test: alice@example.test, bob@example.test\n"
                  "boss@example.test: alice@example.test\n")
        self.standing = Standing("trusted", IPList(), MemorySessionStore(1800, task.Clock()),
                                        True)

    def test_lists_from_remote_senders(self):
        stage = recipient_checks.ListPosting(self.directory)
        team = Recipient("team@example.test", self.directory.route("team@example.test"))
        boss = Recipient("boss@example.test", self.directory.route("boss@example.test"))
        for sender, recipient, accepted in [
            ("x@remote.test", team, False),
            ("", team, False),
            ("bob@example.test", team, True),
            ("x@remote.test", boss, True),   # one member: an alias, not a list
            ("x@remote.test", LOCAL, True),
            ("x@remote.test", REMOTE, True),  # not ours: relaying decides
        ]:
            verdict = result(stage.check(Session("192.0.2.1"), Transaction(sender), recipient))
            self.assertEqual(verdict.accepted, accepted, (sender, recipient.address))
        verdict = result(stage.check(Session("192.0.2.1"), Transaction("x@remote.test"), team))
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text),
                         (550, "5.7.1",
                          "<team@example.test>: this list takes mail from local senders only"))

    def test_relay_domains_are_accepted_for_anyone(self):
        stage = recipient_checks.RelayPermission(self.standing, ["internal.test"])
        recipient = Recipient("x@Internal.test", self.directory.route("x@internal.test"))
        verdict = result(stage.check(Session("203.0.113.9"), None, recipient))
        self.assertEqual(verdict, Verdict.accept("relay domain internal.test"))
        self.assertFalse(result(stage.check(Session("203.0.113.9"), None, REMOTE)).accepted)

    def test_refusal_text(self):
        stage = recipient_checks.RelayPermission(self.standing, (), "unknown local host %s, not a gateway")
        verdict = result(stage.check(Session("203.0.113.9"), None, REMOTE))
        self.assertEqual(verdict.text,
                         "<carol@remote.test>: unknown local host 203.0.113.9, not a gateway")


class AntispamBypassTests(unittest.TestCase):
    def test_who_skips(self):
        sessions = MemorySessionStore(1800, task.Clock())
        trusted = IPList(["192.168.0.1"])
        # mode, bypass setting, session -> skips anti-spam
        for mode, bypass, session, skips in [
            ("trusted", True, Session("192.168.0.1"), True),
            ("trusted", True, Session("203.0.113.9", user="a@example.test"), True),
            ("trusted", True, Session("203.0.113.9"), False),
            ("trusted", False, Session("192.168.0.1"), False),
            ("none", True, Session("192.168.0.1"), False),
            ("anyone", True, Session("203.0.113.9"), False),
        ]:
            standing = Standing(mode, trusted, sessions, True, bypass)
            self.assertEqual(result(standing.skips_antispam(session)), skips,
                             (mode, bypass, session))


class DomainTrustTests(unittest.TestCase):
    """Standing asks the list asynchronously: trusted domains by reverse DNS."""

    def test_trusted_domain(self):
        from mailsrv.dns import Answer, Resolver
        from tests.test_dns import FakeBackend

        backend = FakeBackend({
            ("9.2.0.192.in-addr.arpa", "PTR"): Answer(("gw.office.test",), 300),
            ("gw.office.test", "A"): Answer(("192.0.2.9",), 300),
        })
        trusted = IPList([".office.test"], Resolver(backend, task.Clock()))
        standing = Standing("trusted", trusted, MemorySessionStore(1800, task.Clock()),
                                   False)
        stage = recipient_checks.RelayPermission(standing)
        d = stage.check(Session("192.0.2.9"), None, REMOTE)
        d.addCallback(lambda verdict: self.assertEqual(
            verdict, Verdict.accept("relay: trusted IP 192.0.2.9")))
        return d
