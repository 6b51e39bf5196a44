"""
Who our users are: the users file (addresses and password hashes), the aliases
file, and the directory that routes a recipient address to local mailboxes or
remote addresses.
"""

from mailsrv.directory.aliases import AliasMap
from mailsrv.directory.directory import Directory, Route
from mailsrv.directory.users import UserDB

__all__ = ["AliasMap", "Directory", "Route", "UserDB"]
