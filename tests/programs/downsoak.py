"""Downgrades at random moments (issue 12): connection after connection of a
bidirectional random stream, while the test (tests/test_downgrade.py, or
`make soak-downgrade`) runs `fastivc downgrade --keep-accelerating` at
random times against either end.

  downsoak.py server MODE
      (under the library) listens on 127.0.0.1, prints its port, and serves
      connections one after another until killed.  Each starts with a
      header from the client (seed, bytes of A, bytes of B); the server
      reads stream A to its end, checking every byte, while it writes
      stream B and then shuts down its writing side.  MODE: "threads" (a
      reader and a writer thread: blocked in a read and a write), "epoll"
      (one thread, non-blocking, selectors), "busy" (threads that stop to
      compute between calls, making none for a while).
  downsoak.py client PORT TOTAL SEED
      (under the library) connection after connection until TOTAL bytes
      went both ways in all: random sizes (up to 4 MiB a direction), both
      directions at once, random pauses and chunk sizes; every byte of B
      checked.  Prints one JSON line: connections, bytes, and how many
      connections were on a ring when they began.

Streams: a fixed random table of a prime length, each connection starting
at its own offset, so no ring or buffer size lines up with them."""
from __future__ import annotations

import json
import os
import random
import selectors
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
L = 1_000_003
TABLE = random.Random(7).randbytes(L) * 2  # (doubled: any slice up to L is one slice)
HDR = struct.Struct("<QQQ")
MAXLEN = 4 << 20


def chunk(off: int, n: int) -> bytes:
    n = min(n, L)
    o = off % L
    return TABLE[o:o + n]


def check(off: int, data: bytes, what: str) -> None:
    if data != chunk(off, len(data)):
        want = chunk(off, len(data))
        k = next(i for i in range(len(data)) if data[i] != want[i])
        z = len(data[k:]) - len(data[k:].lstrip(b"\0"))  # doorbell bytes are zeros
        rest = data[k + z:]
        shift = "the rest is the stream from there" if rest == want[k:k + len(rest)] else (
            "the rest is not the stream")
        raise SystemExit(f"{what}: wrong byte at {k} of {len(data)} read at stream offset {off}"
                         f" (got {data[k]}, want {want[k]}; {z} zero bytes, then {shift})")


def recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        b = s.recv(n - len(out))
        if not b:
            raise SystemExit(f"EOF after {len(out)} of a {n}-byte header")
        out += b
    return out


def busy(rng: random.Random) -> None:
    if rng.random() < 0.05:
        t = time.monotonic() + rng.random() * 0.02
        while time.monotonic() < t:  # computing: no call on the socket
            pass


def serve_blocking(s: socket.socket, seed: int, la: int, lb: int, spin: bool) -> None:
    what = f"stream A (port {s.getpeername()[1]})"
    rng = random.Random(seed)
    a0, b0 = seed % L, (seed * 7) % L
    err: list[BaseException] = []

    def write() -> None:
        try:
            off, wr = 0, random.Random(seed + 1)
            while off < lb:
                if spin:
                    busy(wr)
                off += s.send(chunk(b0 + off, min(lb - off, wr.randint(1, 262144))))
            s.shutdown(socket.SHUT_WR)
        except BaseException as e:  # noqa: BLE001 (reported by the reader)
            err.append(e)
    w = threading.Thread(target=write)
    w.start()
    got = 0
    while True:
        if spin:
            busy(rng)
        b = s.recv(rng.randint(1, 262144))
        if not b:
            break
        check(a0 + got, b, what)
        got += len(b)
    w.join()
    if err:
        raise SystemExit(f"stream B: {err[0]!r}")
    if got != la:
        raise SystemExit(f"stream A: {got} of {la} bytes")


def serve_epoll(s: socket.socket, seed: int, la: int, lb: int) -> None:
    what = f"stream A (port {s.getpeername()[1]})"
    rng = random.Random(seed)
    a0, b0 = seed % L, (seed * 7) % L
    s.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    got = sent = 0
    eof = False
    while not eof or sent < lb:
        for _k, ev in sel.select(timeout=30):
            if ev & selectors.EVENT_READ:
                try:
                    b = s.recv(rng.randint(1, 262144))
                except BlockingIOError:
                    b = None
                if b == b"":
                    eof = True
                elif b:
                    check(a0 + got, b, what)
                    got += len(b)
            if ev & selectors.EVENT_WRITE and sent < lb:
                try:
                    sent += s.send(chunk(b0 + sent, min(lb - sent, rng.randint(1, 262144))))
                except BlockingIOError:
                    pass
                if sent == lb:
                    s.shutdown(socket.SHUT_WR)
        want = (0 if eof else selectors.EVENT_READ) | (selectors.EVENT_WRITE if sent < lb else 0)
        if want:
            sel.modify(s, want)
    sel.close()
    if got != la:
        raise SystemExit(f"stream A: {got} of {la} bytes")


def server(mode: str) -> None:
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    print(lst.getsockname()[1], flush=True)
    while True:
        s, _ = lst.accept()
        seed, la, lb = HDR.unpack(recv_exact(s, HDR.size))
        if mode == "epoll":
            serve_epoll(s, seed, la, lb)
        else:
            serve_blocking(s, seed, la, lb, mode == "busy")
        s.close()


def client(port: int, total: int, seed: int) -> None:
    from onfabric import on_fabric
    rng = random.Random(seed)
    done = conns = on_ring = 0
    while done < total:
        cseed = rng.getrandbits(40)
        la, lb = rng.randint(0, MAXLEN), rng.randint(0, MAXLEN)
        a0, b0 = cseed % L, (cseed * 7) % L
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(HDR.pack(cseed, la, lb))
        what = f"connection {conns} (port {s.getsockname()[1]}) stream B"
        first = True
        err: list[BaseException] = []

        def write(s=s, la=la, a0=a0, cseed=cseed, err=err) -> None:
            try:
                off, wr = 0, random.Random(cseed + 2)
                while off < la:
                    if wr.random() < 0.02:
                        time.sleep(wr.random() * 0.01)
                    off += s.send(chunk(a0 + off, min(la - off, wr.randint(1, 262144))))
                s.shutdown(socket.SHUT_WR)
            except BaseException as e:  # noqa: BLE001 (reported below)
                err.append(e)
        w = threading.Thread(target=write)
        w.start()
        got = 0
        while True:
            b = s.recv(rng.randint(1, 262144))
            if not b:
                break
            if first:  # (switched by now: the server wrote)
                on_ring += on_fabric() > 0
                first = False
            check(b0 + got, b, what)
            got += len(b)
        w.join()
        if err:
            raise SystemExit(f"connection {conns} stream A: {err[0]!r}")
        if got != lb:
            raise SystemExit(f"connection {conns} stream B: {got} of {lb} bytes")
        s.close()
        conns += 1
        done += la + lb
    print(json.dumps({"connections": conns, "bytes": done, "on_ring": on_ring}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2])
    else:
        client(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
