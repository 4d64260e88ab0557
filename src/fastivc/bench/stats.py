"""Median and spread of repeated measurements, and the machine/version record
every results file carries."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Mapping

DEFAULT_SPIN_US = 50  # the library's defaults (README "Configuration")
DEFAULT_RING_KIB = 1024


def summarize(values: list[float]) -> dict:
    """Median, min, max and the relative spread ((max - min) / median)."""
    med = statistics.median(values)
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "spread": (max(values) - min(values)) / med if med else 0.0,
        "values": values,
    }


def compare(scenario: str, unit: str, better: str, baseline: list[float],
            fastivc: list[float]) -> dict:
    """One results row: both summaries, the ratio of the medians (> 1 means
    fastivc is better) and the range of the per-repeat ratios."""
    def ratio(b: float, f: float) -> float:
        if min(b, f) <= 0:
            return 0.0
        return b / f if better == "lower" else f / b
    bs, fs = summarize(baseline), summarize(fastivc)
    per = [ratio(b, f) for b, f in zip(baseline, fastivc, strict=True)]
    return {"scenario": scenario, "unit": unit, "better": better, "baseline": bs,
            "fastivc": fs, "ratio": ratio(bs["median"], fs["median"]),
            "ratio_range": [min(per), max(per)]}


def size_label(n: int) -> str:
    for unit, f in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= f and n % f == 0:
            return f"{n // f} {unit}"
    return f"{n} B"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def machine_info() -> dict:
    """Where the numbers come from: host, CPU, memory, kernel, distribution."""
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), "")
    mem_kib = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                    if line.startswith("MemTotal:")), 0)
    os_release = dict(line.split("=", 1) for line in _read("/etc/os-release").splitlines()
                      if "=" in line)
    u = platform.uname()
    return {
        "hostname": u.node,
        "kernel": u.release,
        "kernel_version": u.version,
        "arch": u.machine,
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_bytes": mem_kib * 1024,
        "os": os_release.get("PRETTY_NAME", "").strip('"'),
        "debian_version": _read("/etc/debian_version").strip(),
        "python": sys.version.split()[0],
    }


def versions() -> dict:
    """fastivc's version and shared-memory layout version, Python and the C
    toolchain (the programs a scenario runs add theirs, see tool_version)."""
    from .. import __version__
    from ..fabric import LAYOUT_VERSION

    glibc = os.confstr("CS_GNU_LIBC_VERSION") if "CS_GNU_LIBC_VERSION" in os.confstr_names \
        else ""
    return {
        "fastivc": __version__,
        "layout": LAYOUT_VERSION,
        "python": sys.version.split()[0],
        "gcc": tool_version(["gcc", "-dumpfullversion"]),
        "glibc": (glibc or "unknown").replace("glibc ", ""),
    }


def fastivc_settings(env: Mapping[str, str], fabric: str, **extra: object) -> dict:
    """The fabric and spin settings the accelerated programs ran with: what
    their FASTIVC_* variables say, else the library's defaults."""
    return {
        "fabric": fabric,
        "spin_us": int(env.get("FASTIVC_SPIN_US", DEFAULT_SPIN_US)),
        "spin_adaptive": True,
        "ring_kib": int(env.get("FASTIVC_RING_KIB", DEFAULT_RING_KIB)),
        "event_loops": env.get("FASTIVC_NONBLOCK", "1") != "0",
        "environment": {k: v for k, v in sorted(env.items()) if k.startswith("FASTIVC_")},
        **extra,
    }


def now() -> str:
    """The local date and time with its UTC offset, to the second."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"
