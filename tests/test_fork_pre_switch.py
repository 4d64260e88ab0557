"""A fork before the upgrade settled, with both processes then using the
socket (issue 13): the counts of bytes that crossed TCP before the switch
must be the side's, not each process's.  Before they were, a server's
second holder waited on TCP for bytes that had come on the ring (a hang),
and a client's published the wrong N (the server read garbage).

Each scenario runs on plain TCP (the oracle) and under fastivc, the same
program (tests/programs/fork_pre_switch.py) with the same seed; the logs
prove the fork came before the switch on the side under test, and that the
ring carried the rest."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from netenv import server_then_client

PROG = str(Path(__file__).with_name("programs") / "fork_pre_switch.py")
TOTAL = 12 << 20  # more than TCP buffers on loopback: the switch comes midway


def _run(shm_path: str, accelerated: bool, mode: str, sdelay: float, prewrite: int,
         seed: int, log: Path) -> tuple[dict, dict]:
    reply, report = server_then_client(
        [sys.executable, PROG, "server", str(seed), str(TOTAL), mode, str(sdelay)],
        lambda port: [sys.executable, PROG, "client", str(port), str(seed), str(TOTAL),
                      str(prewrite)], shm_path, accelerated, str(log))
    return report, reply


@pytest.mark.parametrize("mode,sdelay,prewrite,seed", [
    ("alt", 0.0, 1000, 1),      # the server's reader hung here
    ("alt", 0.3, 1000, 2),      # the client forks while its offer is pending
    ("alt", 0.3, 0, 3),
    ("both", 0.3, 300_000, 4),  # the server's two holders read at once
    ("both", 0.0, 0, 5),
])
def test_fork_before_the_switch_both_processes_use_the_socket(shm_path, tmp_path, mode,
                                                              sdelay, prewrite, seed):
    plain = _run(shm_path, False, mode, sdelay, prewrite, seed, tmp_path / "plain.log")
    assert plain == ({"ok": True, "got": TOTAL, "why": None}, {"reply": "ok"}), plain
    log = tmp_path / "fastivc.log"
    accel = _run(shm_path, True, mode, sdelay, prewrite, seed, log)
    assert accel == plain, (accel, log.read_text()[-3000:])
    text = log.read_text()
    switched = [int(n) for n in re.findall(r"switched to the ring after (\d+) TCP bytes", text)]
    read = [int(n) for n in re.findall(r"read the client's (\d+) pre-switch bytes", text)]
    assert len(switched) == 1 and switched[0] < TOTAL, text  # the ring carried the rest
    assert read and set(read) == set(switched), text
    if sdelay:
        # the server accepted, and forked, with megabytes still queued on
        # TCP: both its holders read pre-switch bytes; and the client's N
        # counts bytes its holders wrote over TCP after their fork
        assert len(read) == 2, text
        assert switched[0] > prewrite, text
