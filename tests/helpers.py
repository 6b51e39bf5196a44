"""
Shared test fixtures: settings for a temporary config, the result of a
Deferred that has fired, the lines logged, a loaded folder.
"""

import tempfile
from pathlib import Path

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

from mailsrv import config, errorlog


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



def result(d):
    """
    What a Deferred that has already fired gave: its result or its Failure;
    a plain value (a stage that answered synchronously) as it is.
    """
    if not isinstance(d, defer.Deferred):
        return d
    results = []
    d.addBoth(results.append)
    return results[0]


def fresh_error_log(testcase):
    """
    Give C{testcase} its own limiter of client-error tracebacks: the
    process-wide one writes each distinct traceback once per 10 minutes,
    so a test that counts logged errors would depend on the tests before it.
    """
    testcase.patch(errorlog, "client_errors", errorlog.ClientErrorLog())


def log_lines(testcase):
    """The lines logged from now on, as the log shows them (a list that grows)."""
    lines = []

    def observe(event):
        lines.append(formatEvent(event))
    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines


def opened(store, user, name="INBOX"):
    """C{store.folder(user, name)}, loaded: for tests whose threads run at once."""
    return result(store.folder(user, name).opened())
