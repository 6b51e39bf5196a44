"""
The SMTP protocol, driven byte for byte through a StringTransport with a
task.Clock; mail goes through the real spool into real Maildirs.
"""

import base64
import dataclasses
import re
from email.utils import formatdate
from pathlib import Path

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from mailsrv.policy.hooks import RECIPIENT, SENDER
from mailsrv.policy.verdict import Verdict
from mailsrv.smtp import server as server_module
from mailsrv.smtp.server import build_factory
from tests import certs
from tests.helpers import fresh_error_log
from tests.test_smtp.support import (
    CLIENT_IP,
    PASSWORD,
    Connection,
    connect,
    files_on_disk,
    maildir_messages,
    make_mail_server,
    run_threads_inline,
)

EHLO_REPLY = (
    b"250-mail.example.test\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 36700160\r\n"
    b"250-8BITMIME\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n"
    b"250-STARTTLS\r\n"
    b"250 HELP\r\n"
)

BODY = (
    b"From: Alice <alice@example.test>\r\n"
    b"Subject: caf\xc3\xa9\r\n"
    b"\r\n"
    b"line one\r\n"
    b"..a line that starts with a dot\r\n"
    b"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e 8-bit body\r\n"
    b"\r\n"
)
STORED_BODY = BODY.replace(b"\r\n..a line", b"\r\n.a line")


def plain(user, password):
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def queue_id(reply):
    found = re.search(rb"250 2\.0\.0 Ok: queued as (\w+)\r\n", reply)
    return found.group(1).decode() if found else None


def received(queue_id, rcpt, helo="client.test", ip="192.0.2.10", proto="ESMTP",
             sender="sender@remote.test", when=0):
    """The trace headers we expect on top of a delivered message."""
    lines = [
        f"Return-Path: <{sender}>",
        f"Received: from {helo} ([{ip}])",
        f"\tby mail.example.test (mailsrv) with {proto} id {queue_id}",
    ]
    if rcpt:
        lines.append(f"\tfor <{rcpt}>;")
    else:
        lines[-1] += ";"
    lines.append(f"\t{formatdate(when, localtime=True)}")
    return ("\r\n".join(lines) + "\r\n").encode()


class LogCapture:
    def __init__(self, testcase):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def text(self):
        return "\n".join(formatEvent(e) or "" for e in self.events)


class SMTPTestCase(unittest.TestCase):
    sections = {}

    def setUp(self):
        run_threads_inline(self)
        self.server = make_mail_server(self, **self.sections)

    def connect(self, **kwargs):
        return connect(self.server, **kwargs)

    def ehlo(self, conn, name=b"client.test"):
        reply = conn.send(b"EHLO " + name + b"\r\n")
        self.assertTrue(reply.startswith(b"250-mail.example.test\r\n"), reply)
        return reply

    def send_mail(self, conn, rcpts, body=BODY, sender=b"sender@remote.test"):
        """One whole transaction in one packet; returns the replies."""
        data = b"MAIL FROM:<" + sender + b">\r\n"
        data += b"".join(b"RCPT TO:<" + r + b">\r\n" for r in rcpts)
        return conn.send(data + b"DATA\r\n" + body + b".\r\n")


class GreetingTests(SMTPTestCase):
    def test_greeting_and_ehlo(self):
        conn = self.connect()
        self.assertEqual(conn.greeting, b"220 mail.example.test ESMTP mailsrv\r\n")
        self.assertEqual(conn.send(b"EHLO client.test\r\n"), EHLO_REPLY)

    def test_helo(self):
        conn = self.connect()
        self.assertEqual(conn.send(b"HELO client.test\r\n"), b"250 mail.example.test\r\n")

    def test_auth_offered_on_loopback_when_plaintext_allowed(self):
        conn = self.connect(ip="127.0.0.1")
        self.assertIn(b"250-AUTH PLAIN LOGIN\r\n", conn.send(b"EHLO c.test\r\n"))

    def test_auth_offered_over_tls_only(self):
        conn = self.connect(secure=True)
        reply = conn.send(b"EHLO c.test\r\n")
        self.assertIn(b"250-AUTH PLAIN LOGIN\r\n", reply)
        self.assertNotIn(b"STARTTLS", reply)

    def test_simple_verbs(self):
        conn = self.connect()
        for command, reply in [
            (b"NOOP\r\n", b"250 2.0.0 Ok\r\n"),
            (b"NOOP anything\r\n", b"250 2.0.0 Ok\r\n"),
            (b"RSET\r\n", b"250 2.0.0 Ok\r\n"),
            (b"VRFY alice\r\n",
             b"252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"),
            (b"EXPN team\r\n", b"502 5.5.1 EXPN not available\r\n"),
            (b"HELP\r\n", b"214 2.0.0 Commands: AUTH DATA EHLO EXPN HELO HELP MAIL NOOP "
                          b"QUIT RCPT RSET STARTTLS VRFY\r\n"),
            (b"quit\r\n", b"221 2.0.0 Bye\r\n"),
        ]:
            self.assertEqual(conn.send(command), reply, command)
        self.assertTrue(conn.closed)


class DeliveryTests(SMTPTestCase):
    def test_local_delivery(self):
        conn = self.connect()
        self.ehlo(conn)
        replies = self.send_mail(conn, [b"alice@example.test"])
        qid = queue_id(replies)
        self.assertEqual(
            replies,
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
            + f"250 2.0.0 Ok: queued as {qid}\r\n".encode(),
        )
        self.assertEqual(
            maildir_messages(self.server, "alice@example.test"),
            [received(qid, "alice@example.test") + STORED_BODY],
        )
        self.assertEqual(self.server.queue_runner.wakes, 0)
        self.assertEqual(list(self.server.spool.tmp.iterdir()), [])
        self.assertEqual(list(self.server.spool.msg.iterdir()), [])

    def test_alias_and_plus_address_deliver_once_each(self):
        conn = self.connect()
        self.ehlo(conn, b"[192.0.2.10]")
        replies = self.send_mail(
            conn, [b"team@example.test", b"Alice+news@Example.TEST", b"bob@example.test"]
        )
        qid = queue_id(replies)
        self.assertIsNotNone(qid, replies)
        top = received(qid, None, helo="[192.0.2.10]")
        self.assertEqual(maildir_messages(self.server, "alice@example.test"), [top + STORED_BODY])
        self.assertEqual(maildir_messages(self.server, "bob@example.test"), [top + STORED_BODY])

    def test_postmaster_without_domain(self):
        self.server.settings.aliases_file.write_text(
            "postmaster@example.test: alice@example.test\n")
        self.server.directory.aliases._file.reload()
        conn = self.connect()
        self.ehlo(conn)
        self.assertEqual(conn.send(b"MAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\n"),
                         b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")

    def test_remote_recipient_is_queued(self):
        self.server.sessions.record_login("bob@example.test", "192.0.2.10", "pop3")
        conn = self.connect()
        self.ehlo(conn)
        replies = self.send_mail(conn, [b"carol@remote.test", b"outside@example.test"],
                                 sender=b"bob@example.test")
        qid = queue_id(replies)
        self.assertIsNotNone(qid, replies)
        envelope = self.server.spool.load(qid)
        self.assertEqual(envelope.sender, "bob@example.test")
        self.assertEqual(envelope.client_ip, "192.0.2.10")
        self.assertEqual(envelope.helo, "client.test")
        self.assertEqual([r.address for r in envelope.recipients], ["carol@remote.test"])
        self.assertEqual(
            self.server.spool.message_path(qid).read_bytes(),
            received(qid, None, sender="bob@example.test") + STORED_BODY,
        )
        self.assertEqual(self.server.queue_runner.wakes, 1)

    def test_two_messages_on_one_connection(self):
        conn = self.connect()
        self.ehlo(conn)
        first = queue_id(self.send_mail(conn, [b"alice@example.test"]))
        second = queue_id(self.send_mail(conn, [b"alice@example.test"], body=b"two\r\n"))
        self.assertNotEqual(first, second)
        self.assertEqual(len(maildir_messages(self.server, "alice@example.test")), 2)

    def test_empty_message(self):
        conn = self.connect()
        self.ehlo(conn)
        qid = queue_id(self.send_mail(conn, [b"alice@example.test"], body=b""))
        self.assertEqual(maildir_messages(self.server, "alice@example.test"),
                         [received(qid, "alice@example.test")])

    def test_data_in_small_pieces(self):
        conn = self.connect()
        self.ehlo(conn)
        conn.send(b"MAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
                  b"DATA\r\n")
        data = BODY + b".\r\n"
        replies = b"".join(conn.send(data[i:i + 1]) for i in range(len(data)))
        qid = queue_id(replies)
        self.assertEqual(maildir_messages(self.server, "alice@example.test"),
                         [received(qid, "alice@example.test") + STORED_BODY])

    def test_long_lines_are_written_through(self):
        conn = self.connect()
        self.ehlo(conn)
        conn.send(b"MAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
                  b"DATA\r\n")
        for _ in range(32):
            self.assertEqual(conn.send(b"x" * 65536), b"")
        (spooled,) = self.server.spool.tmp.iterdir()
        self.assertGreater(spooled.stat().st_size, 31 * 65536)
        qid = queue_id(conn.send(b"\r\n.\r\n"))
        (stored,) = maildir_messages(self.server, "alice@example.test")
        self.assertEqual(stored, received(qid, "alice@example.test") + b"x" * 2097152 + b"\r\n")

    def test_log_line_for_accepted_message(self):
        logs = LogCapture(self)
        conn = self.connect()
        self.ehlo(conn)
        qid = queue_id(self.send_mail(conn, [b"alice@example.test"]))
        self.assertIn(
            f"accepted {qid} from 192.0.2.10 sender=<sender@remote.test> "
            f"to=alice@example.test size={len(STORED_BODY)} "
            f"delivered=alice@example.test queued=-",
            logs.text(),
        )


class RealThreadTests(unittest.TestCase):
    """The commit really runs in the thread pool; the 250 waits for it."""

    @defer.inlineCallbacks
    def test_reply_after_commit(self):
        server = make_mail_server(self)
        commits = []
        real_deliver = server.delivery.deliver

        def spy(*args):
            d = real_deliver(*args)
            commits.append(d)
            return d

        self.patch(server.delivery, "deliver", spy)
        conn = connect(server)
        conn.send(b"EHLO c.test\r\n")
        replies = conn.send(b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
                            b"DATA\r\nhello\r\n.\r\nNOOP\r\n")
        self.assertEqual(replies, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
                                  b"354 End data with <CR><LF>.<CR><LF>\r\n")
        yield commits[0]
        replies = conn.take()
        self.assertTrue(replies.startswith(b"250 2.0.0 Ok: queued as "), replies)
        self.assertTrue(replies.endswith(b"\r\n250 2.0.0 Ok\r\n"), replies)
        self.assertEqual(len(maildir_messages(server, "alice@example.test")), 1)


class PipeliningTests(SMTPTestCase):
    def test_pipelined_transaction_with_asynchronous_rcpt_checks(self):
        """
        Regression (twisted#8126): MAIL, RCPT x3, DATA, the message and QUIT
        in one packet, with RCPT checks that answer later, get their replies
        in order, and the message goes to the accepted recipients only.
        """
        pending = []

        class Later:
            def check(self, session, transaction, recipient):
                d = defer.Deferred()
                pending.append(d)
                return d

        conn = self.connect()
        conn.protocol.factory.policy.gates[RECIPIENT].insert(0, Later())
        self.ehlo(conn)
        out = conn.send(
            b"MAIL FROM:<sender@remote.test>\r\n"
            b"RCPT TO:<alice@example.test>\r\n"
            b"RCPT TO:<nobody@example.test>\r\n"
            b"RCPT TO:<bob@example.test>\r\n"
            b"DATA\r\n" + BODY + b".\r\nQUIT\r\n"
        )
        self.assertEqual(out, b"250 2.1.0 Ok\r\n")
        for expected in [b"250 2.1.5 Ok\r\n", b"550 5.1.1 <nobody@example.test>: user unknown\r\n"]:
            pending.pop(0).callback(Verdict.accept())
            self.assertEqual(conn.take(), expected)
        pending.pop(0).callback(Verdict.accept())
        out = conn.take()
        qid = queue_id(out)
        self.assertEqual(
            out,
            b"250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
            + f"250 2.0.0 Ok: queued as {qid}\r\n".encode() + b"221 2.0.0 Bye\r\n",
        )
        self.assertTrue(conn.closed)
        top = received(qid, None)
        self.assertEqual(maildir_messages(self.server, "alice@example.test"), [top + STORED_BODY])
        self.assertEqual(maildir_messages(self.server, "bob@example.test"), [top + STORED_BODY])

    def test_replies_to_a_pipelined_group_go_in_one_write(self):
        conn = self.connect()
        self.ehlo(conn)
        writes = []
        self.patch(conn.transport, "write", writes.append)
        conn.protocol.dataReceived(b"RSET\r\nMAIL FROM:<a@remote.test>\r\n"
                                   b"RCPT TO:<alice@example.test>\r\nNOOP\r\n")
        self.assertEqual(writes, [b"250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
                                  b"250 2.0.0 Ok\r\n"])

    def test_reading_pauses_while_a_command_waits(self):
        pending = defer.Deferred()

        class Stuck:
            def check(self, session, transaction, sender):
                return pending

        conn = self.connect()
        conn.protocol.factory.policy.gates[SENDER].insert(0, Stuck())
        self.ehlo(conn)
        conn.send(b"MAIL FROM:<a@remote.test>\r\n" + b"NOOP\r\n" * 20000)
        self.assertEqual(conn.transport.producerState, "paused")
        pending.callback(Verdict.accept())
        self.assertEqual(conn.take(), b"250 2.1.0 Ok\r\n" + b"250 2.0.0 Ok\r\n" * 20000)
        self.assertEqual(conn.transport.producerState, "producing")


class RelayTests(SMTPTestCase):
    sections = {"relay": {"mode": "trusted", "trusted": ["198.51.100.0/24"]}}

    def rcpt(self, ip, address=b"carol@remote.test"):
        conn = self.connect(ip=ip)
        self.ehlo(conn)
        return conn.send(b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<" + address + b">\r\n")

    def test_relay_denied(self):
        self.assertEqual(
            self.rcpt("203.0.113.5"),
            b"250 2.1.0 Ok\r\n550 5.7.1 <carol@remote.test>: relaying denied for 203.0.113.5\r\n",
        )

    def test_loopback_is_not_trusted(self):
        self.assertIn(b"550 5.7.1", self.rcpt("127.0.0.1"))

    def test_trusted_ip(self):
        self.assertEqual(self.rcpt("198.51.100.7"), b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")

    def test_pop_before_smtp_window(self):
        self.assertIn(b"550 5.7.1", self.rcpt("203.0.113.5"))
        self.server.sessions.record_login("alice@example.test", "203.0.113.5", "imap")
        self.assertEqual(self.rcpt("203.0.113.5"), b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
        self.server.clock.advance(1801)
        self.assertIn(b"550 5.7.1", self.rcpt("203.0.113.5"))

    def test_unknown_local_user(self):
        self.assertEqual(
            self.rcpt("203.0.113.5", b"nobody@example.test"),
            b"250 2.1.0 Ok\r\n550 5.1.1 <nobody@example.test>: user unknown\r\n",
        )

    def test_max_recipients(self):
        self.server = make_mail_server(self, access={"max_recipients": 2})
        conn = self.connect()
        self.ehlo(conn)
        self.assertEqual(
            conn.send(b"MAIL FROM:<s@remote.test>\r\n" + b"RCPT TO:<alice@example.test>\r\n" * 3),
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Too many recipients\r\n",
        )


class SenderTests(SMTPTestCase):
    def test_check_valid_sender(self):
        conn = self.connect()
        self.ehlo(conn)
        self.assertEqual(
            conn.send(b"MAIL FROM:<alice>\r\n"),
            b"553 5.1.7 <alice>: sender address must be a full user@domain\r\n",
        )
        self.assertEqual(conn.send(b"MAIL FROM:<>\r\n"), b"250 2.1.0 Ok\r\n")

    def test_a_bug_after_synchronous_stages_is_a_temporary_error(self):
        """Stages that answer at once need no Deferred; a bug after them still gets 451."""
        fresh_error_log(self)
        def broken(self, verdict, transaction):
            raise RuntimeError("bug")

        self.patch(server_module.SMTPServer, "_mail_verdict", broken)
        conn = self.connect()
        self.ehlo(conn)
        self.assertEqual(conn.send(b"MAIL FROM:<a@remote.test>\r\n"),
                         b"451 4.3.0 Internal error, try again later\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(conn.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")

    def test_size_declared_too_big(self):
        conn = self.connect()
        self.ehlo(conn)
        self.assertEqual(conn.send(b"MAIL FROM:<a@remote.test> SIZE=36700161\r\n"),
                         b"552 5.3.4 Message size exceeds fixed limit\r\n")
        self.assertEqual(conn.send(b"MAIL FROM:<a@remote.test> SIZE=36700160 BODY=8BITMIME\r\n"),
                         b"250 2.1.0 Ok\r\n")


class SubmissionTests(SMTPTestCase):
    sections = {"listen": [{"protocol": "smtp", "role": "submission", "endpoint": "tcp:0"}]}

    def test_mail_needs_auth(self):
        conn = self.connect(secure=True)
        self.ehlo(conn)
        self.assertEqual(conn.send(b"MAIL FROM:<alice@example.test>\r\n"),
                         b"530 5.7.0 Authentication required\r\n")

    def test_authenticated_user_relays(self):
        conn = self.connect(secure=True)
        self.ehlo(conn)
        command = f"AUTH PLAIN {plain('alice@example.test', PASSWORD)}\r\n".encode()
        self.assertEqual(conn.send(command), b"235 2.7.0 Authentication successful\r\n")
        replies = self.send_mail(conn, [b"carol@remote.test"], sender=b"alice@example.test")
        qid = queue_id(replies)
        self.assertIsNotNone(qid, replies)
        self.assertEqual(
            self.server.spool.message_path(qid).read_bytes(),
            received(qid, "carol@remote.test", proto="ESMTPSA",
                     sender="alice@example.test") + STORED_BODY,
        )


class PopWindowSubmissionTests(SMTPTestCase):
    """[pop_before_smtp] counts_as_auth: a window satisfies submission, as a login would."""

    sections = {"listen": [{"protocol": "smtp", "role": "submission", "endpoint": "tcp:0"}],
                "pop_before_smtp": {"counts_as_auth": True},
                "access": {"sender_must_be_owned": True}}

    def window(self):
        self.server.sessions.record_login("alice@example.test", CLIENT_IP, "pop3")
        conn = self.connect(secure=True)
        self.ehlo(conn)
        return conn

    def test_a_window_sends_and_relays_as_its_user(self):
        replies = self.send_mail(self.window(), [b"carol@remote.test"],
                                 sender=b"alice@example.test")
        self.assertIsNotNone(queue_id(replies), replies)

    def test_as_its_user_only(self):
        self.assertEqual(self.window().send(b"MAIL FROM:<bob@example.test>\r\n"),
                         b"553 5.7.1 <bob@example.test>: sender address not owned by user "
                         b"alice@example.test\r\n")

    def test_no_window_no_mail(self):
        conn = self.connect(secure=True)
        self.ehlo(conn)
        self.assertEqual(conn.send(b"MAIL FROM:<alice@example.test>\r\n"),
                         b"530 5.7.0 Authentication required\r\n")

    def test_off_by_default(self):
        self.server = make_mail_server(self, listen=self.sections["listen"])
        self.assertEqual(self.window().send(b"MAIL FROM:<alice@example.test>\r\n"),
                         b"530 5.7.0 Authentication required\r\n")


class AuthTests(SMTPTestCase):
    def authed(self, *lines, ip="127.0.0.1"):
        conn = self.connect(ip=ip)
        self.ehlo(conn)
        return conn, [conn.send(line) for line in lines]

    def test_plain_initial_response(self):
        conn, replies = self.authed(f"AUTH PLAIN {plain('alice', PASSWORD)}\r\n".encode())
        self.assertEqual(replies, [b"235 2.7.0 Authentication successful\r\n"])
        self.assertEqual(conn.protocol.session.user, "alice@example.test")

    def test_plain_with_challenge(self):
        _, replies = self.authed(b"AUTH PLAIN\r\n",
                                 plain("alice@example.test", PASSWORD).encode() + b"\r\n")
        self.assertEqual(replies, [b"334 \r\n", b"235 2.7.0 Authentication successful\r\n"])

    def test_login(self):
        _, replies = self.authed(
            b"AUTH LOGIN\r\n",
            base64.b64encode(b"bob@example.test") + b"\r\n",
            base64.b64encode(PASSWORD.encode()) + b"\r\n",
        )
        self.assertEqual(replies, [b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n",
                                   b"235 2.7.0 Authentication successful\r\n"])

    def test_wrong_password_and_password_never_logged(self):
        logs = LogCapture(self)
        conn, replies = self.authed(
            f"AUTH PLAIN {plain('alice@example.test', 'guess-one')}\r\n".encode(),
            b"AUTH LOGIN " + base64.b64encode(b"alice@example.test") + b"\r\n",
            base64.b64encode(b"guess-two") + b"\r\n",
            f"AUTH PLAIN {plain('alice@example.test', PASSWORD)}\r\n".encode(),
        )
        self.assertEqual(replies, [
            b"535 5.7.8 Authentication credentials invalid\r\n",
            b"334 UGFzc3dvcmQ6\r\n",
            b"535 5.7.8 Authentication credentials invalid\r\n",
            b"235 2.7.0 Authentication successful\r\n",
        ])
        text = logs.text()
        self.assertIn("login failed: user=alice@example.test ip=127.0.0.1 protocol=smtp", text)
        self.assertIn("login ok: user=alice@example.test ip=127.0.0.1 protocol=smtp", text)
        for secret in ("guess-one", "guess-two", PASSWORD, plain("alice@example.test", PASSWORD)):
            self.assertNotIn(secret, text)

    def test_malformed_and_cancelled(self):
        conn, replies = self.authed(
            b"AUTH PLAIN %%%\r\n",
            b"AUTH PLAIN\r\n", b"*\r\n",
            b"AUTH LOGIN\r\n", b"not base64\r\n",
            b"AUTH CRAM-MD5\r\n",
            b"AUTH\r\n",
        )
        self.assertEqual(replies, [
            b"501 5.5.2 Cannot decode base64 response\r\n",
            b"334 \r\n", b"501 5.7.0 Authentication cancelled\r\n",
            b"334 VXNlcm5hbWU6\r\n", b"501 5.5.2 Cannot decode base64 response\r\n",
            b"504 5.5.4 Unrecognized authentication mechanism\r\n",
            b"504 5.5.4 Unrecognized authentication mechanism\r\n",
        ])
        self.assertEqual(conn.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")

    def test_refused_in_clear_off_loopback(self):
        _, replies = self.authed(f"AUTH PLAIN {plain('alice', PASSWORD)}\r\n".encode(),
                                 ip="192.0.2.10")
        self.assertEqual(replies, [b"538 5.7.11 Encryption required for authentication\r\n"])

    def test_order(self):
        conn = self.connect(ip="127.0.0.1")
        self.assertEqual(conn.send(b"AUTH PLAIN\r\n"), b"503 5.5.1 Send EHLO first\r\n")
        self.ehlo(conn)
        conn.send(b"MAIL FROM:<a@remote.test>\r\n")
        self.assertEqual(conn.send(b"AUTH PLAIN\r\n"),
                         b"503 5.5.1 AUTH not allowed during a mail transaction\r\n")
        conn.send(b"RSET\r\n")
        conn.send(f"AUTH PLAIN {plain('alice', PASSWORD)}\r\n".encode())
        self.assertEqual(conn.send(b"AUTH PLAIN\r\n"), b"503 5.5.1 Already authenticated\r\n")

    def test_checker_error_is_temporary(self):
        fresh_error_log(self)
        self.server = dataclasses.replace(self.server, checker=type("Broken", (), {
            "requestAvatarId": lambda self, creds: defer.fail(OSError("users file gone"))})())
        _, replies = self.authed(f"AUTH PLAIN {plain('alice', PASSWORD)}\r\n".encode())
        self.assertEqual(replies,
                         [b"454 4.7.0 Temporary authentication failure, try again later\r\n"])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_throttled_after_five_distinct_wrong_passwords(self):
        logs = LogCapture(self)
        guesses = [f"AUTH PLAIN {plain('alice', f'guess-{n}')}\r\n".encode() for n in range(5)]
        right = f"AUTH PLAIN {plain('alice', PASSWORD)}\r\n".encode()
        _, replies = self.authed(*guesses, right)
        self.assertEqual(replies, [b"535 5.7.8 Authentication credentials invalid\r\n"] * 5
                         + [b"454 4.7.0 Too many failed logins, try again later\r\n"])
        # LOGIN, and the same IP written as IPv4-mapped IPv6, are refused too
        _, replies = self.authed(
            b"AUTH LOGIN\r\n", base64.b64encode(b"alice") + b"\r\n",
            base64.b64encode(PASSWORD.encode()) + b"\r\n", ip="::ffff:127.0.0.1")
        self.assertEqual(replies[-1], b"454 4.7.0 Too many failed logins, try again later\r\n")
        _, replies = self.authed(f"AUTH PLAIN {plain('bob', PASSWORD)}\r\n".encode())
        self.assertEqual(replies, [b"235 2.7.0 Authentication successful\r\n"])
        self.server.clock.advance(900)
        _, replies = self.authed(right)
        self.assertEqual(replies, [b"235 2.7.0 Authentication successful\r\n"])
        text = logs.text()
        self.assertEqual(
            text.count("login refused (throttled): key=127.0.0.1/alice@example.test "
                       "protocol=smtp"), 2)
        self.assertIn("login lockout started: key=127.0.0.1/alice@example.test", text)
        for secret in ("guess-", PASSWORD):
            self.assertNotIn(secret, text)

    def test_the_same_wrong_password_retried_does_not_lock_out(self):
        wrong = f"AUTH PLAIN {plain('alice', 'old password')}\r\n".encode()
        for _ in range(4):
            _, replies = self.authed(wrong, wrong, wrong, wrong, wrong)
            self.assertEqual(set(replies), {b"535 5.7.8 Authentication credentials invalid\r\n"})
        _, replies = self.authed(f"AUTH PLAIN {plain('alice', PASSWORD)}\r\n".encode())
        self.assertEqual(replies, [b"235 2.7.0 Authentication successful\r\n"])

    def test_overlong_sasl_response_cancels_the_exchange(self):
        conn, replies = self.authed(b"AUTH PLAIN\r\n", b"A" * 5000 + b"\r\n")
        self.assertEqual(replies, [b"334 \r\n", b"500 5.5.2 Line too long\r\n"])
        self.assertEqual(conn.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")

    def test_disabled_on_listener(self):
        self.server = make_mail_server(
            self, listen=[{"protocol": "smtp", "endpoint": "tcp:0", "auth": False}])
        conn = self.connect(ip="127.0.0.1")
        self.assertNotIn(b"AUTH", self.ehlo(conn))
        self.assertEqual(conn.send(b"AUTH PLAIN\r\n"),
                         b"503 5.5.1 Authentication not enabled\r\n")


class ExternalTests(SMTPTestCase):
    """AUTH EXTERNAL: the verified client certificate names the user (RFC 4422 A)."""

    def setUp(self):
        run_threads_inline(self)
        paths = certs.client_set(Path(self.mktemp()).absolute())
        self.server = make_mail_server(
            self, tls={"client_ca": str(paths["ca"][0])},
            listen=[{"protocol": "smtp", "role": "submission", "endpoint": "tcp:0",
                     "client_cert": "require"},
                    {"protocol": "smtp", "role": "submission", "endpoint": "tcp:0"},
                    {"protocol": "smtp", "role": "submission", "endpoint": "tcp:0",
                     "client_cert": "request"}])
        self.alice = certs.make("alice@example.test")

    def authed(self, *lines, issued=True, listener=0):
        conn = self.connect(secure=True, listener=listener)
        certs.present(conn.transport, self.alice if issued is True else issued)
        self.assertIn(b"250-AUTH PLAIN LOGIN", self.ehlo(conn))
        return conn, [conn.send(line) for line in lines]

    def test_offered_with_a_certificate_only(self):
        for listener in (0, 2):  # require, request
            conn, _ = self.authed(listener=listener)
            self.assertIn(b"250-AUTH PLAIN LOGIN EXTERNAL\r\n", self.ehlo(conn))
        unrecognized = b"504 5.5.4 Unrecognized authentication mechanism\r\n"
        for listener, issued in ((2, None), (1, True)):  # no certificate; client_cert none
            conn, replies = self.authed(b"EHLO c.test\r\n", b"AUTH EXTERNAL =\r\n",
                                        issued=issued, listener=listener)
            self.assertIn(b"250-AUTH PLAIN LOGIN\r\n", replies[0])
            self.assertEqual(replies[1], unrecognized)

    def test_success_with_and_without_authzid(self):
        logs = LogCapture(self)
        for lines in ([b"AUTH EXTERNAL =\r\n"],
                      [b"AUTH EXTERNAL\r\n", b"=\r\n"],
                      [b"auth external " + base64.b64encode(b"alice") + b"\r\n"]):
            conn, replies = self.authed(*lines)
            self.assertEqual(replies[-1], b"235 2.7.0 Authentication successful\r\n")
            self.assertEqual(conn.protocol.session.user, "alice@example.test")
        self.assertEqual(logs.text().count(
            f"login ok: user=alice@example.test ip={CLIENT_IP} protocol=smtp"), 3)
        self.assertIsNotNone(queue_id(self.send_mail(
            conn, [b"carol@remote.test"], sender=b"alice@example.test")))

    def test_failures(self):
        logs = LogCapture(self)
        failed = b"535 5.7.8 Authentication credentials invalid\r\n"
        _, replies = self.authed(b"AUTH EXTERNAL " + base64.b64encode(b"bob@example.test")
                                 + b"\r\n")
        self.assertEqual(replies, [failed])
        conn, replies = self.authed(b"AUTH EXTERNAL =\r\n",
                                    issued=certs.make("carol@example.test"))
        self.assertEqual(replies, [failed])
        self.assertIsNone(conn.protocol.session.user)
        _, replies = self.authed(b"AUTH EXTERNAL\r\n", b"*\r\n", b"AUTH EXTERNAL %%\r\n")
        self.assertEqual(replies, [b"334 \r\n", b"501 5.7.0 Authentication cancelled\r\n",
                                   b"501 5.5.2 Cannot decode base64 response\r\n"])
        text = logs.text()
        self.assertIn(f"login failed: user=bob@example.test ip={CLIENT_IP} protocol=smtp", text)
        self.assertIn(f"login failed: user=carol@example.test ip={CLIENT_IP} protocol=smtp",
                      text)
        self.assertNotIn("login ok", text)

    def test_throttled(self):
        for n in range(5):
            self.server.sessions.record_failure(CLIENT_IP, "alice@example.test", b"%d" % n)
        _, replies = self.authed(b"AUTH EXTERNAL =\r\n")
        self.assertEqual(replies, [b"454 4.7.0 Too many failed logins, try again later\r\n"])


class StartTLSTests(SMTPTestCase):
    def test_starttls_resets_the_session_and_drops_injected_commands(self):
        """
        Regression (CVE-2011-0411 style): commands sent in plaintext in the
        same packet as STARTTLS are not run after the handshake.
        """
        conn = self.connect()
        self.ehlo(conn)
        out = conn.send(b"STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\n"
                        b"RCPT TO:<alice@example.test>\r\n")
        self.assertEqual(out, b"220 2.0.0 Ready to start TLS\r\n")
        self.assertIs(conn.transport.tls_context, self.server.tls_context)
        self.assertTrue(conn.protocol.session.tls)
        self.assertIsNone(conn.protocol.session.helo)
        # The injected MAIL did not run: a transaction needs EHLO again.
        self.assertEqual(conn.send(b"RCPT TO:<alice@example.test>\r\n"),
                         b"503 5.5.1 Need MAIL command\r\n")
        self.assertEqual(conn.send(b"MAIL FROM:<a@remote.test>\r\n"),
                         b"503 5.5.1 Send HELO/EHLO first\r\n")
        reply = conn.send(b"EHLO client.test\r\n")
        self.assertNotIn(b"STARTTLS", reply)
        self.assertIn(b"250-AUTH PLAIN LOGIN\r\n", reply)
        qid = queue_id(self.send_mail(conn, [b"alice@example.test"]))
        self.assertEqual(maildir_messages(self.server, "alice@example.test"),
                         [received(qid, "alice@example.test", proto="ESMTPS") + STORED_BODY])

    def test_starttls_errors(self):
        conn = self.connect(secure=True)
        self.ehlo(conn)
        self.assertEqual(conn.send(b"STARTTLS\r\n"), b"503 5.5.1 Already using TLS\r\n")
        conn = self.connect()
        self.assertEqual(conn.send(b"STARTTLS now\r\n"), b"501 5.5.4 Syntax: STARTTLS\r\n")

    def test_not_offered_without_tls(self):
        self.server = make_mail_server(
            self, listen=[{"protocol": "smtp", "endpoint": "tcp:0", "tls": "none"}])
        conn = self.connect()
        self.assertNotIn(b"STARTTLS", self.ehlo(conn))
        self.assertEqual(conn.send(b"STARTTLS\r\n"), b"502 5.5.1 STARTTLS not available\r\n")

    def test_required(self):
        self.server = make_mail_server(
            self, listen=[{"protocol": "smtp", "endpoint": "tcp:0", "tls": "required"}])
        conn = self.connect()
        self.assertIn(b"250-STARTTLS\r\n", self.ehlo(conn))
        self.assertEqual(conn.send(b"MAIL FROM:<a@remote.test>\r\n"),
                         b"530 5.7.0 Must issue a STARTTLS command first\r\n")
        self.assertEqual(conn.send(b"STARTTLS\r\n"), b"220 2.0.0 Ready to start TLS\r\n")
        self.ehlo(conn)
        self.assertEqual(conn.send(b"MAIL FROM:<a@remote.test>\r\n"), b"250 2.1.0 Ok\r\n")


class DataRefusalTests(SMTPTestCase):
    def start_data(self, conn):
        self.ehlo(conn)
        self.assertEqual(
            conn.send(b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"),
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
        )

    def test_smuggling_tricks_are_refused_whole(self):
        """
        Regression (SMTP smuggling): a bare LF or CR "end of data" ends
        nothing, and no second message is injected; the message is refused.
        """
        bare = b"550 5.6.0 Message contains bare CR or LF characters; lines must end with CRLF\r\n"
        for trick in (b"\n.\n", b"\r\n.\r", b"\r.\r", b"\n.\r\n", b"\r.\r\n"):
            conn = self.connect()
            self.start_data(conn)
            smuggled = (b"Subject: one\r\n\r\nbody" + trick
                        + b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<bob@example.test>\r\n"
                        + b"DATA\r\nSubject: forged\r\n\r\nsend money\r\n.\r\n")
            self.assertEqual(conn.send(smuggled), bare, trick)
            self.assertEqual(files_on_disk(self.server), [], trick)
            self.assertEqual(conn.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")

    def test_message_too_big(self):
        self.server = make_mail_server(self, access={"max_message_size": 4096})
        conn = self.connect()
        self.start_data(conn)
        self.assertEqual(conn.send(b"x" * 3000 + b"\r\n"), b"")
        self.assertEqual(conn.send(b"y" * 3000 + b"\r\n" + b"z\r\n"), b"")
        self.assertEqual(conn.send(b".\r\n"), b"552 5.3.4 Message size exceeds fixed limit\r\n")
        self.assertEqual(files_on_disk(self.server), [])
        qid = queue_id(self.send_mail(conn, [b"alice@example.test"], body=b"small\r\n"))
        self.assertIsNotNone(qid)

    def test_disk_error_is_temporary(self):
        fresh_error_log(self)
        maildir = Path(self.server.store.maildir("alice@example.test"))
        maildir.parent.mkdir(parents=True)
        maildir.write_text("a file where the Maildir should be")
        conn = self.connect()
        self.start_data(conn)
        self.assertEqual(conn.send(b"hello\r\n.\r\n"),
                         b"451 4.3.0 Cannot queue the message, try again later\r\n")
        self.assertTrue(self.flushLoggedErrors(OSError))
        self.assertEqual(files_on_disk(self.server), [maildir])

    def test_spool_unavailable_at_data(self):
        def full():
            raise OSError(28, "No space left on device")

        self.patch(self.server.spool, "incoming", full)
        conn = self.connect()
        self.ehlo(conn)
        self.assertEqual(
            conn.send(b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"),
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
            b"452 4.3.1 Insufficient system storage, try again later\r\n",
        )

    def test_vanishing_mid_data_leaves_nothing(self):
        conn = self.connect()
        self.start_data(conn)
        conn.send(b"Subject: half\r\n\r\n" + b"half a message\r\n" * 20000)
        self.assertEqual(len(list(self.server.spool.tmp.iterdir())), 1)  # past IN_MEMORY
        conn.transport.loseConnection()
        self.assertEqual(files_on_disk(self.server), [])


class DefenceTests(SMTPTestCase):
    def test_http_request_closes_at_once(self):
        conn = self.connect()
        self.assertEqual(conn.send(b"GET / HTTP/1.1\r\nHost: mail.example.test\r\n\r\n"), b"")
        self.assertTrue(conn.closed)

    def test_idle_timeout(self):
        conn = self.connect()
        self.server.clock.advance(299)
        self.assertEqual(conn.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")
        self.server.clock.advance(299)
        self.assertFalse(conn.closed)
        self.server.clock.advance(1)
        self.assertEqual(conn.take(), b"421 4.4.2 mail.example.test Error: timeout exceeded\r\n")
        self.assertTrue(conn.closed)

    def test_idle_timeout_mid_data_leaves_nothing(self):
        conn = self.connect()
        self.ehlo(conn)
        conn.send(b"MAIL FROM:<s@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nhi")
        self.server.clock.advance(300)
        self.assertTrue(conn.closed)
        self.assertEqual(files_on_disk(self.server), [])

    def test_too_many_errors(self):
        conn = self.connect()
        out = conn.send(b"FOO\r\n" * 12)
        self.assertEqual(out, b"500 5.5.2 Command not recognized\r\n" * 10
                         + b"421 4.7.0 Too many errors\r\n")
        self.assertTrue(conn.closed)

    def test_new_connection_after_a_closed_one(self):
        conn = self.connect()
        conn.send(b"GET / HTTP/1.0\r\n")
        factory = conn.protocol.factory
        other = Connection(factory)
        self.assertEqual(other.send(b"NOOP\r\n"), b"250 2.0.0 Ok\r\n")


class FactoryTests(unittest.TestCase):
    def test_build_factory(self):
        server = make_mail_server(self)
        factory = build_factory(server, server.settings.listeners[0])
        self.assertIs(factory.server, server)
        self.assertEqual(factory.limits.max_message_size, 36700160)
        self.assertIs(factory.clock, server.clock)
        self.assertIsNot(factory.buildProtocol(None), factory.buildProtocol(None))


class ExpnTests(SMTPTestCase):
    sections = {"lists": {"expn": True}}

    def test_members_of_lists_only(self):
        conn = self.connect()
        self.ehlo(conn)
        for command, reply in [
            (b"EXPN team\r\n",
             b"250-2.1.5 <alice@example.test>\r\n250 2.1.5 <bob@example.test>\r\n"),
            (b"EXPN <Team@Example.test>\r\n",
             b"250-2.1.5 <alice@example.test>\r\n250 2.1.5 <bob@example.test>\r\n"),
            (b"EXPN alice\r\n", b"550 5.1.1 <alice>: no such list\r\n"),
            (b"EXPN outside@example.test\r\n",
             b"550 5.1.1 <outside@example.test>: no such list\r\n"),
            (b"EXPN\r\n", b"501 5.5.4 Syntax: EXPN list\r\n"),
        ]:
            self.assertEqual(conn.send(command), reply, command)
