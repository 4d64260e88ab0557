"""Several buffers in one call (tests/test_vectored.py): a plain socket
program, run on plain TCP and under fastivc, whose outputs must match.

    vectored.py server ROUNDS      prints {"port": P}, then {"served": N}
    vectored.py client PORT ROUNDS prints what it saw

- peek: the server sends 16 bytes; the client peeks them into two 4-byte
  buffers (recvmsg_into with MSG_PEEK), then reads all 16.
- together: ROUNDS times the client sends "g" and blocks in recv(4096);
  the server, after a random pause of up to 300 us, sends one 26-byte
  message as two buffers (sendmsg), which the kernel hands to the reader
  in one piece.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import time

MSG = (b"Mic", b"hael: 23 bytes in two!!")


def server(rounds: int) -> None:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    print(json.dumps({"port": ls.getsockname()[1]}), flush=True)
    s, _ = ls.accept()
    s.sendall(b"0123456789abcdef")
    rnd = random.Random(7)
    n = 0
    while True:
        g = s.recv(1)
        if g != b"g":
            break
        t = time.monotonic() + rnd.uniform(0, 0.0003)
        while time.monotonic() < t:
            pass
        s.sendmsg(list(MSG))
        n += 1
    s.close()
    print(json.dumps({"served": n}), flush=True)


def client(port: int, rounds: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    time.sleep(0.2)  # all 16 bytes are there
    a, b = bytearray(4), bytearray(4)
    n, _, flags, _ = s.recvmsg_into([a, b], 0, socket.MSG_PEEK)
    got = s.recv(16, socket.MSG_WAITALL)
    sizes: dict[int, int] = {}
    for _ in range(rounds):
        s.sendall(b"g")
        m = s.recv(4096)
        while len(m) < 26:  # (the rest, so the next round starts clean)
            more = s.recv(4096)
            if not more:
                break
            sizes[-len(m)] = sizes.get(-len(m), 0) + 1
            m += more
        sizes[len(m)] = sizes.get(len(m), 0) + 1
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    print(json.dumps({"peek": [n, a.decode(), b.decode()], "read": got.decode(),
                      "sizes": {str(k): v for k, v in sorted(sizes.items())}}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(int(sys.argv[2]))
    else:
        client(int(sys.argv[2]), int(sys.argv[3]))
