"""The step-by-step programs in tests/programs (oob.py, signals.py): run one
on plain TCP and under fastivc, each printing a JSON line per scenario
({"name", "steps", "accelerated"}), and compare the two step by step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fastivc.run import build_env

PROGRAMS = Path(__file__).with_name("programs")


def _run(prog: str, env: dict, timeout: int) -> list[dict]:
    r = subprocess.run([sys.executable, str(PROGRAMS / prog)], env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(ln) for ln in r.stdout.splitlines()]


def plain_and_fast(prog: str, shm_path: str, scenarios: int, timeout: int = 120,
                   fast_env: dict | None = None) -> list[tuple[dict, dict]]:
    """The scenarios' records, (plain, fastivc) pairwise, once every step is
    equal; the caller checks each pair's "accelerated".  fast_env: more
    environment for the fastivc run (FASTIVC_SPIN_US)."""
    plain_env = dict(os.environ)
    plain_env.pop("LD_PRELOAD", None)
    plain = _run(prog, plain_env, timeout)
    fast = _run(prog, build_env(dict(os.environ, **(fast_env or {})), fabric=shm_path), timeout)
    assert [p["name"] for p in plain] == [f["name"] for f in fast]
    assert len(plain) == scenarios
    for p, f in zip(plain, fast, strict=True):
        assert p["accelerated"] == -1, "the plain run saw the library"
        for k, (a, b) in enumerate(zip(p["steps"], f["steps"], strict=True)):
            assert a == b, f"{p['name']}, step {k}: kernel {a}, fastivc {b}"
    return list(zip(plain, fast, strict=True))
