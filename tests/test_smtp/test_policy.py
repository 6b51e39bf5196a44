"""
The sender and recipient stages, tested without any transport.
"""

from twisted.internet import defer, task
from twisted.trial import unittest

from mailsrv.directory import Route
from mailsrv.netaddr import IPList
from mailsrv.sessions import MemorySessionStore
from mailsrv.smtp import policy
from mailsrv.smtp.policy import Verdict, first_refusal
from mailsrv.smtp.state import Recipient, Session, Transaction

REMOTE = Recipient("carol@remote.test", Route(remote=("carol@remote.test",),
                                               is_local_domain=False))
LOCAL = Recipient("alice@example.test", Route(local=("alice@example.test",)))
UNKNOWN = Recipient("nobody@example.test", None)


def result(d):
    results = []
    d.addBoth(results.append)
    return results[0]


class Fixed:
    def __init__(self, verdict):
        self.verdict = verdict
        self.calls = 0

    def check(self, session, transaction, subject):
        self.calls += 1
        return defer.succeed(self.verdict)


class Broken:
    def check(self, session, transaction, subject):
        raise RuntimeError("lookup exploded")


class FirstRefusalTests(unittest.TestCase):
    def test_all_accept(self):
        stages = [Fixed(Verdict.accept("one")), Fixed(Verdict.accept()),
                  Fixed(Verdict.accept("two"))]
        verdict = result(first_refusal(stages, None, None, None))
        self.assertEqual(verdict, Verdict.accept("one; two"))

    def test_first_refusal_stops_the_chain(self):
        refusal = Verdict.refuse(550, "5.7.1", "no", "because")
        later = Fixed(Verdict.accept())
        verdict = result(first_refusal([Fixed(Verdict.accept()), Fixed(refusal), later],
                                       None, None, None))
        self.assertEqual(verdict, refusal)
        self.assertEqual(later.calls, 0)

    def test_a_failing_stage_is_a_temporary_refusal(self):
        verdict = result(first_refusal([Broken()], None, None, None))
        self.assertEqual((verdict.accepted, verdict.code, verdict.enhanced),
                         (False, 451, "4.3.0"))
        self.assertIn("lookup exploded", verdict.reason)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_waits_for_asynchronous_stages(self):
        pending = defer.Deferred()

        class Slow:
            def check(self, session, transaction, subject):
                return pending

        d = first_refusal([Slow(), Fixed(Verdict.refuse(452, "4.5.3", "x"))], None, None, None)
        self.assertNoResult(d)
        pending.callback(Verdict.accept())
        self.assertEqual(result(d).code, 452)


class SenderStageTests(unittest.TestCase):
    def test_valid_sender(self):
        stage = policy.ValidSender()
        for sender, accepted in [("a@b.test", True), ("", True), ("alice", False)]:
            verdict = result(stage.check(Session("192.0.2.1"), None, sender))
            self.assertEqual(verdict.accepted, accepted, sender)
        verdict = result(stage.check(Session("192.0.2.1"), None, "alice"))
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text),
                         (553, "5.1.7", "<alice>: sender address must be a full user@domain"))

    def test_auth_required(self):
        stage = policy.AuthRequired()
        verdict = result(stage.check(Session("192.0.2.1"), None, "a@b.test"))
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text),
                         (530, "5.7.0", "Authentication required"))
        session = Session("192.0.2.1", user="a@b.test")
        self.assertTrue(result(stage.check(session, None, "a@b.test")).accepted)


class RecipientStageTests(unittest.TestCase):
    def test_local_recipient(self):
        stage = policy.LocalRecipient()
        self.assertTrue(result(stage.check(None, None, LOCAL)).accepted)
        self.assertTrue(result(stage.check(None, None, REMOTE)).accepted)
        verdict = result(stage.check(None, None, UNKNOWN))
        self.assertEqual((verdict.code, verdict.enhanced, verdict.text),
                         (550, "5.1.1", "<nobody@example.test>: user unknown"))

    def test_recipient_limit(self):
        stage = policy.RecipientLimit(2)
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
        return policy.Standing(mode, self.trusted, self.sessions, pop_before_smtp)

    def check(self, mode, ip, user=None, recipient=REMOTE, pop_before_smtp=True):
        stage = policy.RelayPermission(self.standing(mode, pop_before_smtp))
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
        stage = policy.RelayPermission(self.standing())
        session = Session("192.0.2.77")
        verdict = result(stage.check(session, None, REMOTE))
        self.assertEqual(session.pop_user, "bob@example.test")
        self.assertIn("POP-before-SMTP window of bob@example.test", verdict.reason)

    def test_pop_before_smtp_disabled(self):
        self.sessions.record_login("bob@example.test", "192.0.2.77", "pop3")
        self.assertFalse(self.check("trusted", "192.0.2.77", pop_before_smtp=False).accepted)


class SenderOwnershipTests(unittest.TestCase):
    """Local senders must stand (mx); authenticated users send as themselves."""

    def setUp(self):
        from mailsrv.directory import AliasMap, Directory, UserDB

        users_path, aliases_path = self.mktemp(), self.mktemp()
        with open(users_path, "w") as f:
            f.write("alice@example.test:hash\nbob@example.test:hash\n")
        with open(aliases_path, "w") as f:
            f.write("sales@example.test: alice@example.test, bob@example.test\n")
        self.directory = Directory(["example.test"], UserDB(users_path),
                                   AliasMap(aliases_path))
        self.clock = task.Clock()
        self.sessions = MemorySessionStore(1800, self.clock)
        self.standing = policy.Standing("trusted", IPList(["192.168.0.1"]),
                                        self.sessions, True)

    def test_local_sender_must_authenticate(self):
        stage = policy.LocalSenderMustAuthenticate(self.directory, self.standing)
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
        stage = policy.SenderOwnedByUser(self.directory)
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
