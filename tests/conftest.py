"""Shared fixtures: builds of the C tests in several variants, made once per
session under build/ctest-VARIANT with cmake (from the test extras)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# variant -> (cmake options, C compiler or None for the default)
VARIANTS = {
    "release": ([], None),
    "asan": (["-DFASTIVC_SANITIZE=address,undefined", "-DCMAKE_BUILD_TYPE=Debug"], None),
    "tsan": (["-DFASTIVC_SANITIZE=thread"], None),
    "break-sb": (["-DFASTIVC_EXTRA_DEFINES=FIVC_BREAK_SB"], None),
    "tsan-break-mp": (["-DFASTIVC_SANITIZE=thread", "-DFASTIVC_EXTRA_DEFINES=FIVC_BREAK_MP"],
                      None),
    "libfuzzer": (["-DFASTIVC_LIBFUZZER=ON"], "clang"),
}

_built: dict[str, Path] = {}


def build_variant(variant: str) -> Path:
    if variant in _built:
        return _built[variant]
    opts, cc = VARIANTS[variant]
    bdir = ROOT / "build" / f"ctest-{variant}"
    env = dict(os.environ)
    if cc:
        if not shutil.which(cc):
            pytest.fail(f"{cc} is required for the {variant} build (make test installs it)")
        env["CC"] = cc
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(bdir), *gen, "-DFASTIVC_TESTS=ON", *opts],
                   check=True, env=env, capture_output=True)
    r = subprocess.run(["cmake", "--build", str(bdir), "-j2"], env=env, capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.fail(f"building the {variant} C tests failed:\n{r.stdout[-4000:]}{r.stderr[-2000:]}")
    _built[variant] = bdir / "tests" / "c"
    return _built[variant]


@pytest.fixture(scope="session")
def cbuild():
    return build_variant


def run_c(path: Path, *args: str, timeout: float = 300, env: dict | None = None,
          check_rc: int | None = 0) -> subprocess.CompletedProcess:
    r = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **env} if env else None)
    if check_rc is not None and r.returncode != check_rc:
        raise AssertionError(
            f"{path.name} {' '.join(args)} exited {r.returncode}, expected {check_rc}\n"
            f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}")
    return r


@pytest.fixture
def shm_path(tmp_path_factory, request):
    """A fabric path on /dev/shm unique to the test, removed afterwards."""
    name = f"/dev/shm/fastivc-pytest-{os.getpid()}-{request.node.name[:40]}"
    name = "".join(c if c.isalnum() or c in "/-_." else "_" for c in name)
    yield name
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


@pytest.fixture(scope="session")
def netns():
    """The client and server namespaces of tests/netenv.py, up for the session."""
    from netenv import netns_down, netns_up
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    netns_up()
    yield
    netns_down()
