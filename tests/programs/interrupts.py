"""A signal's handler against a call that waits, step by step
(tests/test_signals.py): a blocking recv, send, accept, poll, select or
epoll_wait with nothing to come, and a SIGALRM 50 ms in.  Without
SA_RESTART the kernel's call ends with EINTR (Python's handler raises
Alarm); with it (siginterrupt(sig, False)) recv, send and accept go on
until they can finish, unless the socket has a timeout (SO_RCVTIMEO,
SO_SNDTIMEO), and poll, select and epoll_wait never do.  A plain socket
program; one JSON line per scenario: {"name", "steps", "accelerated"}.

Under fastivc the test runs it with a spin of 400 ms (FASTIVC_SPIN_US),
so that the signal comes while the library spins before it sleeps: the
window where a handler once ran and the sleep after it slept on
(issue 11).  Whatever goes wrong, nothing hangs: a watchdog sends from
the peer (or connects) WATCHDOG seconds in, and the step then records
what the call returned instead of the Alarm."""

from __future__ import annotations

import json
import select
import signal
import socket
import struct
import sys
import threading
import time

from onfabric import on_fabric, switched_pair

ALARM_S, LATE_S, WATCHDOG = 0.05, 1.0, 4.0
counted = [0]


class Alarm(Exception):
    pass


def raising(_sig, _frame) -> None:
    counted[0] += 1
    raise Alarm()


def counting(_sig, _frame) -> None:
    counted[0] += 1


def handler(kind: str, restart: bool) -> None:
    signal.signal(signal.SIGALRM, raising if kind == "raise" else counting)
    signal.siginterrupt(signal.SIGALRM, not restart)
    counted[0] = 0


def settle() -> None:
    """(a Python call: a handler still pending after a call that went on
    runs here, inside the caller's try)"""


class Later:
    """fn() at `after` seconds unless cancelled; `done` once it ran."""

    def __init__(self, after: float, fn) -> None:
        self.stop = threading.Event()
        self.done = threading.Event()

        def run() -> None:
            if not self.stop.wait(after):
                self.done.set()
                fn()

        self.t = threading.Thread(target=run, daemon=True)
        self.t.start()

    def cancel(self) -> None:
        self.stop.set()
        self.t.join()


class Pair:
    def __init__(self) -> None:
        base = on_fabric()
        self.ls, self.c, self.s = switched_pair(backlog=8)
        self.steps: list = []
        self.acc = on_fabric() - base if base >= 0 else -1

    def step(self, *what) -> None:
        self.steps.append(list(what))

    def drain(self, sock: socket.socket) -> int:
        got = 0
        while True:
            try:
                b = sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return got
            if not b:
                return got
            got += len(b)

    def close(self, name: str) -> dict:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for x in (self.c, self.s, self.ls):
            x.close()
        return {"name": name, "steps": self.steps, "accelerated": self.acc}


def wait_call(p: Pair, call, late=None, watchdog=None) -> list:
    """call() with SIGALRM 50 ms in; what it gave: ["alarm", whether the
    late event (else the watchdog's) had come] or ["returned", its result]."""
    lt = Later(LATE_S if late else WATCHDOG, late or watchdog or (lambda: p.c.send(b"W")))
    signal.setitimer(signal.ITIMER_REAL, ALARM_S)
    try:
        r = call()
        settle()
        out = ["returned", r]
    except Alarm:
        out = ["alarm", lt.done.is_set()]
    signal.setitimer(signal.ITIMER_REAL, 0)
    lt.cancel()
    return out


def recv_case(name: str, kind: str, restart: bool, timeout: float = 0) -> dict:
    p = Pair()
    handler(kind, restart)
    if timeout:
        p.s.settimeout(None)
        p.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                       _timeval(timeout))
    late = (lambda: p.c.send(b"late")) if restart else None
    got = wait_call(p, lambda: len(p.s.recv(100)), late)
    time.sleep(0.05)
    p.step("recv", got, counted[0] > 0)
    if late:  # the late bytes: taken by the recv that went on, or still there
        time.sleep(LATE_S)
    p.step("left", p.drain(p.s))
    return p.close(name)


def _timeval(s: float) -> bytes:
    return struct.pack("ll", int(s), int((s % 1) * 1e6))


def fill(sock: socket.socket) -> int:
    sent = 0
    try:
        while True:
            sent += sock.send(b"x" * 65536)
    except BlockingIOError:
        return sent


def send_case(name: str, kind: str, restart: bool) -> dict:
    """A blocking send with no room: the peer reads nothing until late."""
    p = Pair()
    p.c.setblocking(False)
    while fill(p.c):  # until no room comes back (the kernel's ACKs)
        time.sleep(0.1)
    p.c.setblocking(True)
    handler(kind, restart)
    room = lambda: p.drain(p.s)  # noqa: E731
    got = wait_call(p, lambda: p.c.send(b"y" * 1000) > 0, room if restart else None, room)
    p.step("send", got, counted[0] > 0)
    return p.close(name)


def accept_case(name: str, kind: str, restart: bool) -> dict:
    p = Pair()  # (the listener has accepted on the ring: fastivc spins first)
    handler(kind, restart)
    addr = p.ls.getsockname()
    peers: list = []

    def connect() -> None:
        k = socket.socket()
        k.connect(addr)
        peers.append(k)

    late = connect if restart else None
    lt = Later(LATE_S if late else WATCHDOG, late or connect)
    signal.setitimer(signal.ITIMER_REAL, ALARM_S)
    try:
        a, _ = p.ls.accept()
        settle()
        a.close()
        out = ["accepted", lt.done.is_set()]
    except Alarm:
        out = ["alarm", lt.done.is_set()]
    signal.setitimer(signal.ITIMER_REAL, 0)
    lt.cancel()
    p.step("accept", out, counted[0] > 0)
    for k in peers:
        k.close()
    return p.close(name)


def readiness_case(name: str, how: str) -> dict:
    p = Pair()
    handler("raise", True)  # (restart or not: these never go on)
    if how == "poll":
        po = select.poll()
        po.register(p.s, select.POLLIN)
        call = lambda: len(po.poll(3000))  # noqa: E731
    elif how == "select":
        call = lambda: len(select.select([p.s], [], [], 3.0)[0])  # noqa: E731
    else:
        ep = select.epoll()
        ep.register(p.s.fileno(), select.EPOLLIN)
        p.c.send(b"r")  # ready once: listed, so fastivc's epoll spins first
        ep.poll(1.0)
        p.drain(p.s)
        call = lambda: len(ep.poll(3.0))  # noqa: E731
    p.step(how, wait_call(p, call), counted[0] > 0)
    if how == "epoll":
        ep.close()
    return p.close(name)


def main() -> int:
    out = [
        recv_case("recv", "raise", False),
        recv_case("recv_counted", "count", False),
        recv_case("recv_restart", "raise", True),
        recv_case("recv_restart_counted", "count", True),
        recv_case("recv_restart_timeout", "raise", True, timeout=2.0),
        send_case("send", "raise", False),
        send_case("send_restart", "raise", True),
        accept_case("accept", "raise", False),
        accept_case("accept_restart", "raise", True),
        readiness_case("poll", "poll"),
        readiness_case("select", "select"),
        readiness_case("epoll", "epoll"),
    ]
    for o in out:
        print(json.dumps(o), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
