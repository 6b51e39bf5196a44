"""
etc/mailsrv.toml shows every key docs/config.md lists (set, or commented
out in its table), and it loads: an admin reads one file, not two.
"""

import re
from pathlib import Path

from twisted.trial import unittest

from mailsrv import config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "etc" / "mailsrv.toml"
DOCS = ROOT / "docs" / "config.md"

HEADER = re.compile(r'^#?\s*\[\[?([^\]]+)\]\]?\s*(#.*)?$')
KEY = re.compile(r'^#?\s*([a-z_][a-z0-9_]*)\s*=')


def documented():
    """C{(table, key)} of every row of docs/config.md's key table."""
    keys = set()
    for line in DOCS.read_text().splitlines():
        cell = line.split("|")[1] if line.startswith("| `[") else ""
        names = re.findall(r"`([^`]+)`", cell)
        if not names:
            continue
        head = re.match(r"\[\[?([^\]]+)\]\]?\s*(.*)", names[0])
        if not head or re.search(r"[A-Z]", head.group(1)):
            continue  # ([domain."NAME"], [antispam.SECTION]: placeholders)
        table = head.group(1)
        for key in [head.group(2), *names[1:]]:
            if re.fullmatch(r"[a-z_][a-z0-9_]*", key):
                keys.add((table, key))
    return keys


def shown():
    """C{(table, key)} of every key etc/mailsrv.toml sets or shows commented out."""
    keys, table = set(), ""
    for line in EXAMPLE.read_text().splitlines():
        line = line.strip()
        header = HEADER.match(line)
        if header and not KEY.match(line):
            table = header.group(1).strip()
            continue
        key = KEY.match(line)
        if key:
            keys.add((table, key.group(1)))
    return keys


class ExampleConfigTests(unittest.TestCase):
    def test_every_documented_key_is_shown(self):
        missing = sorted(documented() - shown())
        self.assertEqual(missing, [], "keys docs/config.md lists that etc/mailsrv.toml lacks")

    def test_it_loads(self):
        config.load(EXAMPLE)
