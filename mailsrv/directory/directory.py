"""
Routing a recipient address: to which local mailboxes, to which remote
addresses, or nowhere (an unknown local user).

An alias member is alive when it is a user, a remote address, or an alias
with a live member; a member in our domains that is none of these is dead.
An alias delivers to its live members (the dead ones are logged); an alias
with none is refused like an unknown user (550 5.1.1), so no message is
accepted for nobody. `mailsrv lists check` and the start-up log name the
dead members, loops and over-deep chains (L{Directory.alias_problems}).
"""

from dataclasses import dataclass

from mailsrv.address import AddressError, domain_of, normalise, parse

MAX_ALIAS_DEPTH = 10


@dataclass(frozen=True)
class Route:
    """
    Where mail for one address goes.

    @ivar local: the local mailboxes (user addresses) it is delivered to.
    @ivar remote: addresses in other domains it is forwarded to.
    @ivar is_local_domain: whether the address itself is in our domains (so
        accepting it is not relaying).
    @ivar dead: alias members in our domains that reach no mailbox (for the
        log; the message goes to the others).
    """

    local: tuple = ()
    remote: tuple = ()
    is_local_domain: bool = True
    dead: tuple = ()


class Directory:
    """
    @ivar book: the addresses an LDAP directory holds beside the users and
        aliases files (L{mailsrv.directory.ldapsource.LDAPAddressBook}:
        C{loaded}, C{exists(address)}, C{mailbox_of(alias)}), or L{None}.
    """

    def __init__(self, local_domains, users, aliases, book=None):
        self.local_domains = frozenset(d.lower() for d in local_domains)
        self.users = users
        self.aliases = aliases
        self.book = book

    @property
    def complete(self):
        """Whether an address unknown here is unknown for good (the book has been read)."""
        return self.book is None or self.book.loaded

    def is_user(self, address):
        """Whether C{address} (normalised) is a user: in the users file or the LDAP book."""
        return self.users.exists(address) or (self.book is not None
                                              and self.book.exists(address))

    def _book_alias(self, address):
        """The mailbox a directory alias (C{mailAlternateAddress}) delivers to, or L{None}."""
        return None if self.book is None else self.book.mailbox_of(address)

    def is_local_domain(self, domain):
        return domain.lower().rstrip(".") in self.local_domains

    def is_local_address(self, address):
        return self.is_local_domain(domain_of(address))

    def login_name(self, name):
        """
        The user address for a login name: case folded; a name without a
        domain gets the first local domain, as users of one-domain servers
        expect.
        """
        name = normalise(name)
        if "@" not in name and self.local_domains:
            name = f"{name}@{sorted(self.local_domains)[0]}"
        return name

    def owns(self, user, address):
        """Whether C{user} may send as C{address}: theirs, or an alias of theirs."""
        address, user = normalise(address), normalise(user)
        if address == user or self._book_alias(address) == user:
            return True
        members = self.aliases.members(address) or ()
        return user in members

    def list_members(self, address):
        """The members of C{address} if it is a list (an alias with several), else L{None}."""
        members = self.aliases.members(address)
        return members if members is not None and len(members) > 1 else None

    def route(self, address):
        """
        @return: a L{Route}, or L{None} when C{address} is in a local domain
            and reaches no mailbox and no remote address (reply 550 5.1.1),
            or is no address at all.
        """
        try:
            address = parse(address).normalised
        except AddressError:
            return None
        if not self.is_local_address(address):
            return Route(remote=(address,), is_local_domain=False)
        walk = _Walk(self)
        walk.visit(address)
        if not (walk.local or walk.remote):
            return None
        return Route(local=tuple(walk.local), remote=tuple(walk.remote),
                     dead=tuple(walk.dead))

    def alias_problems(self):
        """
        What an admin should fix in the aliases: one line per alias with dead
        members, per alias that reaches nobody, per loop and per chain
        deeper than L{MAX_ALIAS_DEPTH}.
        """
        lines, loops = [], set()
        for name in self.aliases.names():
            if "@" in name:
                addresses = [name]
            else:
                addresses = [f"{name}@{domain}" for domain in sorted(self.local_domains)]
            for address in addresses:
                walk = _Walk(self)
                walk.visit(address)
                if walk.dead:
                    lines.append(f"{address}: {', '.join(walk.dead)}: no such user, alias "
                                 "or remote address (no mailbox)")
                if not (walk.local or walk.remote):
                    lines.append(f"{address} reaches no mailbox: mail to it is refused "
                                 "(550 5.1.1)")
                for loop in walk.loops:
                    if frozenset(loop) not in loops:
                        loops.add(frozenset(loop))
                        lines.append(f"alias loop: {' -> '.join(loop)}")
                if walk.too_deep:
                    lines.append(f"{address}: aliases nested deeper than {MAX_ALIAS_DEPTH} "
                                 f"(at {walk.too_deep[0]}): the rest is not delivered")
        postmaster = self.login_name("postmaster")
        if self.local_domains and self.aliases.members(postmaster) is None \
                and not self.is_user(postmaster) and self._book_alias(postmaster) is None:
            lines.append(f"{postmaster} is no user or alias: RFC 5321 requires it, and "
                         "bounces that reach no local sender go to it")
        return lines


class _Walk:
    """
    One expansion of an address through the aliases. Each address is
    expanded once, so a loop or a shared member adds nothing twice.

    @ivar local: the user mailboxes reached.
    @ivar remote: the remote addresses reached.
    @ivar dead: addresses in our domains reached that are no user or alias.
    @ivar loops: each loop met, as the list of addresses around it.
    @ivar too_deep: addresses not expanded for being too deep.
    """

    def __init__(self, directory):
        self.directory = directory
        self.local, self.remote, self.dead, self.loops, self.too_deep = [], [], [], [], []
        self._path = []
        self._seen = set()

    def visit(self, address):
        if address in self._path:
            self.loops.append(self._path[self._path.index(address):] + [address])
            return
        if address in self._seen:
            return
        if len(self._path) > MAX_ALIAS_DEPTH:
            self.too_deep.append(address)
            return
        self._seen.add(address)
        self._path.append(address)
        try:
            self._expand(address)
        finally:
            self._path.pop()

    def _expand(self, address):
        directory = self.directory
        if not directory.is_local_address(address):
            self.remote.append(address)
            return
        members = directory.aliases.members(address)
        if members is not None:
            for member in members:
                self.visit(member)
        elif directory.is_user(address):
            self.local.append(address)
        elif (mailbox := directory._book_alias(address)) is not None:
            self.visit(mailbox)
        else:
            mailbox = parse(address)
            base, plus, _ = mailbox.local.partition("+")
            if plus and base:  # alice+tag@example.test is alice's
                self.visit(f"{base}@{mailbox.domain}")
            else:
                self.dead.append(address)
