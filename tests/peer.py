"""A plain socket program for the upgrade tests: it knows nothing of fastivc.

    peer.py server HOST PORT --mode M --bytes N [--accept-delay S]
    peer.py client HOST PORT --mode M --bytes N [--chunk-max K]
    ... [--io blocking|poll|epoll-lt|epoll-et]

Modes: client-first (the client sends N bytes, then the server sends N),
server-first, both (both send at once), sink (the client streams until
killed; the server reads until EOF/error), cycles (the client makes --count
connect/request/response/close cycles, the server serves them in turn).

--io other than blocking makes every socket non-blocking before connect()
and accept() and drives it from one loop: poll(2), or epoll level-triggered
(one recv or send per readiness report), or epoll edge-triggered (recv and
send until EAGAIN before each wait).  Mode idle (with an --io loop): after a
short exchange both ends wait in that loop, the socket and stdin in the set,
until stdin closes; then the client sends "bye" and the server answers.

Each side sends N pseudo-random bytes in random-size pieces, reads exactly N
and checks them.  It then prints one JSON line with what it saw, and keeps
the connection open until its stdin closes, so a test can inspect it.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import random
import select
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

class Loop:
    """One fd (plus optionally stdin) waited on by poll, epoll LT or epoll ET."""

    def __init__(self, io: str):
        self.io = io
        self.masks: dict[int, int] = {}
        if io == "poll":
            self.p = select.poll()
        else:
            self.p = select.epoll()

    def want(self, fd: int, readable: bool, writable: bool) -> None:
        if self.io == "poll":
            m = (select.POLLIN if readable else 0) | (select.POLLOUT if writable else 0)
        elif self.io == "epoll-et":  # registered once with both, edges only
            m = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
        else:
            m = (select.EPOLLIN if readable else 0) | (select.EPOLLOUT if writable else 0)
        if fd not in self.masks:
            self.p.register(fd, m)
        elif self.masks[fd] != m:
            self.p.modify(fd, m)
        self.masks[fd] = m

    def forget(self, fd: int) -> None:
        if self.masks.pop(fd, None) is not None:
            self.p.unregister(fd)

    def wait(self, timeout: float | None = None) -> dict[int, int]:
        if self.io == "poll":
            return dict(self.p.poll(None if timeout is None else timeout * 1000))
        return dict(self.p.poll(-1 if timeout is None else timeout))


def nb_connect(host: str, port: int, loop: Loop) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setblocking(False)
    e = s.connect_ex((host, port))
    if e not in (0, errno.EINPROGRESS):
        raise OSError(e, "connect")
    loop.want(s.fileno(), False, True)
    while not loop.wait():
        pass
    loop.forget(s.fileno())
    e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if e:
        raise OSError(e, "connect (SO_ERROR)")
    return s


def nb_accept(ls: socket.socket, loop: Loop) -> socket.socket:
    loop.want(ls.fileno(), True, False)
    while True:
        loop.wait()
        try:
            c, _ = ls.accept()
            break
        except BlockingIOError:
            continue
    loop.forget(ls.fileno())
    c.setblocking(False)
    return c


def nb_exchange(s: socket.socket, role: str, mode: str, n: int, chunk_max: int,
                loop: Loop) -> dict:
    """exchange() on a non-blocking socket driven by `loop`."""
    mine = payload(f"{role}", n)
    theirs = payload("server" if role == "client" else "client", n)
    rnd = random.Random(role + mode)
    srnd = random.Random(role)
    got = bytearray()
    sent = 0
    eof = False
    first = "client" if mode == "client-first" else "server"

    def may_send() -> bool:
        return sent < n and (mode == "both" or role == first or len(got) == n or eof)

    def may_recv() -> bool:
        return not eof and len(got) < n and (mode == "both" or role != first or sent == n)

    def recv_once() -> bool:
        nonlocal eof
        try:
            d = s.recv(min(n - len(got), rnd.randint(1, 70000)))
        except BlockingIOError:
            return False
        if not d:
            eof = True
            return False
        got.extend(d)
        return True

    def send_once() -> bool:
        nonlocal sent
        k = min(srnd.randint(1, chunk_max), n - sent)
        try:
            sent += s.send(mine[sent:sent + k])
        except BlockingIOError:
            return False
        return True

    fd = s.fileno()
    while may_send() or may_recv():
        if loop.io == "epoll-et":  # until EAGAIN, then wait for an edge
            while may_recv() and recv_once():
                pass
            while may_send() and send_once():
                pass
            if not (may_send() or may_recv()):
                break
            loop.want(fd, True, True)
            loop.wait()
            continue
        loop.want(fd, may_recv(), may_send())
        ev = loop.wait()
        r = ev.get(fd, 0)
        if r & (select.POLLIN | select.POLLHUP | select.POLLERR) and may_recv():
            recv_once()
        if r & (select.POLLOUT | select.POLLHUP | select.POLLERR) and may_send():
            send_once()
    loop.forget(fd)
    return {"received": len(got), "intact": bytes(got) == theirs,
            "sha256": hashlib.sha256(bytes(got)).hexdigest()[:16]}


def idle(s: socket.socket, role: str, loop: Loop) -> dict:
    """Wait in the loop (the client with stdin in its set too) until the
    test closes the client's stdin; then the client says bye and the server
    answers."""
    fd, stdin = s.fileno(), sys.stdin.fileno()
    loop.want(fd, True, False)
    if role == "client":
        loop.want(stdin, True, False)
    got = b""
    while True:
        ev = loop.wait()
        if stdin in ev and role == "client":
            loop.forget(stdin)
            _nb_sendall(s, b"bye", loop)
        if fd not in ev:
            continue
        while True:  # until EAGAIN (edge-triggered)
            try:
                d = s.recv(16)
            except BlockingIOError:
                break
            if not d:
                return {"idle_end": got.decode(), "eof": True}
            got += d
        if role == "server" and got == b"bye":
            _nb_sendall(s, b"eyb", loop)
            return {"idle_end": got.decode()}
        if role == "client" and got == b"eyb":
            return {"idle_end": got.decode()}


def _nb_sendall(s: socket.socket, data: bytes, loop: Loop) -> None:
    while data:
        try:
            data = data[s.send(data):]
        except BlockingIOError:
            loop.want(s.fileno(), False, True)
            loop.wait(1)
            loop.want(s.fileno(), True, False)


def nb_session(s: socket.socket, role: str, a: argparse.Namespace, loop: Loop) -> dict:
    if a.mode != "idle":
        return nb_exchange(s, role, a.mode, a.bytes, a.chunk_max, loop)
    info = nb_exchange(s, role, "both", a.bytes, a.chunk_max, loop) | addrs(s)
    print(json.dumps(info), flush=True)  # the test starts measuring here
    return idle(s, role, loop)


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
                    choices=["client-first", "server-first", "both", "sink", "cycles", "idle"])
    ap.add_argument("--io", default="blocking",
                    choices=["blocking", "poll", "epoll-lt", "epoll-et"])
    ap.add_argument("--bytes", type=int, default=100000)
    ap.add_argument("--chunk-max", type=int, default=20000)
    ap.add_argument("--accept-delay", type=float, default=0.0)
    ap.add_argument("--count", type=int, default=1)
    a = ap.parse_args()
    if a.io != "blocking" and a.mode in ("sink", "cycles"):
        ap.error(f"--io {a.io} does not do --mode {a.mode}")
    if a.io == "blocking" and a.mode == "idle":
        ap.error("--mode idle needs an --io loop")
    loop = Loop(a.io) if a.io != "blocking" else None
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
        if loop:
            ls.setblocking(False)
            c = nb_accept(ls, loop)
            hold(c, nb_session(c, "server", a, loop) | addrs(c))
            return 0
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
    if loop:
        s = nb_connect(a.host, a.port, loop)
        hold(s, nb_session(s, "client", a, loop) | addrs(s))
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
