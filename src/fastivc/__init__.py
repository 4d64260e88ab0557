"""fastivc: TCP between endpoints on one host, carried through shared memory.

The data path is C (``libfastivc.so``, shipped inside this package); Python
provides the CLI, the read-only inspection API and the benchmarks.
"""

from __future__ import annotations

from ._paths import helper_path, lib_path
from .fabric import Fabric, FabricError

__version__ = "0.1.0"

__all__ = ["Fabric", "FabricError", "__version__", "helper_path", "lib_path"]
