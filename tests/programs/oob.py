"""Urgent data (MSG_OOB) on a connected loopback pair, step by step
(tests/test_oob.py).  A plain socket program: it knows nothing of
fastivc.  One JSON line per scenario: {"name", "steps", "accelerated"}.
Each step's result is what a program sees: bytes, errno names, readiness
masks (poll, select's exceptional set, epoll), FIONREAD, SIOCATMARK."""

from __future__ import annotations

import errno
import fcntl
import json
import select
import socket
import struct
import sys
import termios
import time

from onfabric import on_fabric

SIOCATMARK = 0x8905


class Pair:
    def __init__(self, inline: bool = False, warm: bool = True, early: bytes = b"") -> None:
        base = on_fabric()
        ls = socket.socket()
        if inline:  # inherited by the accepted socket
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        self.w = socket.create_connection(ls.getsockname())
        self.steps: list = []
        if early:  # urgent data before the server accepted
            self.steps.append(["send", early.decode(), True, self.w.send(early, socket.MSG_OOB)])
            self.settle()
        self.r, _ = ls.accept()
        ls.close()
        self.w.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if warm:
            self.w.sendall(b"!")  # the switch, before any urgent byte
            assert self.r.recv(1) == b"!"
        self.acc = on_fabric() - base if base >= 0 else -1

    def settle(self) -> None:
        time.sleep(0.05)  # loopback's softirq delivers (the ring needs none)

    def send(self, data: bytes, oob: bool = False) -> None:
        n = self.w.send(data, socket.MSG_OOB if oob else 0)
        self.steps.append(["send", data.decode(), oob, n])
        self.settle()

    def recv(self, n: int = 100, flags: int = 0) -> None:
        try:
            b = self.r.recv(n, flags | socket.MSG_DONTWAIT)
            out = b.decode()
        except OSError as e:
            out = errno.errorcode.get(e.errno, str(e.errno))
        self.steps.append(["recv", n, flags, out])

    def atmark(self) -> None:
        v = struct.unpack("i", fcntl.ioctl(self.r.fileno(), SIOCATMARK, b"\0" * 4))[0]
        self.steps.append(["atmark", v])

    def ready(self) -> None:
        p = select.poll()
        p.register(self.r.fileno(), select.POLLIN | select.POLLPRI)
        ev = dict(p.poll(0)).get(self.r.fileno(), 0)
        _r, _w, x = select.select([self.r], [], [self.r], 0)
        ep = select.epoll()
        ep.register(self.r.fileno(), select.EPOLLIN | select.EPOLLPRI)
        eev = dict(ep.poll(0)).get(self.r.fileno(), 0)
        ep.close()
        nread = struct.unpack("i", fcntl.ioctl(self.r.fileno(), termios.FIONREAD, b"\0" * 4))[0]
        self.steps.append(["ready", bool(ev & select.POLLIN), bool(ev & select.POLLPRI),
                           bool(x), bool(eev & select.EPOLLPRI), bool(eev & select.EPOLLIN),
                           nread])

    def close(self) -> dict:
        self.w.close()
        self.r.close()
        return {"steps": self.steps, "accelerated": self.acc}


def scenarios():
    def oob_first(p: Pair) -> None:
        p.send(b"abc"), p.send(b"X", True), p.send(b"def")
        p.ready(), p.atmark(), p.recv(1, socket.MSG_OOB | socket.MSG_PEEK)
        p.recv(1, socket.MSG_OOB), p.ready(), p.recv(1, socket.MSG_OOB)
        p.recv(), p.atmark(), p.ready(), p.recv(), p.atmark(), p.recv(1, socket.MSG_OOB)

    def inband_first(p: Pair) -> None:
        p.send(b"abc"), p.send(b"X", True), p.send(b"def")
        p.recv(2), p.atmark(), p.recv(), p.atmark(), p.ready(), p.recv(1, socket.MSG_PEEK)
        p.recv(), p.recv(1, socket.MSG_OOB), p.ready()

    def inline(p: Pair) -> None:
        p.send(b"abc"), p.send(b"X", True), p.send(b"def")
        p.ready(), p.recv(1, socket.MSG_OOB), p.recv(), p.atmark(), p.recv(), p.atmark()
        p.ready()

    def two_marks(p: Pair) -> None:
        p.send(b"a"), p.send(b"B", True), p.send(b"c"), p.send(b"D", True), p.send(b"e")
        p.ready(), p.recv(1, socket.MSG_OOB), p.recv(), p.atmark(), p.recv(), p.ready()

    def multibyte(p: Pair) -> None:
        p.send(b"XYZ", True), p.ready(), p.recv(1), p.atmark(), p.recv(), p.atmark()
        p.recv(1, socket.MSG_OOB), p.recv(), p.ready()

    def none(p: Pair) -> None:
        p.recv(1, socket.MSG_OOB), p.ready(), p.atmark(), p.send(b"q"), p.atmark()
        p.recv(1, socket.MSG_OOB), p.recv(), p.ready()

    def only_urgent(p: Pair) -> None:
        p.send(b"U", True), p.ready(), p.recv(), p.recv(1, socket.MSG_PEEK), p.atmark()
        p.recv(1, socket.MSG_OOB), p.ready(), p.send(b"v"), p.recv(), p.ready()

    def first_byte(p: Pair) -> None:  # urgent data is the connection's first
        p.send(b"hiX", True), p.ready(), p.recv(1, socket.MSG_OOB), p.recv(), p.send(b"more")
        p.recv(), p.ready()

    def mark_at_mark(p: Pair) -> None:  # a new mark while the reader sits at
        # the old urgent byte: the kernel drops that byte (tcp_check_urg)
        p.send(b"A", True), p.send(b"B", True), p.recv(1, socket.MSG_OOB), p.recv(), p.ready()
        p.send(b"xC", True), p.atmark(), p.send(b"D", True), p.recv(1, socket.MSG_OOB)
        p.recv(), p.send(b"E", True), p.recv(1, socket.MSG_OOB), p.send(b"F", True)
        p.atmark(), p.recv(), p.ready()

    def early(p: Pair) -> None:  # (sent in Pair: before the accept)
        p.ready(), p.recv(1, socket.MSG_OOB), p.recv(), p.send(b"more"), p.recv(), p.ready()

    return [("oob_first", False, oob_first), ("inband_first", False, inband_first),
            ("inline", True, inline), ("two_marks", False, two_marks),
            ("multibyte", False, multibyte), ("none", False, none),
            ("only_urgent", False, only_urgent), ("first_byte", False, first_byte),
            ("mark_at_mark", False, mark_at_mark), ("early", False, early)]


def main() -> None:
    for name, inl, body in scenarios():
        p = Pair(inl, warm=name not in ("first_byte", "early"),
                 early=b"hiX" if name == "early" else b"")
        body(p)
        print(json.dumps({"name": name, **p.close()}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
