"""
Start the real server (`twistd -n mailsrv`) on free loopback ports with a
temporary config, and give tests what a user would have: ports, a user, the
mailsrv command, clients bound to chosen loopback addresses.
"""

import os
import poplib
import imaplib
import resource
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import socketserver
from pathlib import Path

BIN = Path(sys.executable).parent
PASSWORD = "correct horse battery staple"

LISTENERS = [
    # name, protocol, role, tls
    ("smtp", "smtp", "mx", "starttls"),
    ("submission", "smtp", "submission", "starttls"),
    ("smtps", "smtp", "submission", "implicit"),
    ("pop3", "pop3", "", "starttls"),
    ("pop3s", "pop3", "", "implicit"),
    ("imap", "imap", "", "starttls"),
    ("imaps", "imap", "", "implicit"),
]


_handed_out = set()


def free_port():
    """
    A loopback port nothing listens on now, never the same twice in one
    test run: the kernel readily hands out a port it has just freed again,
    so two calls in a row may otherwise give one port to two listeners.
    """
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise AssertionError("no unused loopback port")


def require_tool(testcase, name):
    """Skip (saying so) when a client program is not installed."""
    if shutil.which(name) is None:
        testcase.skipTest(f"{name} is not installed (.ci/run installs it)")


def twistd():
    path = BIN / "twistd"
    return [str(path)] if path.exists() else [sys.executable, "-m", "twisted.scripts.twistd"]


def mailsrv_command():
    path = BIN / "mailsrv"
    return [str(path)] if path.exists() else [sys.executable, "-m", "mailsrv.admin.cli"]


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # (a key with a dot, a domain, is quoted)
        return "{" + ", ".join(f"{_toml_value(k) if '.' in k else k} = {_toml_value(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(value)


def _interface(endpoint):
    """The interface= of an endpoint string, unescaped (\\:\\:1 is ::1)."""
    for part in endpoint.replace("\\:", "\0").split(":"):
        if part.startswith("interface="):
            return part[len("interface="):].replace("\0", ":")
    return ""


class PortTaken(Exception):
    """Another process took a port between free_port() and the server's start."""


class MailServerProcess:
    """
    One running server. C{extra} adds or overrides config tables, e.g.
    C{{"pop_before_smtp": {"window": 2}}}.
    """

    def __init__(self, extra=None, users=("alice@example.test", "bob@example.test"),
                 listeners=None, memory_limit=None):
        """
        @param listeners: keys to add or override in chosen [[listen]]
            tables, by name, e.g. C{{"imaps": {"client_cert": "require"}}};
            an C{endpoint} may say C{{port}}, e.g. C{"tcp6:{port}:interface=\\:\\:1"}.
        @param memory_limit: bytes of address space the server may take, so
            that a runaway command ends in MemoryError in the server instead
            of the kernel's OOM killer picking some process on the machine.
        """
        self.memory_limit = memory_limit
        self.dir = Path(tempfile.mkdtemp(prefix="mailsrv-it-"))
        self.ports = {name: free_port() for name, *_ in LISTENERS}
        self.hosts = {name: "127.0.0.1" for name in self.ports}
        listeners = listeners or {}
        self.config = self.dir / "mailsrv.toml"
        self.log = self.dir / "twistd.log"
        self.process = None
        tables = {
            # (as root, the tests' servers stay root: their files are root's)
            "server": {"hostname": "mail.example.test", "data_dir": "var",
                       "allow_root": os.geteuid() == 0},
            "domains": {"local": ["example.test"]},
            "auth": {"allow_plaintext_on_loopback": True},
            "delivery": {"retry": [1]},
        }
        for name, table in (extra or {}).items():
            tables[name] = {**tables.get(name, {}), **table}
        lines = []
        for name, table in tables.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
            lines.append("")
        for name, protocol, role, tls in LISTENERS:
            table = {"protocol": protocol, "role": role,
                     "endpoint": "tcp:{port}:interface=127.0.0.1", "tls": tls,
                     **listeners.get(name, {})}
            table["endpoint"] = table["endpoint"].format(port=self.ports[name])
            if table["endpoint"].startswith("tcp6:"):
                self.hosts[name] = _interface(table["endpoint"]) or "::1"
            lines.append("[[listen]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v != ""]
            lines.append("")
        self.config.write_text("\n".join(lines))
        for user in users:
            self.admin("user", "add", user, "--password-stdin", input=PASSWORD + "\n")

    def address(self, name):
        """(host, port) where listener C{name} accepts connections."""
        return self.hosts[name], self.ports[name]

    @property
    def data_dir(self):
        return self.dir / "var"

    def admin(self, *args, input=None, check=True):
        """Run `mailsrv --config <this config> ARGS`; the CompletedProcess."""
        result = subprocess.run(
            mailsrv_command() + ["--config", str(self.config), *args],
            input=input, capture_output=True, text=True, timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"mailsrv {' '.join(args)} failed: {result.stderr}")
        return result

    def start(self, attempts=3):
        """
        Start the server and wait until every listener answers. free_port()
        cannot reserve a port, so another process may take one first: then
        the listeners move to fresh ports and the start is tried again.
        """
        for attempt in range(attempts):
            try:
                return self._start()
            except PortTaken:
                if attempt == attempts - 1:
                    raise AssertionError(f"no free ports:\n{self.log_text()}")
                self._move_ports()

    def _start(self):
        self.logfile = open(self.log, "ab")
        self.log_offset = self.logfile.tell()
        self.process = subprocess.Popen(
            twistd() + ["-n", "--pidfile=", "mailsrv", "--config", str(self.config)],
            stdout=self.logfile, stderr=subprocess.STDOUT, cwd=self.dir,
            preexec_fn=self._limit_memory if self.memory_limit else None,
        )
        deadline = time.monotonic() + 30
        while True:
            log = self.log.read_bytes()[self.log_offset:].decode(errors="replace")
            if self.process.poll() is not None:
                self.stop()
                if "cannot listen" in log and "in use" in log:
                    raise PortTaken()
                raise AssertionError(f"server exited at start:\n{self.log_text()}")
            # every listener logs "listening:" once its port is bound: a port
            # that answers is not enough, another process may hold it
            # (text lines, or [log] format = "json" objects)
            listening = [line for line in log.splitlines()
                         if "mailsrv.service" in line and "listening: " in line]
            if len(listening) >= len(self.ports):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not listen:\n{self.log_text()}")
            time.sleep(0.05)
        for name in self.ports:
            socket.create_connection(self.address(name), 5).close()
        return self

    def _limit_memory(self):
        resource.setrlimit(resource.RLIMIT_AS, (self.memory_limit, self.memory_limit))

    def _move_ports(self):
        """Give every listener a new port, in the config as it is now."""
        text = self.config.read_text()
        for name, port in list(self.ports.items()):
            self.ports[name] = free_port()
            text = text.replace(f":{port}:", f":{self.ports[name]}:")
        self.config.write_text(text)

    def stop(self, sig=signal.SIGTERM):
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process:
            self.logfile.close()
        self.process = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_log(self, text, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text():
                return
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the log:\n{self.log_text()}")

    def maildir_files(self, user="alice@example.test", folder=""):
        local, domain = user.split("@")
        base = self.data_dir / "mail" / domain / local / folder
        return sorted(p for sub in ("new", "cur") for p in (base / sub).glob("*")
                      if p.is_file())

    # Clients, optionally from another loopback address.

    def send(self, message, sender="x@remote.test", helo="client.test", source="127.0.0.1"):
        """One message to alice over SMTP; the reply to the end of DATA."""
        with self.smtp(source=source) as client:
            client.ehlo(helo)
            client.mail(sender)
            client.rcpt("alice@example.test")
            return client.data(message)

    def smtp(self, port="smtp", source="127.0.0.1"):
        return smtplib.SMTP("127.0.0.1", self.ports[port], timeout=30,
                            source_address=(source, 0))

    def pop3(self, source="127.0.0.1"):
        return _BoundPOP3("127.0.0.1", self.ports["pop3"], source)

    def imap(self, source="127.0.0.1"):
        return _BoundIMAP4("127.0.0.1", self.ports["imap"], source)


class _FromSource:
    """A poplib/imaplib client that connects from a chosen loopback address."""

    def __init__(self, host, port, source):
        self.source = source
        super().__init__(host, port, timeout=30)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))


class _BoundPOP3(_FromSource, poplib.POP3):
    pass


class _BoundIMAP4(_FromSource, imaplib.IMAP4):
    pass


class SinkServer:
    """
    A minimal SMTP server in a thread, standing for a smart host or another
    site's MX: it accepts everything and keeps (sender, recipients, data).
    """

    def __init__(self):
        self.messages = []
        self.port = free_port()
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line):
                self.wfile.write(line.encode() + b"\r\n")

            def handle(self):
                self.reply("220 sink.test ESMTP")
                sender, recipients = None, []
                while True:
                    line = self.rfile.readline(4096)
                    if not line:
                        return
                    verb = line[:4].upper()
                    if verb in (b"EHLO", b"HELO"):
                        self.reply("250 sink.test")
                    elif verb == b"MAIL":
                        sender, recipients = line.decode().split(":", 1)[1].strip(), []
                        self.reply("250 ok")
                    elif verb == b"RCPT":
                        recipients.append(line.decode().split(":", 1)[1].strip())
                        self.reply("250 ok")
                    elif verb == b"DATA":
                        self.reply("354 go")
                        data = []
                        while True:
                            part = self.rfile.readline()
                            if part in (b".\r\n", b""):
                                break
                            data.append(part)
                        sink.messages.append((sender, recipients, b"".join(data)))
                        self.reply("250 ok queued")
                    elif verb == b"QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("250 ok")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count, timeout=20):
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages

    def close(self):
        self.server.shutdown()
        self.server.server_close()
