"""An accelerated connection held by two processes (fork) when an operator
asks one of them to go back to TCP (tests/test_downgrade.py).

server PORTFILE: an echo server (one connection; a thread per direction
would be the same: it echoes what it reads until EOF).
client PORT: connects, checks an echo on the ring, forks a child that holds
its copy until a line on the parent's stdin, prints "ready"; on that line
the child exits, and the parent goes on: more echoes (now over TCP), every
byte checked, then "ok N" with N the connections this process still has
on the fabric."""
from __future__ import annotations

import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fork_conns import recv_exact  # noqa: E402


def pattern(i: int, n: int) -> bytes:
    return bytes((i * 131 + k * 7) & 0xFF for k in range(n))


def server() -> None:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    print(lst.getsockname()[1], flush=True)
    s, _ = lst.accept()
    while b := s.recv(65536):
        s.sendall(b)
    print("server done", flush=True)


def client(port: int) -> None:
    from onfabric import on_fabric
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(pattern(0, 1000))
    if recv_exact(s, 1000) != pattern(0, 1000):
        raise SystemExit("echo 0 differs")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # holds its copy of s until the parent says
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    print(f"ready {on_fabric()}", flush=True)
    sys.stdin.readline()  # (the operator asked meanwhile)
    os.close(w)
    os.waitpid(pid, 0)
    for i in range(1, 50):
        n = 100 + i * 997
        s.sendall(pattern(i, n))
        if recv_exact(s, n) != pattern(i, n):
            raise SystemExit(f"echo {i} differs")
    print(f"ok {on_fabric()}", flush=True)
    s.shutdown(socket.SHUT_WR)
    if s.recv(1) != b"":
        raise SystemExit("bytes after the last echo")


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server()
    else:
        client(int(sys.argv[2]))
