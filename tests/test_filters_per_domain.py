"""
Per-domain [antispam.*] sections (issue 18): mail to a domain with its own
sections is judged by them; a message to recipients of several such sets
is split into one copy per set, each with its own headers and action, and
one reply answers for all (docs/filters.md, "Per-domain settings").
"""

from pathlib import Path

from twisted.trial import unittest

from mailsrv.policy.hooks import BODY
from mailsrv.policy.listener import DomainPolicies, ListenerPolicy
from mailsrv.smtp.server import build_factory
from tests.test_smtp.support import (
    connect,
    files_on_disk,
    maildir_messages,
    make_mail_server,
    run_threads_inline,
)

SPAM = b"Subject: hello\r\n\r\nbuy cheap pills today\r\n"
DOMAINS = {"local": ["example.test", "example.org"]}
DAVE = "dave@example.org"


class PerDomainTests(unittest.TestCase):
    def setUp(self):
        run_threads_inline(self)
        self.phrases = Path(self.mktemp()).absolute()
        self.phrases.write_text("cheap pills\n")

    def server(self, org, **antispam):
        """Global phrases (action header) and example.org's own C{org} sections."""
        self.mail = make_mail_server(
            self, more_users=(DAVE,), domains=DOMAINS,
            antispam={"phrases": {"file": str(self.phrases)}, **antispam},
            domain={"example.org": {"antispam": org}})
        return connect(self.mail)

    def send(self, conn, recipients, message=SPAM, helo=b"client.test"):
        conn.send(b"EHLO " + helo + b"\r\nMAIL FROM:<x@remote.test>\r\n")
        for address in recipients:
            conn.send(b"RCPT TO:<" + address.encode() + b">\r\n")
        conn.send(b"DATA\r\n")
        return conn.send(message + b".\r\n")

    def folder(self, user, folder):
        new = Path(self.mail.store.maildir(user, folder)) / "new"
        return sorted(p.read_bytes() for p in new.iterdir()) if new.exists() else []

    def test_each_domain_gets_its_own_copy_and_action(self):
        conn = self.server({"phrases": {"file": str(self.phrases), "action": "move:Junk",
                                        "subject_prefix": "[ORG] "}})
        reply = self.send(conn, ["alice@example.test", DAVE, "bob@example.test"])
        self.assertRegex(reply, rb"^250 2\.0\.0 Ok: queued as \S+ \S+\r\n$")
        [alice] = maildir_messages(self.mail, "alice@example.test")
        [bob] = maildir_messages(self.mail, "bob@example.test")
        self.assertEqual(alice, bob)  # (one copy for both)
        self.assertIn(b"X-Mailsrv-Spam: yes; reasons=phrase cheap pills\r\n", alice)
        self.assertIn(b"\r\nSubject: hello\r\n", alice)
        self.assertEqual(maildir_messages(self.mail, DAVE), [])
        [dave] = self.folder(DAVE, "Junk")
        self.assertIn(b"\r\nSubject: [ORG] hello\r\n", dave)
        self.assertNotEqual(_queue_id_of(alice), _queue_id_of(dave))

    def test_enabled_false_turns_a_section_off_for_the_domain(self):
        conn = self.server({"phrases": {"enabled": False}})
        self.assertTrue(self.send(conn, ["alice@example.test", DAVE]).startswith(b"250 "))
        [alice] = maildir_messages(self.mail, "alice@example.test")
        [dave] = maildir_messages(self.mail, DAVE)
        self.assertIn(b"X-Mailsrv-Spam: yes", alice)
        self.assertNotIn(b"X-Mailsrv-Spam", dave)

    def test_one_domain_alone_is_one_copy(self):
        conn = self.server({"phrases": {"file": str(self.phrases), "action": "reject"}})
        self.assertEqual(self.send(conn, [DAVE]), b"550 5.7.1 Message refused as spam\r\n")
        self.assertEqual(files_on_disk(self.mail), [])
        reply = self.send(conn, ["alice@example.test"])
        self.assertRegex(reply, rb"^250 2\.0\.0 Ok: queued as \S+\r\n$")

    def test_a_refused_copy_is_bounced_when_another_is_delivered(self):
        conn = self.server({"phrases": {"file": str(self.phrases), "action": "reject"}})
        reply = self.send(conn, ["alice@example.test", DAVE])
        self.assertRegex(reply, rb"^250 2\.0\.0 Ok: queued as \S+\r\n$")
        self.assertEqual(len(maildir_messages(self.mail, "alice@example.test")), 1)
        self.assertEqual(maildir_messages(self.mail, DAVE), [])
        [(sender, addresses, error, headers)] = self.mail.queue_runner.bounces
        self.assertEqual((sender, addresses), ("x@remote.test", [DAVE]))
        self.assertEqual(error, "mailsrv: 550 5.7.1 Message refused as spam")
        self.assertTrue(headers.startswith(b"Subject: hello\r\n"), headers)

    def test_every_copy_refused_refuses_the_message(self):
        conn = self.server({"phrases": {"file": str(self.phrases), "action": "reject"}},
                           phrases={"file": str(self.phrases), "action": "delete"},
                           mime={"action": "reject"})
        message = b"Subject: hello\r\nContent-Type: text/plain; charset=\r\n\r\ncheap pills\r\n"
        reply = self.send(conn, ["alice@example.test", DAVE], message)
        self.assertTrue(reply.startswith(b"554 5.7.1 ") or reply.startswith(b"550 5.7.1 "),
                        reply)
        self.assertEqual(files_on_disk(self.mail), [])
        self.assertEqual(self.mail.queue_runner.bounces, [])

    def test_a_copy_refused_for_now_refuses_all_for_now(self):
        """The client sends it again: nothing may be kept, or the others come twice."""
        conn = self.server({"phrases": {"file": str(self.phrases), "action": "tempfail"}})
        reply = self.send(conn, ["alice@example.test", DAVE])
        self.assertEqual(reply, b"451 4.7.1 Message refused for now, try again later\r\n")
        self.assertEqual(files_on_disk(self.mail), [])

    def test_connection_filters_refuse_at_rcpt_for_their_domain(self):
        """A HELO check that refuses for the global sections, but not for example.org."""
        validation = {"helo_fqdn": "reject", "helo_not_ours": False, "reverse_dns": False,
                      "forward_confirmed": False}
        conn = self.server({"validation": {"enabled": False}}, validation=validation)
        conn.send(b"EHLO nodots\r\n")
        self.assertEqual(conn.send(b"MAIL FROM:<x@remote.test>\r\n"), b"250 2.1.0 Ok\r\n")
        self.assertEqual(conn.send(b"RCPT TO:<alice@example.test>\r\n"),
                         b"550 5.7.1 Refused as spam: validation helo-fqdn\r\n")
        self.assertEqual(conn.send(b"RCPT TO:<dave@example.org>\r\n"), b"250 2.1.5 Ok\r\n")
        conn.send(b"DATA\r\n")
        self.assertTrue(conn.send(b"Subject: hi\r\n\r\nhi\r\n.\r\n").startswith(b"250 "))
        [dave] = maildir_messages(self.mail, DAVE)
        self.assertIn(b"X-Mailsrv-Spam: no; reasons=-\r\n", dave)

    def test_every_set_refusing_refuses_mail_from(self):
        validation = {"helo_fqdn": "reject", "helo_not_ours": False, "reverse_dns": False,
                      "forward_confirmed": False}
        conn = self.server({"validation": {**validation, "action": "header"}},
                           validation=validation)
        conn.send(b"EHLO nodots\r\n")
        self.assertTrue(conn.send(b"MAIL FROM:<x@remote.test>\r\n").startswith(b"550 5.7.1 "))


class SharingTests(unittest.TestCase):
    def test_sets_and_sections_are_shared(self):
        """Domains with the same sections share a policy; a section shared is one check."""
        phrases = Path(self.mktemp()).absolute()
        phrases.write_text("cheap pills\n")
        own = {"antispam": {"mime": {"enabled": False}}}
        mail = make_mail_server(
            self, domains={"local": ["example.test", "example.org", "example.net",
                                     "example.com"]},
            antispam={"phrases": {"file": str(phrases)}, "mime": {}},
            domain={"example.org": own, "example.net": own, "example.com": {}})
        policy = build_factory(mail, mail.settings.listeners[0]).policy
        self.assertIsInstance(policy, DomainPolicies)
        org, net = policy.by_domain["example.org"], policy.by_domain["example.net"]
        self.assertIs(org, net)
        self.assertNotIn("example.com", policy.by_domain)
        self.assertIs(policy.policy_of("x@Example.COM."), policy.everywhere)
        self.assertIs(policy.policy_of("x@EXAMPLE.org"), org)
        self.assertEqual(len(policy.everywhere.filters[BODY]), 2)
        [shared] = org.filters[BODY]
        self.assertIs(shared, policy.everywhere.filters[BODY][0])

    def test_no_domain_sections_no_split(self):
        mail = make_mail_server(self, domains=DOMAINS, domain={"example.org": {}})
        self.assertIsInstance(build_factory(mail, mail.settings.listeners[0]).policy,
                              ListenerPolicy)


def _queue_id_of(message):
    """The queue id in our Received header."""
    return message.split(b" id ", 1)[1].split(b";", 1)[0].split()[0]
