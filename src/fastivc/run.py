"""`fastivc run -- CMD ARGS...`: exec CMD with libfastivc.so preloaded."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ._paths import lib_path

LOG_LEVELS = ("off", "info", "debug")


def build_env(base: Mapping[str, str], fabric: str | None = None, spin_us: int | None = None,
              log: str | None = None, ring_kib: int | None = None,
              disable: bool = False, event_loops: bool | None = None) -> dict[str, str]:
    """The environment CMD runs with: our library appended to any existing
    LD_PRELOAD, and the FASTIVC_* variables the options set."""
    env = dict(base)
    lib = str(lib_path())
    prev = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split() if p != lib]
    env["LD_PRELOAD"] = " ".join([*prev, lib])
    if fabric:
        env["FASTIVC_FABRIC"] = os.path.abspath(fabric)
    if spin_us is not None:
        env["FASTIVC_SPIN_US"] = str(spin_us)
    if log:
        env["FASTIVC_LOG"] = log
    if ring_kib is not None:
        env["FASTIVC_RING_KIB"] = str(ring_kib)
    if disable:
        env["FASTIVC_DISABLE"] = "1"
    if event_loops is not None:  # None: the library's default (on)
        env["FASTIVC_NONBLOCK"] = "1" if event_loops else "0"
    return env


def exec_command(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Replace this process with argv (raises FileNotFoundError/PermissionError)."""
    os.execvpe(argv[0], list(argv), dict(env))
