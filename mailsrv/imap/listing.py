"""
LIST as RFC 5258 (LIST-EXTENDED) extends it, with RFC 3348's CHILDREN
attributes, RFC 6154's SPECIAL-USE options and RFC 5819's STATUS return
option: the options checked (L{list_options}, L{status_items}) and the
names a LIST answers chosen (L{select}), as pure functions of the user's
folders and subscriptions. The cost follows the number of folders and
subscriptions, never anything the client sends but its patterns.
"""

from typing import NamedTuple

from twisted.mail import imap4

from mailsrv.store.mailstore import SPECIAL_USE

DELIMITER = "/"
# STATUS items (RFC 3501, 7162 HIGHESTMODSEQ, 8438 SIZE, 7889 APPENDLIMIT)
STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN",
                "HIGHESTMODSEQ", "SIZE", "APPENDLIMIT")
_SELECTION = ("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE")
_RETURN = ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS")


class ListOptions(NamedTuple):
    """
    What a LIST asks for. C{extended}: it used RFC 5258 syntax (options or
    a list of patterns), so a name that does not exist is C{\\NonExistent}
    (C{\\Noselect} for a plain LIST) and C{""} is a pattern like others.
    CHILDREN and SPECIAL-USE attributes are always returned.
    """

    subscribed: bool = False  # selection: subscribed names only
    special_use: bool = False  # selection: special-use folders only
    recursive: bool = False  # RECURSIVEMATCH: parents of what is selected
    show_subscribed: bool = False  # the \Subscribed attribute
    status: tuple = ()  # STATUS items to send after each selectable name
    extended: bool = False


class Listed(NamedTuple):
    """One LIST response: C{childinfo} names the selection options a
    descendant satisfies (RFC 5258 CHILDINFO), empty when none is sent."""

    name: str
    attributes: tuple
    childinfo: tuple = ()
    exists: bool = True


def _atoms(items, what):
    """Upper-case atoms of a parsed option list, each once, in order."""
    names = []
    for item in items:
        if not isinstance(item, bytes):
            raise imap4.IllegalClientResponse(f"Unexpected list in {what}")
        name = item.decode("ascii", "replace").upper()
        if name not in names:
            names.append(name)
    return names


def status_items(items):
    """
    A STATUS item list as parsed (C{[b"MESSAGES", b"unseen"]}) -> upper-case
    names, each once.

    @raise imap4.IllegalClientResponse: empty, nested, or an item we do not know.
    """
    names = _atoms(items or (), "STATUS items")
    if not names:
        raise imap4.IllegalClientResponse("Expected STATUS items")
    unknown = [name for name in names if name not in STATUS_ITEMS]
    if unknown:
        raise imap4.IllegalClientResponse(f"Unknown STATUS item {unknown[0]}")
    return tuple(names)


def list_options(selection, returns, several_patterns=False):
    """
    The selection and return options as parsed (L{None} when absent) ->
    L{ListOptions}. An option given twice counts once (RFC 5258 3).

    @raise imap4.IllegalClientResponse: an option we do not know, a
        RECURSIVEMATCH with no other selection option but REMOTE (RFC
        5258 3.1), STATUS without its items.
    """
    chosen = _atoms(selection or (), "selection options")
    for name in chosen:
        if name not in _SELECTION:
            raise imap4.IllegalClientResponse(f"Unknown LIST selection option {name}")
    if "RECURSIVEMATCH" in chosen and not {"SUBSCRIBED", "SPECIAL-USE"} & set(chosen):
        raise imap4.IllegalClientResponse(
            "RECURSIVEMATCH needs another selection option than REMOTE")
    wanted, status = [], ()
    items = list(returns or ())
    while items:
        item = items.pop(0)
        name = _atoms([item], "return options")[0]
        if name not in _RETURN:
            raise imap4.IllegalClientResponse(f"Unknown LIST return option {name}")
        if name == "STATUS":
            if not items or not isinstance(items[0], list):
                raise imap4.IllegalClientResponse("Expected STATUS (items)")
            status = status_items(items.pop(0))
        wanted.append(name)
    return ListOptions(
        subscribed="SUBSCRIBED" in chosen,
        special_use="SPECIAL-USE" in chosen,
        recursive="RECURSIVEMATCH" in chosen,
        show_subscribed="SUBSCRIBED" in chosen or "SUBSCRIBED" in wanted,
        status=status,
        extended=selection is not None or returns is not None or several_patterns,
    )


def _ancestors(name):
    """C{"A/B/C"} -> C{"A"}, C{"A/B"}."""
    levels = name.split(DELIMITER)
    return (DELIMITER.join(levels[:depth]) for depth in range(1, len(levels)))


def select(patterns, folders, subscriptions, options):
    """
    The L{Listed} names a LIST answers, INBOX first, then by name.

    A name is listed when a pattern matches it and it satisfies the
    selection (exists; is subscribed; is a special-use folder), or, with
    RECURSIVEMATCH, when it has a descendant that does and that no
    pattern matches (then with CHILDINFO), or, for a LIST without
    selection options, when it is the parent of folders (made by another
    program: ours creates parents) none of which a pattern matches, as
    RFC 3501 lists the levels C{%} stops at.

    @param patterns: compiled patterns (reference and pattern joined,
        L{imap4.wildcardToRegexp}).
    @param folders: the names of the folders that exist.
    @param subscriptions: the subscribed names, existing or not.
    """
    existing = set(folders)
    subscribed = set(subscriptions)

    def matches(name):
        return any(p.fullmatch(name) for p in patterns)

    def satisfies(name):
        if options.special_use and not (name in SPECIAL_USE and name in existing):
            return False
        return name in subscribed if options.subscribed else name in existing

    parents = {parent for name in existing for parent in _ancestors(name)}
    candidates = existing | parents
    if options.subscribed:
        candidates |= subscribed
    childinfo = set()
    if options.recursive:
        for name in candidates:
            if satisfies(name) and not matches(name):
                childinfo.update(_ancestors(name))
        candidates |= childinfo
    covered = set()
    if not (options.subscribed or options.special_use):
        covered = {parent for name in existing if matches(name) for parent in _ancestors(name)}
    criteria = tuple(option for option, on in (
        ("SUBSCRIBED", options.subscribed), ("SPECIAL-USE", options.special_use)) if on)
    found = []
    for name in candidates:
        if not matches(name):
            continue
        implied = (name not in existing and name in parents and name not in covered
                   and not (options.subscribed or options.special_use))
        if not (satisfies(name) or name in childinfo or implied):
            continue
        found.append(Listed(
            name, _attributes(name, existing, parents, subscribed, options),
            criteria if name in childinfo else (), name in existing))
    return sorted(found, key=lambda listed: (listed.name != "INBOX", listed.name))


def _attributes(name, existing, parents, subscribed, options):
    attributes = []
    if name not in existing:
        attributes.append("\\NonExistent" if options.extended else "\\Noselect")
    if options.show_subscribed and name in subscribed:
        attributes.append("\\Subscribed")
    attributes.append("\\HasChildren" if name in parents else "\\HasNoChildren")
    if name in existing and name in SPECIAL_USE:
        attributes.append(SPECIAL_USE[name])
    return tuple(attributes)
