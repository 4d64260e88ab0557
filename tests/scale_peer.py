"""Many connections from one event loop, for the scale tests: a plain
asyncio program that knows nothing of fastivc.

    scale_peer.py server HOST PORT [--reuse-port]
    scale_peer.py client HOST PORT --count N [--bytes B]

The server echoes every byte on every connection.  The client opens N
connections (a bounded number at a time), sends B seeded pseudo-random bytes
on each and checks the echo byte for byte; it prints one JSON line and keeps
every connection open.  Then it reads commands on stdin, one per line:
``stream K`` sends K bytes on connection 0 and checks their echo; ``check``
exchanges B more bytes on every connection; ``close`` closes them all.  Each
command prints one JSON line.  Stdin's end ends the program.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys


def raise_nofile(want: int = 65536) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:  # (root may raise the hard limit too)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, hard), max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def exchange(conn: tuple, seed: int, n: int) -> bool:
    reader, writer = conn
    data = random.Random(seed).randbytes(n)
    writer.write(data)
    got = bytearray()
    while len(got) < n:
        d = await reader.read(n - len(got))
        if not d:
            return False
        got += d
    return bytes(got) == data


async def stdin_lines():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield line.decode().strip()


def say(**kv) -> None:
    print(json.dumps(kv), flush=True)


async def server(host: str, port: int, reuse_port: bool) -> None:
    # (several servers share a port where one process may not hold every
    # connection: RLIMIT_NOFILE's hard limit is not ours to raise everywhere)
    srv = await asyncio.start_server(echo, host, port, backlog=4096, reuse_port=reuse_port)
    say(ready=True)
    async for _ in stdin_lines():
        pass
    srv.close()


async def client(host: str, port: int, count: int, nbytes: int) -> None:
    conns: list[tuple] = []
    sem = asyncio.Semaphore(256)

    async def one(i: int) -> bool:
        async with sem:
            c = await asyncio.open_connection(host, port)
            conns.append(c)
            return await exchange(c, i, nbytes)

    oks = await asyncio.gather(*(one(i) for i in range(count)))
    say(connected=len(conns), ok=sum(oks), bad=count - sum(oks))
    rnd = 1 << 32
    async for cmd in stdin_lines():
        if cmd.startswith("stream"):
            n = int(cmd.split()[1])
            rnd += 1
            say(stream=n, ok=await exchange(conns[0], rnd, n))
        elif cmd == "check":
            rnd += count
            oks = await asyncio.gather(*(exchange(c, rnd + i, nbytes)
                                         for i, c in enumerate(conns)))
            say(check=len(conns), ok=sum(oks))
        elif cmd == "close":
            for _, w in conns:
                w.close()
            await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)
            conns.clear()
            say(closed=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=("server", "client"))
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--bytes", type=int, default=64)
    ap.add_argument("--reuse-port", action="store_true")
    a = ap.parse_args()
    raise_nofile()
    if a.role == "server":
        asyncio.run(server(a.host, a.port, a.reuse_port))
    else:
        asyncio.run(client(a.host, a.port, a.count, a.bytes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
