"""
SASL PLAIN (RFC 4616), LOGIN and EXTERNAL (RFC 4422 appendix A) exchanges,
shared by SMTP AUTH (RFC 4954), POP3 AUTH (RFC 5034) and IMAP AUTHENTICATE
(RFC 3501), as pure objects: a protocol feeds them the client's lines and
gets back either the next challenge or what to check (a password, or the
TLS client certificate for EXTERNAL), and turns a L{SASLError} into its
own reply. Nothing here logs: the lines carry passwords.
"""

import base64
import binascii
from dataclasses import dataclass

# The longest client response taken (base64 text): a PLAIN response with a
# 255-octet name and a 1000-octet password fits with room to spare.
MAX_RESPONSE = 2048


class SASLError(Exception):
    """The exchange ends without a password check; C{str()} is for the client."""


class Cancelled(SASLError):
    """The client sent C{*} (all three RFCs: the command fails)."""


class Malformed(SASLError):
    """Not base64, too long, or not what the mechanism expects."""


class Forbidden(SASLError):
    """Acting for another identity (an authzid other than the user's own)."""


@dataclass(frozen=True)
class Challenge:
    """Send this (base64) challenge and pass the client's next line to C{respond}."""

    text: str


@dataclass(frozen=True)
class Credentials:
    """The exchange is complete: check these (bytes, as the client sent them)."""

    username: bytes
    password: bytes


@dataclass(frozen=True)
class Authorization:
    """
    The EXTERNAL exchange is complete: log in as the user the client's
    certificate names, who must be C{authzid} when that is not empty.
    """

    authzid: bytes


def decode_response(text):
    """
    One base64 client response. C{*} cancels the exchange; C{=} is an
    empty initial response (RFC 4954 section 4, RFC 4959).
    """
    if text == "*":
        raise Cancelled("Authentication cancelled")
    if len(text) > MAX_RESPONSE:
        raise Malformed("Response too long")
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Malformed("Cannot decode base64 response")


def decode_plain(message):
    """
    C{authzid NUL authcid NUL password} -> C{Credentials}. Acting for
    another identity is not offered.
    """
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise Malformed("Malformed PLAIN response")
    authzid, username, password = parts
    if authzid and authzid != username:
        raise Forbidden("Authentication credentials invalid")
    return Credentials(username, password)


class _OneMessage:
    """A mechanism of one client message: the initial response, or after an empty challenge."""

    def start(self, initial):
        """
        @param initial: the initial response on the command line, or L{None}.
        @return: a L{Challenge}, or what C{respond} returns.
        """
        if initial is None:
            return Challenge("")
        return self.respond(initial)


class Plain(_OneMessage):
    name = "PLAIN"

    def respond(self, line):
        return decode_plain(decode_response(line))


class Login:
    """The LOGIN mechanism: asks for the user name, then the password."""

    name = "LOGIN"
    USERNAME = Challenge(base64.b64encode(b"Username:").decode("ascii"))
    PASSWORD = Challenge(base64.b64encode(b"Password:").decode("ascii"))

    def __init__(self):
        self.username = None

    def start(self, initial):
        if initial is None:
            return self.USERNAME
        return self.respond(initial)

    def respond(self, line):
        value = decode_response(line)
        if self.username is None:
            self.username = value
            return self.PASSWORD
        return Credentials(self.username, value)


class External(_OneMessage):
    """
    The EXTERNAL mechanism: the TLS client certificate has authenticated
    the client; its one message is the identity to act as, usually empty.
    """

    name = "EXTERNAL"

    def respond(self, line):
        return Authorization(decode_response(line))


# None offers CRAM-MD5 or APOP, which need plaintext passwords.
PASSWORD_MECHANISMS = {mechanism.name: mechanism for mechanism in (Plain, Login)}


def mechanisms(certificate):
    """
    The mechanisms a connection where passwords may be sent offers, by
    name, in the order they are advertised.

    @param certificate: whether the client presented a verified
        certificate that vouches for a login (EXTERNAL).
    """
    if certificate:
        return {**PASSWORD_MECHANISMS, External.name: External}
    return PASSWORD_MECHANISMS
