"""
Dovecot's imaptest, the IMAP compliance tester Dovecot, Cyrus and Stalwart
run, against the real server: one test per scripted group of imaptest's
(src/tests/NAME), failing with imaptest's own text for that group, and a
stress run of several pipelining clients on one mailbox.

imaptest is C: tests/imaptest/build.sh builds it from the source vendored
there (.ci/run does); where it is not built every test here is skipped,
saying so. Groups that still fail are in KNOWN_FAILURES and marked todo:
a fix makes its test an unexpected success, the sign to take it out.
"""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

from twisted.python import reflect
from twisted.trial import unittest

from tests.integration.harness import PASSWORD, MailServerProcess

VENDORED = Path(__file__).resolve().parent.parent / "imaptest"
BUILD = Path(os.environ.get("IMAPTEST_BUILD")
             or Path(os.environ.get("TMPDIR") or "/tmp") / "mailsrv-imaptest-924f619")
IMAPTEST = BUILD / "src" / "imaptest"
GROUP_TIMEOUT = 30
# A runaway command (a SEARCH over UIDs 1:4294967295) once grew the server
# past 20 GB until the kernel's OOM killer chose a victim on the machine.
SERVER_MEMORY = 3 * 1024 ** 3
USERS = ("testuser@example.test", "testuser2@example.test")
STRESS_USER = "stress@example.test"
STRESS_CLIENTS = 10
STRESS_SECONDS = 20

# group: why it fails on main. Empty it as the groups are fixed.
KNOWN_FAILURES = {}


def scripted_groups():
    """
    The group names, from the vendored source, so that the tests exist (and
    say why they skip) where imaptest is not built.
    """
    with tarfile.open(VENDORED / "imaptest-924f619.tar.gz") as tar:
        paths = [member.name.split("/", 1)[1] for member in tar if member.isfile()]
    return sorted(path[len("src/tests/"):] for path in paths
                  if path.startswith("src/tests/") and path.count("/") == 2
                  and not path.endswith(".mbox"))


def required_capabilities(group):
    """The group's `capabilities:` header: imaptest skips it unless all are advertised."""
    script = (BUILD / "src" / "tests" / group).read_text(errors="replace")
    header = script.split("\n\n", 1)[0]
    for line in header.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "capabilities":
            return value.split()
    return []


def not_built():
    """Why imaptest cannot run here, or None."""
    if IMAPTEST.exists():
        return None
    failed = " (its build failed: build.log there)" if (BUILD / "build.log").exists() else ""
    return f"imaptest is not built in {BUILD}{failed}: run tests/imaptest/build.sh (.ci/run does)"


def expected_to_fail(reason):
    """A todo that covers a failed check only: a skip stays a skip, a crash an error."""
    # by name: trial prints a todo's errors with str.join
    return ([reflect.qual(unittest.FailTest)], reason)


def imaptest(server, *args, timeout):
    """Run imaptest against C{server}'s IMAP port; its output, and whether it finished."""
    command = [str(IMAPTEST), "host=127.0.0.1", f"port={server.ports['imap']}",
               f"pass={PASSWORD}", *args]
    try:
        result = subprocess.run(command, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as timedout:
        output = (timedout.stdout or b"") + (timedout.stderr or b"")
        return output.decode(errors="replace"), False
    return (result.stdout + result.stderr).decode(errors="replace"), True


def server_errors(log):
    """
    The server's failures in its log: each entry (a line and the indented
    traceback under it) that is an error or rebuilt an index, as its first
    and last line, so that the message and the exception show.
    """
    entries = []
    for line in log.splitlines():
        if line[:1].isspace() and entries:
            if line.strip():
                entries[-1].append(line.strip())
        else:
            entries.append([line])
    return [" ... ".join(dict.fromkeys([entry[0], entry[-1]])) for entry in entries
            if any(mark in entry[0] for mark in ("#critical]", "#error]", "rebuilding"))
            or any("Traceback" in line for line in entry)]


class GroupResult:
    """What imaptest said about one group, and what the server did meanwhile."""

    def __init__(self, output, finished, server_note):
        self.output = output
        self.finished = finished
        self.server_note = server_note

    @property
    def failed(self):
        lines = self.output.splitlines()
        return (not self.finished or bool(self.server_note) or " 0 failed," not in self.output
                or any(line.startswith(("*** Test ", "Error: ")) for line in lines))

    @property
    def ran_nothing(self):
        """imaptest counts a group it skips as neither failed nor skipped: 0/0 commands."""
        return ("base protocol: 0/0 individual" in self.output
                and "extensions: 0/0 individual" in self.output)


_results = {}
_advertised = set()  # the server's capabilities after login, upper case


def capabilities_after_login(server):
    """What a skipped group's reason compares its `capabilities:` with."""
    imap = server.imap()
    try:
        imap.login(USERS[0], PASSWORD)
        return imap.capability()[1][0].decode().upper().split()
    finally:
        imap.logout()


def scripted_results():
    """
    Every group, once, each in its own imaptest process (its output is that
    group's alone) against one server, restarted when a group kills it or
    leaves it hanging, so that the groups after it still count.
    """
    if _results:
        return _results
    server = MailServerProcess(users=USERS, memory_limit=SERVER_MEMORY)
    server.start()
    try:
        _advertised.update(capabilities_after_login(server))
        for group in GROUPS:
            log_start = len(server.log_text())
            output, finished = imaptest(
                server, f"user={USERS[0]}", f"user2={USERS[1]}",
                f"test={BUILD / 'src' / 'tests' / group}", timeout=GROUP_TIMEOUT)
            log = server.log_text()[log_start:]
            note = ""
            if server.process.poll() is not None:
                note = f"the server exited (status {server.process.returncode}); restarted"
            elif not finished:
                note = f"imaptest did not finish in {GROUP_TIMEOUT} s; the server was restarted"
            if note:
                server.stop()
                server.start()
                note += ". Its log for this group ends:\n" + "\n".join(log.splitlines()[-15:])
            elif server_errors(log):
                output += "\nThe server's log:\n" + "\n".join(server_errors(log)[:20])
            _results[group] = GroupResult(output, finished, note)
    finally:
        server.cleanup()
    return _results


GROUPS = scripted_groups()


class ScriptedGroups(unittest.TestCase):
    """imaptest's scripted groups; the methods are made from GROUPS below."""

    skip = not_built()

    def check_group(self, group):
        result = scripted_results().get(group)
        if result is None:
            self.fail("the run of the groups stopped before this one (a restart of the "
                      "server failed): see the first group test that failed")
        if result.failed:
            self.fail(f"imaptest group {group}:\n{result.output}\n{result.server_note}")
        if result.ran_nothing:
            missing = [name for name in required_capabilities(group)
                       if name.upper() not in _advertised]
            raise unittest.SkipTest(
                f"the server does not advertise {' '.join(missing)}" if missing
                else "imaptest ran none of its commands")


def _group_test(group):
    def test(self):
        self.check_group(group)
    test.__name__ = "test_group_" + group.replace("-", "_")
    test.__doc__ = f"imaptest's group {group} (src/tests/{group})."
    if group in KNOWN_FAILURES:
        test.todo = expected_to_fail(KNOWN_FAILURES[group])
    return test


for _group in GROUPS:
    _test = _group_test(_group)
    setattr(ScriptedGroups, _test.__name__, _test)


class Stress(unittest.TestCase):
    skip = not_built()

    def test_stress(self):
        """
        imaptest's stress mode: clients pipelining random commands on one
        mailbox, every reply checked against what the others did. Any
        `Error:` line fails it, and so does a server error in the log (a
        traceback, or its repeats logged without one) or an index rebuild.
        """
        server = MailServerProcess(users=(STRESS_USER,), memory_limit=SERVER_MEMORY)
        server.start()
        self.addCleanup(server.cleanup)
        mbox = self.mktemp()
        subprocess.run([sys.executable, str(VENDORED / "gen_mbox.py"), mbox, "50"], check=True)
        output, finished = imaptest(
            server, f"user={STRESS_USER}", f"mbox={mbox}", f"clients={STRESS_CLIENTS}",
            f"secs={STRESS_SECONDS}", timeout=STRESS_SECONDS + 60)
        errors = [line for line in output.splitlines() if line.startswith("Error: ")]
        died = server.process.poll() is not None
        log_errors = server_errors(server.log_text())
        if errors or log_errors or died or not finished:
            self.fail("\n".join(
                [f"{len(errors)} imaptest errors, the first ones:", *errors[:30],
                 f"{len(log_errors)} error lines in the server's log:", *log_errors[:30]]
                + (["the server died"] if died else [])
                + ([] if finished else [f"imaptest did not finish in {STRESS_SECONDS + 60} s"])
                + ["imaptest's last lines:", *output.splitlines()[-8:]]))

