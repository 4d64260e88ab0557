"""Where the built C parts live inside the installed package."""

from __future__ import annotations

import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def preload_chain() -> list[Path]:
    """What `fastivc run` puts in LD_PRELOAD: the shipped ``libfastivc.so``,
    or, for development, the list in ``$FASTIVC_LIB`` (colon-separated, the
    library last: ``make sanitize`` names a sanitizer runtime, which must
    load first, and an ASan build of the library).  FileNotFoundError names
    a path that is not there."""
    alt = os.environ.get("FASTIVC_LIB")
    if not alt:
        return [lib_path()]
    chain = [Path(p) for p in alt.split(":") if p]
    for p in chain:
        if not p.is_file():
            raise FileNotFoundError(f"FASTIVC_LIB names {p}, which is not a file")
    if not chain:
        raise FileNotFoundError("FASTIVC_LIB is set but names no file")
    return chain


def lib_path() -> Path:
    """Absolute path of the shipped ``libfastivc.so`` (of the one
    ``$FASTIVC_LIB`` names last, when set: see preload_chain).

    Raises FileNotFoundError naming the expected path when the package was
    not built (e.g. imported from a source tree).
    """
    if os.environ.get("FASTIVC_LIB"):
        return preload_chain()[-1]
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
