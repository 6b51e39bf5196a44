"""
Build a Maildir directly on disk, fast: the POP3 and IMAP workloads need
folders of 1,000 and 50,000 messages, and delivering those over SMTP would
measure SMTP.

Every server reads the same layout: files in C{cur/} named
C{<seconds>.M<usec>P<pid>Q<n>.<host>,S=<size>:2,<flags>} with CRLF line ends
(the size in the name is the file's size, as mailsrv and Dovecot expect).
Every C{NEEDLE_EVERY}-th message has "needle" in its Subject, so a SEARCH
has something to find; every third one is marked seen. Messages come in
threads of C{THREAD_LENGTH} (each replies to the one before: References,
"Re:"), with Date fields in no particular order, for SORT and THREAD.
"""

import email.utils
import os

NEEDLE_EVERY = 100
THREAD_LENGTH = 5
BASE_TIME = 1_700_000_000


def message_bytes(n, size=4096):
    """Message C{n} (from 0) of about C{size} bytes, CRLF line ends."""
    root = n - n % THREAD_LENGTH
    subject = ("Re: " if n != root else "") + f"bench message {root}" + (
        " needle" if n % NEEDLE_EVERY == 0 else "")
    reply = f"References: <bench.{n - 1}@remote.test>\r\n" if n != root else ""
    header = (
        f"Return-Path: <sender{n % 50}@remote.test>\r\n"
        f"Received: from client.remote.test ([127.0.0.1]) by mail.example.test; "
        f"Tue, 14 Nov 2023 22:13:20 +0000\r\n"
        f"From: Sender {n % 50} <sender{n % 50}@remote.test>\r\n"
        f"To: alice@example.test\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {email.utils.formatdate(BASE_TIME - n * 7919 % 1_000_003, usegmt=True)}\r\n"
        f"Message-ID: <bench.{n}@remote.test>\r\n"
        f"{reply}"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=us-ascii\r\n"
        f"\r\n"
    ).encode()
    line = (f"line of message {n} " + "x" * 76)[:76].encode() + b"\r\n"
    lines = max(1, (size - len(header)) // len(line))
    body = line * lines
    pad = size - len(header) - len(body)
    if pad >= 2:
        body += b"y" * (pad - 2) + b"\r\n"
    return header + body


def maildir_name(n, size, host="bench", flags=""):
    """The file name of message C{n} in C{cur/}."""
    return f"{BASE_TIME + n}.M{n % 1_000_000}P1Q{n}.{host},S={size}:2,{flags}"


def build_maildir(path, count, size=4096, owner=None):
    """
    Create Maildir C{path} (C{cur/ new/ tmp/}) holding C{count} messages.
    Files are not fsync'd: this is a benchmark fixture, not mail.

    @param owner: C{(uid, gid)} to chown everything to, or L{None}.
    @return: the list of file names written into C{cur/}, in order.
    """
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    names = []
    cur = os.path.join(path, "cur")
    for n in range(count):
        data = message_bytes(n, size)
        name = maildir_name(n, len(data), flags="S" if n % 3 == 0 else "")
        with open(os.path.join(cur, name), "wb") as f:
            f.write(data)
        names.append(name)
    if owner is not None:
        chown_tree(path, *owner)
    return names


def chown_tree(path, uid, gid):
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid)


def maildir_count(path):
    """Messages in C{new/} and C{cur/} of Maildir C{path} (0 if missing)."""
    total = 0
    for sub in ("new", "cur"):
        try:
            with os.scandir(os.path.join(path, sub)) as entries:
                total += sum(1 for e in entries if not e.name.startswith("."))
        except FileNotFoundError:
            pass
    return total


def first_message(path):
    """The bytes of one message in C{new/} or C{cur/} of Maildir C{path}, or b""."""
    for sub in ("new", "cur"):
        directory = os.path.join(path, sub)
        names = sorted(n for n in os.listdir(directory) if not n.startswith(".")) \
            if os.path.isdir(directory) else []
        if names:
            with open(os.path.join(directory, names[0]), "rb") as f:
                return f.read()
    return b""
