"""A plain socket program for the upgrade tests: it knows nothing of fastivc.

    peer.py server HOST PORT --mode M --bytes N [--accept-delay S]
    peer.py client HOST PORT --mode M --bytes N [--chunk-max K]

Modes: client-first (the client sends N bytes, then the server sends N),
server-first, both (both send at once), sink (the client streams until
killed; the server reads until EOF/error), cycles (the client makes --count
connect/request/response/close cycles, the server serves them in turn).

Each side sends N pseudo-random bytes in random-size pieces, reads exactly N
and checks them.  It then prints one JSON line with what it saw, and keeps
the connection open until its stdin closes, so a test can inspect it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import sys
import threading
import time


def payload(seed: str, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def send_all(s: socket.socket, data: bytes, rnd: random.Random, chunk_max: int) -> None:
    i = 0
    while i < len(data):
        k = rnd.randint(1, chunk_max)
        s.sendall(data[i:i + k])
        i += k


def recv_exact(s: socket.socket, n: int, rnd: random.Random) -> bytes:
    out = bytearray()
    while len(out) < n:
        d = s.recv(min(n - len(out), rnd.randint(1, 70000)))
        if not d:
            break
        out.extend(d)
    return bytes(out)


def exchange(s: socket.socket, role: str, mode: str, n: int, chunk_max: int) -> dict:
    mine = payload(f"{role}", n)
    theirs = payload("server" if role == "client" else "client", n)
    rnd = random.Random(role + mode)
    got = b""
    if mode == "both":
        t = threading.Thread(target=send_all, args=(s, mine, random.Random(role), chunk_max))
        t.start()
        got = recv_exact(s, n, rnd)
        t.join()
    elif (mode == "client-first") == (role == "client"):
        send_all(s, mine, rnd, chunk_max)
        got = recv_exact(s, n, rnd)
    else:
        got = recv_exact(s, n, rnd)
        send_all(s, mine, rnd, chunk_max)
    return {"received": len(got), "intact": got == theirs,
            "sha256": hashlib.sha256(got).hexdigest()[:16]}


def addrs(s: socket.socket) -> dict:
    local, peer = s.getsockname(), s.getpeername()
    return {"local": [local[0], local[1]], "peer": [peer[0], peer[1]]}


def hold(s: socket.socket, info: dict) -> None:
    print(json.dumps(info), flush=True)
    sys.stdin.read()
    s.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["server", "client"])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--mode", default="client-first",
                    choices=["client-first", "server-first", "both", "sink", "cycles"])
    ap.add_argument("--bytes", type=int, default=100000)
    ap.add_argument("--chunk-max", type=int, default=20000)
    ap.add_argument("--accept-delay", type=float, default=0.0)
    ap.add_argument("--count", type=int, default=1)
    a = ap.parse_args()
    family = socket.AF_INET6 if ":" in a.host else socket.AF_INET
    if a.role == "server":
        ls = socket.socket(family, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((a.host, a.port))
        ls.listen(128)
        print(json.dumps({"listening": a.port}), flush=True)
        if a.mode == "cycles":
            for _ in range(a.count):
                c, _ = ls.accept()
                req = recv_exact(c, 64, random.Random(0))
                c.sendall(req[::-1])
                c.close()
            print(json.dumps({"served": a.count}), flush=True)
            return 0
        time.sleep(a.accept_delay)
        c, _ = ls.accept()
        if a.mode == "sink":
            total, err = 0, ""
            try:
                while True:
                    d = c.recv(65536)
                    if not d:
                        break
                    total += len(d)
            except OSError as e:
                err = e.strerror or str(e)
            print(json.dumps({"received": total, "error": err}), flush=True)
            return 0
        info = exchange(c, "server", a.mode, a.bytes, a.chunk_max) | addrs(c)
        hold(c, info)
        return 0
    if a.mode == "cycles":
        ok = 0
        for i in range(a.count):
            s = socket.create_connection((a.host, a.port))
            req = i.to_bytes(8, "big") * 8
            s.sendall(req)
            resp = recv_exact(s, 64, random.Random(0))
            s.close()
            ok += resp == req[::-1]
        print(json.dumps({"cycles": a.count, "ok": ok}), flush=True)
        return 0
    s = socket.create_connection((a.host, a.port))
    if a.mode == "sink":
        print(json.dumps(addrs(s)), flush=True)
        buf = b"x" * 65536
        try:
            while True:
                s.sendall(buf)
        except OSError as e:
            print(json.dumps({"error": e.strerror}), flush=True)
        return 0
    info = exchange(s, "client", a.mode, a.bytes, a.chunk_max) | addrs(s)
    hold(s, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
