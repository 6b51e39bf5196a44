"""
DKIM signing (mailsrv/signing.py, docs/dkim.md): the [[dkim.sign]] tables,
the keys check-config reads, the signatures (verified by dkimpy against
the records `mailsrv dkim keygen` prints), and where they are made: the
mail of clients that stand as it is received, and our bounces.
"""

import base64
import hashlib
import os
import re
from io import BytesIO
from pathlib import Path

import dkim
from cryptography.exceptions import InvalidSignature
from dkim.canonicalization import Relaxed
from hypothesis import example, given, strategies as st
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, utils
from twisted.internet import defer, threads
from twisted.trial import unittest

from mailsrv import config, dkimkeys, signing
from mailsrv.policy.actions import Action
from mailsrv.policy.checks.dkim import DKIMFilter
from mailsrv.policy.dkimverify import Verifier
from mailsrv.policy.hooks import BODY, Message
from mailsrv.policy.listener import ListenerPolicy
from mailsrv.policy.verdict import Verdict
from mailsrv.preflight import dkim_signer
from mailsrv.queue.spool import IncomingMessage
from mailsrv.service import build_mail_server
from mailsrv.smtp import reception
from tests.fuzzing import examples
from tests.helpers import make_settings
from tests.test_filters_dkim import ACTIONS as DKIM_ACTIONS
from tests.test_filters_dkim import Resolver as DKIMResolver
from tests.test_filters_dkim import Session as DKIMSession
from tests.test_filters_dkim import Transaction as DKIMTransaction
from tests.test_smtp.support import (
    PASSWORD,
    connect,
    make_mail_server,
    maildir_messages,
    run_threads_inline,
)

MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: carol@remote.test\r\n"
           b"Subject: signed\r\nDate: Sun, 06 Dec 2026 09:00:00 +0000\r\n"
           b"Message-ID: <1@example.test>\r\n\r\nhello\r\n")


def write_keys(testcase, *kinds):
    """
    Keys of C{kinds} for example.test (selectors s0, s1...) in a new
    folder: C{([[dkim.sign]] tables, the TXT records by DNS name)}.
    """
    folder = Path(testcase.mktemp()).absolute()
    folder.mkdir()
    tables, records = [], {}
    for index, kind in enumerate(kinds):
        key = dkimkeys.generate(kind)
        path = folder / f"{kind}.key"
        dkimkeys.write_key(key, path)
        selector = f"s{index}"
        tables.append({"domain": "example.test", "selector": selector, "key": str(path)})
        records[dkimkeys.record_name("example.test", selector)] = dkimkeys.record(key)
    return tables, records


def verifies(message, records, index=0):
    """Whether dkimpy finds the C{index}th DKIM-Signature of C{message} good."""
    def dnsfunc(name, timeout=5):
        text = records.get(name.decode().rstrip("."))
        return text.encode() if text else None
    try:
        return dkim.DKIM(message).verify(idx=index, dnsfunc=dnsfunc)
    except dkim.DKIMException:
        return False


def rfc_verifies(message, public_key):
    """
    Whether the topmost DKIM-Signature of C{message} (relaxed/relaxed,
    SHA-256) is good, checked as RFC 6376 3.4.2, 3.4.4 and 3.7 say, from
    scratch: our signer hashes through dkimpy's code, and so does its
    verifier, so this one shares nothing with it.
    """
    head, _, body = message.partition(b"\r\n\r\n")
    fields = re.findall(rb"^([^:\s]+):([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head, re.MULTILINE)

    def relaxed(name, value):
        value = re.sub(rb"[ \t]+", b" ", re.sub(rb"\r\n(?=[ \t])", b"", value)).strip(b" ")
        return name.lower() + b":" + value

    name, value = next((n, v) for n, v in fields if n.lower() == b"dkim-signature")
    tags = dkimkeys.tags(value.decode())
    lines = [re.sub(rb"[ \t]+", b" ", line).rstrip(b" ") for line in body.split(b"\r\n")]
    while lines and not lines[-1]:
        lines.pop()
    canonical_body = b"".join(line + b"\r\n" for line in lines)
    if base64.b64encode(hashlib.sha256(canonical_body).digest()).decode() != tags["bh"]:
        return False
    hashed, taken = [], {}
    for wanted in tags["h"].lower().split(":"):  # the last unused instance first
        found = [i for i, (n, _) in enumerate(fields)
                 if n.lower() == wanted.encode() and i < taken.get(wanted, len(fields))]
        if found:
            taken[wanted] = found[-1]
            hashed.append(relaxed(*fields[found[-1]]) + b"\r\n")
    empty_b = re.sub(rb"(\bb=)[^;]*$", rb"\1", value)
    hashed.append(relaxed(name, empty_b))
    signature = base64.b64decode(tags["b"])
    data = hashlib.sha256(b"".join(hashed)).digest()
    try:
        if tags["a"] == "ed25519-sha256":
            public_key.verify(signature, data)
        else:
            public_key.verify(signature, data, padding.PKCS1v15(),
                              utils.Prehashed(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def signatures(message):
    """The DKIM-Signature fields' tags of a message, topmost first."""
    header = message.split(b"\r\n\r\n", 1)[0]
    fields = [field for field in re.sub(rb"\r\n[ \t]", b" ", header).split(b"\r\n")
              if field.lower().startswith(b"dkim-signature:")]
    return [dkimkeys.tags(field.split(b":", 1)[1].decode()) for field in fields]


class ConfigTests(unittest.TestCase):
    def test_tables(self):
        settings = make_settings(self.mktemp(), dkim={"sign": [
            {"domain": "Example.TEST.", "selector": "s2026"},
            {"domain": "example.test", "selector": "e2026", "key": "/etc/keys/e.pem"}]})
        base = settings.path.parent
        self.assertEqual(settings.dkim.sign, (
            config.DKIMSigningKey("example.test", "s2026", base / "dkim/example.test.s2026.key"),
            config.DKIMSigningKey("example.test", "e2026", Path("/etc/keys/e.pem"))))
        self.assertEqual(make_settings(self.mktemp()).dkim.sign, ())

    def test_refused(self):
        for sign, expected in [
            ({"selector": "s1"}, "[dkim.sign #1] domain: missing"),
            ({"domain": "exa mple.test", "selector": "s1"},
             "[dkim.sign #1] domain: 'exa mple.test' is not a domain name"),
            ({"domain": "example.test"}, "[dkim.sign #1] selector: missing"),
            ({"domain": "example.test", "selector": "s_1"},
             "[dkim.sign #1] selector: 's_1' is not a selector"),
            ({"domain": "example.test", "selector": "s1", "keys": "k"},
             "[dkim.sign #1] keys: unknown key"),
        ]:
            with self.assertRaises(config.ConfigError) as caught:
                make_settings(self.mktemp(), dkim={"sign": [sign]})
            self.assertIn(expected, str(caught.exception))
        with self.assertRaises(config.ConfigError) as caught:
            make_settings(self.mktemp(), dkim={"sign": [
                {"domain": "example.test", "selector": "s1"},
                {"domain": "EXAMPLE.test", "selector": "s1"}]})
        self.assertIn("[dkim.sign #2] selector: example.test has two tables for s1",
                      str(caught.exception))


class PreflightTests(unittest.TestCase):
    """check-config, start-up and reload read every key and name its table and problem."""

    def problem(self, path):
        settings = make_settings(self.mktemp(), dkim={"sign": [
            {"domain": "example.test", "selector": "s1", "key": str(path)}]})
        with self.assertRaises(config.ConfigError) as caught:
            dkim_signer(settings)
        return str(caught.exception)

    def test_missing_unreadable_and_no_key(self):
        path = Path(self.mktemp()).absolute()
        self.assertIn(f"[dkim.sign #1] key: cannot read {path}: No such file or directory "
                      "(mailsrv dkim keygen example.test s1 writes it)", self.problem(path))
        path.write_text("not a key\n")
        os.chmod(path, 0o600)
        self.assertIn(f"[dkim.sign #1] key: {path}: not a PEM private key", self.problem(path))

    def test_a_key_others_may_read_is_refused(self):
        tables, _ = write_keys(self, "rsa")
        path = tables[0]["key"]
        os.chmod(path, 0o644)
        self.assertIn(f"[dkim.sign #1] key: {path} is readable by every user (chmod 600",
                      self.problem(path))
        os.chmod(path, 0o640)  # (the server's group may read it)
        settings = make_settings(self.mktemp(), dkim={"sign": tables})
        self.assertEqual(dkim_signer(settings).keys_for("example.test")[0].selector, "s0")

    def test_none_without_tables(self):
        self.assertIsNone(dkim_signer(make_settings(self.mktemp())))


class FromDomainTests(unittest.TestCase):
    def test_table(self):
        for header, expected in [
            (b"From: alice@Example.TEST\r\n", "example.test"),
            (b"from:\r\n \"Alice, A.\" <alice@example.test.>\r\n", "example.test"),
            (b"Subject: x\r\nFROM: Alice <alice@sub.example.test> (work)\r\n",
             "sub.example.test"),
        ]:
            self.assertEqual(signing.from_domain(header), expected, header)

    def test_refused(self):
        for header, expected in [
            (b"Subject: x\r\n", "no From: field"),
            (b"From: a@example.test\r\nFrom: b@example.test\r\n", "2 From: fields"),
            (b"From: a@example.test, b@example.test\r\n", "From: does not hold one address"),
            (b"From: undisclosed\r\n", "From: holds no address with a domain"),
        ]:
            with self.assertRaises(signing.SigningError) as caught:
                signing.from_domain(header)
            self.assertEqual(str(caught.exception), expected, header)


class RelaxedBodyTests(unittest.TestCase):
    @examples(300)
    @given(st.lists(st.sampled_from([b"a", b"b", b" ", b"\t", b"\r\n"]), max_size=40))
    @example([b"a", b" ", b"\t"])
    @example([b"\r\n", b"\r\n"])
    def test_as_dkimpy_makes_it(self, pieces):
        body = b"".join(pieces)
        self.assertEqual(signing.relaxed_body(body), Relaxed.canonicalize_body(body))


class SignerTests(unittest.TestCase):
    def signer(self, *kinds):
        tables, self.records = write_keys(self, *kinds)
        return dkim_signer(make_settings(self.mktemp(), dkim={"sign": tables}))

    def test_both_keys_sign_and_verify(self):
        signature = self.signer("rsa", "ed25519").signature(MESSAGE)
        message = signature + MESSAGE
        found = signatures(message)
        self.assertEqual([(tags["a"], tags["s"], tags["d"], tags["c"]) for tags in found],
                         [("rsa-sha256", "s0", "example.test", "relaxed/relaxed"),
                          ("ed25519-sha256", "s1", "example.test", "relaxed/relaxed")])
        # RFC 6376 5.4.1's fields the message has, From: once more (5.4.2).
        self.assertEqual(found[0]["h"], "from:to:subject:date:message-id:from")
        self.assertTrue(verifies(message, self.records, 0))
        self.assertTrue(verifies(message, self.records, 1))
        tampered = message.replace(b"hello", b"hullo")
        self.assertFalse(verifies(tampered, self.records, 0))
        self.assertFalse(verifies(tampered, self.records, 1))
        added = message.replace(b"\r\n\r\n", b"\r\nFrom: mallory@example.test\r\n\r\n")
        self.assertFalse(verifies(added, self.records, 0))

    def test_an_independent_verifier_agrees(self):
        message = (b"From: Alice <alice@example.test>\r\nTo: carol@remote.test\r\n"
                   b"Subject:   a  \r\n\tfolded   subject \r\nTo: dave@remote.test\r\n"
                   b"X-Unsigned: x\r\n\r\nline with trailing space   \r\n  two\t\tspaces\r\n"
                   b"\r\n\r\n")
        for kind in dkimkeys.KEY_TYPES:
            key = dkimkeys.generate(kind)
            signed = signing.Signer([signing.SigningKey("example.test", "s", key)]).signature(
                message) + message
            self.assertEqual(signatures(signed)[0]["h"], "from:to:subject:to:from")
            self.assertTrue(rfc_verifies(signed, key.public_key()), kind)
            self.assertFalse(rfc_verifies(signed.replace(b"two", b"tw0"), key.public_key()))
            self.assertFalse(rfc_verifies(signed.replace(b"carol", b"c4rol"), key.public_key()))

    def test_our_own_antispam_dkim_passes_them(self):
        run_threads_inline(self)
        signed = self.signer("rsa", "ed25519").signature(MESSAGE) + MESSAGE
        resolver = DKIMResolver({name: (text,) for name, text in self.records.items()})
        check = DKIMFilter(Verifier(resolver), DKIM_ACTIONS.__getitem__)
        verdict = self.successResultOf(check.check(DKIMSession(), DKIMTransaction(),
                                                   Message(len(signed), lambda: BytesIO(signed))))
        self.assertEqual(verdict.finding.reasons, ("dkim pass example.test",))
        self.assertEqual([r.result for r in verdict.finding.results], ["pass", "pass"])

    def test_relaxed_survives_refolding(self):
        message = self.signer("rsa").signature(MESSAGE) + MESSAGE
        refolded = message.replace(b"Subject: signed", b"Subject:  \r\n\tsigned")
        self.assertTrue(verifies(refolded, self.records))

    def test_keys_of_the_domain_or_its_nearest_parent(self):
        rsa, ed25519 = dkimkeys.generate("rsa"), dkimkeys.generate("ed25519")
        keys = [signing.SigningKey("example.test", "a", rsa),
                signing.SigningKey("mail.example.test", "b", rsa),
                signing.SigningKey("example.test", "c", ed25519)]
        signer = signing.Signer(keys)
        self.assertEqual(signer.keys_for("example.test"), [keys[0], keys[2]])
        self.assertEqual(signer.keys_for("mail.example.test"), [keys[1]])
        self.assertEqual(signer.keys_for("a.b.example.test"), [keys[0], keys[2]])
        self.assertEqual(signer.keys_for("elsewhere.test"), [])
        self.assertEqual(signer.keys_for("test"), [])
        self.assertEqual(repr(keys[2]), "SigningKey('example.test', 'c', b'ed25519-sha256')")

    def test_no_body_and_no_header(self):
        signer = self.signer("rsa")
        header_only = MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n"
        self.assertTrue(verifies(signer.signature(header_only) + header_only, self.records))
        with self.assertRaises(signing.SigningError):
            signer.signature(b"\r\nFrom: alice@example.test\r\n")  # (that is the body)

    def test_nothing_for_a_domain_without_key(self):
        other = MESSAGE.replace(b"alice@example.test", b"alice@other.test")
        self.assertEqual(self.signer("rsa").signature(other), b"")


class Standing:
    """A client that stands (C{reason}) or not, as the signing question asks."""

    mode = "trusted"

    def __init__(self, reason):
        self.reason = reason

    def reason_now(self, session):
        return self.reason

    def skips_antispam(self, session):
        return defer.succeed(False)


class Prefixing:
    """A body check that finds every message spam, with the subject action."""

    def check(self, session, transaction, message):
        return Verdict.found(True, Action("subject"), ("test",), ())


class ReceptionTests(unittest.TestCase):
    """Mail is signed before it is queued, when it leaves from a client that stands."""

    def setUp(self):
        run_threads_inline(self)
        self.tables, self.records = write_keys(self, "rsa", "ed25519")
        self.server = self.make_server({"trusted": ["192.0.2.20"]})
        self.logged = []
        self.patch(reception.log, "info", self.log)

    def log(self, text, **fields):
        if text.startswith("not signed"):
            self.logged.append(text.format(**fields))

    def make_server(self, relay):
        return make_mail_server(self, relay=relay, dkim={"sign": self.tables},
                                delivery={"transports": {"gateway.test": "10.0.0.5"}})

    def send(self, ip="192.0.2.10", login=False, to=b"carol@remote.test", message=MESSAGE,
             sender=b"alice@example.test"):
        """The spooled copy of C{message}, or L{None} when none was queued."""
        conn = connect(self.server, ip=ip)
        conn.send(b"EHLO client.test\r\n")
        if login:
            plain = base64.b64encode(f"\0alice@example.test\0{PASSWORD}".encode())
            self.assertEqual(conn.send(b"AUTH PLAIN " + plain + b"\r\n")[:3], b"235")
        reply = conn.send(b"MAIL FROM:<" + sender + b">\r\nRCPT TO:<" + to + b">\r\nDATA\r\n"
                          + message + b".\r\n")
        self.assertIn(b"250 2.0.0 Ok: queued as ", reply)
        queue_id = reply.rsplit(b" ", 1)[1].strip().decode()
        path = self.server.spool.message_path(queue_id)
        return path.read_bytes() if path.exists() else None

    def assertSigned(self, stored, count=2):
        self.assertEqual(len(signatures(stored)), count)
        for index in range(count):
            self.assertTrue(verifies(stored, self.records, index), index)

    def test_signed_when_authenticated(self):
        stored = self.send(ip="127.0.0.1", login=True)
        self.assertSigned(stored)
        head, _, rest = stored.partition(b"DKIM-Signature:")
        self.assertTrue(head.startswith(b"Return-Path: <alice@example.test>\r\nReceived: "))
        self.assertTrue(stored.endswith(MESSAGE))
        self.assertEqual(self.logged, [])

    def test_signed_for_a_trusted_ip_and_a_pop_window(self):
        self.assertSigned(self.send(ip="192.0.2.20"))
        self.server.sessions.record_login("alice@example.test", "192.0.2.30", "pop3")
        self.assertSigned(self.send(ip="192.0.2.30"))

    def test_not_when_anonymous(self):
        # A From: of ours, forged: a relay domain of ours takes anyone's mail onward.
        stored = self.send(to=b"x@gateway.test", sender=b"x@remote.test")
        self.assertEqual(signatures(stored), [])
        self.assertTrue(stored.endswith(MESSAGE))

    def test_an_open_relay_signs_only_what_a_login_sends(self):
        self.server = self.make_server({"mode": "anyone", "trusted": ["192.0.2.20"]})
        self.assertEqual(signatures(self.send(ip="192.0.2.20")), [])
        self.assertSigned(self.send(ip="127.0.0.1", login=True))

    def test_not_for_a_from_domain_without_key(self):
        other = MESSAGE.replace(b"alice@example.test", b"alice@other.test")
        stored = self.send(ip="192.0.2.20", message=other)
        self.assertEqual(signatures(stored), [])
        self.assertEqual(self.logged, [])

    def test_not_for_mail_that_stays(self):
        self.send(ip="192.0.2.20", to=b"bob@example.test")
        [stored] = maildir_messages(self.server, "bob@example.test")
        self.assertEqual(signatures(stored), [])

    def test_a_message_that_cannot_be_signed_goes_unsigned(self):
        stored = self.send(ip="192.0.2.20", message=MESSAGE.replace(b"From:", b"X-From:"))
        self.assertEqual(signatures(stored), [])
        self.assertEqual(len(self.logged), 1)
        self.assertRegex(self.logged[0], r"^not signed \w+: no From: field$")

    def test_a_signing_error_costs_no_message(self):
        def broken(message):
            raise dkim.KeyFormatError("invalid ed25519 private key or format")
        self.patch(self.server.signer, "signature", broken)
        stored = self.send(ip="192.0.2.20")
        self.assertTrue(stored.endswith(MESSAGE))
        self.assertEqual(signatures(stored), [])
        self.assertRegex(self.logged[0], r"^not signed \w+: invalid ed25519 private key")

    def test_bigger_messages_are_signed_in_a_thread(self):
        signed_in = []
        self.patch(threads, "deferToThread", lambda f, *args: signed_in.append(f.__name__)
                   or defer.maybeDeferred(f, *args))
        line = b"0123456789abcdef" * 4 + b"\r\n"
        for count in (100, 400, IncomingMessage.IN_MEMORY // len(line) + 1):  # 6 KB, 26, 256+
            message = MESSAGE + line * count
            stored = self.send(ip="192.0.2.20", message=message)
            self.assertSigned(stored)
            self.assertTrue(stored.endswith(message))
        self.assertEqual(signed_in.count("_copy"), 2)  # (not the 6 KB one)

    def test_not_when_the_subject_is_prefixed(self):
        conn = connect(self.server, ip="192.0.2.20")
        factory = conn.protocol.factory
        factory.policy = ListenerPolicy(factory.policy.gates, {BODY: [Prefixing()]},
                                        Standing("trusted IP 192.0.2.20"))
        conn.send(b"EHLO client.test\r\n")
        reply = conn.send(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<carol@remote.test>\r\n"
                          b"DATA\r\n" + MESSAGE + b".\r\n")
        queue_id = reply.rsplit(b" ", 1)[1].strip().decode()
        stored = self.server.spool.message_path(queue_id).read_bytes()
        self.assertIn(b"Subject: [SPAM] signed", stored)
        self.assertEqual(signatures(stored), [])
        self.assertEqual(self.logged, [f"not signed {queue_id}: the Subject is prefixed "
                                       "(an anti-spam action)"])


class ARCSealTests(unittest.TestCase):
    """Mail from the outside that we forward (an alias to a remote address) is sealed."""

    def setUp(self):
        run_threads_inline(self)
        self.tables, self.records = write_keys(self, "rsa")
        self.server = make_mail_server(self, dkim={"sign": self.tables},
                                       antispam={"dkim": {}})
        self.logged = []
        self.patch(reception.log, "info", lambda text, **fields: self.logged.append(
            text.format(**fields)) if text.startswith("not sealed") else None)

    def send(self, to):
        conn = connect(self.server, ip="192.0.2.10")
        conn.send(b"EHLO client.test\r\n")
        reply = conn.send(b"MAIL FROM:<x@remote.test>\r\nRCPT TO:<" + to + b">\r\nDATA\r\n"
                          + MESSAGE + b".\r\n")
        self.assertIn(b"250 2.0.0 Ok: queued as ", reply)
        return reply.rsplit(b" ", 1)[1].strip().decode()

    def arc_verify(self, message):
        def dnsfunc(name, timeout=5):
            text = self.records.get(name.decode().rstrip("."))
            return text.encode() if text else None
        return dkim.arc_verify(message, dnsfunc=dnsfunc)

    def test_forwarded_mail_is_sealed_and_verifies(self):
        queue_id = self.send(b"outside@example.test")
        stored = self.server.spool.message_path(queue_id).read_bytes()
        self.assertTrue(stored.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; "
                                          b"d=example.test; s=s0;"), stored[:200])
        self.assertIn(b"ARC-Authentication-Results: i=1; mail.example.test;", stored)
        self.assertTrue(stored.endswith(MESSAGE))
        cv, _, why = self.arc_verify(stored)
        self.assertEqual((cv, why), (dkim.CV_Pass, "success"))
        cv, _, _ = self.arc_verify(stored.replace(b"hello", b"hullo"))
        self.assertEqual(cv, dkim.CV_Fail)
        self.assertEqual(self.logged, [])

    def test_mail_that_stays_is_not_sealed(self):
        self.send(b"bob@example.test")
        [stored] = maildir_messages(self.server, "bob@example.test")
        self.assertNotIn(b"ARC-Seal", stored)

    def test_not_without_a_result_of_ours(self):
        self.server = make_mail_server(self, dkim={"sign": self.tables})
        queue_id = self.send(b"outside@example.test")
        stored = self.server.spool.message_path(queue_id).read_bytes()
        self.assertNotIn(b"ARC-Seal", stored)
        self.assertEqual(self.logged, [])

    def test_a_sealing_error_costs_no_message(self):
        def broken(message, hostname):
            raise dkim.ParameterError("Maximum instance tag value exceeded")
        self.patch(self.server.signer, "seal", broken)
        queue_id = self.send(b"outside@example.test")
        stored = self.server.spool.message_path(queue_id).read_bytes()
        self.assertTrue(stored.endswith(MESSAGE))
        self.assertEqual(self.logged, [f"not sealed {queue_id}: Maximum instance tag value "
                                       "exceeded"])


class BounceTests(unittest.TestCase):
    """Our bounces and delay notices that leave are signed as the hostname's domain."""

    def setUp(self):
        run_threads_inline(self)
        tables, self.records = write_keys(self, "rsa")
        self.server = make_mail_server(self, dkim={"sign": tables})
        self.runner = queue_runner(self.server)

    def bounce(self, sender):
        d = self.runner.bounce_refused("Q1", sender, ["x@remote.test"],
                                       "mailsrv: 550 5.7.1 refused", MESSAGE)
        self.successResultOf(d)

    def test_a_bounce_that_leaves_is_signed(self):
        self.bounce("carol@remote.test")
        [path] = [p for p in self.server.spool.msg.iterdir()]
        stored = path.read_bytes()
        self.assertIn(b"From: Mail Delivery System <MAILER-DAEMON@mail.example.test>", stored)
        [tags] = signatures(stored)
        self.assertEqual(tags["d"], "example.test")  # (mail.example.test's parent)
        self.assertTrue(verifies(stored, self.records))

    def test_one_delivered_here_is_not(self):
        self.bounce("alice@example.test")
        [stored] = maildir_messages(self.server, "alice@example.test")
        self.assertEqual(signatures(stored), [])


def queue_runner(server):
    """The QueueRunner start-up builds for C{server} (make_mail_server puts a spy)."""
    return build_mail_server(server.settings, server.clock).queue_runner
