"""A plain socket program for the stat tests: it moves known byte counts and
then holds the connection open.

    xfer_peer.py server HOST PORT SEND RECV   (PORT 0: any; prints the port)
    xfer_peer.py client HOST PORT SEND RECV

The server accepts, sends SEND bytes, then reads RECV.  The client reads the
server's SEND bytes first and only then sends its own, so all of its bytes
go after the switch (the server has adopted before it writes).  Each prints
one JSON line when done ({"pid", "sent", "received"}; the server's first
line is {"port"}) and keeps the connection until its stdin closes.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def recv_exact(s: socket.socket, n: int) -> int:
    got = 0
    while got < n:
        d = s.recv(min(65536, n - got))
        if not d:
            break
        got += len(d)
    return got


def main() -> None:
    role, host, port, send, recv = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
        int(sys.argv[4]), int(sys.argv[5])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    if role == "server":
        ls = socket.socket(fam, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((host, port))
        ls.listen(1)
        print(json.dumps({"port": ls.getsockname()[1]}), flush=True)
        s, _ = ls.accept()
        s.sendall(b"s" * send)
        got = recv_exact(s, recv)
    else:
        s = socket.create_connection((host, port))
        got = recv_exact(s, recv)
        s.sendall(b"c" * send)
    print(json.dumps({"pid": os.getpid(), "sent": send, "received": got}), flush=True)
    sys.stdin.read()  # hold the connection until the test lets go
    s.close()


if __name__ == "__main__":
    main()
