"""
End to end: mail sent to the real server with smtplib and swaks, read back
with poplib, imaplib, curl and fetchmail, byte for byte.
"""

import hashlib
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from twisted.trial import unittest

from tests.integration.harness import PASSWORD, MailServerProcess, SinkServer, require_tool

ALICE = "alice@example.test"

# What a message must survive: dot-stuffing both ways, 8-bit UTF-8, long
# lines, blank lines, a line that is a single dot, trailing white space.
TRICKY = (
    b"From: Sender <sender@remote.test>\r\n"
    b"To: Alice <alice@example.test>\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b".leading dot\r\n"
    b"..two leading dots\r\n"
    b".\r\n"
    b" . \r\n"
    b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln \xe2\x9c\x89\r\n"
    b"\r\n"
    b"trailing space   \r\n"
    + b"x" * 990 + b"\r\n"
    b"last line\r\n"
)


def body_below_trace_headers(delivered):
    """The delivered message minus the Return-Path and Received lines we add on top."""
    lines = delivered.split(b"\r\n")
    assert lines[0].startswith(b"Return-Path: <"), lines[0]
    index = 1
    assert lines[index].startswith(b"Received: from "), lines[index]
    index += 1
    while lines[index][:1] in (b" ", b"\t"):
        index += 1
    return b"\r\n".join(lines[index:])


class MailFlowTests(unittest.TestCase):
    def setUp(self):
        self.server = MailServerProcess().start()
        self.addCleanup(self.server.cleanup)

    def send(self, message, to=ALICE, sender="sender@remote.test", source="127.0.0.1"):
        with self.server.smtp(source=source) as client:
            client.ehlo("client.remote.test")
            refused = client.sendmail(sender, [to], message)
            self.assertEqual(refused, {})

    def pop3_messages(self):
        client = self.server.pop3()
        client.user(ALICE)
        client.pass_(PASSWORD)
        count, _ = client.stat()
        messages = [b"\r\n".join(client.retr(n + 1)[1]) + b"\r\n" for n in range(count)]
        client.quit()
        return messages

    def test_smtp_to_pop3_and_imap_byte_for_byte(self):
        self.send(TRICKY)
        (via_pop3,) = self.pop3_messages()
        self.assertEqual(body_below_trace_headers(via_pop3), TRICKY)
        self.assertTrue(via_pop3.startswith(b"Return-Path: <sender@remote.test>\r\n"))
        received = via_pop3.split(b"\r\nSubject:")[0].split(b"\r\n", 1)[1]
        self.assertIn(b"[127.0.0.1]", received)
        self.assertIn(b"by mail.example.test", received)

        imap = self.server.imap()
        imap.login(ALICE, PASSWORD)
        typ, data = imap.select("INBOX")
        self.assertEqual(typ, "OK")
        typ, data = imap.uid("SEARCH", None, "ALL")
        uid = data[0].split()[-1]
        typ, data = imap.uid("FETCH", uid, "(BODY.PEEK[])")
        self.assertEqual(body_below_trace_headers(data[0][1]), TRICKY)
        imap.logout()

    def test_twenty_megabyte_message(self):
        line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
        big = b"Subject: big\r\n\r\n" + line * (20 * 1024 * 1024 // len(line))
        self.send(big)
        (delivered,) = self.server.maildir_files()
        self.assertEqual(hashlib.sha256(body_below_trace_headers(delivered.read_bytes()))
                         .hexdigest(), hashlib.sha256(big).hexdigest())
        (via_pop3,) = self.pop3_messages()
        self.assertEqual(len(body_below_trace_headers(via_pop3)), len(big))

    def test_unknown_local_user_is_refused(self):
        with self.server.smtp() as client:
            client.ehlo("client.remote.test")
            client.mail("sender@remote.test")
            code, text = client.rcpt("nobody@example.test")
        self.assertEqual(code, 550)
        self.assertIn(b"5.1.1", text)

    def test_no_open_relay(self):
        with self.server.smtp() as client:
            client.ehlo("client.remote.test")
            client.mail("sender@remote.test")
            code, text = client.rcpt("victim@elsewhere.test")
        self.assertEqual(code, 550)
        self.assertIn(b"5.7.1", text)
        self.assertIn(b"127.0.0.1", text)

    def test_swaks_then_curl_pop3_and_imap(self):
        for tool in ("swaks", "curl"):
            require_tool(self, tool)
        port = self.server.ports
        swaks = subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", str(port["smtp"]),
             "--from", "sender@remote.test", "--to", ALICE,
             "--header", "Subject: from swaks", "--body", "hello from swaks"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(swaks.returncode, 0, swaks.stdout + swaks.stderr)
        self.assertRegex(swaks.stdout, r"<- +250 2\.0\.0 Ok: queued as [0-9A-F]+")

        user = f"{ALICE}:{PASSWORD}"
        listing = subprocess.run(
            ["curl", "-s", "-u", user, f"pop3://127.0.0.1:{port['pop3']}/"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(listing.returncode, 0, listing.stderr)
        self.assertRegex(listing.stdout, r"^1 \d+\r?\n")
        message = subprocess.run(
            ["curl", "-s", "-u", user, f"pop3://127.0.0.1:{port['pop3']}/1"],
            capture_output=True, text=True, timeout=60)
        self.assertIn("Subject: from swaks", message.stdout)
        self.assertIn("hello from swaks", message.stdout)

        search = subprocess.run(
            ["curl", "-s", "-u", user, f"imap://127.0.0.1:{port['imap']}/INBOX",
             "-X", "UID SEARCH SUBJECT swaks"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(search.returncode, 0, search.stderr)
        uid = re.search(r"\* SEARCH (\d+)", search.stdout).group(1)
        fetched = subprocess.run(
            ["curl", "-s", "-u", user, f"imap://127.0.0.1:{port['imap']}/INBOX;UID={uid}"],
            capture_output=True, text=True, timeout=60)
        self.assertIn("hello from swaks", fetched.stdout)

    def test_curl_auth_login_pop3_and_imap(self):
        """SASL LOGIN over TLS; IMAP with the user name as initial response (SASL-IR)."""
        require_tool(self, "curl")
        self.send(b"Subject: login\r\n\r\nby AUTH LOGIN\r\n")
        port = self.server.ports
        for url, extra, sent in [
            (f"pop3s://127.0.0.1:{port['pop3s']}/1", [], "> AUTH LOGIN\r\n"),
            (f"imaps://127.0.0.1:{port['imaps']}/INBOX;UID=1", ["--sasl-ir"],
             "> A002 AUTHENTICATE LOGIN YWxpY2VAZXhhbXBsZS50ZXN0\r\n"),
        ]:
            result = subprocess.run(
                ["curl", "-s", "-v", "-k", "--login-options", "AUTH=LOGIN", *extra,
                 "-u", f"{ALICE}:{PASSWORD}", url],
                capture_output=True, text=True, timeout=60)
            self.assertEqual(result.returncode, 0, (url, result.stderr))
            self.assertIn("by AUTH LOGIN", result.stdout, url)
            self.assertIn(sent.rstrip("\r\n"), result.stderr, url)
        log = self.server.log_text()
        for protocol in ("pop3", "imap"):
            self.assertIn(f"login ok: user={ALICE} ip=127.0.0.1 protocol={protocol}", log)

    def test_curl_uploads_with_append(self):
        require_tool(self, "curl")
        upload = Path(self.mktemp())
        upload.write_bytes(b"From: curl@example.test\r\nSubject: uploaded\r\n\r\nby APPEND\r\n")
        user = f"{ALICE}:{PASSWORD}"
        url = f"imap://127.0.0.1:{self.server.ports['imap']}/INBOX"
        sent = subprocess.run(["curl", "-s", "-S", "-u", user, "-T", str(upload), url],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(sent.returncode, 0, sent.stderr)
        fetched = subprocess.run(["curl", "-s", "-u", user, url + "/;UID=1"],
                                 capture_output=True, timeout=60)
        self.assertEqual(fetched.stdout, upload.read_bytes())

    def test_curl_over_implicit_tls_and_starttls(self):
        require_tool(self, "curl")
        self.send(b"Subject: tls\r\n\r\nover tls\r\n")
        user = f"{ALICE}:{PASSWORD}"
        port = self.server.ports
        for url, extra in [
            (f"pop3s://127.0.0.1:{port['pop3s']}/1", []),
            (f"pop3://127.0.0.1:{port['pop3']}/1", ["--ssl-reqd"]),
            (f"imaps://127.0.0.1:{port['imaps']}/INBOX;UID=1", []),
            (f"imap://127.0.0.1:{port['imap']}/INBOX;UID=1", ["--ssl-reqd"]),
        ]:
            if "imap" in url:
                search = subprocess.run(
                    ["curl", "-s", "-k", "-u", user, *extra,
                     url.split(";")[0], "-X", "UID SEARCH ALL"],
                    capture_output=True, text=True, timeout=60)
                uid = search.stdout.split()[-1]
                url = url.replace("UID=1", f"UID={uid}")
            result = subprocess.run(["curl", "-s", "-k", "-u", user, *extra, url],
                                    capture_output=True, text=True, timeout=60)
            self.assertEqual(result.returncode, 0, (url, result.stderr))
            self.assertIn("over tls", result.stdout, url)

    def test_fetchmail_keep_and_delete(self):
        require_tool(self, "fetchmail")
        self.send(b"Subject: for fetchmail\r\n\r\nfetch me\r\n")
        home = Path(tempfile.mkdtemp(prefix="fetchmail-"))
        mbox = home / "mbox"
        rc = home / "fetchmailrc"
        rc.write_text(
            f'poll 127.0.0.1 service {self.server.ports["pop3"]} protocol pop3 '
            f'auth password user "{ALICE}" password "{PASSWORD}" '
            f'keep mda "cat >> {mbox}" '
            # the server offers STLS: fetchmail takes it and checks the certificate
            f'sslcertfile "{self.server.dir / "tls" / "cert.pem"}" '
            f'sslcommonname "mail.example.test"\n'
        )
        rc.chmod(0o600)
        env = {**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)}
        run = subprocess.run(["fetchmail", "-f", str(rc), "-N", "--nosyslog", "-v"],
                             capture_output=True, text=True, timeout=60, env=env)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn("fetch me", mbox.read_text())
        self.assertEqual(len(self.server.maildir_files()), 1)  # kept

        # Delete mode: fetch everything, the already-seen message too, and delete it.
        rc.write_text(rc.read_text().replace(" keep ", " nokeep fetchall "))
        mbox.unlink()
        run = subprocess.run(["fetchmail", "-f", str(rc), "-N", "--nosyslog", "-v"],
                             capture_output=True, text=True, timeout=60, env=env)
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)
        self.assertIn("fetch me", mbox.read_text())
        self.assertEqual(self.server.maildir_files(), [])  # deleted at QUIT

    def test_http_request_to_smtp_port_is_closed_at_once(self):
        import socket

        with socket.create_connection(("127.0.0.1", self.server.ports["smtp"]), 10) as s:
            s.recv(1024)  # greeting
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while True:
                chunk = s.recv(1024)
                if not chunk:
                    break
                received += chunk
        self.assertNotIn(b"250", received)
        with self.server.smtp() as client:  # the server is still there
            self.assertEqual(client.noop()[0], 250)

    def test_openssl_implicit_tls_and_starttls(self):
        require_tool(self, "openssl")
        for name, starttls, command, reply in [
            ("smtps", None, "QUIT", "221 2.0.0"),
            ("pop3s", None, "QUIT", "+OK"),
            ("imaps", None, "a LOGOUT", "a OK"),
            ("smtp", "smtp", "QUIT", "221 2.0.0"),
            ("pop3", "pop3", "QUIT", "+OK"),
            ("imap", "imap", "a LOGOUT", "a OK"),
        ]:
            # -ign_eof: send the command, then wait for the server to close.
            args = ["openssl", "s_client", "-connect",
                    f"127.0.0.1:{self.server.ports[name]}", "-ign_eof", "-brief"]
            if starttls:
                args += ["-starttls", starttls]
            result = subprocess.run(args, input=command + "\r\n", capture_output=True,
                                    text=True, timeout=30)
            self.assertIn("Protocol version: TLSv1.", result.stderr, name)
            self.assertIn(reply, result.stdout, (name, result.stdout, result.stderr))


class PopBeforeSmtpTests(unittest.TestCase):
    """
    A POP3 or IMAP login from an IP lets that IP relay for the window; no
    login, or an expired window, means 550 5.7.1.
    """

    def setUp(self):
        self.sink = SinkServer()
        self.addCleanup(self.sink.close)
        self.server = MailServerProcess(extra={
            "pop_before_smtp": {"window": 3},
            "delivery": {"smart_host": f"127.0.0.1:{self.sink.port}", "retry": [1]},
        }).start()
        self.addCleanup(self.server.cleanup)

    def relay(self, source, sender=ALICE):
        """MAIL FROM sender, RCPT TO a remote address: the two reply codes."""
        with self.server.smtp(source=source) as client:
            client.ehlo("client.remote.test")
            mail = client.mail(sender)
            if mail[0] != 250:
                return mail[0], mail[1][:5], None
            return mail[0], None, client.rcpt("friend@elsewhere.test")[0]

    def test_window_opens_on_login_and_closes(self):
        # no login yet: alice's address may not be used, and nobody relays
        self.assertEqual(self.relay("127.0.0.2"), (553, b"5.7.1", None))
        self.assertEqual(self.relay("127.0.0.2", "someone@remote.test"), (250, None, 550))

        pop3 = self.server.pop3(source="127.0.0.2")
        pop3.user(ALICE)
        pop3.pass_(PASSWORD)
        pop3.quit()
        self.assertEqual(self.relay("127.0.0.2"), (250, None, 250))
        # another IP still may not
        self.assertEqual(self.relay("127.0.0.3"), (553, b"5.7.1", None))

        with self.server.smtp(source="127.0.0.2") as client:
            client.sendmail(ALICE, ["friend@elsewhere.test"],
                            b"Subject: via the window\r\n\r\nrelayed\r\n")
        (sender, recipients, data), = self.sink.wait_for(1)
        self.assertEqual(recipients, ["<friend@elsewhere.test>"])
        self.assertIn(b"relayed", data)

        time.sleep(3.5)  # the real server's window is 3 seconds
        self.assertEqual(self.relay("127.0.0.2"), (553, b"5.7.1", None))
        self.assertEqual(self.relay("127.0.0.2", "someone@remote.test"), (250, None, 550))

    def test_imap_login_opens_a_window_too(self):
        imap = self.server.imap(source="127.0.0.4")
        imap.login(ALICE, PASSWORD)
        imap.logout()
        self.assertEqual(self.relay("127.0.0.4"), (250, None, 250))

    def test_failed_login_opens_nothing(self):
        pop3 = self.server.pop3(source="127.0.0.5")
        pop3.user(ALICE)
        self.assertRaises(Exception, pop3.pass_, "wrong password")
        self.assertEqual(self.relay("127.0.0.5", "someone@remote.test"), (250, None, 550))


class DurabilityTests(unittest.TestCase):
    def test_kill_9_after_250_loses_nothing(self):
        server = MailServerProcess().start()
        self.addCleanup(server.cleanup)
        with server.smtp() as client:
            for n in range(20):
                client.sendmail("sender@remote.test", [ALICE],
                                f"Subject: n{n}\r\n\r\nmessage {n}\r\n".encode())
        server.stop(signal.SIGKILL)
        self.assertEqual(len(server.maildir_files()), 20)
        server.start()
        pop3 = server.pop3()
        pop3.user(ALICE)
        pop3.pass_(PASSWORD)
        self.assertEqual(pop3.stat()[0], 20)
        pop3.quit()


class IdlePushTests(unittest.TestCase):
    def test_idle_session_sees_new_mail_within_a_second(self):
        import socket

        server = MailServerProcess().start()
        self.addCleanup(server.cleanup)
        with socket.create_connection(("127.0.0.1", server.ports["imap"]), 10) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(f'a LOGIN {ALICE} "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
            while not f.readline().startswith(b"+ "):
                pass
            started = time.monotonic()
            with server.smtp() as client:
                client.sendmail("sender@remote.test", [ALICE], b"Subject: push\r\n\r\nx\r\n")
            s.settimeout(5)
            line = f.readline()
            elapsed = time.monotonic() - started
            self.assertEqual(line, b"* 1 EXISTS\r\n")
            self.assertLess(elapsed, 1.0)
            self.assertEqual(f.readline(), b"* 1 RECENT\r\n")
            s.sendall(b"DONE\r\n")
            self.assertTrue(f.readline().startswith(b"c OK"))


class PersistenceTests(unittest.TestCase):
    def test_uids_flags_and_uidl_survive_a_restart(self):
        server = MailServerProcess().start()
        self.addCleanup(server.cleanup)
        with server.smtp() as client:
            for n in range(3):
                client.sendmail("sender@remote.test", [ALICE],
                                f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode())

        def imap_state():
            imap = server.imap()
            imap.login(ALICE, PASSWORD)
            imap.select("INBOX")
            validity = imap.response("UIDVALIDITY")[1][0]
            typ, data = imap.uid("FETCH", "1:*", "(FLAGS)")
            imap.logout()
            return validity, [d.decode() for d in data]

        def uidl():
            pop3 = server.pop3()
            pop3.user(ALICE)
            pop3.pass_(PASSWORD)
            listing = pop3.uidl()[1]
            pop3.quit()
            return listing

        imap = server.imap()
        imap.login(ALICE, PASSWORD)
        imap.select("INBOX")
        typ, _ = imap.uid("STORE", "2", "+FLAGS", r"(\Seen)")
        self.assertEqual(typ, "OK")
        imap.logout()
        before, before_uidl = imap_state(), uidl()
        self.assertEqual(before[1][1], r"2 (FLAGS (\Seen) UID 2)")
        self.assertNotIn(r"\Seen", before[1][0])

        server.stop()
        server.start()
        self.assertEqual(imap_state(), before)
        self.assertEqual(uidl(), before_uidl)
