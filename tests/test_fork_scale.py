"""Cheap process events (issue 10): fork costs the process's connections,
not its fds, and a side that only one process holds again goes back to the
lock-free path.  tests/programs/fork_conns.py does the work in real
processes and checks every byte; here it runs plain and under fastivc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastivc.run import build_env

PROG = str(Path(__file__).with_name("programs") / "fork_conns.py")
COUNT = 300


def _run(mode: str, shm_path: str, fastivc: bool, count: int = COUNT) -> dict:
    env = build_env(os.environ, fabric=shm_path) if fastivc else {
        k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    r = subprocess.run([sys.executable, PROG, mode, str(count)], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, f"{mode} exited {r.returncode}:\n{r.stdout}\n{r.stderr[-3000:]}"
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["ok"]
    return out


@pytest.mark.parametrize("mode", ["child-exits", "child-closes", "both-use", "prefork"])
def test_fork_modes_are_exact_without_fastivc(shm_path, mode):
    assert _run(mode, shm_path, fastivc=False, count=20)["after"] is None


@pytest.mark.parametrize("mode", ["child-exits", "child-closes"])
def test_parent_goes_back_to_the_lock_free_path_once_the_child_is_gone(shm_path, mode):
    """Both ends of COUNT connections in one process: 2 * COUNT sides, each
    shared after the fork; once the child exited (or closed its copies) every
    one of them is lock-free again, both directions, and every byte exact."""
    out = _run(mode, shm_path, fastivc=True)
    assert out["before"]["held"] == 2 * COUNT
    assert out["before"]["shared"] == 2 * COUNT
    assert out["after"]["held"] == 2 * COUNT
    assert out["after"]["shared"] == 0, out
    assert out["after"]["unshared"] == 4 * COUNT, out


def test_child_and_parent_using_one_connection_stay_exact(shm_path):
    """The child reads what the parent writes on the same socket, at once,
    then they take turns: both see the sides shared (locks) meanwhile; after
    the child exits the parent is alone again."""
    out = _run("both-use", shm_path, fastivc=True)
    assert out["during"]["shared"] == 2 * COUNT
    assert out["child"]["shared"] == 2 * COUNT
    assert out["after"]["shared"] == 0, out
    assert out["after"]["held"] == 2 * COUNT


def test_forked_workers_accept_and_serve_accelerated(shm_path):
    out = _run("prefork", shm_path, fastivc=True)
    assert sum(w["served"] for w in out["workers"]) == COUNT
    assert out["before"]["held"] == COUNT  # every client connection on the fabric
    assert out["before"]["shared"] == 0  # made after the forks: never shared


def test_fork_cost_does_not_follow_the_fds(cbuild, shm_path):
    """forkbench: fork() latency with 10 and 3,000 idle accelerated
    connections, and with one of them on a high fd.  The walk over the fd
    table made 3,000 connections cost tens of milliseconds; now they cost
    their holder entries (~0.1-0.3 us each).  Loose bounds: the machine is
    shared."""
    prog = str(cbuild("release") / "forkbench")
    env = build_env(os.environ, fabric=shm_path)

    def bench(*args: str) -> dict:
        r = subprocess.run([prog, *args], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    few, many = bench("10", "0", "15"), bench("3000", "0", "15")
    high = bench("10", "15000", "15")
    assert many["held"] == 3000 and few["held"] == 10
    # min: the least disturbed fork
    assert many["fork_us_min"] < few["fork_us_min"] + 5000, (few, many)
    assert high["fork_us_min"] < few["fork_us_min"] + 2000, (few, high)
