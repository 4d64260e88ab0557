"""Urgent data (MSG_OOB) against the kernel (issue 11): the same scenarios
(tests/programs/oob.py) on plain TCP and under fastivc, every step's
result equal: send(MSG_OOB) of one byte and of several (the last is
urgent), recv(MSG_OOB) with and without MSG_PEEK (EINVAL without an
urgent byte, once it was read, once an in-band read passed it, and with
SO_OOBINLINE inherited from the listener), in-band reads stopping at the
mark and skipping the urgent byte (or reading it in order, inline), a
second mark replacing the first, SIOCATMARK, FIONREAD (the bytes before
the mark), and readiness: poll's POLLPRI and POLLIN, select's exceptional
set, epoll's EPOLLPRI, and a new mark while the reader sits at the old
urgent byte, which the kernel drops (tcp_check_urg).  On the ring
(before: EOPNOTSUPP) but for urgent data sent before the server accepted,
which leaves the connection on TCP (the kernel's own)."""

from __future__ import annotations

from stepwise import plain_and_fast


def test_urgent_data_as_the_kernels(shm_path):
    for p, f in plain_and_fast("oob.py", shm_path, 10):
        assert f["accelerated"] == (0 if p["name"] == "early" else 2), f
