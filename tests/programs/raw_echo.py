"""An echo server for tests/test_raw_syscalls.py: prints its port, accepts
one connection, echoes it to its EOF, then prints "ok server echoed N
accelerated A" (A: connections on a ring, onfabric.py, after the first
bytes; -1 without fastivc)."""
from __future__ import annotations

import socket

from onfabric import on_fabric


def main() -> None:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    print(ls.getsockname()[1], flush=True)
    c, _ = ls.accept()
    n, acc = 0, None
    while b := c.recv(65536):
        if acc is None:
            acc = on_fabric()
        c.sendall(b)
        n += len(b)
    c.close()
    print(f"ok server echoed {n} accelerated {acc}", flush=True)


if __name__ == "__main__":
    main()
