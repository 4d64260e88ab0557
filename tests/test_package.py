"""The installed package: import, version, the shipped library and CLI."""

from __future__ import annotations

import ctypes
import subprocess
import sys

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
