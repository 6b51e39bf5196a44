"""
Routing a recipient address: to which local mailboxes, to which remote
addresses, or nowhere (an unknown local user).
"""

from dataclasses import dataclass

from mailsrv.directory.users import normalise_address

MAX_ALIAS_DEPTH = 10


@dataclass(frozen=True)
class Route:
    """
    Where mail for one address goes.

    @ivar local: the local mailboxes (user addresses) it is delivered to.
    @ivar remote: addresses in other domains it is forwarded to.
    @ivar is_local_domain: whether the address itself is in our domains (so
        accepting it is not relaying).
    """

    local: tuple = ()
    remote: tuple = ()
    is_local_domain: bool = True


class Directory:
    def __init__(self, local_domains, users, aliases):
        self.local_domains = frozenset(d.lower() for d in local_domains)
        self.users = users
        self.aliases = aliases

    def is_local_domain(self, domain):
        return domain.lower().rstrip(".") in self.local_domains

    def is_local_address(self, address):
        return self.is_local_domain(address.rpartition("@")[2])

    def login_name(self, name):
        """
        The user address for a login name: case folded; a name without a
        domain gets the first local domain, as users of one-domain servers
        expect.
        """
        name = normalise_address(name)
        if "@" not in name and self.local_domains:
            name = f"{name}@{sorted(self.local_domains)[0]}"
        return name

    def owns(self, user, address):
        """Whether C{user} may send as C{address}: theirs, or an alias of theirs."""
        address = normalise_address(address)
        if address == normalise_address(user):
            return True
        members = self.aliases.members(address) or ()
        return normalise_address(user) in members

    def list_members(self, address):
        """The members of C{address} if it is a list (an alias with several), else L{None}."""
        members = self.aliases.members(address)
        return members if members is not None and len(members) > 1 else None

    def route(self, address):
        """
        @return: a L{Route}, or L{None} when C{address} is in a local domain
            but is neither a user nor an alias (reply 550 5.1.1).
        """
        address = normalise_address(address)
        if not self.is_local_address(address):
            return Route(remote=(address,), is_local_domain=False)
        local, remote = [], []
        if not self._expand(address, local, remote, set(), 0):
            return None
        return Route(local=tuple(local), remote=tuple(remote))

    def _expand(self, address, local, remote, seen, depth):
        if address in seen or depth > MAX_ALIAS_DEPTH:
            return True  # a loop or a deep chain: what was found so far stands
        seen.add(address)
        if not self.is_local_address(address):
            if address not in remote:
                remote.append(address)
            return True
        members = self.aliases.members(address)
        if members is not None:
            for member in members:
                self._expand(member, local, remote, seen, depth + 1)
            return True
        if self.users.exists(address):
            if address not in local:
                local.append(address)
            return True
        base, plus, _ = address.partition("+")
        if plus and "@" in address:
            # alice+tag@example.test is alice's
            domain = address.rpartition("@")[2]
            return self._expand(f"{base}@{domain}", local, remote, seen, depth + 1)
        return False
