"""`fastivc run -- CMD ARGS...`: exec CMD with libfastivc.so preloaded."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ._paths import preload_chain

LOG_LEVELS = ("off", "info", "debug")


def build_env(base: Mapping[str, str], fabric: str | None = None, spin_us: int | None = None,
              log: str | None = None, ring_kib: int | None = None,
              disable: bool = False, event_loops: bool | None = None,
              fabric_mode: str | None = None, fabric_group: str | None = None,
              trap_syscalls: bool = False) -> dict[str, str]:
    """The environment CMD runs with: our library appended to any existing
    LD_PRELOAD, and the FASTIVC_* variables the options set."""
    env = dict(base)
    *first, lib = map(str, preload_chain())
    prev = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split()
            if p != lib and p not in first]
    env["LD_PRELOAD"] = " ".join([*first, *prev, lib])
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
    if fabric_mode:
        env["FASTIVC_FABRIC_MODE"] = fabric_mode
    if fabric_group:
        env["FASTIVC_FABRIC_GROUP"] = fabric_group
    if trap_syscalls:
        env["FASTIVC_TRAP_SYSCALLS"] = "1"
    return env


def parse_fabric_mode(text: str) -> int:
    """The octal mode of --fabric-mode (e.g. "0660"); ValueError unless it is
    at most 0777, keeps the owner's read and write and gives others nothing."""
    if not text or any(c not in "01234567" for c in text):
        raise ValueError(f"--fabric-mode {text!r} is not an octal mode such as 0660")
    mode = int(text, 8)
    if mode > 0o777:
        raise ValueError(f"--fabric-mode {text}: only permission bits (at most 0777)")
    if mode & 0o600 != 0o600:
        raise ValueError(f"--fabric-mode {text}: the owner needs read and write (0600)")
    if mode & 0o007:
        raise ValueError(f"--fabric-mode {text}: others must get nothing (a fabric other "
                         "users can open is refused); share it with a group: 0660")
    return mode


def resolve_fabric_group(text: str) -> int:
    """The gid of --fabric-group, a group name or a number; ValueError if
    there is no such group."""
    import grp

    if text.isdigit():
        gid = int(text)
        if gid >= 2**32 - 1:
            raise ValueError(f"--fabric-group {text}: not a valid gid")
        return gid
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ValueError(f"--fabric-group {text}: no such group") from None


def exec_command(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Replace this process with argv (raises FileNotFoundError/PermissionError)."""
    os.execvpe(argv[0], list(argv), dict(env))
