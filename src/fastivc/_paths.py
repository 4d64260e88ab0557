"""Where the built C parts live inside the installed package."""

from __future__ import annotations

import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def lib_path() -> Path:
    """Absolute path of the shipped ``libfastivc.so``.

    Raises FileNotFoundError naming the expected path when the package was
    not built (e.g. imported from a source tree).
    """
    p = _HERE / "libfastivc.so"
    if not p.is_file():
        raise FileNotFoundError(
            f"libfastivc.so not found at {p}: install the package (pip install .)")
    return p


def helper_path(name: str) -> Path:
    """Absolute path of a helper program shipped in ``fastivc/libexec``."""
    p = _HERE / "libexec" / name
    if not (p.is_file() and os.access(p, os.X_OK)):
        raise FileNotFoundError(
            f"helper {name} not found at {p}: install the package (pip install .)")
    return p


def default_fabric() -> str:
    """The fabric path a program would use: ``$FASTIVC_FABRIC`` or /dev/shm/fastivc."""
    return os.environ.get("FASTIVC_FABRIC") or "/dev/shm/fastivc"
