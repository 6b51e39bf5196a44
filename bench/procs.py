"""
Processes the harness starts: open-file limits, a registry that stops every
one of them by PID (at the end, on an exception, on Ctrl-C), and memory
readings from /proc.
"""

import os
import resource
import signal
import subprocess
import threading
import time

NOFILE = 65536


def raise_nofile(limit=NOFILE):
    """Raise RLIMIT_NOFILE (soft, and hard when we may) to C{limit}; the result."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(limit, soft), max(limit, hard)))
    except (ValueError, OSError):  # not root: the soft limit up to the hard one
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_setup():
    """preexec_fn of every server: its own process group, many open files."""
    os.setpgid(0, 0)
    raise_nofile()


_running = {}  # pid -> (Popen, name)
_lock = threading.Lock()


def spawn(name, argv, log, env=None, cwd=None):
    """
    Start a server process (in its own process group) and remember its PID.

    @param log: a path; stdout and stderr go there.
    """
    out = open(log, "ab")
    try:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                   preexec_fn=_child_setup)
    finally:
        out.close()
    with _lock:
        _running[process.pid] = (process, name)
    return process


def stop(process, timeout=15):
    """
    SIGTERM the process (and its process group, for servers that fork),
    then SIGKILL what is left after C{timeout} seconds.
    """
    with _lock:
        _running.pop(process.pid, None)
    pids = [process.pid] + descendants(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    for pid in pids[1:]:  # forked children outliving their parent
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def stop_all():
    """Stop every process still registered (at exit or on Ctrl-C)."""
    with _lock:
        processes = [p for p, _ in _running.values()]
    for process in processes:
        stop(process, timeout=5)


def _ppid_map():
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(*pids):
    """Every process below C{pids} (children, grandchildren, ...)."""
    children = _ppid_map()
    found, todo = [], list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def status_kb(pid, key):
    """A C{kB} value (VmRSS, VmHWM) from /proc/PID/status, or 0."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid):
    """Proportional set size (shared pages divided among their users), kB."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss(pid):
    """(bytes of RSS summed over C{pid} and its descendants, process count)."""
    pids = [pid] + descendants(pid)
    return sum(status_kb(p, "VmRSS") for p in pids) * 1024, len(pids)


def tree_memory(*roots):
    """
    The memory of a server: its RSS when it is one process; for a server
    of many processes (Postfix, Dovecot, Postfix with rspamd beside it:
    several C{roots}) the sum of their PSS, since a sum of RSS counts every
    shared page once per process.

    @return: C{(bytes, RSS sum in bytes, process count)}.
    """
    pids = list(roots) + descendants(*roots)
    rss = sum(status_kb(p, "VmRSS") for p in pids) * 1024
    if len(pids) == 1:
        return rss, rss, 1
    return sum(pss_kb(p) for p in pids) * 1024, rss, len(pids)


class MemorySampler:
    """
    Samples the RSS of a server's process tree every C{interval} seconds in
    a thread, keeping the peak while the workload runs. The kernel's own
    peak of the root process (VmHWM) is kept too (C{hwm}), but not used as
    the peak: it covers the whole life of the process, start-up included
    (mailsrv's start-up argon2 hash briefly takes 64 MiB), and exists per
    process only, so it would not compare with the multi-process servers.
    """

    def __init__(self, pid, *more, interval=0.1):
        self.pid = pid
        self.more = more  # other process trees of the same server (rspamd)
        self.interval = interval
        self.peak = 0
        self.peak_rss_sum = 0
        self.hwm = 0
        self.processes = 1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def sample(self):
        memory, rss_sum, count = tree_memory(self.pid, *self.more)
        self.hwm = max(self.hwm, status_kb(self.pid, "VmHWM") * 1024)
        if memory > self.peak:
            self.peak, self.peak_rss_sum, self.processes = memory, rss_sum, count
        return memory

    def note(self):
        """What the peak is, for the notes column."""
        if self.processes > 1:
            return (f"memory = PSS summed over {self.processes} processes "
                    f"(RSS sum {self.peak_rss_sum / (1 << 20):.0f} MB)")
        return f"VmHWM {self.hwm / (1 << 20):.0f} MB"

    def _run(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self):
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.sample()
        return self.peak


def wait_for_port(port, host="127.0.0.1", timeout=30, process=None):
    """Wait until C{host:port} accepts a connection; False on timeout or exit."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            socket.create_connection((host, port), 1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False
