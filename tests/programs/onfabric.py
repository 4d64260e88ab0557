"""For the test programs here (plain socket programs otherwise): how many
of this process's sockets are on a ring, from the library's own counter
(fastivc_fork_stats), or -1 when the program does not run under fastivc."""

from __future__ import annotations

import ctypes


def on_fabric() -> int:
    try:
        st = ctypes.CDLL(None).fastivc_fork_stats
    except AttributeError:
        return -1
    out = (ctypes.c_uint64 * 4)()
    st(out)
    return int(out[0])
