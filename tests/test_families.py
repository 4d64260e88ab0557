"""One small program per call family, run plain and under fastivc (event
loops on) and compared line by line: the same return values, the same
errno names, exit 0 (issue 4).  tests/c/procmodel.c covers the process
model (dup*, fork, threads, exec, close_range, posix_spawn/vfork, signals
during a blocking read); tests/c/nbconnect.c the non-blocking surface
(SOCK_NONBLOCK/O_NONBLOCK/FIONBIO, non-blocking connect, EAGAIN,
EPOLLRDHUP/EPOLLHUP, nested epoll).  Each mode is its own case, and under
fastivc its connections must have been upgraded."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from fastivc.run import build_env

TIMEOUT = 25  # a mode takes under 2 s plain; a hang is a failure, not a wait


def xfail(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


# mode -> (connections it makes, marks)
PROCMODEL = {
    "dup": (2, ()),
    "fork-parent-closes": (1, ()),
    "fork-child-closes": (1, ()),
    "fork-split": (1, ()),
    "fork-alt-write": (1, ()),
    "fork-alt-read": (1, ()),
    "threads-read": (1, ()),
    "threads-write": (1, ()),
    "exec": (1, ()),
    "close-range": (3, ()),
    "close-range-cloexec": (1, ()),
    "closefrom": (2, ()),
    "posix-spawn": (2, ()),
    "vfork": (2, ()),
    "signal-restart-read": (1, ()),
    "signal-restart-recv": (1, ()),
    "signal-eintr-read": (1, ()),
    "signal-eintr-recv": (1, ()),
}

NBCONNECT = {
    "flags": (2, ()),
    "connect": (3, ()),
    "refused": (1, ()),
    "fill": (1, ()),
    "rdhup": (1, ()),
    "peer-close": (1, ()),
    "nested": (1, ()),
    "shared-file": (3, ()),
}


def _params(table: dict) -> list:
    return [pytest.param(mode, n, ipv, marks=marks, id=f"{mode}-v{ipv}")
            for mode, (n, marks) in table.items() for ipv in ("4", "6")]


def _run(argv: list[str], env: dict) -> tuple[int, str, str]:
    """Run argv in its own session; on a hang kill the whole group (forked
    children included) and report what it printed so far."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, start_new_session=True)
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"{' '.join(argv)} hung for {TIMEOUT}s; it printed:\n{out}\n{err[-3000:]}")
    return p.returncode, out, err


def _compare(prog: str, mode: str, ipv: str, conns: int, shm_path: str, tmp_path) -> None:
    argv = [prog, ipv, mode]
    plain_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    rc, plain, err = _run(argv, plain_env)
    assert rc == 0, f"plain run exited {rc}:\n{plain}\n{err}"
    log = tmp_path / "log"
    env = build_env(os.environ, fabric=shm_path, log=f"debug:{log}", event_loops=True)
    rc, fast, err = _run(argv, env)
    assert fast.splitlines() == plain.splitlines(), f"stderr:\n{err[-3000:]}"
    assert rc == 0, f"fastivc run exited {rc}:\n{err[-3000:]}"
    text = log.read_text() if log.exists() else ""
    adopted, switched = text.count("adopted offer"), text.count("switched to the ring")
    assert (adopted, switched) == (conns, conns), text[-4000:]


@pytest.mark.parametrize("mode,conns,ipv", _params(PROCMODEL))
def test_process_model_same_with_and_without_fastivc(cbuild, shm_path, tmp_path, mode, conns,
                                                     ipv):
    _compare(str(cbuild("release") / "procmodel"), mode, ipv, conns, shm_path, tmp_path)


@pytest.mark.parametrize("mode,conns,ipv", _params(NBCONNECT))
def test_nonblocking_surface_same_with_and_without_fastivc(cbuild, shm_path, tmp_path, mode,
                                                           conns, ipv):
    _compare(str(cbuild("release") / "nbconnect"), mode, ipv, conns, shm_path, tmp_path)


@pytest.mark.parametrize("prog,table", [("procmodel", PROCMODEL), ("nbconnect", NBCONNECT)])
def test_every_mode_is_tested(cbuild, prog, table):
    """The programs' own lists of modes match the tables above."""
    out = subprocess.run([str(cbuild("release") / prog), "4", "list"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == list(table)
