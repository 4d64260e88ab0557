"""The installed package: import, version, the shipped library and CLI."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import fastivc


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastivc", *args], capture_output=True,
                          text=True, timeout=120)


def test_version():
    r = _cli("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"fastivc {fastivc.__version__}"


def test_lib_prints_absolute_path_of_loadable_library():
    r = _cli("lib")
    assert r.returncode == 0
    path = r.stdout.strip()
    assert path.startswith("/") and path.endswith("libfastivc.so")
    lib = ctypes.CDLL(path)
    lib.fastivc_version.restype = ctypes.c_char_p
    assert lib.fastivc_version().decode() == fastivc.__version__


def test_library_exports_only_its_api():
    out = subprocess.run(["nm", "-D", "--defined-only", str(fastivc.lib_path())],
                         capture_output=True, text=True, check=True).stdout
    names = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert "fastivc_version" in names
    assert not [n for n in names if n.startswith("fivc_")], "internal symbols leaked"


def test_no_command_prints_help_and_exit_2():
    r = _cli()
    assert r.returncode == 2 and "usage" in r.stdout


def test_python_sources_are_ruff_clean():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests"],
                       cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_readme_results_script_renders_bench_json(tmp_path):
    """scripts/readme-results.py puts a results file's rows, command and
    machine between the README's markers and leaves the rest alone."""
    doc = {"baseline": "plain TCP", "placement": "two network namespaces",
           "date": "2026-11-25T00:00:00+00:00",
           "machine": {"cpu": "AMD EPYC", "cpus": 2, "memory_bytes": 24 << 30,
                       "os": "Debian GNU/Linux 12 (bookworm)", "kernel": "6.1"},
           "commands": {"invocation": "fastivc bench rr --repeats 3"},
           "rows": [{"scenario": "64 B request/response p50", "unit": "us",
                     "baseline": {"median": 11.2, "min": 11.1, "max": 11.4},
                     "fastivc": {"median": 0.221, "min": 0.22, "max": 0.23},
                     "ratio": 50.7, "ratio_range": [48.3, 51.8]}]}
    res = tmp_path / "rr.json"
    res.write_text(json.dumps(doc))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:begin -->\nold\n<!-- results:end -->\noutro\n")
    script = Path(__file__).parents[1] / "scripts" / "readme-results.py"
    r = subprocess.run([sys.executable, str(script), "--readme", str(readme), str(res)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "`fastivc bench rr --repeats 3` (two network namespaces)" in text
    assert "| 64 B request/response p50 | us | 11.2 (11.1–11.4) | 0.221 (0.22–0.23) | " \
           "50.7× (48.3–51.8) |" in text
    assert "AMD EPYC, 2 CPUs, 24 GiB" in text
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = subprocess.run([sys.executable, str(script), "--readme", str(readme), str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "bad.json" in r.stderr
