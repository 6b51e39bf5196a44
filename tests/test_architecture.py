"""
The "must not import" rules of docs/architecture.md ("Parts"), enforced.

Each of L{RULES} names a module and the only mailsrv modules it may import;
it may import nothing of Twisted either. Each of L{PACKAGE_RULES} names a
package and what none of its modules may import. Both the import
statements in the source (function-level ones included) and what importing
a module really loads, in a fresh interpreter, are checked.
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
}


_PROTOCOLS = ("mailsrv.smtp", "mailsrv.pop3", "mailsrv.imap", "mailsrv.service")

# package -> what no module in it may import: (in its source, when loaded).
PACKAGE_RULES = {
    # The policy framework and its checks decide; the protocols write the
    # replies and the delivery agent places the message. The store is not
    # checked at load: the directory loads it (directory/users.py takes
    # fsync_directory from store/delivery.py).
    "mailsrv.policy": (_PROTOCOLS + ("mailsrv.queue", "twisted.internet.reactor", "mailsrv.store"),
                       _PROTOCOLS + ("mailsrv.queue", "twisted.internet.reactor")),
}

# Packages whose modules may not import each other: one check never
# depends on another (what two share is given to each).
SEPARATE = ("mailsrv.policy.checks",)


def modules_of(package):
    """The modules of C{package}, itself included, by dotted name."""
    root = ROOT / package.replace(".", "/")
    return sorted(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(
        ".__init__") for path in root.rglob("*.py"))


def path_of(module):
    path = ROOT / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def within(name, prefixes):
    return sorted(p for p in prefixes if name == p or name.startswith(p + "."))


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

    def test_package_import_statements(self):
        for package, (in_source, _) in PACKAGE_RULES.items():
            for module in modules_of(package):
                names = imported_names(path_of(module))
                self.assertEqual([n for n in sorted(names) if within(n, in_source)], [], module)

    def test_what_importing_a_package_module_loads(self):
        for package, (_, when_loaded) in PACKAGE_RULES.items():
            for module in modules_of(package):
                self.assertEqual([n for n in sorted(loaded_by(module)) if within(n, when_loaded)],
                                 [], module)

    def test_separate_modules(self):
        for package in SEPARATE:
            for module in modules_of(package):
                others = [n for n in imported_names(path_of(module))
                          if within(n, [package]) and n not in (module, package)]
                self.assertEqual(others, [], module)

    def test_the_rules_catch_an_import(self):
        """A server module in the source, or loaded through another, is caught."""
        self.assertEqual(forbidden({"mailsrv.policy.actions", "twisted.internet.reactor",
                                    "mailsrv.address", "tomllib"}, "mailsrv.config"),
                         ["mailsrv.policy.actions", "twisted.internet.reactor"])
        self.assertIn("mailsrv.store.layout", forbidden(loaded_by("mailsrv.queue.intake"),
                                                        "mailsrv.config"))
        in_source, _ = PACKAGE_RULES["mailsrv.policy"]
        self.assertEqual(within("mailsrv.store.layout", in_source), ["mailsrv.store"])
        self.assertEqual(within("mailsrv.smtp.server", in_source), ["mailsrv.smtp"])
        self.assertEqual(within("mailsrv.smtpd", in_source), [])
        self.assertIn("mailsrv.policy.checks.sender", modules_of("mailsrv.policy.checks"))
        source = Path(self.mktemp())
        source.write_text("from mailsrv.policy.checks import sender\n")
        self.assertIn("mailsrv.policy.checks.sender", imported_names(source))
