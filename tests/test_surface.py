"""The blocking I/O surface (tests/c/surface.c: read/write, readv/writev,
recv/recvfrom/recvmsg with PEEK/WAITALL/DONTWAIT, send/sendto/sendmsg with
NOSIGNAL, sendfile, the fortify variants, FIONREAD, FIONBIO, O_NONBLOCK,
SO_RCVTIMEO, SO_SNDTIMEO, TCP_NODELAY, SO_ERROR, poll, select, dup/dup2/F_DUPFD,
shutdown each way, EPIPE/SIGPIPE) gives the same results under fastivc as
plain, over IPv4 and IPv6, and under fastivc the connections were upgraded."""

from __future__ import annotations

import os
import subprocess

import pytest

from fastivc.run import build_env


@pytest.mark.parametrize("ipv", ["4", "6"])
def test_surface_same_with_and_without_fastivc(cbuild, shm_path, tmp_path, ipv):
    prog = str(cbuild("release") / "surface")
    plain_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    plain = subprocess.run([prog, ipv], capture_output=True, text=True, timeout=60, env=plain_env)
    assert plain.returncode == 0, plain.stderr
    log = tmp_path / "log"
    env = build_env(os.environ, fabric=shm_path, log=f"debug:{log}")
    fast = subprocess.run([prog, ipv], capture_output=True, text=True, timeout=60, env=env)
    assert fast.returncode == 0, fast.stderr
    assert fast.stdout.splitlines() == plain.stdout.splitlines()
    assert "sendfile" in plain.stdout and "EPIPE" in plain.stdout
    text = log.read_text()
    assert text.count("adopted offer") == 3 and text.count("switched to the ring") == 3, text
