"""
The actions an admin picks for a check's findings ([antispam.*] action):
none, header, subject, move:FOLDER, forward:ADDRESS, delete, tempfail,
reject; and for mail leaving from our own users ([antispam]
outbound_action) hold: queued for an admin to release. The actions of
several checks combine by a fixed precedence (the strongest wins);
L{mailsrv.policy.apply} carries out the result, never a check.
"""

from dataclasses import dataclass

from mailsrv.address import is_address

# Strongest first (a temporary refusal is weaker than a permanent one, and
# stronger than anything that accepts the message).
PRECEDENCE = ("reject", "tempfail", "hold", "delete", "move", "forward", "subject", "header",
              "none")
_TAKES_ARGUMENT = ("move", "forward")


@dataclass(frozen=True)
class Action:
    """
    @ivar kind: one of L{PRECEDENCE}.
    @ivar argument: the folder of C{move}, the address of C{forward}, else "".
    """

    kind: str
    argument: str = ""

    def __str__(self):
        return f"{self.kind}:{self.argument}" if self.argument else self.kind

    @property
    def strength(self):
        return len(PRECEDENCE) - PRECEDENCE.index(self.kind)


NONE = Action("none")
HEADER = Action("header")


def parse_action(text):
    """
    C{"header"}, C{"move:Junk"}, C{"forward:spam@example.test"}, ... A
    C{move:} folder's name is the store's to judge: preflight asks it.

    @raise ValueError: with what is wrong, for the config error.
    """
    kind, colon, argument = text.partition(":")
    kind, argument = kind.strip().lower(), argument.strip()
    if kind == "hold":
        raise ValueError("hold is for mail that leaves ([antispam] outbound_action) only: "
                         "the queue holds remote recipients")
    if kind not in PRECEDENCE:
        raise ValueError(f"unknown action {text!r} (one of: none, header, subject, "
                         "move:FOLDER, forward:ADDRESS, delete, tempfail, reject)")
    if kind in _TAKES_ARGUMENT and not argument:
        raise ValueError(f"{kind} needs a target: {kind}:"
                         + ("FOLDER" if kind == "move" else "ADDRESS"))
    if kind not in _TAKES_ARGUMENT and colon:
        raise ValueError(f"{kind} takes no argument")
    if kind == "forward" and not is_address(argument):
        raise ValueError(f"forward needs a full address, not {argument!r}")
    return Action(kind, argument)


def combine(actions):
    """The strongest of C{actions} (the first of equals), L{NONE} for none."""
    strongest = NONE
    for action in actions:
        if action.strength > strongest.strength:
            strongest = action
    return strongest
