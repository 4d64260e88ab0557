"""Hold many TCP connections on loopback, both ends in this process: a
listener, COUNT clients connected to it (bound to 127.0.0.K, K cycling
through SOURCES addresses, so that more than one address's worth of ports can
be used), every connection accepted, and 1 + i % 7 bytes sent each way on connection i (so that
connections differ in bytes carried).  Under
`fastivc run` each one is an accelerated channel.  Prints
{"port": P, "connections": COUNT} and holds them until stdin closes.

    python many_conns.py COUNT [SOURCES]
"""

from __future__ import annotations

import json
import resource
import socket
import sys


def main() -> None:
    count = int(sys.argv[1])
    sources = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * count + 64
    if soft < need:
        if hard < need:
            sys.exit(f"many_conns: {count} connections need {need} descriptors, "
                     f"RLIMIT_NOFILE hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4096)
    port = lst.getsockname()[1]
    held = []
    for i in range(count):
        c = socket.socket()
        c.bind((f"127.0.0.{1 + i % sources}", 0))
        c.connect(("127.0.0.1", port))
        s, _ = lst.accept()
        k = 1 + i % 7
        c.sendall(b"x" * k)
        assert s.recv(k, socket.MSG_WAITALL) == b"x" * k
        s.sendall(b"y" * k)
        assert c.recv(k, socket.MSG_WAITALL) == b"y" * k
        held += (c, s)
    print(json.dumps({"port": port, "connections": count}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
