"""
Crash consistency (issue 13): the real server is killed with SIGKILL at
random points while 8 clients send mail to local and remote recipients and
an IMAP client sets flags, and restarted on the same data_dir each time.
After every restart: each acknowledged message is in its Maildir exactly
once (remote ones at the smart host or still queued), no file is
half-written, UIDVALIDITY never changes, a UID always names the same
message, and every flag whose STORE got OK is still set.
"""

import random
import re
import signal
import threading
import time

from twisted.trial import unittest

from tests.integration.harness import PASSWORD, MailServerProcess, SinkServer

KILLS = 20
MESSAGES = 1000
SENDERS = 8
LOCAL = ("alice@example.test", "bob@example.test")
SEED = 13
FLAGS = ("\\Flagged", "$Done")


def message(number):
    """Message C{number}: its marker in Message-ID and at the very end of the body."""
    marker = f"m{number:05d}"
    body = "".join(f"line {i} of {marker}\r\n" for i in range(20))
    return marker, (f"From: s@remote.test\r\nSubject: {marker}\r\n"
                    f"Message-ID: <{marker}@crash.test>\r\n\r\n{body}END {marker}\r\n")


class Run:
    """The shared state of the clients: what was acknowledged, what flags were set."""

    def __init__(self, rng):
        self.rng = rng
        self.lock = threading.Lock()
        self.next = 0
        self.acked = {}  # marker -> (local users, remote addresses)
        self.tried = set()
        self.flagged = set()  # markers whose STORE was answered OK

    def take(self):
        """The next message number and its recipients, or None when all are sent."""
        with self.lock:
            if self.next >= MESSAGES:
                return None
            number, self.next = self.next, self.next + 1
            draw = self.rng.random()
        local = [LOCAL[number % 2]] if draw < 0.75 else []
        remote = [f"r{number}@remote.test"] if draw > 0.6 else []
        return number, local, remote


def send_until_killed(server, run, stop):
    """One SMTP client: sends messages until the server goes away or all are sent."""
    try:
        client = server.smtp()
        client.ehlo("client.test")
    except OSError:
        return
    while not stop.is_set():
        job = run.take()
        if job is None:
            break
        number, local, remote = job
        marker, data = message(number)
        run.tried.add(marker)
        try:
            client.sendmail("s@remote.test", local + remote, data)
        except Exception:
            return  # killed mid-transaction: not acknowledged
        with run.lock:
            run.acked[marker] = (local, remote)
    try:
        client.quit()
    except Exception:
        pass


def imap_login(server, user):
    client = server.imap()
    client.login(user, PASSWORD)
    client.select("INBOX")
    return client


def set_flags_until_killed(server, run, stop, rng):
    """One IMAP client: flags random messages of alice's INBOX, noting each STORE that got OK."""
    try:
        client = imap_login(server, LOCAL[0])
    except Exception:
        return
    while not stop.is_set():
        try:
            client.noop()
            uids = client.uid("SEARCH", "ALL")[1][0].split()
            if not uids:
                time.sleep(0.01)
                continue
            uid = rng.choice(uids).decode()
            marker = fetch_markers(client, uid).get(int(uid), (None,))[0]
            status, _ = client.uid("STORE", uid, "+FLAGS", "(%s)" % " ".join(FLAGS))
        except Exception:
            return
        if status == "OK" and marker is not None:
            with run.lock:
                run.flagged.add(marker)


_FETCHED = re.compile(rb"UID (\d+) FLAGS \(([^)]*)\)")
_MARKER = re.compile(rb"Message-ID: <(m\d+)@crash.test>", re.I)


def fetch_markers(client, uids="1:*"):
    """uid -> (marker, flags) of the messages C{uids} names."""
    status, data = client.uid("FETCH", uids, "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    found = {}
    for item in data:
        if isinstance(item, tuple):
            meta = _FETCHED.search(item[0])
            marker = _MARKER.search(item[1])
            if meta and marker:
                found[int(meta.group(1))] = (marker.group(1).decode(),
                                             set(meta.group(2).decode().split()))
    return found


class Crashes:
    """
    One run of the whole scenario (it takes a minute), shared by the tests
    below; C{uidvalidity_changes} is kept apart from the hard failures.
    """

    _done = None

    @classmethod
    def once(cls, testcase):
        if cls._done is None:
            cls._done = crashes = cls()
            try:
                crashes.run()
            finally:
                crashes.cleanup()
        return cls._done

    def __init__(self):
        self.rng = random.Random(SEED)
        self.sink = SinkServer()
        self.server = MailServerProcess(extra={
            "relay": {"mode": "trusted", "trusted": ["127.0.0.1/32"]},
            "delivery": {"smart_host": f"127.0.0.1:{self.sink.port}", "retry": [1]},
        })
        self.uidvalidity = {}
        self.uidvalidity_changes = []
        self.uids = {}  # (user, uidvalidity, uid) -> marker, as ever seen
        self.error = None
        self.summary = ""

    def cleanup(self):
        self.server.cleanup()
        self.sink.close()

    def run(self):
        run = self.state = Run(self.rng)
        try:
            for kill in range(KILLS + 1):
                self.server.start()
                self.check(run, kill)
                stop = threading.Event()
                threads = [threading.Thread(target=send_until_killed,
                                            args=(self.server, run, stop))
                           for _ in range(SENDERS)]
                threads.append(threading.Thread(target=set_flags_until_killed, args=(
                    self.server, run, stop, random.Random(self.rng.random()))))
                for thread in threads:
                    thread.start()
                if kill < KILLS:
                    # somewhere among the next messages, then a moment more
                    target = len(run.acked) + self.rng.randint(0, 2 * MESSAGES // (KILLS + 1))
                    wait_until(lambda: len(run.acked) >= target or run.next >= MESSAGES, 60)
                    time.sleep(self.rng.uniform(0, 0.05))
                    self.server.stop(signal.SIGKILL)
                stop.set()
                for thread in threads:
                    thread.join(60)
            queue = self.server.data_dir / "queue" / "env"
            wait_until(lambda: not list(queue.glob("*.json")), 60)
            self.check(run, "end")
            remote = {m for m, (_, r) in run.acked.items() if r}
            delivered = self.sink_markers()
            check(remote <= set(delivered), "not delivered", remote - set(delivered))
            duplicates = sum(1 for m in remote if delivered[m] > 1)
            self.summary = (f"{len(run.acked)} acknowledged, {len(remote)} remote, {duplicates} "
                            f"delivered twice to the smart host, {len(run.flagged)} flags set")
        except AssertionError as e:
            self.error = e

    def sink_markers(self):
        counts = {}
        for _, _, data in list(self.sink.messages):
            for marker in set(re.findall(rb"END (m\d+)", data)):
                counts[marker.decode()] = counts.get(marker.decode(), 0) + 1
        return counts

    def check(self, run, kill):
        """The invariants, on disk and through IMAP, after restart C{kill}."""
        counts = self.maildir_markers()
        for marker, (local, remote) in list(run.acked.items()):
            check(counts.get(marker, 0) == len(local), "not delivered exactly once", marker, kill)
        check(all(n == 1 for n in counts.values()), "delivered twice", counts, kill)
        queued, delivered = self.queue_markers(), self.sink_markers()
        for marker, (_, remote) in list(run.acked.items()):
            check(not remote or marker in queued or marker in delivered, "lost", marker, kill)
        seen_flags = {}
        for user in LOCAL:
            client = imap_login(self.server, user)
            validity = int(client.untagged_responses["UIDVALIDITY"][0])
            if self.uidvalidity.setdefault(user, validity) != validity:
                self.uidvalidity_changes.append((kill, user, self.uidvalidity[user], validity))
                self.uidvalidity[user] = validity
            for uid, (marker, flags) in fetch_markers(client).items():
                known = self.uids.setdefault((user, validity, uid), marker)
                check(known == marker, "UID reused", user, validity, uid, known, marker, kill)
                seen_flags[marker] = flags
            client.logout()
        for marker in list(run.flagged):
            check(set(FLAGS) <= seen_flags.get(marker, set()), "flag lost", marker,
                  seen_flags.get(marker), kill)

    def maildir_markers(self):
        """marker -> number of Maildir files holding it; each file whole."""
        counts = {}
        for user in LOCAL:
            for path in self.server.maildir_files(user):
                data = path.read_bytes()
                marker = _MARKER.search(data).group(1).decode()
                check(data.endswith(f"END {marker}\r\n".encode()), "half-written", path)
                counts[marker] = counts.get(marker, 0) + 1
        return counts

    def queue_markers(self):
        """Markers of the messages in the queue; each file whole."""
        markers = set()
        queue = self.server.data_dir / "queue"
        for envelope in (queue / "env").glob("*.json"):
            try:
                data = (queue / "msg" / envelope.name[:-len(".json")]).read_bytes()
            except FileNotFoundError:  # delivered since the listing: the sink has it
                check(not envelope.exists(), "envelope without its message", envelope)
                continue
            marker = _MARKER.search(data).group(1).decode()
            check(data.endswith(f"END {marker}\r\n".encode()), "half-written", envelope)
            markers.add(marker)
        return markers


def wait_until(condition, timeout):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def check(condition, problem, *details):
    if not condition:
        raise AssertionError(problem + ": " + repr(details))


class CrashConsistencyTests(unittest.TestCase):
    def test_acknowledged_mail_and_flags_survive(self):
        crashes = Crashes.once(self)
        if crashes.error is not None:
            raise crashes.error
        print("\n" + crashes.summary)

    def test_uidvalidity_never_changes(self):
        self.assertEqual(Crashes.once(self).uidvalidity_changes, [])

