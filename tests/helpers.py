"""
Shared test fixtures: a temporary config, settings and a MailServer built the
way the service builds it.
"""

import tempfile
from pathlib import Path

from mailsrv import config


def make_settings(tmpdir=None, **sections):
    """
    Settings for a temporary data dir; C{sections} override or add TOML
    tables, e.g. C{relay={"mode": "none"}}.
    """
    tmpdir = Path(tmpdir or tempfile.mkdtemp())
    data = {
        "server": {"hostname": "mail.example.test", "data_dir": str(tmpdir / "var")},
        "domains": {"local": ["example.test"]},
        "auth": {"allow_plaintext_on_loopback": True},
        "listen": [{"protocol": "smtp", "endpoint": "tcp:0"}],
    }
    for name, table in sections.items():
        if isinstance(table, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **table}
        else:
            data[name] = table
    return config.parse(data, tmpdir / "mailsrv.toml")


def make_server(tmpdir=None, clock=None, **sections):
    """A MailServer over temporary directories, with the real parts."""
    from mailsrv.service import build_mail_server

    settings = make_settings(tmpdir, **sections)
    if clock is None:
        from twisted.internet import reactor as clock
    return build_mail_server(settings, clock)
