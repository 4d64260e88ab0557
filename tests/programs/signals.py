"""Signal-driven I/O on a connected loopback pair, step by step
(tests/test_signals.py).  A plain socket program: it knows nothing of
fastivc.  One JSON line per scenario: {"name", "steps", "accelerated"}.

SIGIO (O_ASYNC with F_SETOWN, by fcntl or by ioctl FIOASYNC/FIOSETOWN,
set before connect or after the switch, or before an exec) is raised when
data or a FIN arrives, and at a writer that met EAGAIN once there is room; SIGURG (an
owner, with or without O_ASYNC) when urgent data arrives.  A step records
whether a signal came within a wait: up to WAIT_YES for one the kernel
raises, WAIT_NO for one it does not."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import time

from onfabric import on_fabric, switched_pair

WAIT_YES, WAIT_NO = 3.0, 0.15
FIOASYNC, FIOSETOWN = 0x5452, 0x8901
counts = {signal.SIGIO: 0, signal.SIGURG: 0}


def _count(sig, _frame) -> None:
    counts[sig] += 1


class Pair:
    def __init__(self, client_setup=None) -> None:
        base = on_fabric()
        ls, self.c, self.s = switched_pair(client_setup)
        ls.close()
        self.steps: list = []
        self.acc = on_fabric() - base if base >= 0 else -1

    def came(self, sig: int, expect: bool) -> bool:
        """Whether sig came since the last look (waiting up to WAIT_YES or
        WAIT_NO: how long the kernel's would take is not compared)."""
        end = time.monotonic() + (WAIT_YES if expect else WAIT_NO)
        while not counts[sig] and time.monotonic() < end:
            time.sleep(0.001)
        got = counts[sig] > 0
        counts[sig] = 0
        return got

    def reset(self) -> None:
        time.sleep(0.02)
        counts[signal.SIGIO] = counts[signal.SIGURG] = 0

    def drain(self, sock: socket.socket) -> list:
        """Read what is there, non-blocking, up to EAGAIN or the end."""
        got = b""
        while True:
            try:
                b = sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return [len(got), got[:16].decode("latin-1"), "EAGAIN"]
            if not b:
                return [len(got), got[:16].decode("latin-1"), "EOF"]
            got += b

    def step(self, *what) -> None:
        self.steps.append(list(what))

    def close(self, name: str) -> dict:
        self.c.close()
        self.s.close()
        return {"name": name, "steps": self.steps, "accelerated": self.acc}


def async_on(sock: socket.socket, by_ioctl: bool = False) -> None:
    if by_ioctl:
        fcntl.ioctl(sock.fileno(), FIOSETOWN, struct.pack("i", os.getpid()))
        fcntl.ioctl(sock.fileno(), FIOASYNC, struct.pack("i", 1))
    else:
        fcntl.fcntl(sock.fileno(), fcntl.F_SETOWN, os.getpid())
        fl = fcntl.fcntl(sock.fileno(), fcntl.F_GETFL)
        fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, fl | os.O_ASYNC)


def reader(name: str, by_ioctl: bool = False, before_connect: bool = False) -> dict:
    """The reader asked for SIGIO: each message, then the FIN, raises it;
    nothing arriving raises none."""
    if before_connect:
        p = Pair(client_setup=async_on)
        r, w = p.c, p.s
    else:
        p = Pair()
        r, w = p.s, p.c
        async_on(r, by_ioctl)
    p.reset()
    for k in range(5):
        w.send(b"message %d" % k)
        p.step("send", k, p.came(signal.SIGIO, True))
        p.step("read", p.drain(r))
    p.step("quiet", p.came(signal.SIGIO, False))
    w.shutdown(socket.SHUT_WR)
    p.step("fin", p.came(signal.SIGIO, True), p.drain(r))
    return p.close(name)


def turned_off() -> dict:
    """O_ASYNC set, then cleared: no SIGIO."""
    p = Pair()
    async_on(p.s)
    fl = fcntl.fcntl(p.s.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(p.s.fileno(), fcntl.F_SETFL, fl & ~os.O_ASYNC)
    p.reset()
    p.c.send(b"hello")
    p.step("send", p.came(signal.SIGIO, False))
    p.step("read", p.drain(p.s))
    return p.close("off")


def urgent(with_async: bool) -> dict:
    """An owner: SIGURG for urgent data (and SIGIO only with O_ASYNC)."""
    p = Pair()
    if with_async:
        async_on(p.s)
    else:
        fcntl.fcntl(p.s.fileno(), fcntl.F_SETOWN, os.getpid())
    p.reset()
    p.c.send(b"plain")
    p.step("plain", p.came(signal.SIGURG, False), p.came(signal.SIGIO, with_async))
    p.step("read", p.drain(p.s))
    p.c.send(b"ab!", socket.MSG_OOB)
    p.step("urgent", p.came(signal.SIGURG, True), p.came(signal.SIGIO, with_async))
    try:
        oob = p.s.recv(1, socket.MSG_OOB).decode()
    except OSError as e:
        oob = errno.errorcode.get(e.errno, str(e.errno))
    p.step("oob", oob, p.drain(p.s))
    return p.close("urgent_async" if with_async else "urgent_owner")


def writer_space() -> dict:
    """A writer with O_ASYNC that met EAGAIN gets SIGIO once the reader
    has made room."""
    p = Pair()
    w, r = p.c, p.s
    async_on(w)
    w.setblocking(False)
    chunk = b"x" * 65536
    sent = 0
    while True:
        try:
            sent += w.send(chunk)
        except BlockingIOError:
            break
    p.reset()
    p.step("full", p.came(signal.SIGIO, False))
    got = 0
    while got < sent:
        got += len(r.recv(1 << 20))
    p.step("room", p.came(signal.SIGIO, True), got == sent)
    return p.close("writer_space")


def many(n: int = 5000) -> dict:
    """Many messages, each read as its signal says: the signals keep coming
    (the doorbells that raise them must not pile up unread)."""
    p = Pair()
    async_on(p.s)
    p.reset()
    missed = 0
    for k in range(n):
        p.c.send(b"%08d" % k)
        end = time.monotonic() + WAIT_YES
        while not counts[signal.SIGIO] and time.monotonic() < end:
            pass
        missed += not counts[signal.SIGIO]
        counts[signal.SIGIO] = 0
        if missed > 3:
            break  # (not as the kernel: no need to wait out the rest)
        want = b"%08d" % k
        buf = b""
        while len(buf) < len(want):
            buf += p.s.recv(len(want) - len(buf))
        assert buf == want, (k, buf)
    p.step("many", n, missed)
    return p.close("many")


def exec_self() -> None:
    """O_ASYNC, an owner and SO_OOBINLINE set, then exec with both ends:
    the new program (exec_child) gets the signals and the inline urgent
    byte, as the file and the socket keep them across exec."""
    p = Pair()
    async_on(p.s)
    p.s.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
    p.reset()
    for x in (p.c, p.s):
        os.set_inheritable(x.fileno(), True)
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, __file__, "exec", str(p.s.fileno()),
                              str(p.c.fileno()), str(p.acc)])


def exec_child(rfd: int, wfd: int, acc: int) -> int:
    base = on_fabric()
    p = Pair.__new__(Pair)
    p.s, p.c = socket.socket(fileno=rfd), socket.socket(fileno=wfd)
    p.steps = []
    p.acc = acc if base < 0 else min(acc, base)  # (both ends still on the ring)
    p.reset()
    p.c.send(b"after exec")
    p.step("send", p.came(signal.SIGIO, True), p.drain(p.s))
    p.c.send(b"ab!", socket.MSG_OOB)
    p.step("urgent", p.came(signal.SIGURG, True), p.drain(p.s))
    print(json.dumps(p.close("exec")), flush=True)
    return 0


def main() -> int:
    signal.signal(signal.SIGIO, _count)
    signal.signal(signal.SIGURG, _count)
    if sys.argv[1:2] == ["exec"]:
        return exec_child(*(int(a) for a in sys.argv[2:5]))
    out = [reader("reader"), reader("ioctl", by_ioctl=True),
           reader("before_connect", before_connect=True), turned_off(),
           urgent(False), urgent(True), writer_space(), many()]
    for o in out:
        print(json.dumps(o), flush=True)
    exec_self()  # (last: the program goes on as another)
    return 0


if __name__ == "__main__":
    sys.exit(main())
