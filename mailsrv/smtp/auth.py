"""
SASL PLAIN (RFC 4616) and LOGIN exchanges for SMTP AUTH (RFC 4954), as pure
objects: the server feeds them the client's lines and gets back either the
next challenge or the credentials to check. Nothing here logs: the lines
carry passwords.
"""

import base64
import binascii
from dataclasses import dataclass

from mailsrv.smtp.commands import CommandError


@dataclass(frozen=True)
class Challenge:
    """Send C{334 <text>} and pass the client's next line to C{respond}."""

    text: str


@dataclass(frozen=True)
class Credentials:
    """The exchange is complete: check these (bytes, as the client sent them)."""

    username: bytes
    password: bytes


def decode_response(text):
    """
    One base64 client response. C{*} cancels the exchange (RFC 4954 section
    4); C{=} is an empty initial response.
    """
    if text == "*":
        raise CommandError(501, "5.7.0", "Authentication cancelled")
    if text == "=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CommandError(501, "5.5.2", "Cannot decode base64 response")


def decode_plain(message):
    """
    C{authzid NUL authcid NUL password} -> C{Credentials}. Acting for
    another identity (an authzid other than the user's own) is not offered.
    """
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise CommandError(501, "5.5.2", "Malformed PLAIN response")
    authzid, username, password = parts
    if authzid and authzid != username:
        raise CommandError(535, "5.7.8", "Authentication credentials invalid")
    return Credentials(username, password)


class Plain:
    name = "PLAIN"

    def start(self, initial):
        """
        @param initial: the initial response on the AUTH line, or L{None}.
        @return: a L{Challenge} or L{Credentials}.
        """
        if initial is None:
            return Challenge("")
        return self.respond(initial)

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


MECHANISMS = {mechanism.name: mechanism for mechanism in (Plain, Login)}
