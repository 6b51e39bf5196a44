"""
A real rspamd of our own (Debian's package), for the [antispam.rspamd]
integration tests and the bench's postfix-rspamd peer: Debian's own
/etc/rspamd/rspamd.conf with LOCAL_CONFDIR, DBDIR, RUNDIR and LOGDIR in a
temporary folder (so /etc/rspamd and the system's rspamd service are never
touched), its workers on free loopback ports, its DNS to a stub answering
NXDOMAIN at once (the sandbox's resolver lets lookups time out, which
would make every scan slow), and no Redis.

The tests' local config adds rules keyed on tokens in the message
(L{TEST_RULES}), so that each of rspamd's actions comes from a known
message, whatever rspamd's stock rules make of it.
"""

import os
import pwd
import shutil
import subprocess
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

from tests.dnsserver import TinyDNSServer
from tests.integration.harness import free_port

WORKERS = ("proxy", "normal", "controller")

# Tokens in a message that give a known rspamd action.
REJECT_TOKEN = b"mailsrv-test-reject"
HEADER_TOKEN = b"mailsrv-test-add-header"
SUBJECT_TOKEN = b"mailsrv-test-rewrite-subject"
SOFT_REJECT_TOKEN = b"mailsrv-test-soft-reject"
GREYLIST_TOKEN = b"mailsrv-test-greylist"

# $LOCAL_CONFDIR/rspamd.local.lua: a symbol per token, its score well
# past the stock reject (15) and add header (6) thresholds, and forced
# actions for those without a default threshold.
TEST_RULES = textwrap.dedent("""\
    local function has(token)
      return function(task)
        return tostring(task:get_content()):find(token, 1, true) ~= nil
      end
    end
    rspamd_config:register_symbol({name = 'MAILSRV_TEST_REJECT', score = 100.0,
      callback = has('%s')})
    rspamd_config:register_symbol({name = 'MAILSRV_TEST_HEADER', score = 8.0,
      callback = has('%s')})
    local forced = {['%s'] = 'rewrite subject', ['%s'] = 'soft reject',
                    ['%s'] = 'greylist'}
    rspamd_config:register_symbol({name = 'MAILSRV_TEST_FORCED', type = 'prefilter',
      priority = 10, callback = function(task)
        local content = tostring(task:get_content())
        for token, action in pairs(forced) do
          if content:find(token, 1, true) then
            task:set_pre_result(action, 'mailsrv test ' .. action)
            return true
          end
        end
        return false
      end})
    """) % tuple(t.decode() for t in (REJECT_TOKEN, HEADER_TOKEN, SUBJECT_TOKEN,
                                      SOFT_REJECT_TOKEN, GREYLIST_TOKEN))


def rspamd_missing():
    """Why no rspamd can run here, or L{None}."""
    if shutil.which("rspamd") is None:
        return ("rspamd is not installed (Debian: apt-get install --no-install-recommends "
                "rspamd; .ci/run installs it)")
    if not Path("/etc/rspamd/rspamd.conf").exists():
        return "rspamd's /etc/rspamd/rspamd.conf is missing"
    try:
        pwd.getpwnam("_rspamd")
    except KeyError:
        return "rspamd's user _rspamd is missing (Debian's package creates it)"
    if os.geteuid() != 0:
        return "rspamd drops to _rspamd: this needs root"
    return None


class RspamdServer:
    """
    rspamd -f on Debian's config with our local.d/override.d.

    @param home: its folder (made here when L{None}, removed by L{cleanup}).
    @param local: C{{file name: text}} more files for local.d.
    @param rules: the text of $LOCAL_CONFDIR/rspamd.local.lua, or "".
    @param hyperscan: False for rspamd's slower PCRE matching, which
        starts at once (hyperscan compiles its database on a first start).
    @param spawn: C{spawn(argv, log_path)} giving a C{subprocess.Popen}
        (its own process group: rspamd forks its workers).
    @param halt: C{halt(process)} stops it and its workers.
    @ivar ports: C{{worker: port}} of L{WORKERS}.
    """

    def __init__(self, home=None, local=None, rules="", hyperscan=False, spawn=None,
                 halt=None):
        self.own_home = home is None
        self.home = Path(tempfile.mkdtemp(prefix="rspamd-")) if home is None else Path(home)
        if self.own_home:
            self.home.chmod(0o755)  # (mkdtemp's 0700: _rspamd could not reach its folders)
        self.local = dict(local or {})
        self.rules = rules
        self.hyperscan = hyperscan
        self.spawn = spawn or _spawn
        self.halt = halt or _halt
        self.process = None
        self.dns = None
        self.ports = {worker: free_port() for worker in WORKERS}

    @property
    def url(self):
        """The normal worker's HTTP address (what [antispam.rspamd] url names)."""
        return f"http://127.0.0.1:{self.ports['normal']}"

    @property
    def log(self):
        return self.home / "log" / "rspamd.log"

    def start(self, timeout=180):
        """Start it and wait until it scans.

        @raise RuntimeError: with its log's tail when it does not.
        """
        if self.dns is None:
            self.dns = TinyDNSServer({})
        self._configure()
        argv = ["rspamd", "-f", "-u", "_rspamd", "-g", "_rspamd",
                "-c", "/etc/rspamd/rspamd.conf",
                f"--var=LOCAL_CONFDIR={self.home / 'local'}",
                f"--var=DBDIR={self.home / 'db'}",
                f"--var=RUNDIR={self.home / 'run'}", f"--var=LOGDIR={self.home / 'log'}"]
        start = self.log.stat().st_size if self.log.exists() else 0  # a restart appends
        self.process = self.spawn(argv, self.home / "stdout.log")
        self._wait(start, timeout)
        return self

    def _configure(self):
        local, override = self.home / "local" / "local.d", self.home / "local" / "override.d"
        for d in (local, override):
            d.mkdir(parents=True, exist_ok=True)
        owner = pwd.getpwnam("_rspamd")
        for sub in ("db", "run", "log"):
            (self.home / sub).mkdir(exist_ok=True)
            os.chown(self.home / sub, owner.pw_uid, owner.pw_gid)
        ports = self.ports
        # override.d replaces: a local.d bind_socket or upstream would be
        # merged with rspamd.conf's localhost:1133x, binding both.
        (override / "worker-normal.inc").write_text(
            f'bind_socket = "127.0.0.1:{ports["normal"]}";\n')
        (override / "worker-controller.inc").write_text(
            f'bind_socket = "127.0.0.1:{ports["controller"]}";\n')
        (override / "worker-proxy.inc").write_text(textwrap.dedent(f"""\
            bind_socket = "127.0.0.1:{ports["proxy"]}";
            upstream "local" {{
              default = yes;
              hosts = "127.0.0.1:{ports["normal"]}";
            }}
            """))
        options = f'dns {{ nameserver = ["{self.dns.address}"]; }}\n'
        if not self.hyperscan:
            options += "disable_hyperscan = true;\n"
        (local / "options.inc").write_text(options)
        for name, text in self.local.items():
            (local / name).write_text(text)
        if self.rules:
            (self.home / "local" / "rspamd.local.lua").write_text(self.rules)

    def _wait(self, start, timeout):
        """
        Until the normal worker answers a scan (with hyperscan, once its
        database is loaded: scans before it fall back to slower PCRE) and
        the proxy listens.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            text = self.log.read_bytes()[start:] if self.log.exists() else b""
            if not self.hyperscan or b"full hyperscan database" in text:
                try:
                    if self.scan(b"Subject: ready?\r\n\r\nready?\r\n"):
                        if _listens(self.ports["proxy"]):
                            return
                except OSError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"rspamd did not become ready in {timeout}s: "
                           f"{self.log_tail(5)[-300:]}")

    def scan(self, message, **headers):
        """rspamd's /checkv2 reply (bytes) to C{message}, from this thread."""
        request = urllib.request.Request(f"{self.url}/checkv2", data=message,
                                         headers={"IP": "127.0.0.1", **headers})
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.read()

    def log_tail(self, lines=15):
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self):
        process, self.process = self.process, None
        if process is not None:
            self.halt(process)

    def cleanup(self):
        self.stop()
        if self.dns is not None:
            self.dns.close()
            self.dns = None
        if self.own_home:
            shutil.rmtree(self.home, ignore_errors=True)


def _spawn(argv, log):
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _halt(process):
    """SIGTERM its process group (rspamd and its workers); SIGKILL what stays."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, 15)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait(5)


def _listens(port):
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False
