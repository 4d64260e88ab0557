"""For the test programs here (plain socket programs otherwise): how many
of this process's sockets are on a ring, from the library's own counter
(fastivc_fork_stats), or -1 when the program does not run under fastivc."""

from __future__ import annotations

import ctypes
import socket


def on_fabric() -> int:
    try:
        st = ctypes.CDLL(None).fastivc_fork_stats
    except AttributeError:
        return -1
    out = (ctypes.c_uint64 * 4)()
    st(out)
    return int(out[0])


def switched_pair(client_setup=None, backlog: int = 1):
    """A loopback pair, each end's first bytes sent and read (the switch,
    both ways, under fastivc), TCP_NODELAY on: (listener, client, server).
    client_setup(sock) runs before connect."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(backlog)
    c = socket.socket()
    if client_setup:
        client_setup(c)
    c.connect(ls.getsockname())
    s, _ = ls.accept()
    for x in (c, s):
        x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(b"!")
    assert s.recv(1) == b"!"
    s.sendall(b"!")
    assert c.recv(1) == b"!"
    return ls, c, s
