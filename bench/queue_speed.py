"""
Does the queue keep up with intake? (issue 6)

Starts the real server on loopback with a local sink as its smart host (a
separate process, an asyncio SMTP server that offers PIPELINING and counts
what it receives) and sends MESSAGES messages of 4 KB through submission
(AUTH PLAIN; plain text is allowed on loopback in the bench config) over
CONNECTIONS connections, each to one remote recipient.

Prints messages accepted per second (until the last 250), messages
delivered per second (until the sink has the last one, from the same
start), and their ratio. The goal: delivered/accepted >= 0.5.

    python bench/queue_speed.py [MESSAGES] [CONNECTIONS]
"""

import asyncio
import base64
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration.harness import PASSWORD, MailServerProcess, free_port  # noqa: E402

USER = "alice@example.test"
BODY = ("x" * 76 + "\r\n") * 52  # about 4 KB
MESSAGE = f"From: {USER}\r\nTo: friend@remote.test\r\nSubject: bench\r\n\r\n{BODY}".encode()


async def sink(port):
    """The smart host: accepts everything, prints a line per message."""

    async def session(reader, writer):
        writer.write(b"220 sink ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
                await writer.drain()
                while (await reader.readline()) not in (b".\r\n", b""):
                    pass
                writer.write(b"250 2.0.0 ok\r\n")
                sys.stdout.write("1\n")
                sys.stdout.flush()
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(session, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def reply(reader):
    """One SMTP reply's code."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            return int(line[:3])


async def submit(port, count, accepted):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reply(reader)
    writer.write(b"EHLO bench\r\n")
    await reply(reader)
    token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    writer.write(b"AUTH PLAIN " + token + b"\r\n")
    assert await reply(reader) == 235, "AUTH failed"
    for _ in range(count):
        writer.write(f"MAIL FROM:<{USER}>\r\nRCPT TO:<friend@remote.test>\r\nDATA\r\n"
                     .encode())
        codes = [await reply(reader) for _ in range(3)]
        assert codes == [250, 250, 354], codes
        writer.write(MESSAGE + b".\r\n")
        code = await reply(reader)
        assert code == 250, code
        accepted.append(time.monotonic())
    writer.write(b"QUIT\r\n")
    writer.close()


async def run(messages, connections):
    sink_port = free_port()
    sink_process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--sink", str(sink_port), stdout=subprocess.PIPE)
    server = MailServerProcess(extra={
        "delivery": {"smart_host": f"127.0.0.1:{sink_port}"},
        "access": {"max_connections_per_ip": connections + 5},
    })
    try:
        server.start()
        delivered = []

        async def count_deliveries():
            while len(delivered) < messages:
                if not await sink_process.stdout.readline():
                    return
                delivered.append(time.monotonic())

        counting = asyncio.create_task(count_deliveries())
        accepted = []
        start = time.monotonic()
        per_connection = [messages // connections + (n < messages % connections)
                          for n in range(connections)]
        await asyncio.gather(*(submit(server.ports["submission"], n, accepted)
                               for n in per_connection))
        await asyncio.wait_for(counting, timeout=600)
        return messages / (accepted[-1] - start), messages / (delivered[-1] - start)
    finally:
        server.cleanup()
        sink_process.kill()
        await sink_process.wait()


def main():
    if sys.argv[1:2] == ["--sink"]:
        asyncio.run(sink(int(sys.argv[2])))
        return
    messages = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    connections = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    accepted, delivered = asyncio.run(run(messages, connections))
    print(f"{messages} messages of {len(MESSAGE)} bytes over {connections} connections")
    print(f"accepted:  {accepted:7.1f} messages/s (submission, until the last 250)")
    print(f"delivered: {delivered:7.1f} messages/s (to the smart host, same start)")
    print(f"delivered/accepted: {delivered / accepted:.2f} (goal: at least 0.5)")


if __name__ == "__main__":
    main()
