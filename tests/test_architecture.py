"""
The "must not import" rules of docs/architecture.md ("Parts"), enforced.

Each rule of L{RULES} names a module and the only mailsrv modules it may
import; it may import nothing of Twisted either. Both the import statements
in its source (function-level ones included) and what importing it really
loads, in a fresh interpreter, are checked. Each rule of L{PACKAGES} names
a package and the only mailsrv modules and packages its modules' import
statements may name (Twisted is theirs to use); L{NOT_LOADED} says what
importing any module of a package must not load, and L{SEPARATE} names
packages whose modules may not import each other. Twisted's privates may
be touched only in the modules of L{TWISTED_COMPAT}.
"""

import ast
import importlib
import inspect
import json
import re
import subprocess
import sys
import textwrap
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
    "mailsrv.store.sortkeys": {"mailsrv.store", "mailsrv.addresslist", "mailsrv.headerblock"},
    "mailsrv.store.headerfields": {"mailsrv.store", "mailsrv.store.sortkeys",
                                   "mailsrv.addresslist", "mailsrv.headerblock"},
    # How header fields are found, for the header cache and the content filters.
    "mailsrv.headerblock": set(),
    # The Maildir file-name codec: names in, flags and sizes out.
    "mailsrv.store.names": {"mailsrv.store"},
    # DKIM signatures are CPU work on bytes: the callers (the SMTP
    # reception, the queue's bounces) choose the thread.
    "mailsrv.signing": {"mailsrv.dkimkeys", "mailsrv.addresslist", "mailsrv.headerblock"},
}


# package -> the mailsrv modules and packages (with all they hold) its
# modules may import, besides its own.
PACKAGES = {
    # Maildirs, UIDs, the header cache: nothing of the protocols, the queue,
    # the directory or the config (the protocols import the store).
    "mailsrv.store": {"mailsrv.address", "mailsrv.addresslist", "mailsrv.headerblock",
                      "mailsrv.ranges"},
    # Users, aliases, lists, passwords: no protocol, queue or store (but
    # fsync_directory, to write the users file durably).
    "mailsrv.directory": {"mailsrv.address", "mailsrv.config", "mailsrv.netaddr",
                          "mailsrv.store.delivery"},
    # The spool and delivery, local and remote: no protocol, filter or directory.
    "mailsrv.queue": {"mailsrv.address", "mailsrv.config", "mailsrv.dns", "mailsrv.gather",
                      "mailsrv.metrics", "mailsrv.store", "mailsrv.tls"},
    # The mailbox protocols: over the store and the login module, never the
    # SMTP server, the queue (but its dot-stuffing) or each other.
    "mailsrv.imap": {"mailsrv.__version__", "mailsrv.addresslist", "mailsrv.deadline",
                     "mailsrv.directory.certificate", "mailsrv.directory.checker",
                     "mailsrv.errorlog", "mailsrv.gather", "mailsrv.login",
                     "mailsrv.logtext", "mailsrv.ranges", "mailsrv.realm", "mailsrv.sasl",
                     "mailsrv.store"},
    "mailsrv.pop3": {"mailsrv.context", "mailsrv.deadline", "mailsrv.directory.certificate",
                     "mailsrv.directory.checker", "mailsrv.errorlog", "mailsrv.login",
                     "mailsrv.queue.dotstuff", "mailsrv.realm", "mailsrv.sasl"},
    # The policy framework and its checks decide; the protocols write the
    # replies and the delivery agent places the message: no protocol, no
    # queue, no store.
    "mailsrv.policy": {"mailsrv.address", "mailsrv.config", "mailsrv.directory",
                       "mailsrv.dns", "mailsrv.errorlog", "mailsrv.gather", "mailsrv.headerblock",
                       "mailsrv.metrics",
                       "mailsrv.logtext", "mailsrv.netaddr"},
    # The SMTP server reads commands and DATA and writes replies: the policy
    # decides, the delivery agent (reached through the server context)
    # places the message; it never touches the store, the queue's runner
    # and courier, or the mailbox protocols.
    "mailsrv.smtp": {"mailsrv.address", "mailsrv.context", "mailsrv.deadline",
                     "mailsrv.directory", "mailsrv.errorlog", "mailsrv.gather", "mailsrv.login",
                     "mailsrv.metrics",
                     "mailsrv.logtext", "mailsrv.netaddr", "mailsrv.policy",
                     "mailsrv.queue.journal", "mailsrv.sasl"},
    # The state nodes share through Redis: the session store's interface
    # and helpers, and for taking over a dead node's queue its spool and
    # lock file; nothing of the protocols, the store, the queue's runner
    # (they reach it through the interfaces the memory backends implement).
    "mailsrv.redis": {"mailsrv.sessions", "mailsrv.queue.spool", "mailsrv.datadir_lock"},
    # The mailsrv command: files and the spool as an admin sees them, the
    # filters' lists, `explain` (service.py builds its context), and the
    # store for `import` (with the data_dir lock: by this process only
    # when no server runs), never the server's protocols.
    "mailsrv.admin": {"mailsrv.address", "mailsrv.config", "mailsrv.datadir_lock",
                      "mailsrv.directory",
                      "mailsrv.policy.bayes", "mailsrv.policy.checks.statistical",
                      "mailsrv.policy.checks.urls", "mailsrv.policy.content",
                      "mailsrv.policy.hooks", "mailsrv.policy.judgement",
                      "mailsrv.policy.listener", "mailsrv.policy.lists",
                      "mailsrv.policy.urlhost", "mailsrv.preflight", "mailsrv.queue.spool",
                      "mailsrv.queue.bounce", "mailsrv.control", "mailsrv.logs",
                      "mailsrv.dkimkeys", "mailsrv.dns",
                      "mailsrv.service", "mailsrv.store",
                      "mailsrv.__version__"},
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


# The only modules that may touch a private of Twisted (a class's or a
# module's, mangled names included); each declares what it relies on in
# its PRIVATES, which tests/test_twisted_compat.py checks against the
# installed Twisted. POP3 needs none.
TWISTED_COMPAT = ("mailsrv/imap/_twisted_compat.py",)
_MANGLED = re.compile(r"_[A-Z][A-Za-z0-9]*__[A-Za-z]")


def _private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def twisted_private_names(cls):
    """
    The privates of C{cls}'s Twisted bases: what they define, and the
    C{self._x} attributes their methods keep (mangled as Python does).
    """
    names = set()
    for base in cls.__mro__:
        if not base.__module__.startswith("twisted."):
            continue
        names.update(name for name in vars(base) if _private(name))
        for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(base)))):
            if (isinstance(node, ast.Attribute) and _private(node.attr)
                    and isinstance(node.value, ast.Name) and node.value.id == "self"):
                mangled = node.attr.startswith("__")
                names.add(f"_{base.__name__.lstrip('_')}{node.attr}" if mangled else node.attr)
    return names


def twisted_privates_in(source, namespace):
    """
    The C{(line, name)}s where C{source}, whose top-level names are bound
    as in C{namespace}, touches a private of Twisted: a private attribute
    of a name imported from Twisted (C{imap4._literal}), a private
    imported from Twisted, a mangled name anywhere, and in a class with
    Twisted bases a private of those bases (defined, called or set).
    """
    tree = ast.parse(source)
    from_twisted = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else ""
            for alias in node.names:
                if (module or alias.name).split(".")[0] == "twisted":
                    if _private(alias.name.rsplit(".", 1)[-1]):
                        found.append((node.lineno, alias.name))
                    from_twisted.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        names = [getattr(node, field, None) for field in ("attr", "name", "id", "value")]
        found.extend((node.lineno, name) for name in names
                     if isinstance(name, str) and _MANGLED.search(name))
        if (isinstance(node, ast.Attribute) and _private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in from_twisted):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    for node in tree.body:
        cls = namespace.get(node.name) if isinstance(node, ast.ClassDef) else None
        if not isinstance(cls, type):
            continue
        privates = twisted_private_names(cls)
        for inner in ast.walk(node):
            name = getattr(inner, "attr", None) or getattr(inner, "name", None)
            if isinstance(inner, ast.Name) and isinstance(inner.ctx, ast.Store):
                name = inner.id
            if name in privates:
                found.append((inner.lineno, name))
    return sorted(set(found))


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


class TwistedPrivatesTests(unittest.TestCase):
    """Twisted's privates are touched in TWISTED_COMPAT only."""

    def test_only_the_compat_modules_touch_twisted_privates(self):
        for path in sorted((ROOT / "mailsrv").rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative in TWISTED_COMPAT:
                continue
            module = importlib.import_module(relative[:-3].replace("/", ".").removesuffix(".__init__"))
            found = twisted_privates_in(path.read_text(), vars(module))
            self.assertEqual(found, [], f"{relative} touches Twisted's privates (line, name): "
                             f"go through a _twisted_compat module ({', '.join(TWISTED_COMPAT)})")

    def test_the_rule_catches_a_private(self):
        """Each way in: a module's, a mangled name, a base's hook, its state, a shadowing name."""
        source = textwrap.dedent("""\
            from twisted.mail import imap4, pop3

            class Server(imap4.IMAP4Server):
                def _IMAP4Server__ebDispatch(self, failure, tag):
                    return imap4._literal(b"")

                def respond(self):
                    self._queuedAsync = []
                    super()._respond(b"OK", None, None)

            class Mailbox:
                def _respond(self):
                    pass

            class POP3Server(pop3.POP3):
                _userIs = None

                def __init__(self):
                    self._buffer = b""
            """)
        namespace = {}
        exec(source, namespace)
        self.assertEqual(twisted_privates_in(source, namespace), [
            (4, "_IMAP4Server__ebDispatch"), (5, "imap4._literal"), (8, "_queuedAsync"),
            (9, "_respond"), (16, "_userIs"), (19, "_buffer")])


# The modules that hand out the reactor: the server's builder and the CLI
# (twisted/plugins is outside mailsrv/). Every other module is given its
# clock or reactor, so that tests can give a Clock.
REACTOR_GIVERS = ("mailsrv/service.py", "mailsrv/admin/cli.py")
REACTOR = "twisted.internet.reactor"


def reactor_imports(source):
    """
    The lines where C{source} imports the reactor, in any form and at any
    depth: C{import twisted.internet.reactor}, C{from twisted.internet
    import reactor}, C{from twisted.internet.reactor import ...}, or
    C{twisted.internet.reactor} reached through an imported package.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Attribute) and node.attr == "reactor":
            names = [f"{ast.unparse(node.value)}.reactor"]
        else:
            continue
        if any(name == REACTOR or name.startswith(REACTOR + ".")
               or name == "internet.reactor" for name in names):
            found.append(node.lineno)
    return sorted(set(found))


class ReactorGiverTests(unittest.TestCase):
    """No module falls back to importing the reactor: service.py and the CLI hand it out."""

    def test_only_the_givers_import_the_reactor(self):
        for path in sorted((ROOT / "mailsrv").rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative not in REACTOR_GIVERS:
                self.assertEqual(reactor_imports(path.read_text()), [],
                                 f"{relative} imports the reactor (lines): take it, or a "
                                 f"clock, as an argument from {' or '.join(REACTOR_GIVERS)}")

    def test_the_rule_catches_every_form(self):
        source = textwrap.dedent("""\
            from twisted.internet import defer, reactor as r
            import twisted.internet.reactor
            from twisted import internet

            def now(clock=None):
                from twisted.internet.reactor import callLater
                return (clock or internet.reactor).seconds()

            def later(clock):
                return clock.reactor, twisted.internet.reactor
            """)
        self.assertEqual(reactor_imports(source), [1, 2, 6, 7, 10])
