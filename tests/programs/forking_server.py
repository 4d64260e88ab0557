"""A forking TCP server in the style of PostgreSQL's postmaster: the parent
accepts, forks a worker per connection and closes its copy; the worker
answers and exits with os._exit() without closing the socket.  Prints
{"port": P} when listening and {"served": N} when done (stdin closes or
--count connections served); it stays alive until stdin closes, holding its
member of the fabric, so a test can see what its dead workers left."""

from __future__ import annotations

import json
import os
import socket
import sys


def main() -> None:
    host, count = sys.argv[1], int(sys.argv[2])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, 0))
    ls.listen(16)
    print(json.dumps({"port": ls.getsockname()[1]}), flush=True)
    for _ in range(count):
        c, _ = ls.accept()
        pid = os.fork()
        if pid == 0:
            ls.close()
            req = b""
            while not req.endswith(b"\n"):
                d = c.recv(4096)
                if not d:
                    break
                req += d
            c.sendall(b"worker " + str(os.getpid()).encode() + b" got " + req)
            os._exit(0)  # no close: the kernel closes it, fastivc is not told
        c.close()
        os.waitpid(pid, 0)
    print(json.dumps({"served": count}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
