"""Signal-driven I/O against the kernel (issue 11): the same scenarios
(tests/programs/signals.py) on plain TCP and under fastivc, every step
equal.  SIGIO for a reader with O_ASYNC and an owner (fcntl or ioctl,
set after the switch or before connect) on each message and on the FIN,
none when nothing comes or once O_ASYNC is cleared; SIGURG at an owner
for urgent data; SIGIO at a writer that met EAGAIN once there is room;
and 5,000 messages each announced by its signal.  Every scenario on the
ring (before: no signal ever came for ring data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fastivc.run import build_env

PROG = str(Path(__file__).with_name("programs") / "signals.py")


def _run(env: dict) -> list[dict]:
    r = subprocess.run([sys.executable, PROG], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(ln) for ln in r.stdout.splitlines()]


def test_signals_as_the_kernels(shm_path):
    plain_env = dict(os.environ)
    plain_env.pop("LD_PRELOAD", None)
    plain, fast = _run(plain_env), _run(build_env(os.environ, fabric=shm_path))
    assert [p["name"] for p in plain] == [f["name"] for f in fast]
    assert len(plain) == 8
    for p, f in zip(plain, fast, strict=True):
        assert p["accelerated"] == -1
        assert f["accelerated"] == 2, f
        for k, (a, b) in enumerate(zip(p["steps"], f["steps"], strict=True)):
            assert a == b, f"{p['name']}, step {k}: kernel {a}, fastivc {b}"
