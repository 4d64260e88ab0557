"""A connection handed to a program that does not load the library (issue 12).

  downgrade.py server MODE TOTAL_A TOTAL_B
      (under the library) listens on 127.0.0.1, prints its port, accepts one
      connection, writes TOTAL_B bytes of stream B and reads stream A to its
      end, checking every byte.  MODE: "threads" (a writer thread, so the
      server is blocked in a write and in a read while the client execs),
      "epoll" (one thread, non-blocking, selectors), "idle" (first sleeps
      until the client exec'd: its library notices at its first call),
      "asleep" (one thread: writes ASLEEP_B of B, reads ASLEEP_A of A,
      prints "asleep", then makes no call for ASLEEP_S seconds, longer
      than an initiator waits for its peer's count, then goes on with
      both streams).
  downgrade.py client PORT TOTAL_A TOTAL_B PRE_A READ_B HOW
      (under the library) connects, writes PRE_A bytes of stream A and reads
      READ_B of stream B (both on the ring, with more in flight both ways),
      then execs this file's child role without the library: HOW "env"
      (LD_PRELOAD removed from the environment), "static" (through a static
      helper: busybox), "vfork" (subprocess: vfork, execve in the child)
      or "spawn" (posix_spawn, the fd given by a dup2 action), with the
      socket's fd; or HOW "highfd": no exec, it goes on in-process on a
      dup2 of the socket beyond the library's fd table.  "-seq" after any:
      the child writes all of A before it reads B.
  downgrade.py client-op PORT TOTAL_A TOTAL_B PRE_A READ_B
      as client, but it stays: prints "ready", waits for a line on stdin
      (the test runs `fastivc downgrade` meanwhile), then goes on itself.
  downgrade.py child FD OFF_A TOTAL_A OFF_B TOTAL_B SEQ
      (no library) goes on: stream A from OFF_A to TOTAL_A, stream B from
      OFF_B to its end, every byte checked.

Streams are bytes of a fixed random table of a prime length, so that no
ring or buffer size lines up with them.  Prints "ok ..." lines."""
from __future__ import annotations

import os
import random
import selectors
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
L = 1_000_003
HIGH_FD = 1_500  # past the table the test asks for (FASTIVC_FD_TABLE)


def _table(seed: int) -> bytes:
    return random.Random(seed).randbytes(L)


TABLES = {"A": _table(1), "B": _table(2)}


def expect(name: str, off: int, n: int) -> bytes:
    t = TABLES[name]
    out = bytearray()
    while n:
        k = min(n, L - off % L)
        out += t[off % L: off % L + k]
        off += k
        n -= k
    return bytes(out)


class Checker:
    def __init__(self, name: str, off: int = 0) -> None:
        self.name, self.off = name, off

    def take(self, data: bytes) -> None:
        want = expect(self.name, self.off, len(data))
        if data != want:
            k = next(i for i in range(len(data)) if data[i] != want[i])
            t = TABLES[self.name]
            at = t.find(data[k:k + 32])
            raise SystemExit(f"stream {self.name}: wrong byte at {self.off + k} "
                             f"(got {data[k]}, want {want[k]}; the bytes from there are "
                             f"the stream's at {at} mod {L}; {len(data)} bytes; "
                             f"last 32 at {t.find(data[-32:])})")
        self.off += len(data)


def send_stream(s: socket.socket, name: str, off: int, end: int) -> None:
    while off < end:
        n = s.send(expect(name, off, min(65536, end - off)))
        off += n


def read_stream(s: socket.socket, c: Checker, limit: int | None = None) -> None:
    while limit is None or c.off < limit:
        want = 65536 if limit is None else min(65536, limit - c.off)
        buf = bytearray(want)  # (zeroed: a count with bytes not written shows)
        n = s.recv_into(buf, want)
        if not n:
            return
        c.take(bytes(buf[:n]))


ASLEEP_A, ASLEEP_B, ASLEEP_S = 60_000, 100_000, 7.0
SLOW_S = 4.0


def server(mode: str, total_a: int, total_b: int) -> None:
    from onfabric import on_fabric
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    print(lst.getsockname()[1], flush=True)
    if mode == "slow":  # accepts on a line on stdin, then says so
        sys.stdin.readline()
    s, _ = lst.accept()
    if mode == "slow":
        print("accepted", flush=True)
    ca = Checker("A")
    b0 = 0
    if mode == "idle":
        time.sleep(1.0)  # the client execs meanwhile
    if mode == "slow":
        time.sleep(SLOW_S)  # the test asks us meanwhile (the watcher starts it)
        mode = "threads"
    if mode == "asleep":
        b0 = min(ASLEEP_B, total_b)
        send_stream(s, "B", 0, b0)  # (within the ring: it does not block)
        read_stream(s, ca, ASLEEP_A)
        acc = on_fabric()
        print("asleep", flush=True)
        time.sleep(ASLEEP_S)  # no thread in a call: the test asks the client meanwhile
        mode = "threads"
    if mode in ("threads", "idle"):
        acc = on_fabric() if not b0 else acc
        w = threading.Thread(target=lambda: (send_stream(s, "B", b0, total_b),
                                             s.shutdown(socket.SHUT_WR)))
        w.start()
        read_stream(s, ca)
        w.join()
    else:
        s.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        off_b, eof = 0, False
        acc = on_fabric()
        while not eof or off_b < total_b:
            for _key, ev in sel.select(timeout=30):
                if ev & selectors.EVENT_READ:
                    try:
                        b = s.recv(65536)
                    except BlockingIOError:
                        b = None
                    if b == b"":
                        eof = True
                    elif b:
                        ca.take(b)
                if ev & selectors.EVENT_WRITE and off_b < total_b:
                    try:
                        off_b += s.send(expect("B", off_b, min(65536, total_b - off_b)))
                    except BlockingIOError:
                        pass
                    if off_b == total_b:
                        s.shutdown(socket.SHUT_WR)
            if eof and off_b >= total_b:
                break
            want = (0 if eof else selectors.EVENT_READ) | (
                selectors.EVENT_WRITE if off_b < total_b else 0)
            sel.modify(s, want)
    if ca.off != total_a:
        raise SystemExit(f"stream A: {ca.off} of {total_a} bytes")
    print(f"ok server read {ca.off} accelerated {acc}", flush=True)


def client(port: int, total_a: int, total_b: int, pre_a: int, read_b: int, how: str) -> None:
    from onfabric import on_fabric
    s = socket.create_connection(("127.0.0.1", port))
    send_stream(s, "A", 0, pre_a)
    cb = Checker("B")
    read_stream(s, cb, read_b)
    time.sleep(0.3)  # bytes in flight both ways: the server's on our ring, ours on its
    acc = on_fabric()
    print(f"ok client accelerated {acc}", flush=True)
    fd = s.fileno()
    os.set_inheritable(fd, True)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if how.endswith("-lib"):  # the new program loads the library too
        env = dict(os.environ)
    args = [sys.executable, os.path.abspath(__file__), "child", str(fd), str(pre_a),
            str(total_a), str(cb.off), str(total_b), str(int(how.endswith("-seq")))]
    if how.startswith("static"):
        env = dict(os.environ)  # the library is there: the helper is what cannot load it
        args = ["/bin/busybox", "env", "-u", "LD_PRELOAD", *args]
    if how.startswith("vfork"):  # subprocess: vfork, then execve in the child
        os.set_inheritable(fd, False)
        p = subprocess.Popen(args, env=env, pass_fds=(fd,))
        s.detach()
        os.close(fd)  # (the child holds it now)
        raise SystemExit(p.wait())
    if how.startswith("fork"):
        # a forking server's pattern (inetd, socketserver.ForkingMixIn):
        # the fork child execs, the parent closes its copy right away
        # ("fork") or only after the exec ("fork-late": the connection is
        # held by both processes at the exec)
        pid = os.fork()
        if pid == 0:
            os.execve(args[0], args, env)
        time.sleep(0.5 if how.startswith("fork-late") else 0)
        s.close()
        raise SystemExit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    if how.startswith("highfd"):
        # dup2 onto an fd beyond the library's table (FASTIVC_FD_TABLE,
        # set by the test below HIGH_FD): the library never sees calls on
        # that fd, and the connection goes back to TCP at the dup2
        os.dup2(fd, HIGH_FD)
        s.detach()
        os.close(fd)
        go_on(socket.socket(fileno=HIGH_FD), pre_a, total_a, cb.off, total_b,
              int(how.endswith("-seq")))
        return
    if how.startswith("spawn"):  # posix_spawn, the fd given by a dup2 action
        os.set_inheritable(fd, False)
        pid = os.posix_spawn(args[0], args, env, file_actions=[(os.POSIX_SPAWN_DUP2, fd, fd)])
        s.detach()
        os.close(fd)
        raise SystemExit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    os.execve(args[0], args, env)


def client_op(port: int, total_a: int, total_b: int, pre_a: int, read_b: int) -> None:
    """As client, but stays: prints "ready" and waits for a line on stdin
    (meanwhile the test runs `fastivc downgrade`), then goes on in-process."""
    from onfabric import on_fabric
    s = socket.create_connection(("127.0.0.1", port))
    send_stream(s, "A", 0, pre_a)
    cb = Checker("B")
    read_stream(s, cb, read_b)
    time.sleep(0.3)
    print(f"ok client accelerated {on_fabric()}", flush=True)
    print("ready", flush=True)
    sys.stdin.readline()
    print(f"ok after accelerated {on_fabric()}", flush=True)
    go_on(s, pre_a, total_a, cb.off, total_b, 0)


def client_sleeper(port: int, total_a: int, total_b: int, pre_a: int) -> None:
    """A reader thread asleep in its TCP read from before the switch, which
    the main thread's first write makes; then "ready" (the test asks the
    server to go back meanwhile: we follow with the reader still asleep),
    and on a line on stdin the rest of A, while the reader takes all of B."""
    from onfabric import on_fabric
    s = socket.create_connection(("127.0.0.1", port))
    cb = Checker("B")
    r = threading.Thread(target=read_stream, args=(s, cb))
    r.start()
    time.sleep(0.3)  # (asleep in the pre-switch read now)
    print("reading", flush=True)
    sys.stdin.readline()  # the server accepted (adopted) just now
    send_stream(s, "A", 0, pre_a)  # the switch, by this thread, within the reader's nap
    time.sleep(0.3)
    print(f"ok client accelerated {on_fabric()}", flush=True)
    print("ready", flush=True)
    sys.stdin.readline()
    send_stream(s, "A", pre_a, total_a)
    s.shutdown(socket.SHUT_WR)
    r.join()
    if cb.off != total_b:
        raise SystemExit(f"stream B: {cb.off} of {total_b} bytes")
    print(f"ok child read {cb.off}", flush=True)


def child(fd: int, off_a: int, total_a: int, off_b: int, total_b: int, seq: int) -> None:
    go_on(socket.socket(fileno=fd), off_a, total_a, off_b, total_b, seq)


def go_on(s: socket.socket, off_a: int, total_a: int, off_b: int, total_b: int,
          seq: int) -> None:
    w = threading.Thread(target=lambda: (send_stream(s, "A", off_a, total_a),
                                         s.shutdown(socket.SHUT_WR)))
    w.start()
    if seq:  # all of A first: the peer may exit before B is read
        w.join()
    cb = Checker("B", off_b)
    read_stream(s, cb)
    w.join()
    if cb.off != total_b:
        raise SystemExit(f"stream B: {cb.off} of {total_b} bytes")
    print(f"ok child read {cb.off - off_b}", flush=True)


if __name__ == "__main__":
    role, rest = sys.argv[1], sys.argv[2:]
    if role == "server":
        server(rest[0], int(rest[1]), int(rest[2]))
    elif role == "client":
        client(int(rest[0]), int(rest[1]), int(rest[2]), int(rest[3]), int(rest[4]), rest[5])
    elif role == "client-sleeper":
        client_sleeper(*(int(x) for x in rest))
    elif role == "client-op":
        client_op(*(int(x) for x in rest))
    else:
        child(*(int(x) for x in rest))
