"""
A server process of our own for the tests (redis-server, slapd): started
in the foreground with its output in a log in its temporary folder, ready
once it answers, stopped by its PID, never the system's.
"""

import shutil
import subprocess
import tempfile
import time
from pathlib import Path


class Daemon:
    """
    One process. A subclass gives its C{argv()} and says whether it
    C{answers()} yet.

    @ivar dir: its temporary folder (removed by L{cleanup}).
    @ivar name: of the program, for its log (C{dir/NAME.log}) and errors.
    """

    name = "daemon"

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix=f"mailsrv-{self.name}-"))
        self.process = None
        self.log = None

    def argv(self):
        raise NotImplementedError

    def answers(self):
        raise NotImplementedError

    def start(self, timeout=20):
        """Start it and wait until it answers. @raise RuntimeError: it exited, or never answered."""
        log_path = self.dir / f"{self.name}.log"
        self.log = open(log_path, "ab")  # (appended to: it may be started again)
        self.process = subprocess.Popen(self.argv(), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: " + log_path.read_text())
            if self.answers():
                return
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not answer within {timeout} s")

    def stop(self):
        """SIGTERM, then SIGKILL if it is not gone within 10 s."""
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

    def kill(self):
        """SIGKILL: gone at once, as a crashed server."""
        if self.process is not None:
            self.process.kill()
        self.stop()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
