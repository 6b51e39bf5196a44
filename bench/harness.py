"""
mailsrv against the servers users would pick instead, on one machine in one
run (issue 9). `python -m bench --help`; docs/performance.md has results.

Each (workload, system) pair gets a fresh server on free 127.0.0.1 ports
with a temporary config, the same load, and is stopped by PID before the
next one starts. Nothing is sent anywhere but 127.0.0.1.
"""

import argparse
import asyncio
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import load, procs
from bench.maildir import build_maildir, first_message, maildir_count
from bench.stats import Row, format_table
from bench.systems import DOMAIN, PASSWORD, SYSTEMS, Skip
from tests.integration.harness import free_port

SENDER = "bench@remote.test"
USERS = ["alice"] + [f"{n}alice" for n in range(1, 51)]
ALICE = f"alice@{DOMAIN}"


def message(size):
    """A message of C{size} bytes (headers included), CRLF lines, no leading dots."""
    header = (f"From: <{SENDER}>\r\nTo: <{ALICE}>\r\nSubject: bench\r\n"
              f"Message-ID: <bench@remote.test>\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    body = line * max(1, (size - len(header)) // len(line))
    return header + body


@dataclass
class Counts:
    """How much of each workload; --quick makes them small."""

    smtp: int = 5000
    smtp50: int = 500
    smtp1m: int = 200
    submission: int = 2000
    pop3: int = 1000
    folders: tuple = (1000, 50000)
    repeats: int = 5
    idle: int = 1000
    burst: int = 1000
    idle_hold: float = 10.0
    burst_timeout: float = 60.0  # a client not greeted by then counts as an error


QUICK = Counts(smtp=500, smtp50=100, smtp1m=50, submission=300, pop3=1000,
               folders=(1000,), repeats=3, idle=1000, burst=1000, idle_hold=4.0,
               burst_timeout=20.0)

# The FETCH rows are run again over this many connections at once.
PARALLEL_FETCH = 4
WORKLOADS = ("smtp", "smtp50", "smtp1m", "submission", "pop3", "imap", "idle", "burst")
PROTOCOL = {"smtp": "smtp", "smtp50": "smtp", "smtp1m": "smtp", "submission": "submission",
            "pop3": "pop3", "imap": "imap", "idle": "imap", "burst": "smtp"}


class Bench:
    def __init__(self, args, counts, workdir):
        self.args = args
        self.counts = counts
        self.workdir = Path(workdir)
        self.rows = []
        self.notes = {}  # system -> its config note
        self.fixtures = {}  # folder size -> prepared Maildir

    # Running one system

    def systems_for(self, workload):
        protocol = PROTOCOL[workload]
        for name in self.args.systems:
            cls = SYSTEMS[name]
            if protocol in cls.protocols or protocol in cls.why_not:
                yield cls

    def run(self, workload):
        for cls in self.systems_for(workload):
            protocol = PROTOCOL[workload]
            label = self.label(workload)
            if protocol in cls.why_not:
                self.skip(cls.name, label, cls.why_not[protocol])
                continue
            directory = self.workdir / workload
            system = cls(directory, USERS, install=not self.args.no_install,
                         options=self.options(cls, workload))
            print(f"bench: {workload} on {cls.name}", flush=True)
            try:
                system.ensure_installed()
                getattr(self, "w_" + workload)(system)
                self.notes[cls.name] = system.config_note
            except Skip as e:
                self.skip(cls.name, label, str(e))
            except (load.ProtocolError, OSError, asyncio.TimeoutError,
                    subprocess.SubprocessError) as e:
                reason = f"failed: {type(e).__name__}: {e}"
                if cls.known_failure.get(protocol):
                    reason += f" ({cls.known_failure[protocol]})"
                else:
                    reason += "; log: " + system.log_tail(3)[-200:]
                self.skip(cls.name, label, reason)
            finally:
                system.stop()
                if not self.args.keep:
                    shutil.rmtree(directory, ignore_errors=True)

    def label(self, workload):
        c = self.counts
        return {
            "smtp": f"SMTP {c.smtp} x 4KB, 1 rcpt",
            "smtp50": f"SMTP {c.smtp50} x 4KB, 50 rcpts",
            "smtp1m": f"SMTP {c.smtp1m} x 1MB, 1 rcpt",
            "submission": f"submission {c.submission} x 4KB, STARTTLS+AUTH, relayed",
            "pop3": f"POP3 RETR {c.pop3} x 4KB",
            "imap": "IMAP " + " and ".join(f"{n}-message" for n in c.folders) + " folder",
            "idle": f"IMAP {c.idle} idle connections",
            "burst": f"SMTP {c.burst} connections at once, 1 msg each",
        }[workload]

    def options(self, cls, workload):
        options = {}
        if cls.name == "mailsrv" and self.args.mailsrv_backlog:
            options["backlog"] = self.args.mailsrv_backlog
        if cls.name == "mailsrv" and self.args.mailsrv_content_filters:
            options["content_filters"] = True
        if cls.name == "mailsrv" and self.args.mailsrv_rspamd:
            options["rspamd"] = True
        if cls.name == "mailsrv" and self.args.mailsrv_clamav:
            options["clamav"] = True
        if cls.name == "mailsrv" and self.args.mailsrv_dkim:
            options["dkim"] = SENDER.rpartition("@")[2]
        if cls.name == "mailsrv" and self.args.profile and workload in ("smtp", "imap"):
            options["profile"] = str(Path(self.args.profile).resolve())
        return options

    def skip(self, system, workload, reason):
        reason = " ".join(reason.split())[:300]
        print(f"bench:   skipped: {reason}", flush=True)
        self.rows.append(Row(system, workload, skipped=reason))

    def add(self, row):
        self.rows.append(row)
        rate = "-" if row.rate is None else f"{row.rate:.1f} {row.unit}"
        print(f"bench:   {row.workload}: {rate}"
              + (f", {row.errors} errors" if row.errors else ""), flush=True)

    # SMTP intake

    def _intake(self, system, label, total, recipients, size, smtp_source=False):
        """
        Send C{total} messages of C{size} bytes to C{recipients} over 20
        connections of 10 messages, then wait until every copy is in the
        recipients' Maildirs. Adds the "250s" row and the "delivered" row.
        """
        system.start()
        port = system.ports["smtp"]
        data = message(size)
        if system.options.get("dkim"):  # (--mailsrv-dkim: mailsrv verifies what it takes)
            data = system.signed(data)
        maildirs = [system.maildir(r.split("@")[0]) for r in recipients]
        # One message first: does the system take mail at all? (It also
        # creates the Maildirs and warms caches.) Not counted.
        asyncio.run(load.smtp_session(port, 1, SENDER, recipients, data, []))
        self._wait_delivered(maildirs, len(maildirs), timeout=60, system=system)
        system.check_delivered(first_message(maildirs[0]))
        with procs.MemorySampler(*system.pids) as memory:
            if smtp_source:
                elapsed, accepted, errors = self._smtp_source(port, total, recipients, size)
                latencies = []
            else:
                accepted, elapsed, latencies, errors = asyncio.run(load.smtp_load(
                    port, total, 10, 20, SENDER, recipients, data))
            delivered_after = self._wait_delivered(
                maildirs, (accepted + 1) * len(maildirs), start=time.monotonic() - elapsed,
                timeout=max(120, total * len(recipients) / 50), system=system)
        notes = []
        if errors:
            notes.append(f"first error: {errors[0][:80]}")
        common = dict(system=system.name, count=accepted, rss=memory.peak,
                      durable=system.durable, errors=total - accepted)
        notes.append(memory.note())
        generator = "smtp-source" if smtp_source else "asyncio"
        self.add(Row(workload=f"{label}, all 250s ({generator})", rate=accepted / elapsed,
                     latencies=latencies, notes="; ".join(notes), **common))
        if delivered_after is None:
            self.add(Row(workload=f"{label}, all delivered ({generator})",
                         notes="not all delivered within the time limit", **common))
        else:
            self.add(Row(workload=f"{label}, all delivered ({generator})",
                         rate=accepted / delivered_after, **common))

    def _wait_delivered(self, maildirs, expected, timeout, start=None, system=None):
        """Seconds from C{start} until C{expected} files are in C{maildirs}, or None."""
        start = time.monotonic() if start is None else start
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(maildir_count(m) for m in maildirs) >= expected:
                return time.monotonic() - start
            if system is not None and system.process.poll() is not None:
                raise Skip(f"exited: {system.log_tail(3)[-200:]}")
            time.sleep(0.05)
        return None

    def _smtp_source(self, port, total, recipients, size):
        """Postfix's smtp-source: 20 sessions, each sending until the total is reached."""
        if shutil.which("smtp-source") is None:
            raise Skip("smtp-source not installed (Debian package postfix)")
        argv = ["smtp-source", "-d", "-s", "20", "-m", str(total), "-l", str(size),
                "-f", SENDER, "-t", recipients[-1] if len(recipients) == 1 else ALICE,
                "-r", str(len(recipients)), "-M", "bench.client.test",
                f"127.0.0.1:{port}"]
        start = time.monotonic()
        result = subprocess.run(argv, capture_output=True, text=True,
                                timeout=max(300, total / 5), preexec_fn=procs.raise_nofile)
        elapsed = time.monotonic() - start
        errors = [line for line in (result.stderr + result.stdout).splitlines() if line]
        if result.returncode != 0:
            raise load.ProtocolError(f"smtp-source: {errors[-1] if errors else result.returncode}")
        return elapsed, total, errors

    def w_smtp(self, system):
        total = self.counts.smtp
        label = self.label("smtp")
        self._intake(system, label, total, [ALICE], 4096)
        if not self.args.no_smtp_source:
            system.stop()
            shutil.rmtree(system.dir / "mail", ignore_errors=True)
            shutil.rmtree(system.dir / "var", ignore_errors=True)
            try:
                self._intake(system, label, total, [ALICE], 4096, smtp_source=True)
            except Skip as e:
                self.skip(system.name, f"{label} (smtp-source)", str(e))

    def w_smtp50(self, system):
        total = self.counts.smtp50
        recipients = [f"{n}alice@{DOMAIN}" for n in range(50, 1, -1)] + [ALICE]
        self._intake(system, self.label("smtp50"), total, recipients, 4096)

    def w_smtp1m(self, system):
        total = self.counts.smtp1m
        self._intake(system, self.label("smtp1m"), total, [ALICE], 1 << 20)

    # Submission

    def w_submission(self, system):
        total = self.counts.submission
        label = self.label("submission")
        sink_port = free_port()
        sink = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "queue_speed.py"), "--sink",
             str(sink_port)], stdout=subprocess.PIPE, preexec_fn=procs.raise_nofile)
        try:
            procs.wait_for_port(sink_port, process=sink)
            system.options["smart_host"] = f"127.0.0.1:{sink_port}"
            system.start()
            relayed = []

            def count():
                while sink.stdout.readline():
                    relayed.append(time.monotonic())

            import threading

            threading.Thread(target=count, daemon=True).start()
            data = message(4096)
            auth = (ALICE, PASSWORD)
            with procs.MemorySampler(*system.pids) as memory:
                start = time.monotonic()
                accepted, elapsed, latencies, errors = asyncio.run(load.smtp_load(
                    system.ports["submission"], total, 10, 20, ALICE,
                    ["friend@remote.test"], data, auth=auth, starttls=True))
                deadline = time.monotonic() + max(120, total / 20)
                while len(relayed) < accepted and time.monotonic() < deadline:
                    time.sleep(0.05)
            common = dict(system=system.name, count=accepted, rss=memory.peak,
                          durable=system.durable, errors=total - accepted)
            notes = f"first error: {errors[0][:80]}" if errors else ""
            self.add(Row(workload=f"{label}: all 250s", rate=accepted / elapsed,
                         latencies=latencies, notes=notes, **common))
            if len(relayed) >= accepted and accepted:
                self.add(Row(workload=f"{label}: all at the sink",
                             rate=accepted / (relayed[accepted - 1] - start), **common))
            else:
                self.add(Row(workload=f"{label}: all at the sink",
                             notes=f"{len(relayed)} of {accepted} relayed in time", **common))
        finally:
            sink.kill()
            sink.wait()

    # POP3 and IMAP on prepared Maildirs

    def _fixture(self, count):
        """A Maildir of C{count} 4 KB messages, built once, hard-linked into each system."""
        if count not in self.fixtures:
            path = self.workdir / "fixtures" / f"maildir-{count}"
            start = time.monotonic()
            build_maildir(path, count)
            print(f"bench:   built a {count}-message Maildir in "
                  f"{time.monotonic() - start:.1f}s", flush=True)
            self.fixtures[count] = path
        return self.fixtures[count]

    def _prepare(self, system, count):
        source = self._fixture(count)
        target = Path(system.maildir("alice"))
        for sub in ("cur", "new", "tmp"):
            (target / sub).mkdir(parents=True, exist_ok=True)
        for name in os.listdir(source / "cur"):
            os.link(source / "cur" / name, target / "cur" / name)
        owner = system.mailbox_owner()
        if owner is not None:
            from bench.maildir import chown_tree

            chown_tree(target, *owner)
            chown_tree(target.parent, *owner)

    def w_pop3(self, system):
        count = self.counts.pop3
        self._prepare(system, count)
        system.start()
        with procs.MemorySampler(*system.pids) as memory:
            got, elapsed, latencies, size = asyncio.run(
                load.pop3_retr_all(system.ports["pop3"], ALICE, PASSWORD))
        if got < count:
            raise load.ProtocolError(f"STAT says {got} messages, {count} expected")
        self.add(Row(system.name, f"POP3 RETR {count} x 4KB, one by one", count=got,
                     rate=got / elapsed, latencies=latencies, rss=memory.peak,
                     durable="n/a (read)",
                     notes=f"{size / elapsed / (1 << 20):.1f} MB/s; {memory.note()}"))

    def w_imap(self, system):
        for count in self.counts.folders:
            if system.process is not None:
                system.stop()
            shutil.rmtree(system.dir, ignore_errors=True)
            system.dir.mkdir(parents=True)
            self._prepare(system, count)
            system.start()
            asyncio.run(self._imap_folder(system, count))

    async def _imap_folder(self, system, count):
        repeats = self.counts.repeats if count <= 1000 else max(1, self.counts.repeats - 2)
        with procs.MemorySampler(*system.pids) as memory:
            client = await load.IMAPClient.connect(system.ports["imap"])
            try:
                await client.command(f'LOGIN "{ALICE}" "{PASSWORD}"')
                seconds, (untagged, _, _) = await client.timed("SELECT INBOX")
                exists = [line for line in untagged if line.endswith(b"EXISTS\r\n")]
                found = int(exists[0].split()[1]) if exists else 0
                if found != count:
                    raise load.ProtocolError(f"SELECT: {found} messages, {count} expected")
                results = [("SELECT INBOX (first open: index built)", [seconds], 1, "ops/s")]
                for name, command, unit in (
                        ("FETCH 1:* (FLAGS UID RFC822.SIZE)",
                         "FETCH 1:* (FLAGS UID RFC822.SIZE)", "msg/s"),
                        ("FETCH 1:* BODY.PEEK[]", "FETCH 1:* BODY.PEEK[]", "msg/s"),
                        ('SEARCH SUBJECT "needle"', 'SEARCH SUBJECT "needle"', "ops/s"),
                        ("SEARCH HEADER Message-ID",
                         'SEARCH HEADER Message-ID "<bench.500@remote.test>"', "ops/s"),
                        ("SORT (REVERSE DATE) ALL", "SORT (REVERSE DATE) UTF-8 ALL", "ops/s"),
                        ("THREAD REFERENCES UTF-8 ALL", "THREAD REFERENCES UTF-8 ALL",
                         "ops/s")):
                    times = []
                    for _ in range(repeats):
                        seconds, _ = await client.timed(command)
                        times.append(seconds)
                    results.append((name, times, count if unit == "msg/s" else 1, unit))
                await client.command("LOGOUT")
            finally:
                client.close()
            for name, command in (
                    ("FETCH 1:* (FLAGS UID RFC822.SIZE)", "FETCH 1:* (FLAGS UID RFC822.SIZE)"),
                    ("FETCH 1:* BODY.PEEK[]", "FETCH 1:* BODY.PEEK[]")):
                times = await self._imap_parallel(system, command, PARALLEL_FETCH, repeats)
                results.append((f"{name} over {PARALLEL_FETCH} connections", times,
                                count * PARALLEL_FETCH, "msg/s"))
        for name, times, per_op, unit in results:
            total = sum(times)
            self.add(Row(system.name, f"IMAP {name}, {count} msgs", count=len(times),
                         rate=per_op * len(times) / total, unit=unit, latencies=times,
                         rss=memory.peak, durable="n/a (read)",
                         notes=f"{len(times)} runs; latency = whole command; "
                               f"{memory.note()}"))

    async def _imap_parallel(self, system, command, connections, repeats):
        """
        C{command} sent at once on C{connections} logged-in sessions with
        INBOX selected: the seconds until the last tagged answer, per run.
        """
        clients = []
        try:
            for _ in range(connections):
                client = await load.IMAPClient.connect(system.ports["imap"])
                clients.append(client)
                await client.command(f'LOGIN "{ALICE}" "{PASSWORD}"')
                await client.command("SELECT INBOX")
            times = []
            for _ in range(repeats):
                start = time.monotonic()
                await asyncio.gather(*(c.command(command) for c in clients))
                times.append(time.monotonic() - start)
            for client in clients:
                await client.command("LOGOUT")
            return times
        finally:
            for client in clients:
                client.close()

    # Many connections

    def w_idle(self, system):
        count = self.counts.idle
        system.start()
        with procs.MemorySampler(*system.pids) as memory:
            before = memory.sample()
            alive, opened, errors = asyncio.run(load.idle_imap(
                system.ports["imap"], count, self.counts.idle_hold, memory.sample))
        notes = [f"RSS before: {before / (1 << 20):.0f} MB",
                 f"{(memory.peak - before) / max(alive, 1) / 1024:.0f} KB per connection",
                 f"opened in {opened:.1f}s", "not logged in"]
        notes.append(memory.note())
        if errors:
            notes.append(f"first error: {errors[0][:80]}")
        self.add(Row(system.name, f"IMAP {count} idle connections", count=alive,
                     rss=memory.peak, errors=count - alive, durable="n/a",
                     notes="; ".join(notes)))

    def w_burst(self, system):
        count = self.counts.burst
        system.start()
        data = message(4096)
        # Does it take mail at all? Not counted.
        asyncio.run(load.smtp_session(system.ports["smtp"], 1, SENDER, [ALICE], data, []))
        with procs.MemorySampler(*system.pids) as memory:
            accepted, elapsed, latencies, errors, most = asyncio.run(
                load.smtp_burst(system.ports["smtp"], count, SENDER, ALICE, data,
                                timeout=self.counts.burst_timeout))
        notes = [f"at most {most} open at once"]
        if errors:
            notes.append(f"first error: {errors[0][:80]}")
        notes.append(memory.note())
        self.add(Row(system.name, self.label("burst"),
                     count=accepted, rate=accepted / elapsed, latencies=latencies,
                     rss=memory.peak, errors=count - accepted, durable=system.durable,
                     notes="; ".join(notes)))


def machine_line():
    cpus = os.cpu_count()
    return (f"{datetime.date.today().isoformat()}, {platform.node()}: {cpus} cores, "
            f"Python {platform.python_version()}, Linux {platform.release()}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Compare mailsrv with Postfix (alone, with rspamd, with clamav-milter), "
                    "Dovecot, aiosmtpd and Twisted's own mail server on 127.0.0.1 "
                    "(docs/performance.md).")
    parser.add_argument("--quick", action="store_true",
                        help="small counts (500 messages, 1,000-message folder): "
                             "3 to 6 minutes")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of: {', '.join(WORKLOADS)}")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated subset of: {', '.join(SYSTEMS)}")
    parser.add_argument("--messages", type=int, help="override the SMTP (4 KB) count")
    parser.add_argument("--no-install", action="store_true",
                        help="skip peers that are missing instead of installing them")
    parser.add_argument("--no-smtp-source", action="store_true",
                        help="drive SMTP intake with the asyncio generator only")
    parser.add_argument("--mailsrv-backlog", type=int, metavar="N",
                        help="set [[listen]] backlog = N for mailsrv's listeners "
                             "(default: mailsrv's own, 1024)")
    parser.add_argument("--mailsrv-content-filters", action="store_true",
                        help="turn every content filter of mailsrv on (issue 17's comparison "
                             "with postfix-rspamd)")
    parser.add_argument("--mailsrv-rspamd", action="store_true",
                        help="give mailsrv an rspamd of its own, started as postfix-rspamd's, "
                             "in [antispam.rspamd] (issue 18)")
    parser.add_argument("--mailsrv-clamav", action="store_true",
                        help="give mailsrv a clamd of its own (EICAR-only database), started "
                             "as postfix-clamav's, in [antispam.clamav] (issue 18)")
    parser.add_argument("--mailsrv-dkim", action="store_true",
                        help="give mailsrv an RSA-2048 [[dkim.sign]] key for the sender's "
                             "domain (submission's mail is signed) and [antispam.dkim] "
                             "(intake verifies) (issue 21)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--output", help="also write the report to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--profile", metavar="FILE",
                        help="run mailsrv under cProfile in the smtp or imap workload; stats to FILE")
    args = parser.parse_args(argv)
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.systems = [s for s in args.systems.split(",") if s]
    for name, known in (("workload", WORKLOADS), ("system", SYSTEMS)):
        for value in getattr(args, name + "s"):
            if value not in known:
                parser.error(f"unknown {name} {value!r} (one of: {', '.join(known)})")
    if "mailsrv" not in args.systems:
        args.systems.insert(0, "mailsrv")  # the baseline of every ratio
    return args


def main(argv=None):
    args = parse_args(argv)
    counts = QUICK if args.quick else Counts()
    if args.messages:
        counts.smtp = args.messages
    nofile = procs.raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="mailsrv-bench-"))
    workdir.chmod(0o755)  # Postfix's and Dovecot's own users walk through it
    bench = Bench(args, counts, workdir)

    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    started = time.monotonic()
    try:
        for workload in args.workloads:
            bench.run(workload)
    except KeyboardInterrupt:
        print("bench: interrupted; stopping the servers", flush=True)
    finally:
        procs.stop_all()
        if args.keep:
            print(f"bench: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report = [
        f"# mailsrv bench: {machine_line()}",
        f"# mode: {'--quick' if args.quick else 'full'}; {time.monotonic() - started:.0f}s; "
        f"RLIMIT_NOFILE {nofile} (bench and servers); load from 127.0.0.1 only",
        "# SMTP intake: 20 connections at a time, 10 messages per connection (asyncio "
        "generator, no pipelining); smtp-source: 20 sessions, -d (messages per session "
        "until the total)",
    ]
    for name, note in bench.notes.items():
        report.append(f"# {name}: {note}")
    report.append("")
    report.append(format_table(bench.rows, markdown=args.markdown))
    text = "\n".join(report)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0
