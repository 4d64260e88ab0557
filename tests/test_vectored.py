"""Several buffers in one call, against the kernel (issue 11): MSG_PEEK into
two buffers gives contiguous bytes, and one sendmsg of two buffers reaches a
blocked reader in one piece.  The same program on plain TCP and under
fastivc; the logs prove the connection was on the ring."""

from __future__ import annotations

import sys
from pathlib import Path

from netenv import server_then_client

PROG = str(Path(__file__).with_name("programs") / "vectored.py")
ROUNDS = 300


def _run(shm_path: str, accelerated: bool, log: Path) -> tuple[dict, dict]:
    return server_then_client(
        [sys.executable, PROG, "server", str(ROUNDS)],
        lambda port: [sys.executable, PROG, "client", str(port), str(ROUNDS)],
        shm_path, accelerated, str(log))


def test_peek_into_two_buffers_and_one_sendmsg_in_one_piece(shm_path, tmp_path):
    plain = _run(shm_path, False, tmp_path / "plain.log")
    assert plain == ({"peek": [8, "0123", "4567"], "read": "0123456789abcdef",
                      "sizes": {"26": ROUNDS}}, {"served": ROUNDS}), plain
    log = tmp_path / "fastivc.log"
    assert _run(shm_path, True, log) == plain
    text = log.read_text()
    assert "adopted offer" in text and "switched to the ring" in text, text[-2000:]
