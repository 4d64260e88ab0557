"""A client that shut down writing before its switch can ring no doorbell
(its TCP has sent its FIN), so a server waiting for room in the ring it
writes must find that room without one.  Found by the downgrade soak
(issue 12): epoll slept for ever on EPOLLOUT, select returned 0 at once
(a HUP counted for a write set), and poll(POLLOUT) reported POLLIN for the
client's FIN.  The same run on plain TCP and under fastivc, compared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastivc.run import build_env

PROG = str(Path(__file__).with_name("programs") / "eof_before_switch.py")


def _run(env: dict, selector: str, server: tuple = ("server",),
         client: str = "client") -> tuple[str, str]:
    srv = subprocess.Popen([sys.executable, PROG, *server, *([selector] if selector else [])],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = srv.stdout.readline().strip()
    assert port.isdigit(), srv.communicate(timeout=30)
    cli = subprocess.run([sys.executable, PROG, client, port], env=env, capture_output=True,
                         text=True, timeout=60)
    sout, serr = srv.communicate(timeout=60)
    assert srv.returncode == 0 and cli.returncode == 0, (sout, serr[-2000:], cli.stdout,
                                                         cli.stderr[-2000:])
    return sout, cli.stdout


@pytest.mark.parametrize("selector", ["EpollSelector", "PollSelector", "SelectSelector"])
def test_server_writes_past_the_ring_to_a_client_that_shut_down_first(shm_path, selector):
    plain, _ = _run({k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}, selector)
    fast, fcli = _run(build_env(dict(os.environ), fabric=shm_path), selector)
    assert "accelerated -1" in plain, plain  # (no library there)
    assert "accelerated 1" in fast, fast  # on the ring, not TCP
    assert f"ok client read {4 << 20}" in fcli, fcli
    # a full buffer is not writable, and POLLOUT asks for nothing else
    assert "full-poll []" in plain and "full-poll []" in fast, (plain, fast)


def test_shutdown_before_the_switch_puts_no_byte_in_the_stream(shm_path):
    """The server adopted and waits in a read (its ring armed for the
    client's first ring write) when the client, still before its switch
    with its bytes all on TCP, shuts down writing.  The ring's shutdown
    rang for that arm: a doorbell byte on TCP after the client's bytes, N
    not yet published, so the server read it as a zero at the end of the
    stream (with the old library 10 runs of 10; found by the downgrade
    soak, issue 12: 1 run in about 60).
    Plain TCP and fastivc must read the same bytes, then EOF."""
    plain, pcli = _run({k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}, "",
                       ("server-reads",), "client-late-shut")
    fast, fcli = _run(build_env(dict(os.environ), fabric=shm_path), "",
                      ("server-reads",), "client-late-shut")
    assert "ok read 20000 accelerated -1" in plain, plain
    assert "ok read 20000 accelerated 1" in fast, fast  # its answer went on the ring
    assert pcli == fcli == "ok client got b'done'\n", (pcli, fcli)
