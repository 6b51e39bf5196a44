"""
Load generators in asyncio: SMTP sessions (plain, or STARTTLS + AUTH),
POP3 RETR, IMAP commands, many idle connections. Every connection is to
127.0.0.1, every loop is bounded by a count, every wait by a timeout.
"""

import asyncio
import base64
import ssl
import time

TIMEOUT = 120  # seconds for any one reply


class ProtocolError(Exception):
    pass


async def _reply(reader):
    """One SMTP reply: (code, text of its lines)."""
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), TIMEOUT)
        if not line:
            raise ProtocolError("connection closed")
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


async def _expect(reader, code, what):
    got, text = await _reply(reader)
    if got != code:
        raise ProtocolError(f"{what}: {text.decode(errors='replace').strip()}")
    return text


def _client_tls():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def smtp_session(port, messages, sender, recipients, data, latencies,
                       auth=None, starttls=False, host="127.0.0.1"):
    """
    One SMTP connection that sends C{messages} messages, one transaction at
    a time (no pipelining, so every server is driven alike), each
    C{data} (already CRLF-terminated, no line starting with a dot) to
    C{recipients}. Appends each message's latency (MAIL FROM to the 250
    after the final dot) to C{latencies}.

    @param auth: C{(user, password)} for AUTH PLAIN, or L{None}.
    @return: the number of messages accepted.
    """
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
    accepted = 0
    try:
        await _expect(reader, 220, "greeting")
        writer.write(b"EHLO bench.client.test\r\n")
        await _expect(reader, 250, "EHLO")
        if starttls:
            writer.write(b"STARTTLS\r\n")
            await _expect(reader, 220, "STARTTLS")
            await asyncio.wait_for(writer.start_tls(_client_tls()), TIMEOUT)
            writer.write(b"EHLO bench.client.test\r\n")
            await _expect(reader, 250, "EHLO after STARTTLS")
        if auth is not None:
            token = base64.b64encode(f"\0{auth[0]}\0{auth[1]}".encode())
            writer.write(b"AUTH PLAIN " + token + b"\r\n")
            await _expect(reader, 235, "AUTH")
        for _ in range(messages):
            start = time.monotonic()
            writer.write(f"MAIL FROM:<{sender}>\r\n".encode())
            await _expect(reader, 250, "MAIL")
            for rcpt in recipients:
                writer.write(f"RCPT TO:<{rcpt}>\r\n".encode())
                await _expect(reader, 250, "RCPT")
            writer.write(b"DATA\r\n")
            await _expect(reader, 354, "DATA")
            writer.write(data)
            writer.write(b".\r\n")
            await writer.drain()
            await _expect(reader, 250, "end of DATA")
            latencies.append(time.monotonic() - start)
            accepted += 1
        writer.write(b"QUIT\r\n")
        await writer.drain()
        try:
            await asyncio.wait_for(_reply(reader), 5)
        except (ProtocolError, asyncio.TimeoutError, ConnectionError):
            pass
    finally:
        writer.close()
    return accepted


async def smtp_load(port, total, per_connection, concurrency, sender, recipients, data,
                    auth=None, starttls=False):
    """
    Send C{total} messages over connections of C{per_connection} messages,
    C{concurrency} connections at a time.

    @return: C{(accepted, seconds until the last 250, latencies, errors)}
        where C{errors} lists the first few error texts and their count.
    """
    latencies = []
    errors = []
    slots = asyncio.Semaphore(concurrency)
    sessions = [per_connection] * (total // per_connection)
    if total % per_connection:
        sessions.append(total % per_connection)

    async def one(count):
        async with slots:
            try:
                return await smtp_session(port, count, sender, recipients, data,
                                          latencies, auth=auth, starttls=starttls)
            except (OSError, ProtocolError, asyncio.TimeoutError, ssl.SSLError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                return 0

    start = time.monotonic()
    accepted = sum(await asyncio.gather(*(one(n) for n in sessions)))
    return accepted, time.monotonic() - start, latencies, errors


async def smtp_burst(port, connections, sender, recipient, data, timeout=60):
    """
    Start C{connections} SMTP connections at once, each sending one message
    as soon as it is greeted (no barrier: a server with a process limit
    serves the rest as processes free up, as it would in real life).

    @return: C{(accepted, seconds, latencies (connect to 250), errors,
        the most sessions open at the same time)}.
    """
    latencies, errors = [], []
    open_now, most = [0], [0]

    async def expect(reader, code, what):
        got, text = await asyncio.wait_for(_reply(reader), timeout)
        if got != code:
            raise ProtocolError(f"{what}: {text.decode(errors='replace').strip()}")

    async def one():
        start = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            errors.append(f"connect: {type(e).__name__} {e}")
            return 0
        open_now[0] += 1
        most[0] = max(most[0], open_now[0])
        try:
            await expect(reader, 220, "greeting")
            writer.write(b"HELO bench.client.test\r\n")
            await expect(reader, 250, "HELO")
            writer.write(f"MAIL FROM:<{sender}>\r\n".encode())
            await expect(reader, 250, "MAIL")
            writer.write(f"RCPT TO:<{recipient}>\r\n".encode())
            await expect(reader, 250, "RCPT")
            writer.write(b"DATA\r\n")
            await expect(reader, 354, "DATA")
            writer.write(data + b".\r\n")
            await expect(reader, 250, "end of DATA")
            latencies.append(time.monotonic() - start)
            writer.write(b"QUIT\r\n")
            await writer.drain()
            return 1
        except (OSError, ProtocolError, asyncio.TimeoutError) as e:
            errors.append(f"{type(e).__name__} {e}")
            return 0
        finally:
            open_now[0] -= 1
            writer.close()

    start = time.monotonic()
    accepted = sum(await asyncio.gather(*(one() for _ in range(connections))))
    return accepted, time.monotonic() - start, latencies, errors, most[0]


# POP3


async def _pop_line(reader):
    line = await asyncio.wait_for(reader.readline(), TIMEOUT)
    if not line.startswith(b"+OK"):
        raise ProtocolError(f"POP3: {line.decode(errors='replace').strip() or 'closed'}")
    return line


async def _pop_multiline(reader):
    """The body of a multi-line POP3 answer, byte count only."""
    size = 0
    while True:
        line = await asyncio.wait_for(reader.readline(), TIMEOUT)
        if not line:
            raise ProtocolError("POP3: closed during a multi-line answer")
        if line == b".\r\n":
            return size
        size += len(line)


async def pop3_retr_all(port, user, password, limit=None):
    """
    Log in, STAT, RETR every message (or the first C{limit}) one by one.

    @return: C{(messages, seconds for the RETRs, latencies, bytes)}.
    """
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port),
                                            TIMEOUT)
    try:
        await _pop_line(reader)
        writer.write(f"USER {user}\r\n".encode())
        await _pop_line(reader)
        writer.write(f"PASS {password}\r\n".encode())
        await _pop_line(reader)
        writer.write(b"STAT\r\n")
        count = int((await _pop_line(reader)).split()[1])
        if limit is not None:
            count = min(count, limit)
        latencies, total = [], 0
        start = time.monotonic()
        for n in range(1, count + 1):
            t = time.monotonic()
            writer.write(f"RETR {n}\r\n".encode())
            await _pop_line(reader)
            total += await _pop_multiline(reader)
            latencies.append(time.monotonic() - t)
        elapsed = time.monotonic() - start
        writer.write(b"QUIT\r\n")
        await writer.drain()
        return count, elapsed, latencies, total
    finally:
        writer.close()


# IMAP


class IMAPClient:
    """Just enough IMAP4rev1 to time commands: literals are read, not parsed."""

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer
        self.tag = 0

    @classmethod
    async def connect(cls, port):
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, limit=1 << 20), TIMEOUT)
        line = await asyncio.wait_for(reader.readline(), TIMEOUT)
        if not line.startswith(b"* OK"):
            writer.close()
            raise ProtocolError(f"IMAP greeting: {line!r}")
        return cls(reader, writer)

    async def command(self, text):
        """
        Send one command, read to its tagged answer.

        @return: C{(untagged lines without literals, literal bytes, status line)}.
        """
        self.tag += 1
        tag = f"b{self.tag}".encode()
        self.writer.write(tag + b" " + text.encode() + b"\r\n")
        untagged, literal_bytes = [], 0
        while True:
            line = await asyncio.wait_for(self.reader.readline(), TIMEOUT)
            if not line:
                raise ProtocolError(f"IMAP: closed during {text!r}")
            while line.endswith(b"}\r\n") and b"{" in line:
                size = int(line[line.rindex(b"{") + 1:-3])
                await asyncio.wait_for(self.reader.readexactly(size), TIMEOUT)
                literal_bytes += size
                line = await asyncio.wait_for(self.reader.readline(), TIMEOUT)
            if line.startswith(tag + b" "):
                if not line[len(tag) + 1:].startswith(b"OK"):
                    raise ProtocolError(f"IMAP {text!r}: {line.decode(errors='replace')}")
                return untagged, literal_bytes, line
            untagged.append(line)

    async def timed(self, text):
        start = time.monotonic()
        result = await self.command(text)
        return time.monotonic() - start, result

    def close(self):
        self.writer.close()


async def idle_imap(port, count, hold, on_held):
    """
    Open C{count} IMAP connections, read each greeting and ask CAPABILITY
    (not logged in: see docs/performance.md), keep them all open for C{hold}
    seconds (calling C{on_held()} meanwhile), then send NOOP on each: the
    ones that answer OK were held.

    @return: C{(connections that answered NOOP, seconds to open them, errors)}.
    """
    conns, errors = [], []
    slots = asyncio.Semaphore(200)  # open them quickly, but not all in one SYN flood

    async def read_to(reader, tag):
        while True:
            line = await asyncio.wait_for(reader.readline(), TIMEOUT)
            if not line:
                raise ProtocolError("closed by the server")
            if line.startswith(tag):
                if not line[len(tag):].startswith(b"OK"):
                    raise ProtocolError(line.decode(errors="replace").strip())
                return

    async def open_one():
        async with slots:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), TIMEOUT)
            except (OSError, asyncio.TimeoutError) as e:
                errors.append(f"connect: {type(e).__name__}: {e}")
                return
            try:
                line = await asyncio.wait_for(reader.readline(), TIMEOUT)
                if not line.startswith(b"* OK"):
                    raise ProtocolError(f"greeting {line[:60]!r}")
                writer.write(b"i CAPABILITY\r\n")
                await read_to(reader, b"i ")
                conns.append((reader, writer))
            except (OSError, ProtocolError, asyncio.TimeoutError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                writer.close()

    async def check(reader, writer):
        try:
            writer.write(b"n NOOP\r\n")
            await read_to(reader, b"n ")
            return 1
        except (OSError, ProtocolError, asyncio.TimeoutError) as e:
            errors.append(f"after idling: {type(e).__name__}: {e}")
            return 0
        finally:
            writer.close()

    start = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(count)))
    opened = time.monotonic() - start
    await asyncio.sleep(hold / 2)
    on_held()
    await asyncio.sleep(hold / 2)
    on_held()
    alive = sum(await asyncio.gather(*(check(r, w) for r, w in conns)))
    return alive, opened, errors
