"""
[antispam.clamav] with a real clamd (Debian's clamav-daemon; .ci/run
installs it), started here on a unix socket with a database that holds
only the EICAR test signature (a one-line .hdb file: nothing downloaded):
the scanner on a clean message, EICAR in a base64 attachment (clamd
decodes the MIME itself), EICAR inside a zip attachment, a message big
enough to be read in threads; clamd stopped and a clamd that never answers,
with on_error tempfail and accept. Then through SMTP with the real server.
"""

import shutil
import subprocess
import tempfile
import time
import zipfile
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.trial import unittest

from mailsrv.policy.actions import NONE, Action
from mailsrv.policy.checks.clamav import ClamAVScanner
from mailsrv.policy.hooks import INLINE, Message
from tests.helpers import log_lines
from tests.integration.harness import MailServerProcess
from tests.test_policy_content import TOP, attachment, multipart

# The EICAR test file (eicar.org), and its MD5 and size as a .hdb line.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SIGNATURE = "44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature\n"
# clamd marks the names of signatures from unsigned databases.
FOUND = "Eicar-Test-Signature.UNOFFICIAL"
CLEAN = TOP + b"\r\nhello, no virus here\r\n"
SESSION = SimpleNamespace(ip="127.0.0.1")


def zipped_file(name, data):
    out = BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return out.getvalue()


def with_attachment(name, data):
    return multipart(b"b", b"Content-Type: text/plain\r\n\r\nsee attached",
                     attachment(name, data), header=TOP + b"MIME-Version: 1.0\r\n")


IN_ATTACHMENT = with_attachment(b"eicar.com", EICAR)
IN_ZIP = with_attachment(b"invoice.zip", zipped_file("eicar.com", EICAR))


def clamd_program():
    """clamd's path (Debian puts it in /usr/sbin, often not on PATH), or L{None}."""
    return shutil.which("clamd") or shutil.which("clamd", path="/usr/sbin:/usr/local/sbin")


class Clamd:
    """
    A clamd of our own, in a temporary folder: its config, a database
    with only the EICAR signature, its unix socket; started and stopped
    by its process id.
    """

    def __init__(self, program):
        # (a unix socket's path has at most 107 bytes: not under trial's folder)
        self.dir = Path(tempfile.mkdtemp(prefix="clamd-"))
        self.socket = self.dir / "clamd.sock"
        (self.dir / "db").mkdir()
        (self.dir / "db" / "eicar.hdb").write_text(SIGNATURE)
        self.config = self.dir / "clamd.conf"
        self.config.write_text(f"Foreground yes\nLocalSocket {self.socket}\n"
                               f"DatabaseDirectory {self.dir / 'db'}\n")
        self.program = program
        self.process = None

    @property
    def endpoint(self):
        return f"unix:{self.socket}"

    def start(self):
        self.socket.unlink(missing_ok=True)  # (one a stopped clamd left)
        with open(self.dir / "clamd.log", "ab") as log:
            self.process = subprocess.Popen([self.program, "-c", str(self.config)],
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("clamd did not start:\n"
                                     + (self.dir / "clamd.log").read_text(errors="replace"))
            time.sleep(0.02)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def started_clamd(testcase):
    """A running L{Clamd}, stopped after the test; the test skips when clamd is missing."""
    program = clamd_program()
    if program is None:
        raise unittest.SkipTest("clamd is not installed (Debian: apt-get install "
                                "clamav-daemon; .ci/run installs it)")
    clamd = Clamd(program)
    testcase.addCleanup(clamd.cleanup)
    clamd.start()
    return clamd


class ScannerTests(unittest.TestCase):
    """The scanner on the reactor, against the real clamd."""

    def setUp(self):
        self.clamd = started_clamd(self)
        self.lines = log_lines(self)

    def scan(self, data, on_error="tempfail", endpoint=None, timeout=30):
        endpoint = endpoint or self.clamd.endpoint
        scanner = ClamAVScanner(endpoints.clientFromString(reactor, endpoint), endpoint,
                                timeout, on_error, Action("reject"), None, reactor)
        return scanner.check(SESSION, None, Message(len(data), lambda: BytesIO(data)))

    @defer.inlineCallbacks
    def test_clean(self):
        verdict = yield self.scan(CLEAN)
        self.assertEqual((verdict.finding.spam, verdict.finding.reasons), (False, ()))

    @defer.inlineCallbacks
    def test_eicar_in_a_base64_attachment(self):
        self.assertNotIn(EICAR, IN_ATTACHMENT)  # clamd decodes the part itself
        verdict = yield self.scan(IN_ATTACHMENT)
        self.assertEqual((verdict.finding.spam, verdict.finding.reasons),
                         (True, (f"clamav {FOUND}",)))

    @defer.inlineCallbacks
    def test_eicar_in_a_zip_attachment(self):
        verdict = yield self.scan(IN_ZIP)
        self.assertEqual((verdict.finding.spam, verdict.finding.reasons),
                         (True, (f"clamav {FOUND}",)))

    @defer.inlineCallbacks
    def test_a_big_message_read_in_threads(self):
        filler = with_attachment(b"a.bin", bytes(range(256)) * 2048)  # ~700 KB encoded
        data = multipart(b"big", filler, IN_ATTACHMENT, header=TOP + b"MIME-Version: 1.0\r\n")
        self.assertGreater(len(data), 10 * INLINE)
        verdict = yield self.scan(data)
        self.assertEqual(verdict.finding.reasons, (f"clamav {FOUND}",))
        clean = yield self.scan(multipart(b"big", filler, header=TOP))
        self.assertFalse(clean.finding.spam)

    @defer.inlineCallbacks
    def test_clamd_stopped(self):
        self.clamd.stop()
        for on_error, action in (("tempfail", Action("tempfail")), ("accept", NONE)):
            verdict = yield self.scan(IN_ATTACHMENT, on_error)
            self.assertEqual((verdict.finding.spam, verdict.finding.action,
                              verdict.finding.reasons), (False, action, ("clamav unscanned",)))
        self.assertEqual(len(self.lines), 2, self.lines)  # (and no factory lines)
        self.assertIn(f"clamav {self.clamd.endpoint}: cannot connect: ", self.lines[0])

    @defer.inlineCallbacks
    def test_a_clamd_that_never_answers(self):
        path = str(self.clamd.dir / "silent.sock")
        port = reactor.listenUNIX(path, protocol.Factory.forProtocol(protocol.Protocol))
        self.addCleanup(port.stopListening)
        for on_error, action in (("tempfail", Action("tempfail")), ("accept", NONE)):
            verdict = yield self.scan(CLEAN, on_error, f"unix:{path}", timeout=0.3)
            self.assertEqual((verdict.finding.action, verdict.finding.reasons),
                             (action, ("clamav unscanned",)))
        self.assertEqual(self.lines[-1], f"clamav unix:{path}: no reply in 0.3s; message "
                                         "from 127.0.0.1 accepted unscanned (on_error accept)")


class SMTPTests(unittest.TestCase):
    """The real server with [antispam.clamav] and the real clamd, through SMTP."""

    def setUp(self):
        self.clamd = started_clamd(self)

    def server(self, **clamav):
        server = MailServerProcess(extra={"antispam": {
            "clamav": {"endpoint": self.clamd.endpoint, **clamav}}})
        self.addCleanup(server.cleanup)
        return server.start()

    def test_clean_and_eicar(self):
        server = self.server()
        self.assertEqual(server.send(CLEAN)[0], 250)
        [path] = server.maildir_files()
        self.assertIn("X-Mailsrv-Spam: no; reasons=-\n", path.read_text())
        self.assertEqual(server.send(IN_ZIP),
                         (554, f"5.7.1 Virus found: {FOUND}".encode()))
        self.assertEqual(server.send(IN_ATTACHMENT)[0], 554)
        self.assertEqual(len(server.maildir_files()), 1)
        server.wait_for_log(f"refused message from 127.0.0.1 sender=<x@remote.test>: "
                            f"X-Mailsrv-Spam: yes; reasons=clamav {FOUND}")

    def test_clamd_stopped(self):
        server = self.server()
        self.clamd.stop()
        code, text = server.send(CLEAN)
        self.assertEqual((code, text[:5]), (451, b"4.7.1"))
        self.assertEqual(server.maildir_files(), [])
        server.wait_for_log(f"clamav {self.clamd.endpoint}: cannot connect: ")
        self.clamd.start()  # the client's retry gets through
        self.assertEqual(server.send(CLEAN)[0], 250)

    def test_clamd_stopped_accept(self):
        server = self.server(on_error="accept")
        self.clamd.stop()
        self.assertEqual(server.send(IN_ATTACHMENT)[0], 250)
        [path] = server.maildir_files()
        self.assertIn("X-Mailsrv-Spam: no; reasons=clamav unscanned\n", path.read_text())
        server.wait_for_log(f"clamav {self.clamd.endpoint}: cannot connect: ")
        server.wait_for_log("accepted unscanned (on_error accept)")
