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

import json
import os
import subprocess
import sys
from pathlib import Path

from fastivc.run import build_env

PROG = str(Path(__file__).with_name("programs") / "oob.py")


def _run(env: dict) -> list[dict]:
    r = subprocess.run([sys.executable, PROG], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(ln) for ln in r.stdout.splitlines()]


def test_urgent_data_as_the_kernels(shm_path):
    plain_env = dict(os.environ)
    plain_env.pop("LD_PRELOAD", None)
    plain, fast = _run(plain_env), _run(build_env(os.environ, fabric=shm_path))
    assert [p["name"] for p in plain] == [f["name"] for f in fast]
    assert len(plain) == 10
    for p, f in zip(plain, fast, strict=True):
        assert f["accelerated"] == (0 if p["name"] == "early" else 2), f
        for k, (a, b) in enumerate(zip(p["steps"], f["steps"], strict=True)):
            assert a == b, f"{p['name']}, step {k}: kernel {a}, fastivc {b}"
