"""
DKIM verification (RFC 6376) of one message, done once and shared by the
checks that need it ([antispam.dkim] reports it, [antispam.dmarc] looks
for an aligned pass): L{Verifier.verify} through L{hooks.Message.shared}.

dkimpy does the canonicalisation and the cryptography, in three steps so
that no thread waits for DNS and the reactor does no hashing:

  1. read the message, parse its header, find the signatures (at most
     L{MAX_SIGNATURES}) and the From: fields: in a thread, or at once for
     a small message (L{INLINE});
  2. on the reactor: look up each signature's key (a TXT record at
     SELECTOR._domainkey.DOMAIN) through our cached resolver;
  3. in a thread: verify each signature against the keys found.

RFC 8301's limits: RSA keys under 1024 bits fail (dkimpy's C{minkey}),
keys over L{MAX_KEY_BITS} are not used (their cost would be the sender's
to choose), and rsa-sha1 signatures are not accepted.

An ARC chain (RFC 8617: the ARC-Seal, ARC-Message-Signature and
ARC-Authentication-Results sets that forwarders add) is verified the same
way, its keys looked up with the signatures'; a chain of more than
L{MAX_ARC_SETS} sets fails unread.
"""

import functools
from dataclasses import dataclass

import dkim
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.util import InvalidTagValueList, parse_tag_value
from twisted.internet import defer, threads

from mailsrv.dns import TemporaryDNSError
from mailsrv.gather import gather
from mailsrv.policy.authentication import AuthResult

MAX_SIGNATURES = 5  # verified per message; RFC 6376 6.1: a verifier MAY limit them
MAX_KEY_BITS = 4096  # RFC 8301 3.2: verifiers MUST validate 1024 to 4096
MAX_ARC_SETS = 10  # RFC 8617 allows 50; real chains have two or three
# Keys looked up per message, all at once: a sender's slow DNS costs one
# lookup's time, not one per signature (a chain's sets share one key or two).
MAX_KEY_LOOKUPS = 8
MAX_CONCURRENT = 2  # messages read and verified at once: each is held whole in memory
# A message this small is read on the reactor thread, as the content
# filters read theirs (hooks.INLINE): dkimpy splits a 16 KiB message's
# header in about 0.1 ms, less than a thread hop; keys and hashing still wait
# for the resolver and a thread.
INLINE = 16 << 10
_verifying = defer.DeferredSemaphore(MAX_CONCURRENT)


@dataclass(frozen=True)
class Signature:
    """
    One DKIM-Signature's outcome.

    @ivar domain: its C{d=} (lower case), "" when unreadable.
    @ivar selector: its C{s=}.
    @ivar result: pass, fail, neutral, temperror or permerror (RFC 8601 2.7.1).
    @ivar why: what went wrong, for the log and the header's comment ("" on pass).
    @ivar b: the start of its C{b=}, which tells signatures of one domain apart
        (RFC 6008).
    """

    domain: str
    selector: str
    result: str
    why: str = ""
    b: str = ""

    def auth_result(self):
        properties = [("header.d", self.domain), ("header.s", self.selector)]
        if self.b:
            properties.append(("header.b", self.b))
        return AuthResult("dkim", self.result, tuple(properties), self.why)


@dataclass(frozen=True)
class Verified:
    """
    What verification found in one message.

    @ivar signatures: the L{Signature}s verified, in header order.
    @ivar senders: the values of its From: fields (text), for DMARC.
    @ivar skipped: signatures past L{MAX_SIGNATURES}, not verified.
    @ivar error: why the header could not be read, else "".
    @ivar arc: the ARC chain's L{AuthResult} (C{arc=none}: no chain).
    @ivar sealer: the domain of the newest ARC-Seal of a chain that passes, else "".
    """

    signatures: tuple = ()
    senders: tuple = ()
    skipped: int = 0
    error: str = ""
    arc: AuthResult = AuthResult("arc", "none")
    sealer: str = ""

    def results(self):
        """The L{AuthResult}s to report: each signature's, and the ARC chain's if any."""
        found = tuple(signature.auth_result() for signature in self.signatures)
        return found + ((self.arc,) if self.arc.result != "none" else ())

    def passed(self):
        """The domains of the signatures that passed."""
        return [s.domain for s in self.signatures if s.result == "pass"]


class Verifier:
    """
    @param resolver: the L{mailsrv.dns.Resolver} keys are looked up with.
    """

    def __init__(self, resolver, max_signatures=MAX_SIGNATURES):
        self.resolver = resolver
        self.max_signatures = max_signatures

    def verify(self, message):
        """A Deferred of the message's L{Verified}, worked out once per message."""
        return message.shared("dkim", lambda: self._start(message))

    def _start(self, message):
        """
        A small message is read at once, and one with nothing to verify
        (most mail) is done then, with no Deferred of its own; a big one is
        read in a thread, L{MAX_CONCURRENT} at once.
        """
        if message.size > INLINE:
            return _verifying.run(self._read_and_verify, message)
        found = _read(message.open, self.max_signatures)
        return found if isinstance(found, Verified) else self._verified(found)

    def _read_and_verify(self, message):
        d = threads.deferToThread(_read, message.open, self.max_signatures)
        return d.addCallback(lambda found: found if isinstance(found, Verified)
                             else self._verified(found))

    @defer.inlineCallbacks
    def _verified(self, found):
        """The signatures and chain that L{_read} found, with their keys, checked in a thread."""
        checker, senders, signed, skipped, chain = found
        pairs = [(domain, selector) for _, domain, selector, _ in signed if domain]
        names = list(dict.fromkeys(f"{selector}._domainkey.{domain}" for domain, selector
                                   in pairs + (chain.keys if chain else [])))
        names = names[:MAX_KEY_LOOKUPS]  # (the rest: no key, as if unpublished)
        answers = yield gather([self.resolver.txt(name).addErrback(_temporary)
                                for name in names])
        keys = dict(zip(names, answers))
        signatures, (arc, sealer) = yield threads.deferToThread(_check_all, checker, signed,
                                                                chain, keys)
        return Verified(tuple(signatures), senders, skipped, arc=arc, sealer=sealer)


def _read(open_message, limit):
    """
    The message's From: values and signatures (in a thread for a big one), as
    C{(dkimpy's DKIM, senders, [(index, domain, selector, problem)], skipped)};
    a L{Verified} when there is nothing to verify.
    """
    with open_message() as f:
        data = f.read()
    end = data.find(b"\r\n\r\n")
    header = data if end < 0 else data[:end + 2]
    lowered = header.lower()
    signed_at_all = b"dkim-signature" in lowered or b"arc-" in lowered
    try:  # (unsigned, most mail: the header alone is read, for its From:)
        checker = dkim.DKIM(data if signed_at_all else header, minkey=1024)
    except dkim.DKIMException as e:
        return Verified(error=f"unreadable header: {e}")
    senders = tuple(value.decode("utf-8", "replace").strip()
                    for name, value in checker.headers if name.lower() == b"from")
    fields = [value for name, value in checker.headers if name.lower() == b"dkim-signature"]
    chain = _Chain.of(data, checker.headers)
    if not fields and chain is None:
        return Verified(senders=senders)
    signed = []
    for index, value in enumerate(fields[:limit]):
        domain = selector = problem = ""
        try:
            tags = parse_tag_value(value)
            domain = tags.get(b"d", b"").decode("ascii").lower().rstrip(".")
            selector = tags.get(b"s", b"").decode("ascii").lower()
            if tags.get(b"a", b"").lower() == b"rsa-sha1":
                problem = "rsa-sha1 is not accepted (RFC 8301)"
            elif not (domain and selector):
                problem = "no d= or s="
        except (InvalidTagValueList, UnicodeDecodeError) as e:
            problem = f"unreadable signature: {e}"
        signed.append((index, domain, selector, problem))
    return checker, senders, signed, max(0, len(fields) - limit), chain


class _Chain:
    """
    A message's ARC chain, to verify: the message, its sets' keys
    (C{(domain, selector)}) and, when it is not to be verified at all, why
    (C{problem}).
    """

    def __init__(self, data, keys=(), problem=""):
        self.data = data
        self.keys = list(keys)
        self.problem = problem

    @classmethod
    def of(cls, data, headers):
        """The chain of a message with C{headers} (dkimpy's), or L{None} when it has none."""
        fields = [value for name, value in headers
                  if name.lower() in (b"arc-seal", b"arc-message-signature")]
        if not fields:
            return None
        seals = sum(1 for name, _ in headers if name.lower() == b"arc-seal")
        if seals > MAX_ARC_SETS:
            return cls(data, problem=f"{seals} ARC sets, more than {MAX_ARC_SETS}")
        keys = []
        for value in fields:
            try:
                tags = parse_tag_value(value)
                key = (tags[b"d"].decode("ascii").lower().rstrip("."),
                       tags[b"s"].decode("ascii").lower())
            except (InvalidTagValueList, KeyError, UnicodeDecodeError):
                continue  # (dkimpy finds it broken)
            if all(key) and key not in keys:
                keys.append(key)
        return cls(data, keys)

    def result(self, keys):
        """In a thread: the chain's L{AuthResult}, and its newest sealer's domain if it passes."""
        if self.problem:
            return AuthResult("arc", "fail", (), self.problem), ""

        def lookup(name, timeout=5):
            records = keys.get(name.decode("ascii", "replace").rstrip(".").lower())
            if not records or isinstance(records, TemporaryDNSError):
                return None
            return records[0].encode("ascii", "replace")
        try:
            cv, sets, why = dkim.ARC(self.data, minkey=1024).verify(dnsfunc=lookup)
        except dkim.DKIMException as e:
            return AuthResult("arc", "fail", (), _short(e)), ""
        except Exception as e:  # (dkimpy's parsers raise more than its own errors)
            return AuthResult("arc", "fail", (), type(e).__name__), ""
        if cv == dkim.CV_Pass:
            newest = sets[0]
            sealer = newest.get("as-domain", b"").decode("ascii", "replace").lower()
            return AuthResult("arc", "pass", (), f"i={newest['instance']} d={sealer}"), sealer
        if cv == dkim.CV_None:
            return Verified.arc, ""
        return AuthResult("arc", "fail", (), _short(why)), ""


def _check_all(checker, signed, chain, keys):
    """In a thread: the L{Signature} of each signed entry, and the ARC chain's result."""
    signatures = [_check(checker, index, domain, selector, problem, keys)
                  for index, domain, selector, problem in signed]
    return signatures, chain.result(keys) if chain else (Verified.arc, "")


def _check(checker, index, domain, selector, problem, keys):
    if problem:
        return Signature(domain, selector, "neutral" if domain else "permerror", problem)
    name = f"{selector}._domainkey.{domain}"
    records = keys.get(name)
    if isinstance(records, TemporaryDNSError):
        return Signature(domain, selector, "temperror", f"key lookup: {records}")
    if not records:
        return Signature(domain, selector, "permerror", f"no key at {name}")
    record = records[0].encode("ascii", "replace")
    problem = _key_problem(name, record)
    if problem:
        return Signature(domain, selector, "permerror", problem)
    b = _b_start(checker, index)
    try:
        good = checker.verify(idx=index, dnsfunc=lambda _name, timeout=5: record)
    except dkim.KeyFormatError as e:  # (a key too short: RFC 8301)
        return Signature(domain, selector, "permerror", str(e), b)
    except dkim.ValidationError as e:
        result = "fail" if "body hash mismatch" in str(e) else "neutral"
        return Signature(domain, selector, result, _short(e), b)
    except dkim.DKIMException as e:
        return Signature(domain, selector, "neutral", _short(e), b)
    if good:
        return Signature(domain, selector, "pass", "", b)
    return Signature(domain, selector, "fail", "signature does not verify", b)


def _temporary(failure):
    """A key lookup that failed for now is its answer (temperror), not the message's failure."""
    failure.trap(TemporaryDNSError)
    return failure.value


@functools.lru_cache(maxsize=1024)
def _key_problem(name, record):
    """What is wrong with a key record ("" for nothing), worked out once per record."""
    try:
        _, bits, _, _ = dkim.evaluate_pk(name, record)
    except dkim.DKIMException as e:
        return f"bad key: {e}"
    except Exception as e:  # (dkimpy's key parsers raise more than its own errors)
        return f"bad key: {type(e).__name__}"
    if bits is not None and bits > MAX_KEY_BITS:
        return f"key of {bits} bits is too long"
    return ""


def use_openssl():
    """
    Have dkimpy check RSA signatures with OpenSSL (C{cryptography}) rather
    than its own Python arithmetic: 0.05 ms a signature instead of 0.45,
    all of it holding the interpreter lock that the reactor needs. dkimpy
    still reads, canonicalizes and hashes the message; only the last step,
    RSASSA-PKCS1-v1_5 on the hash (RFC 8017 8.2.2), changes hands, with the
    same answer. Process-wide (dkimpy's module attribute): called once, by
    service.build_mail_server.
    """
    dkim.RSASSA_PKCS1_v1_5_verify = _openssl_rsa_verify


_HASHES = {"sha256": hashes.SHA256, "sha1": hashes.SHA1}


def _openssl_rsa_verify(digest, signature, public_key):
    """dkimpy's C{RSASSA_PKCS1_v1_5_verify(hash, signature, public_key)}, by OpenSSL."""
    key = _rsa_key(public_key["modulus"], public_key["publicExponent"])
    algorithm = _HASHES[digest.name]()
    try:
        key.verify(signature, digest.digest(), padding.PKCS1v15(),
                   utils.Prehashed(algorithm))
    except InvalidSignature:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _rsa_key(modulus, exponent):
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def _b_start(checker, index):
    """The first 8 characters of signature C{index}'s b= (RFC 6008)."""
    fields = [value for name, value in checker.headers if name.lower() == b"dkim-signature"]
    try:
        b = parse_tag_value(fields[index]).get(b"b", b"")
    except InvalidTagValueList:
        return ""
    return b"".join(b.split())[:8].decode("ascii", "replace")


def _short(error):
    text = str(error)
    if text.startswith("body hash mismatch"):
        return "body hash mismatch"
    return text[:120]
