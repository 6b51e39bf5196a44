"""
A real redis-server of our own (Debian's package), for the [sessions]
backend = "redis" tests: on a UNIX socket in a temporary folder (no TCP
port: `--port 0`), persisting nothing (`--save ""`, no AOF), started in the
foreground and stopped by its PID, never the system's Redis. It can be
stopped and started again on the same socket, for the "Redis away" tests;
what it held is then gone, as after a restart of a Redis without
persistence.
"""

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from twisted.trial import unittest

REDIS_SERVER = "/usr/bin/redis-server"


def redis_missing():
    """Why no redis-server can run here, or L{None}."""
    if not Path(REDIS_SERVER).exists():
        return (f"{REDIS_SERVER} is missing (Debian: apt-get install redis-server; "
                ".ci/run installs it)")
    return None


def started(testcase):
    """
    A redis-server started for C{testcase}, stopped when it ends; the
    test is skipped, saying why, where none can run.
    """
    missing = redis_missing()
    if missing:
        raise unittest.SkipTest(missing)
    server = RedisServer()
    testcase.addCleanup(server.cleanup)
    server.start()
    return server


class RedisServer:
    """
    One redis-server.

    @ivar socket: the path of its UNIX socket.
    @ivar url: C{unix://SOCKET?db=0}, for [sessions] redis_url.
    """

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="mailsrv-redis-"))
        self.socket = self.dir / "redis.sock"
        self.url = f"unix://{self.socket}?db=0"
        self.process = None
        self.log = None

    def start(self):
        self.log = open(self.dir / "redis.log", "ab")
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", "0", "--unixsocket", str(self.socket),
             "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--daemonize", "no"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("redis-server exited: " + (self.dir / "redis.log").read_text())
            if self._answers():
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer within 20 s")

    def _answers(self):
        try:
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(0.5)
                client.connect(str(self.socket))
                client.sendall(b"PING\r\n")
                return client.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *words):
        """One command over a fresh connection (the tests' own look at Redis): its raw reply."""
        request = b"*%d\r\n" % len(words) + b"".join(
            b"$%d\r\n%s\r\n" % (len(w), w) for w in (str(w).encode() for w in words))
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(5)
            client.connect(str(self.socket))
            client.sendall(request)
            return client.recv(65536)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
