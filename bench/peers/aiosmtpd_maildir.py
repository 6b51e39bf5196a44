"""
aiosmtpd writing each accepted message into the recipients' Maildirs, the
way one would write a small Python MTA: the file is written and fsync'd
in C{tmp/}, hard-linked into C{new/} of every recipient, the C{new/}
directories are fsync'd, and only then does the client get its 250.

    python -m bench.peers.aiosmtpd_maildir --port P --root DIR --users a,b
        [--threads]

C{--threads} runs the disk work in the event loop's thread pool; without it
the fsyncs block the loop (every other connection waits for them).
"""

import argparse
import asyncio
import itertools
import os
import socket
import time

from aiosmtpd.smtp import SMTP

_counter = itertools.count()
_host = socket.gethostname().replace("/", "_").replace(":", "_")


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def deliver(data, maildirs):
    """Write C{data} once, fsync it, link it into each Maildir's new/."""
    now = time.time()
    name = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{_host}"
    name += f",S={len(data)}"
    first = maildirs[0]
    temporary = os.path.join(first, "tmp", name)
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        for maildir in maildirs:
            os.link(temporary, os.path.join(maildir, "new", name))
        for maildir in maildirs:
            _fsync_dir(os.path.join(maildir, "new"))
    finally:
        os.unlink(temporary)


class MaildirHandler:
    def __init__(self, root, domain, users, threads):
        self.root = root
        self.domain = domain
        self.users = set(users)
        self.threads = threads
        for user in users:
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(root, domain, user, sub), exist_ok=True)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local, _, domain = address.lower().rpartition("@")
        if domain != self.domain or local not in self.users:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        maildirs = [os.path.join(self.root, self.domain, a.lower().rpartition("@")[0])
                    for a in envelope.rcpt_tos]
        data = envelope.original_content
        if self.threads:
            await asyncio.get_running_loop().run_in_executor(None, deliver, data, maildirs)
        else:
            deliver(data, maildirs)
        return "250 2.0.0 Ok: queued"


async def serve(args):
    handler = MaildirHandler(args.root, args.domain, args.users.split(","), args.threads)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="aiosmtpd.bench", data_size_limit=None),
        "127.0.0.1", args.port)  # asyncio's default listen backlog (100)
    async with server:
        await server.serve_forever()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--domain", default="example.test")
    parser.add_argument("--users", required=True)
    parser.add_argument("--threads", action="store_true")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
