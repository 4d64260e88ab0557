"""System calls made outside libc (issue 12): with FASTIVC_TRAP_SYSCALLS=1
(`fastivc run --trap-syscalls`) the library arms Syscall User Dispatch in
every thread (csrc/preload/sud.c), so a `syscall` instruction of the
program's own on an accelerated fd goes through the ring as libc's call
would.  Without it the same program reads doorbells and hangs: the control
case below shows that the test can fail."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastivc.fabric import Fabric
from fastivc.run import build_env

HERE = Path(__file__).parent
ECHO = str(HERE / "programs" / "raw_echo.py")


@pytest.fixture(scope="module")
def raw_client(tmp_path_factory):
    """tests/c/raw_client.c, built here."""
    d = tmp_path_factory.mktemp("raw")
    exe = d / "raw_client"
    src = HERE / "c" / "raw_client.c"
    subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-I", str(src.parent), "-o", str(exe),
                    str(src), "-lpthread", "-ldl"], check=True)
    return exe


def _echo(env: dict) -> tuple[subprocess.Popen, str]:
    srv = subprocess.Popen([sys.executable, ECHO], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    port = srv.stdout.readline().strip()
    assert port.isdigit(), srv.communicate(timeout=30)
    return srv, port


def _run(raw_client, shm_path, trap: bool, total: int, chunk: int, timeout: float):
    env = build_env(dict(os.environ), fabric=shm_path)
    srv, port = _echo(env)
    cmd = [str(raw_client), port, str(total), str(chunk)]
    if trap:  # the way a user turns it on
        cmd = [sys.executable, "-m", "fastivc", "run", "--trap-syscalls", "--fabric", shm_path,
               "--", *cmd]
    cenv = {**env, "FASTIVC_TRAP_SYSCALLS": "0"} if not trap else env
    try:
        cli = subprocess.run(cmd, env=cenv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        cli = None
    try:
        sout, serr = srv.communicate(timeout=60 if cli and cli.returncode == 0 else 2)
    except subprocess.TimeoutExpired:
        srv.kill()
        sout, serr = srv.communicate()
    return cli, sout, serr


@pytest.mark.parametrize("total,chunk", [(2_000_000, 65_536), (300_000, 1), (5_000_000, 3_000)],
                         ids=["64k", "1B", "3000B"])
def test_raw_calls_on_an_accelerated_fd_use_the_ring(raw_client, shm_path, total, chunk):
    if chunk == 1:
        total = 3_000  # one trap per call each way: a byte at a time is slow
    cli, sout, serr = _run(raw_client, shm_path, True, total, chunk, timeout=120)
    assert cli is not None and cli.returncode == 0, (cli and (cli.stdout, cli.stderr), serr)
    assert f"ok echoed {total} accelerated 1" in cli.stdout, cli.stdout
    assert f"ok server echoed {total} accelerated 1" in sout, (sout, serr)
    with Fabric(shm_path) as fab:
        assert not any(fab.downgrades().values()), fab.downgrades()


def test_without_the_trap_raw_calls_miss_the_ring(raw_client, shm_path):
    """The control: the same client without Syscall User Dispatch reads the
    doorbell socket under the ring and never gets its echo."""
    cli, sout, serr = _run(raw_client, shm_path, False, 200_000, 10_000, timeout=5)
    assert cli is None or cli.returncode != 0 or "ok echoed 200000" not in cli.stdout


def test_programs_see_their_own_sigsys_handler_and_masks(shm_path):
    """With the trap on: the program's SIGSYS handler is reported back as it
    set it and runs for a SIGSYS of its own; blocking every signal leaves
    SIGSYS unblocked (a dispatched call would kill a thread that blocks
    it); fork goes on as usual."""
    code = r"""
import os, signal
got = []
signal.signal(signal.SIGSYS, lambda s, f: got.append(s))
assert signal.getsignal(signal.SIGSYS) is not signal.SIG_DFL
os.kill(os.getpid(), signal.SIGSYS)
assert got == [signal.SIGSYS], got
signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals))
blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
print("sigsys blocked", signal.SIGSYS in blocked)
pid = os.fork()
if pid == 0:
    os._exit(3)
print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
signal.signal(signal.SIGSYS, signal.SIG_DFL)
print("ok")
"""
    env = {**build_env(dict(os.environ), fabric=shm_path), "FASTIVC_TRAP_SYSCALLS": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "sigsys blocked False" in r.stdout and "child 3" in r.stdout, r.stdout
    assert r.stdout.rstrip().endswith("ok"), r.stdout
