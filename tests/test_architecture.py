"""
The "must not import" rules of docs/architecture.md ("Parts"), enforced.

Each rule of L{RULES} names a module and the only mailsrv modules it may
import; it may import nothing of Twisted either. Both the import statements
in its source (function-level ones included) and what importing it really
loads, in a fresh interpreter, are checked. Each rule of L{PACKAGES} names
a package and the only mailsrv modules and packages its modules' import
statements may name (Twisted is theirs to use); L{NOT_LOADED} says what
importing any module of a package must not load, and L{SEPARATE} names
packages whose modules may not import each other.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

from twisted.trial import unittest

ROOT = Path(__file__).resolve().parent.parent

# module -> the mailsrv modules it may import (besides itself).
RULES = {
    # Plain values from mailsrv.toml: the server's parsers (endpoints, IP
    # lists, filter actions) run in preflight, objects are built in service.py.
    "mailsrv.config": {"mailsrv.address"},
    # What the header cache keeps is parsed from bytes alone: the store
    # computes SORT's keys without the IMAP server (imap/ imports store/,
    # never the other way round).
    "mailsrv.addresslist": set(),
    "mailsrv.store.sortkeys": {"mailsrv.store", "mailsrv.addresslist"},
    "mailsrv.store.headerfields": {"mailsrv.store", "mailsrv.store.sortkeys",
                                   "mailsrv.addresslist"},
    # The Maildir file-name codec: names in, flags and sizes out.
    "mailsrv.store.names": {"mailsrv.store"},
}


# package -> the mailsrv modules and packages (with all they hold) its
# modules may import, besides its own.
PACKAGES = {
    # Maildirs, UIDs, the header cache: nothing of the protocols, the queue,
    # the directory or the config (the protocols import the store).
    "mailsrv.store": {"mailsrv.address", "mailsrv.addresslist", "mailsrv.ranges"},
    # Users, aliases, lists, passwords: no protocol, queue or store (but
    # fsync_directory, to write the users file durably).
    "mailsrv.directory": {"mailsrv.address", "mailsrv.config", "mailsrv.netaddr",
                          "mailsrv.store.delivery"},
    # The spool and delivery, local and remote: no protocol, filter or directory.
    "mailsrv.queue": {"mailsrv.address", "mailsrv.config", "mailsrv.dns", "mailsrv.store",
                      "mailsrv.tls"},
    # The mailbox protocols: over the store and the login module, never the
    # SMTP server, the queue (but its dot-stuffing) or each other.
    "mailsrv.imap": {"mailsrv.__version__", "mailsrv.addresslist", "mailsrv.deadline",
                     "mailsrv.directory.checker", "mailsrv.errorlog", "mailsrv.login",
                     "mailsrv.logtext", "mailsrv.ranges", "mailsrv.realm", "mailsrv.sasl",
                     "mailsrv.store"},
    "mailsrv.pop3": {"mailsrv.context", "mailsrv.deadline", "mailsrv.directory.checker",
                     "mailsrv.errorlog", "mailsrv.login", "mailsrv.queue.dotstuff",
                     "mailsrv.realm", "mailsrv.sasl"},
    # The policy framework and its checks decide; the protocols write the
    # replies and the delivery agent places the message: no protocol, no
    # queue, no store.
    "mailsrv.policy": {"mailsrv.address", "mailsrv.config", "mailsrv.directory",
                       "mailsrv.dns", "mailsrv.errorlog", "mailsrv.netaddr"},
}

# package -> what importing any of its modules, in a fresh interpreter,
# must not load (what it may import may load more than it names: the
# directory loads the store).
NOT_LOADED = {
    "mailsrv.policy": ("twisted.internet.reactor", "mailsrv.smtp", "mailsrv.pop3",
                       "mailsrv.imap", "mailsrv.service", "mailsrv.queue"),
}

# Packages whose modules may not import each other: one check never
# depends on another (what two share is given to each).
SEPARATE = ("mailsrv.policy.checks",)


def outside(names, package):
    """The mailsrv modules among C{names} that modules of C{package} may not import."""
    allowed = PACKAGES[package] | {package}
    return sorted(name for name in names
                  if name.startswith("mailsrv.")
                  and not any(name == a or name.startswith(a + ".") for a in allowed))


def within(name, packages):
    """The packages among C{packages} that hold C{name} (or are it)."""
    return sorted(p for p in packages if name == p or name.startswith(p + "."))


def modules_of(package):
    """The modules of C{package}, itself included, by dotted name."""
    root = ROOT / package.replace(".", "/")
    return sorted(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(
        ".__init__") for path in root.rglob("*.py"))


def path_of(module):
    path = ROOT / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_names(path):
    """Every module an import statement in C{path} names, at any depth."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import of {node.module}")
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if (ROOT / node.module.replace(".", "/")).is_dir())
    return names


def loaded_by(module):
    """The modules importing C{module} loads, in a fresh interpreter."""
    code = ("import json, sys; before = set(sys.modules); import " + module +
            "; print(json.dumps(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    return set(json.loads(out))


def forbidden(names, module):
    """The names among C{names} that C{module} may not import."""
    allowed = RULES[module] | {module, "mailsrv"}
    return sorted(name for name in names
                  if name.split(".")[0] in ("twisted", "zope")
                  or (name.split(".")[0] == "mailsrv" and name not in allowed))


class ImportRuleTests(unittest.TestCase):
    def test_import_statements(self):
        for module in RULES:
            path = ROOT / (module.replace(".", "/") + ".py")
            self.assertEqual(forbidden(imported_names(path), module), [], module)

    def test_what_importing_loads(self):
        for module in RULES:
            self.assertEqual(forbidden(loaded_by(module), module), [], module)

    def test_the_rules_catch_an_import(self):
        """A server module in the source, or loaded through another, is caught."""
        self.assertEqual(forbidden({"mailsrv.policy.actions", "twisted.internet.reactor",
                                    "mailsrv.address", "tomllib"}, "mailsrv.config"),
                         ["mailsrv.policy.actions", "twisted.internet.reactor"])
        self.assertIn("mailsrv.store.layout", forbidden(loaded_by("mailsrv.queue.intake"),
                                                        "mailsrv.config"))


class PackageRuleTests(unittest.TestCase):
    def test_import_statements(self):
        for package in PACKAGES:
            for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
                self.assertEqual(outside(imported_names(path), package), [], str(path))

    def test_what_importing_a_module_loads(self):
        for package, names in NOT_LOADED.items():
            for module in modules_of(package):
                loaded = [n for n in sorted(loaded_by(module)) if within(n, names)]
                self.assertEqual(loaded, [], module)

    def test_separate_modules(self):
        for package in SEPARATE:
            for module in modules_of(package):
                others = [n for n in imported_names(path_of(module))
                          if within(n, [package]) and n not in (module, package)]
                self.assertEqual(others, [], module)

    def test_the_rules_catch_an_import(self):
        self.assertEqual(outside({"mailsrv.store.folder", "mailsrv.imap.server", "mailsrv",
                                  "mailsrv.ranges", "mailsrv.storex", "twisted.internet"},
                                 "mailsrv.store"),
                         ["mailsrv.imap.server", "mailsrv.storex"])
        self.assertEqual(outside({"mailsrv.smtp"}, "mailsrv.pop3"), ["mailsrv.smtp"])
        self.assertEqual(outside({"mailsrv.store.layout", "mailsrv.smtp.server",
                                  "mailsrv.directory.senderlist"}, "mailsrv.policy"),
                         ["mailsrv.smtp.server", "mailsrv.store.layout"])
        self.assertEqual(within("mailsrv.smtp.server", NOT_LOADED["mailsrv.policy"]),
                         ["mailsrv.smtp"])
        self.assertEqual(within("mailsrv.smtpd", NOT_LOADED["mailsrv.policy"]), [])
        self.assertIn("mailsrv.policy.checks.sender", modules_of("mailsrv.policy.checks"))
        source = Path(self.mktemp())
        source.write_text("from mailsrv.policy.checks import sender\n")
        self.assertIn("mailsrv.policy.checks.sender", imported_names(source))
