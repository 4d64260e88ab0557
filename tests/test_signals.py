"""Signal-driven I/O against the kernel (issue 11): the same scenarios
(tests/programs/signals.py) on plain TCP and under fastivc, every step
equal.  SIGIO for a reader with O_ASYNC and an owner (fcntl or ioctl,
set after the switch or before connect) on each message and on the FIN,
none when nothing comes or once O_ASYNC is cleared; SIGURG at an owner
for urgent data; SIGIO at a writer that met EAGAIN once there is room;
5,000 messages each announced by its signal, and all of it (with
SO_OOBINLINE) in a program the socket was handed to by exec.  Every scenario on the
ring (before: no signal ever came for ring data).  And a handler against
a call that waits (tests/programs/interrupts.py): EINTR or the call going
on, as the kernel's, also when the signal lands in the library's spin."""

from __future__ import annotations

from stepwise import plain_and_fast


def test_signals_as_the_kernels(shm_path):
    for _p, f in plain_and_fast("signals.py", shm_path, 9, timeout=300):
        assert f["accelerated"] == 2, f


def test_a_handler_ends_a_wait_as_it_ends_the_kernels(shm_path):
    """tests/programs/interrupts.py: SIGALRM against a blocking recv,
    send, accept, poll, select and epoll_wait, with and without
    SA_RESTART and under SO_RCVTIMEO.  Under fastivc with a 400 ms spin,
    so that the signal lands in the library's own path before its sleep
    (regression, issue 11: the handler ran there and the recv then slept
    until data came; the kernel's gave EINTR)."""
    pairs = plain_and_fast("interrupts.py", shm_path, 12, timeout=300,
                           fast_env={"FASTIVC_SPIN_US": "400000"})
    for _p, f in pairs:
        assert f["accelerated"] == 2, f
