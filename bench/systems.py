"""
The systems under comparison, each started on free loopback ports with a
temporary config under its own directory, and stopped by PID.

A system that cannot be installed or started raises L{Skip} with the
reason; the harness prints it as a skipped row.
"""

import grp
import os
import pwd
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from bench import procs
from tests.integration.harness import _toml_value, free_port, twistd
from tests.integration.test_clamav import Clamd, clamd_program
from tests.redisserver import RedisServer, redis_missing

DOMAIN = "example.test"
PASSWORD = "bench-password"
ROOT = Path(__file__).resolve().parent.parent

# mailsrv's limits in the bench config, printed with the results.
MAILSRV_LIMITS = {
    "access": {"max_connections_per_ip": 5000, "max_recipients": 100,
               "max_message_size": 36700160},
    "listen_max_connections": 5000,
}


class Skip(Exception):
    """This system cannot run here; the message says why."""


_apt_updated = False


def _apt_install(*packages, recommends=True):
    """
    apt-get install (as root, on Debian) or raise Skip.

    @param recommends: False adds --no-install-recommends (rspamd recommends
        redis-server, which its bench peer must run without).
    """
    global _apt_updated
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise Skip(f"not installed ({' '.join(packages)}), and apt-get needs root on Debian")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if "postfix" in packages:
        # Install without a system configuration: no main.cf, nothing on port 25.
        subprocess.run(["debconf-set-selections"], env=env, check=False,
                       input=b"postfix postfix/main_mailer_type select No configuration\n")
    options = [] if recommends else ["--no-install-recommends"]
    print(f"bench: apt-get install -y {' '.join(options + list(packages))}", flush=True)
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False,
                       stdout=subprocess.DEVNULL, timeout=600)
        _apt_updated = True
    result = subprocess.run(["apt-get", "install", "-y", "-qq", *options, *packages], env=env,
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise Skip(f"apt-get install {' '.join(packages)} failed: "
                   f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}")


def _pip_install(package):
    print(f"bench: pip install {package}", flush=True)
    result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", package],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise Skip(f"pip install {package} failed: {result.stderr.strip()[-200:]}")


def _nobody():
    try:
        return pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    except KeyError:
        return 65534, 65534


class System:
    """
    One server under test.

    @cvar name: as printed in the table.
    @cvar protocols: what it serves: "smtp", "submission", "pop3", "imap".
    @cvar durable: what its "250" means on disk.
    @ivar ports: protocol -> port, once started.
    @ivar process: the L{subprocess.Popen} started (for postfix: the
        start-fg wrapper whose descendants are the daemons).
    """

    name = ""
    protocols = frozenset()
    durable = ""
    config_note = ""
    why_not = {}  # protocol -> why this system does not take part
    known_failure = {}  # protocol -> the known cause when a run of it fails

    def __init__(self, workdir, users, install=True, options=None):
        self.dir = Path(workdir) / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        # Postfix's and Dovecot's unprivileged processes walk down to their
        # queue and Maildirs: the temporary directories must let them.
        for d in (self.dir.parent, self.dir):
            d.chmod(0o755)
        self.users = list(users)
        self.install = install
        self.options = options or {}
        self.ports = {}
        self.process = None
        self.daemons = []  # the scanners started for it (rspamd, clamd, clamav-milter)
        self.key_server = None  # the DNS server of --mailsrv-dkim's key

    def ensure_installed(self):
        """Install what is missing (when allowed) or raise L{Skip}."""

    def maildir(self, user):
        """The Maildir (INBOX) of local part C{user}."""
        raise NotImplementedError

    def mailbox_owner(self):
        """(uid, gid) that a prepared Maildir must belong to, or None."""
        return None

    def start(self):
        raise NotImplementedError

    def log_tail(self, lines=15):
        log = self.dir / "server.log"
        text = ("\n".join(log.read_text(errors="replace").splitlines()[-lines:])
                if log.exists() else "")
        return "\n".join([text] + [daemon.log_tail(lines) for daemon in self.daemons])

    def _wait(self, what=None):
        for protocol, port in self.ports.items():
            if what and protocol not in what:
                continue
            if not procs.wait_for_port(port, process=self.process, timeout=60):
                self.stop()
                raise Skip(f"did not listen on {protocol} port {port}: "
                           f"{self.log_tail(5)[-300:]}")

    @property
    def pid(self):
        return self.process.pid

    @property
    def pids(self):
        """The roots of its process trees (its scanners' too), whose memory is its memory."""
        return (self.pid,) + tuple(daemon.process.pid for daemon in self.daemons)

    def check_delivered(self, message):
        """
        Raise L{Skip} when C{message}, the bytes of the first delivered
        message, lacks what this system must have done to it.
        """

    def stop(self):
        if self.process is not None:
            procs.stop(self.process)
            self.process = None
        daemons, self.daemons = self.daemons, []
        for daemon in daemons:
            daemon.cleanup()
        if self.key_server is not None:
            self.key_server.close()
            self.key_server = None

    def dkim_key_path(self):
        """The RSA-2048 key of [[dkim.sign]] (made once), which also signs the intake's load."""
        from mailsrv import dkimkeys
        key = self.dir / "bench.key"
        if not key.exists():
            dkimkeys.write_key(dkimkeys.generate("rsa"), key)
        return key

    def start_key_server(self):
        """
        The tests' DNS server (tests/dnsserver.py) serving the key's record,
        so that [antispam.dkim] verifies the signed load: C{[dns] servers}.
        """
        from mailsrv import dkimkeys
        from tests.dnsserver import TinyDNSServer
        record = dkimkeys.record(dkimkeys.read_key(self.dkim_key_path()))
        name = dkimkeys.record_name(self.options["dkim"], "bench")
        text = " ".join(f'"{record[i:i + 255]}"' for i in range(0, len(record), 255))
        self.key_server = TinyDNSServer({(name, "TXT"): [text]})
        return self.key_server.address

    def signed(self, data):
        """C{data} with a DKIM-Signature of the key (dkimpy's), for the intake's load."""
        import dkim
        from cryptography.hazmat.primitives import serialization
        from mailsrv import dkimkeys
        pem = dkimkeys.read_key(self.dkim_key_path()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption())
        return dkim.sign(data, b"bench", self.options["dkim"].encode(), pem) + data

    def start_rspamd(self):
        """
        Debian's rspamd as tests/rspamdserver.py starts it (its workers on
        free ports, its RBL, SPF and DMARC lookups to a stub answering
        NXDOMAIN at once: the sandbox's resolver lets them time out, which
        would measure DNS, not rspamd), under this system's directory.
        The bench's client is 127.0.0.1: without milter_headers' options,
        milter_headers skips local senders and a milter's delivered mail
        would carry no proof of the scan. Hyperscan, as in production:
        this waits for its database (compiled on a first start).
        """
        from tests.rspamdserver import RspamdServer

        rspamd = RspamdServer(
            home=self.dir / "rspamd", hyperscan=True,
            local={"milter_headers.conf": textwrap.dedent("""\
                extended_spam_headers = true;
                skip_local = false;
                skip_authenticated = false;
                """)},
            spawn=lambda argv, log: procs.spawn("rspamd", argv, log), halt=procs.stop)
        self.daemons.append(rspamd)
        try:
            rspamd.start(RSPAMD_READY_TIMEOUT)
        except RuntimeError as e:
            self.stop()
            raise Skip(str(e))
        return rspamd

    def start_clamd(self):
        """
        A clamd of its own as tests/integration/test_clamav.py starts it:
        a database holding only the EICAR signature (nothing downloaded),
        a unix socket in a temporary folder (a socket path has at most 107
        bytes).
        """
        clamd = BenchClamd(clamd_program())
        self.daemons.append(clamd)
        try:
            clamd.start()
        except AssertionError as e:
            self.stop()
            raise Skip(str(e)[-300:])
        return clamd


# The first start of rspamd in a directory compiles its hyperscan database.
RSPAMD_READY_TIMEOUT = 180


class BenchClamd(Clamd):
    """The tests' clamd, whose log the bench shows when a run fails."""

    def log_tail(self, lines=15):
        log = self.dir / "clamd.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def ensure_clamd(install):
    """Install Debian's clamd when missing (and allowed), or raise L{Skip}."""
    if clamd_program() is None:
        if not install:
            raise Skip("clamd is not installed (--no-install)")
        # clamav-daemon recommends clamav-freshclam: the bench's database is EICAR's only.
        _apt_install("clamav-daemon", recommends=False)


def ensure_rspamd(install):
    """Install Debian's rspamd when missing (and allowed), or raise L{Skip}."""
    if shutil.which("rspamd") is None:
        if not install:
            raise Skip("rspamd is not installed (--no-install)")
        # rspamd recommends redis-server: the bench runs it without Redis.
        _apt_install("rspamd", recommends=False)
    try:
        pwd.getpwnam("_rspamd")
    except KeyError:
        raise Skip("rspamd's user _rspamd is missing (Debian's package creates it)")


def header_field(message, name):
    """The unfolded value of header field C{name} (bytes, with its colon) of C{message}, or None."""
    header = message.replace(b"\r\n", b"\n").partition(b"\n\n")[0]
    for field in header.replace(b"\n\t", b" ").replace(b"\n ", b" ").split(b"\n"):
        if field.lower().startswith(name.lower()):
            return field[len(name):]
    return None


def content_filter_tables(directory):
    """
    Every content filter of issue 17 on: the config tables, and beside the
    config (in C{directory}) lists of a realistic size.
    """
    directory = Path(directory)
    (directory / "phrase-list.txt").write_text(
        "".join(f"cheap offer number {n}\n" for n in range(200)))
    (directory / "url-domain-bl.txt").write_text(
        "".join(f"spam{n}.example\n" for n in range(200)))
    words = "".join(f"{chr(97 + n % 26)}{chr(97 + n // 26 % 26)}word{chr(97 + n // 676)} "
                    f"{n % 7} {n % 11}\n" for n in range(5000))
    (directory / "antispam-table.txt").write_text("_messages 500 800\n" + words)
    return {"antispam.mime": {}, "antispam.attachments": {}, "antispam.html": {},
            "antispam.phrases": {}, "antispam.urls": {"scan": "all"},
            "antispam.statistical": {}}


class Mailsrv(System):
    name = "mailsrv"
    protocols = frozenset({"smtp", "submission", "pop3", "imap"})
    durable = "fsync'd (file + Maildir new/)"

    @property
    def config_note(self):
        return (f"[access] max_connections_per_ip={MAILSRV_LIMITS['access']['max_connections_per_ip']}"
                f", max_recipients={MAILSRV_LIMITS['access']['max_recipients']}; "
                f"[[listen]] max_connections={MAILSRV_LIMITS['listen_max_connections']}; "
                + ("every content filter on (mime, attachments, html, phrases: 200, "
                   "urls: 200, statistical: 5,000 words)"
                   if self.options.get("content_filters") else "filters off")
                + ("; [antispam.rspamd] on (its own rspamd, configured as postfix-rspamd's, "
                   "action: rspamd's own mapping, the default)"
                   if self.options.get("rspamd") else "")
                + ("; [antispam.clamav] on (its own clamd, EICAR-only database, unix socket; "
                   "action reject, on_error tempfail: the defaults)"
                   if self.options.get("clamav") else "")
                + (f"; [[dkim.sign]] RSA-2048 for {self.options['dkim']} (submission signs) "
                   "and [antispam.dkim] (intake verifies the asyncio load, signed with that "
                   "key, its record from a DNS server of the bench's; smtp-source's is unsigned)"
                   if self.options.get("dkim") else "")
                + "; plain-text logins on loopback; listen backlog "
                + (str(self.options["backlog"]) if self.options.get("backlog")
                   else "mailsrv's default ([[listen]] backlog, 1024)"))

    def ensure_installed(self):
        if self.options.get("rspamd"):
            ensure_rspamd(self.install)
        if self.options.get("clamav"):
            ensure_clamd(self.install)

    def maildir(self, user):
        return self.dir / "var" / "mail" / DOMAIN / user

    def check_delivered(self, message):
        verdict = header_field(message, b"X-Mailsrv-Spam:")
        if self.options.get("rspamd") and (verdict is None or b"reasons=rspamd" not in verdict
                                           or b"unscanned" in verdict):
            raise Skip("the delivered message has no X-Mailsrv-Spam header naming rspamd: "
                       f"rspamd did not scan it; {self.log_tail(5)[-300:]}")
        # A clean message gets no header from clamav; with on_error tempfail
        # (the default) it is delivered only when clamd said it is clean.
        if self.options.get("clamav") and b"clamav unscanned" in (verdict or b""):
            raise Skip(f"clamd did not scan the delivered message; {self.log_tail(5)[-300:]}")
        if self.options.get("dkim") and b"dkim=pass" not in message:
            raise Skip("the delivered message's Authentication-Results has no dkim=pass: "
                       f"the signed load was not verified; {self.log_tail(5)[-300:]}")

    def start(self):
        from mailsrv.directory.passwords import hash_password

        self.ports = {p: free_port() for p in ("smtp", "submission", "pop3", "imap")}
        tables = {
            "server": {"hostname": "mail.example.test", "data_dir": "var"},
            "domains": {"local": [DOMAIN]},
            "auth": {"allow_plaintext_on_loopback": True},
            "access": dict(MAILSRV_LIMITS["access"]),
            "delivery": {"retry": [1]},
        }
        if self.options.get("smart_host"):
            tables["delivery"]["smart_host"] = self.options["smart_host"]
        if self.options.get("content_filters"):
            tables.update(content_filter_tables(self.dir))
        if self.options.get("rspamd"):
            tables["antispam.rspamd"] = {"url": self.start_rspamd().url}
        if self.options.get("clamav"):
            tables["antispam.clamav"] = {"endpoint": self.start_clamd().endpoint}
        if self.options.get("dkim"):
            tables["antispam.dkim"] = {}
            tables["dns"] = {"servers": [self.start_key_server()], "timeout": 1}
        for name, table in self.more_tables().items():
            tables[name] = {**tables.get(name, {}), **table}
        lines = []
        for name, table in tables.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
            lines.append("")
        if self.options.get("dkim"):
            lines += ["[[dkim.sign]]", f'domain = "{self.options["dkim"]}"',
                      'selector = "bench"', f'key = "{self.dkim_key_path()}"', ""]
        for protocol, role in (("smtp", "mx"), ("submission", "submission"),
                               ("pop3", ""), ("imap", "")):
            lines += ["[[listen]]", f'protocol = "{"smtp" if role else protocol}"']
            if role:
                lines.append(f'role = "{role}"')
            backlog = self.options.get("backlog")
            endpoint = f"tcp:{self.ports[protocol]}:interface=127.0.0.1"
            if backlog:
                lines.append(f"backlog = {backlog}")
            lines += [f'endpoint = "{endpoint}"',
                      'tls = "starttls"',
                      f"max_connections = {MAILSRV_LIMITS['listen_max_connections']}", ""]
        (self.dir / "mailsrv.toml").write_text("\n".join(lines))
        stored = hash_password(PASSWORD)
        users = self.dir / "users"
        users.write_text("".join(f"{u}@{DOMAIN}:{stored}\n" for u in self.users))
        users.chmod(0o600)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
        argv = twistd() + ["-n", "--pidfile=", "--logfile=-"]
        if self.options.get("profile"):
            argv += [f"--profile={self.options['profile']}", "--profiler=cprofile",
                     "--savestats"]
        argv += ["mailsrv", "--config", str(self.dir / "mailsrv.toml")]
        self.process = procs.spawn(self.name, argv, self.dir / "server.log", env=env,
                                   cwd=self.dir)
        self._wait()

    def more_tables(self):
        """Config tables to add (a subclass's)."""
        return {}


class MailsrvWorkers(Mailsrv):
    """
    mailsrv with [server] workers = 2 (docs/scale-out.md): the parent binds
    the ports, two worker nodes accept on them, sharing a redis-server of
    their own (on a unix socket, persisting nothing).
    """

    name = "mailsrv-2w"
    workers = 2

    @property
    def config_note(self):
        return (f"[server] workers = {self.workers}, [sessions] backend = \"redis\" (its own "
                f"redis-server, unix socket); " + super().config_note)

    def ensure_installed(self):
        super().ensure_installed()
        if redis_missing():
            if not self.install:
                raise Skip(redis_missing())
            _apt_install("redis-server")

    def more_tables(self):
        redis = BenchRedis()
        self.daemons.append(redis)
        try:
            redis.start()
        except RuntimeError as e:
            self.stop()
            raise Skip(str(e)[-300:])
        return {"server": {"workers": self.workers, "node": "bench"},
                "sessions": {"backend": "redis", "redis_url": redis.url}}

    def start(self):
        """Once every worker answers (the parent listens before they run)."""
        super().start()
        log = self.dir / "server.log"
        deadline = time.monotonic() + 60
        while log.read_text(errors="replace").count("Redis connected") < self.workers:
            if time.monotonic() > deadline:
                self.stop()
                raise Skip(f"the workers did not start: {self.log_tail(5)[-300:]}")
            time.sleep(0.1)


class BenchRedis(RedisServer):
    """The tests' redis-server, whose log the bench shows when a run fails."""

    def log_tail(self, lines=15):
        log = self.dir / "redis.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


class Postfix(System):
    name = "postfix"
    protocols = frozenset({"smtp"})
    durable = "queue file fsync'd by cleanup"
    config_note = ("smtpd -> cleanup -> qmgr -> virtual(8) Maildir; own config_directory and "
                   "queue_directory; chroot off; default_process_limit=100 (default); "
                   "smtpd_client_connection_count_limit=0")
    why_not = {"submission": "needs a SASL server (Cyrus or a Dovecot auth socket) "
                             "wired in; not set up by the harness"}

    def ensure_installed(self):
        if shutil.which("postfix") is None or shutil.which("smtp-source") is None:
            if not self.install:
                raise Skip("postfix is not installed (--no-install)")
            _apt_install("postfix")
        if os.geteuid() != 0:
            raise Skip("postfix's master must start as root")

    def maildir(self, user):
        return self.dir / "mail" / DOMAIN / user

    def start(self):
        self.ports = {"smtp": free_port()}
        conf, queue, data = self.dir / "conf", self.dir / "queue", self.dir / "data"
        for d in (conf, queue, data):
            d.mkdir(exist_ok=True)
        owner = pwd.getpwnam("postfix")
        os.chown(data, owner.pw_uid, owner.pw_gid)
        uid, gid = _nobody()
        mail = self.dir / "mail" / DOMAIN
        mail.mkdir(parents=True, exist_ok=True)
        os.chown(self.dir / "mail", uid, gid)
        os.chown(mail, uid, gid)
        (conf / "vmailbox").write_text(
            "".join(f"{u}@{DOMAIN} {DOMAIN}/{u}/\n" for u in self.users))
        daemon_directory = "/usr/lib/postfix/sbin"
        (conf / "main.cf").write_text(textwrap.dedent(f"""\
            compatibility_level = 3.6
            queue_directory = {queue}
            data_directory = {data}
            daemon_directory = {daemon_directory}
            shlib_directory = /usr/lib/postfix
            meta_directory = /etc/postfix
            mail_owner = postfix
            setgid_group = postdrop
            myhostname = postfix.bench.test
            mydomain = bench.test
            myorigin = $myhostname
            mydestination =
            inet_interfaces = 127.0.0.1
            inet_protocols = ipv4
            mynetworks = 127.0.0.0/8
            relay_domains =
            relayhost =
            alias_maps =
            alias_database =
            local_recipient_maps =
            virtual_mailbox_domains = {DOMAIN}
            virtual_mailbox_base = {self.dir / "mail"}
            virtual_mailbox_maps = texthash:{conf / "vmailbox"}
            virtual_uid_maps = static:{uid}
            virtual_gid_maps = static:{gid}
            virtual_mailbox_limit = 0
            message_size_limit = 52428800
            smtpd_recipient_limit = 1000
            smtpd_client_connection_count_limit = 0
            smtpd_client_message_rate_limit = 0
            smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
            smtputf8_enable = no
            biff = no
            maillog_file = {self.dir / "maillog"}
            maillog_file_prefixes = {self.dir}
            """) + self.main_cf_extra())
        services = [
            (f"127.0.0.1:{self.ports['smtp']}", "inet", "n", "-", "n", "-", "-", "smtpd"),
            ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
            ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
            ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
            ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
            ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
            ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
            ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
            ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
            ("proxywrite", "unix", "-", "-", "n", "-", "1", "proxymap"),
            ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
            ("relay", "unix", "-", "-", "n", "-", "-", "smtp"),
            ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
            ("error", "unix", "-", "-", "n", "-", "-", "error"),
            ("retry", "unix", "-", "-", "n", "-", "-", "error"),
            ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
            ("local", "unix", "-", "n", "n", "-", "-", "local"),
            ("virtual", "unix", "-", "n", "n", "-", "-", "virtual"),
            ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
            ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
            ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
        ]
        (conf / "master.cf").write_text("".join(" ".join(s) + "\n" for s in services))
        argv = ["postfix", "-c", str(conf), "start-fg"]
        self.process = procs.spawn(self.name, argv, self.dir / "server.log")
        self._wait()

    def main_cf_extra(self):
        """main.cf lines a variant adds to the bench's Postfix."""
        return ""

    def log_tail(self, lines=15):
        text = super().log_tail(lines)
        maillog = self.dir / "maillog"
        if maillog.exists():
            text += "\n" + "\n".join(maillog.read_text(errors="replace").splitlines()[-lines:])
        return text

    def stop(self):
        if self.process is not None:
            subprocess.run(["postfix", "-c", str(self.dir / "conf"), "stop"],
                           capture_output=True, timeout=60)
        super().stop()


class PostfixRspamd(Postfix):
    """
    The bench's Postfix with Debian's rspamd as its milter (issue 17's
    comparison point for mailsrv's content filters): the tests' own
    rspamd (tests/rspamdserver.py: Debian's /etc/rspamd/rspamd.conf with its
    folders in the temporary directory, so /etc/rspamd and the system's
    rspamd service are never touched).
    """

    name = "postfix-rspamd"
    durable = "queue file fsync'd by cleanup, after rspamd's scan"
    config_note = (Postfix.config_note + "; smtpd_milters = rspamd_proxy in milter mode "
                   "(Debian's rspamd 3.4 defaults: one proxy forwarding to the normal "
                   "workers, cores - 2 of them, at least 1), milter_default_action = accept, no Redis (Bayes, greylist, "
                   "ratelimit, replies, history_redis, neural, url_redirector off), "
                   "DNS to a stub answering NXDOMAIN at once, "
                   "milter_headers extended_spam_headers (X-Spamd-Result checked on the "
                   "first message); memory = Postfix's and rspamd's processes")
    def ensure_installed(self):
        super().ensure_installed()
        ensure_rspamd(self.install)

    def start(self):
        self.rspamd = self.start_rspamd()
        super().start()

    def main_cf_extra(self):
        return textwrap.dedent(f"""\
            smtpd_milters = inet:127.0.0.1:{self.rspamd.ports["proxy"]}
            non_smtpd_milters = $smtpd_milters
            milter_default_action = accept
            milter_protocol = 6
            milter_mail_macros = i {{mail_addr}} {{client_addr}} {{client_name}} {{auth_authen}}
            """)

    def check_delivered(self, message):
        if header_field(message, b"X-Spamd-Result:") is None:
            raise Skip("the delivered message has no X-Spamd-Result header: rspamd did "
                       f"not scan it; {self.log_tail(5)[-300:]}")


class ClamavMilter:
    """
    Debian's clamav-milter in the foreground on a free loopback port, with
    its config and log in C{directory}, asking C{clamd} (a L{BenchClamd}).
    """

    def __init__(self, directory, clamd):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = self.dir / "clamav-milter.log"
        self.config = self.dir / "clamav-milter.conf"
        # Debian's clamav-milter.conf but in the foreground, on our port and
        # clamd, as root (no User), with what mailsrv's [antispam.clamav]
        # does by default: refuse a virus, defer when clamd cannot say.
        self.config.write_text(textwrap.dedent(f"""\
            MilterSocket inet:{self.port}@127.0.0.1
            ClamdSocket unix:{clamd.socket}
            Foreground yes
            ReadTimeout 120
            OnClean Accept
            OnInfected Reject
            OnFail Defer
            AddHeader Replace
            MaxFileSize 25M
            SupportMultipleRecipients false
            TemporaryDirectory /tmp
            LogFile {self.log}
            LogTime true
            LogInfected Basic
            """))
        self.process = None

    def start(self):
        self.process = procs.spawn("clamav-milter", [CLAMAV_MILTER, "-c", str(self.config)],
                                   self.dir / "stdout.log")
        if not procs.wait_for_port(self.port, process=self.process, timeout=30):
            raise Skip(f"clamav-milter did not listen on {self.port}: {self.log_tail(5)}")

    def log_tail(self, lines=15):
        text = "".join(path.read_text(errors="replace") for path in
                       (self.dir / "stdout.log", self.log) if path.exists())
        return "\n".join(text.splitlines()[-lines:])

    def cleanup(self):
        process, self.process = self.process, None
        if process is not None:
            procs.stop(process)


CLAMAV_MILTER = "/usr/sbin/clamav-milter"


class PostfixClamav(Postfix):
    """
    The bench's Postfix with Debian's clamav-milter as its milter (issue
    18's comparison point for [antispam.clamav]), asking a clamd of its
    own with the EICAR-only database of the tests.
    """

    name = "postfix-clamav"
    durable = "queue file fsync'd by cleanup, after clamd's scan"
    config_note = (Postfix.config_note + "; smtpd_milters = clamav-milter (Debian's, "
                   "OnClean Accept, OnInfected Reject, OnFail Defer, AddHeader Replace), "
                   "milter_default_action = tempfail, clamd with an EICAR-only database "
                   "on a unix socket (X-Virus-Scanned checked on the first message); "
                   "memory = Postfix's, clamav-milter's and clamd's processes")

    def ensure_installed(self):
        super().ensure_installed()
        ensure_clamd(self.install)
        if not Path(CLAMAV_MILTER).exists():
            if not self.install:
                raise Skip("clamav-milter is not installed (--no-install)")
            _apt_install("clamav-milter", recommends=False)

    def start(self):
        clamd = self.start_clamd()
        self.milter = ClamavMilter(self.dir / "clamav-milter", clamd)
        self.daemons.append(self.milter)
        try:
            self.milter.start()
        except Skip:
            self.stop()
            raise
        super().start()

    def main_cf_extra(self):
        return textwrap.dedent(f"""\
            smtpd_milters = inet:127.0.0.1:{self.milter.port}
            non_smtpd_milters = $smtpd_milters
            milter_default_action = tempfail
            milter_protocol = 6
            """)

    def check_delivered(self, message):
        if header_field(message, b"X-Virus-Scanned:") is None:
            raise Skip("the delivered message has no X-Virus-Scanned header: clamav-milter "
                       f"did not scan it; {self.log_tail(5)[-300:]}")


class Dovecot(System):
    name = "dovecot"
    protocols = frozenset({"pop3", "imap"})
    config_note = ("high-performance login mode (service_count=0, client_limit=4096); "
                   "passwd-file PLAIN; default_process_limit=2048")

    def ensure_installed(self):
        if (shutil.which("dovecot") is None
                or not Path("/usr/lib/dovecot/imap").exists()
                or not Path("/usr/lib/dovecot/pop3").exists()):
            if not self.install:
                raise Skip("dovecot is not installed (--no-install)")
            _apt_install("dovecot-imapd", "dovecot-pop3d")
        if os.geteuid() != 0:
            raise Skip("dovecot -F must start as root here (its own users)")

    def maildir(self, user):
        return self.dir / "mail" / DOMAIN / user

    def mailbox_owner(self):
        return _nobody()

    def start(self):
        self.ports = {"imap": free_port(), "pop3": free_port()}
        uid, gid = _nobody()
        for sub in ("run", "state", "home"):
            (self.dir / sub).mkdir(exist_ok=True)
        (self.dir / "mail").mkdir(exist_ok=True)
        os.chown(self.dir / "mail", uid, gid)
        os.chown(self.dir / "home", uid, gid)
        (self.dir / "mail" / DOMAIN).mkdir(exist_ok=True)
        os.chown(self.dir / "mail" / DOMAIN, uid, gid)
        passwd = self.dir / "passwd"
        passwd.write_text("".join(f"{u}@{DOMAIN}:{{PLAIN}}{PASSWORD}\n" for u in self.users))
        conf = self.dir / "dovecot.conf"
        conf.write_text(textwrap.dedent(f"""\
            base_dir = {self.dir / "run"}
            state_dir = {self.dir / "state"}
            log_path = {self.dir / "server.log"}
            protocols = imap pop3
            listen = 127.0.0.1
            ssl = no
            disable_plaintext_auth = no
            auth_mechanisms = plain login
            first_valid_uid = 1
            mail_location = maildir:{self.dir / "mail"}/%d/%n
            default_process_limit = 2048
            default_client_limit = 4096
            default_vsz_limit = 1G
            mail_max_userip_connections = 2000
            passdb {{
              driver = passwd-file
              args = scheme=PLAIN username_format=%u {passwd}
            }}
            userdb {{
              driver = static
              args = uid={uid} gid={gid} home={self.dir / "home"}/%d/%n
            }}
            service imap-login {{
              inet_listener imap {{
                address = 127.0.0.1
                port = {self.ports["imap"]}
              }}
              inet_listener imaps {{
                port = 0
              }}
              service_count = 0
              process_min_avail = 2
              client_limit = 4096
            }}
            service pop3-login {{
              inet_listener pop3 {{
                address = 127.0.0.1
                port = {self.ports["pop3"]}
              }}
              inet_listener pop3s {{
                port = 0
              }}
              service_count = 0
              process_min_avail = 1
            }}
            service anvil {{
              client_limit = 8192
            }}
            """))
        self.process = procs.spawn(self.name, ["dovecot", "-F", "-c", str(conf)],
                                   self.dir / "stdout.log")
        self._wait()


class Aiosmtpd(System):
    """aiosmtpd with a small handler that writes and fsyncs Maildir files."""

    name = "aiosmtpd"
    protocols = frozenset({"smtp"})
    durable = "fsync'd (file + new/), on the event loop"
    threads = False
    config_note = "bench/peers/aiosmtpd_maildir.py; fsync on the event loop"
    why_not = {"submission": "no queue to relay from (aiosmtpd is a library)"}

    def ensure_installed(self):
        try:
            import aiosmtpd

            del aiosmtpd
        except ImportError:
            if not self.install:
                raise Skip("aiosmtpd is not installed (--no-install)")
            _pip_install("aiosmtpd")

    def maildir(self, user):
        return self.dir / "mail" / DOMAIN / user

    def start(self):
        self.ports = {"smtp": free_port()}
        argv = [sys.executable, "-m", "bench.peers.aiosmtpd_maildir",
                "--port", str(self.ports["smtp"]), "--root", str(self.dir / "mail"),
                "--users", ",".join(self.users)]
        if self.threads:
            argv.append("--threads")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = procs.spawn(self.name, argv, self.dir / "server.log", env=env)
        self._wait()


class AiosmtpdThreads(Aiosmtpd):
    name = "aiosmtpd-threads"
    durable = "fsync'd (file + new/), in a thread pool"
    threads = True
    config_note = "bench/peers/aiosmtpd_maildir.py --threads; fsync in the loop's thread pool"


class TwistdMail(System):
    """Twisted's own `twistd mail` with a maildir domain."""

    name = "twistd-mail"
    protocols = frozenset({"smtp", "pop3"})
    durable = "not fsync'd (write + rename)"
    config_note = ("twistd -n mail --maildirdbmdomain (Twisted's stock SMTP + POP3); "
                   "users written into its DirDBM directly (--user fails on Python 3)")
    why_not = {"submission": "no STARTTLS or submission port in the stock plugin",
               "imap": "the stock plugin has no IMAP server"}
    known_failure = {
        "smtp": "stock twistd mail cannot deliver into a Maildir on Python 3: "
                "MaildirDirdbmDomain mixes str and bytes (startMessage joins a bytes "
                "root with str names: TypeError); twisted-smtp is the working stand-in",
        "pop3": "stock twistd mail refuses the POP3 login with the password in its "
                "domain's DirDBM on Python 3 (the str/bytes mix of --user); TWISTED.md: "
                "its RETR would open messages in text mode too",
    }

    def maildir(self, user):
        return self.dir / "mail" / user

    def start(self):
        self.ports = {"smtp": free_port(), "pop3": free_port()}
        (self.dir / "mail").mkdir(exist_ok=True)
        argv = twistd() + ["-n", "--pidfile=", "--logfile", str(self.dir / "twistd.log"),
                           "mail", "--esmtp", "-H", "twistd.bench.test",
                           "--maildirdbmdomain", f"{DOMAIN}={self.dir / 'mail'}"]
        # `--user` fails on Python 3 ("DirDBM key must be bytes"): write the
        # domain's password DirDBM ourselves, with the bytes keys it wants.
        from twisted.persisted import dirdbm

        passwords = dirdbm.open(str(self.dir / "mail" / "passwd"))
        for user in self.users:
            passwords[user.encode()] = PASSWORD.encode()
        argv += ["--smtp", f"tcp:{self.ports['smtp']}:interface=127.0.0.1",
                 "--pop3", f"tcp:{self.ports['pop3']}:interface=127.0.0.1"]
        # Without our tree on the path: this is the stock Twisted.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.process = procs.spawn(self.name, argv, self.dir / "server.log", env=env,
                                   cwd=self.dir)
        self._wait()

    def log_tail(self, lines=15):
        log = self.dir / "twistd.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return super().log_tail(lines) + "\n".join(text.splitlines()[-lines:])


class TwistedSMTP(System):
    """Twisted's ESMTP protocol with a minimal fsyncing Maildir delivery."""

    name = "twisted-smtp"
    protocols = frozenset({"smtp"})
    durable = "fsync'd (file + new/), in a thread"
    config_note = ("bench/peers/twisted_smtp_maildir.py: twisted.mail.smtp.ESMTP + a "
                   "Maildir IMessageDelivery (what twistd mail would be on Python 3)")

    def maildir(self, user):
        return self.dir / "mail" / DOMAIN / user

    def start(self):
        self.ports = {"smtp": free_port()}
        argv = [sys.executable, "-m", "bench.peers.twisted_smtp_maildir",
                "--port", str(self.ports["smtp"]), "--root", str(self.dir / "mail"),
                "--users", ",".join(self.users)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = procs.spawn(self.name, argv, self.dir / "server.log", env=env)
        self._wait()


SYSTEMS = {cls.name: cls for cls in (Mailsrv, MailsrvWorkers, Postfix, PostfixRspamd, PostfixClamav, Dovecot,
                                     Aiosmtpd, AiosmtpdThreads, TwistedSMTP, TwistdMail)}
