"""Median and spread of repeated measurements, and the machine/version record
every results file carries."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys


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


def machine_info() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"
