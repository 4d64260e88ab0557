"""QEMU guests for fastivc: a cached minimal guest (``build``), N guests on one
virtual network sharing one ivshmem fabric (``Network``, ``Guest``), and a check
of what works between them (``check.run``).  See issue 6."""

from .build import BuildError, GuestImage, build, default_cache
from .guest import Guest, Network, Result, VMError, qemu_available

__all__ = ["BuildError", "Guest", "GuestImage", "Network", "Result", "VMError", "build",
           "default_cache", "qemu_available"]
