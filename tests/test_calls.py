"""The calls that reach a socket past read/recv/write/send (issue 11), against
the kernel: tests/c/calls.c runs each scenario on plain TCP and under
fastivc, and every step must be equal.  recvmmsg (entries smaller than the
data, MSG_WAITFORONE, end of stream filling entries with 0, a zero timeout,
EAGAIN and EINVAL, a reset's error before the bytes still queued, and one
that came while the second entry waited kept for the next call),
sendmmsg, preadv2/pwritev2 (offset -1 as readv/writev, RWF_NOWAIT, ESPIPE
and EOPNOTSUPP), stdio on fdopen'd sockets (fileno, buffering, fgets,
ftell's ESPIPE, fclose), daemon() followed by an exec,
execl/execlp/execle/fexecve handing the connection to the new program, and
socket calls made raw through syscall() on one end while the other uses
libc, and the program's signal handlers as sigaction, signal, sysv_signal,
siginterrupt and sigset report and run them (fastivc's trampoline around
them does not show), with a blocking recv on the ring that one interrupts
and one with SA_RESTART lets go on.
Before, each went past the library (glibc's internal names, or no wrapper):
its bytes were read as doorbells, or lost."""

from __future__ import annotations

import json
import os
import subprocess

from fastivc.run import build_env


def _run(prog: str, env: dict) -> list[dict]:
    r = subprocess.run([prog], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(ln) for ln in r.stdout.splitlines()]


def test_calls_past_read_and_write_as_the_kernels(cbuild, shm_path):
    prog = str(cbuild("release") / "calls")
    plain_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    plain, fast = _run(prog, plain_env), _run(prog, build_env(os.environ, fabric=shm_path))
    assert [p["name"] for p in plain] == [f["name"] for f in fast]
    assert len(plain) == 18
    for p, f in zip(plain, fast, strict=True):
        assert p["accelerated"] == -1 and f["accelerated"] == 2, (p, f)  # both ends on a ring
        for k, (a, b) in enumerate(zip(p["steps"], f["steps"], strict=True)):
            assert a == b, f"{p['name']}, step {k}: kernel {a!r}, fastivc {b!r}"
