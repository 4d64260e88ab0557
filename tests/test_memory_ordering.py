"""The two memory-ordering patterns the channel relies on (atomics.h), each
with a test that passes with the barrier and fails without it.

- Store buffering (sleep/wake): litmus_sb on the channel's own halves; the
  FIVC_BREAK_SB build replaces the full fence by a compiler barrier and the
  same test must then observe lost wake-ups.
- Message passing (ring bytes before tail): litmus_mp under ThreadSanitizer;
  the FIVC_BREAK_MP build makes the tail relaxed and TSan must report the ring
  memcpy as a data race.
"""

from __future__ import annotations

import os
import re

import pytest
from conftest import run_c

ROUNDS = "2000000"
needs_2_cpus = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs")


def _forbidden(out: str) -> int:
    m = re.search(r"(\d+) forbidden outcomes", out)
    assert m, out
    return int(m.group(1))


@needs_2_cpus
def test_store_buffering_with_fences_never_loses_a_wakeup(cbuild):
    r = run_c(cbuild("release") / "litmus_sb", ROUNDS)
    assert _forbidden(r.stdout) == 0


@needs_2_cpus
def test_store_buffering_test_fails_without_the_fence(cbuild):
    # Reordering is probabilistic: allow a few attempts before calling the
    # test unable to see it.
    for _ in range(5):
        r = run_c(cbuild("break-sb") / "litmus_sb", ROUNDS, check_rc=None)
        if r.returncode == 1:
            assert _forbidden(r.stdout) > 0
            return
    pytest.fail("litmus_sb did not detect the missing fence in 5 x 2M rounds")


TSAN_ENV = {"TSAN_OPTIONS": "exitcode=66"}


def test_message_passing_is_race_free_under_tsan(cbuild):
    r = run_c(cbuild("tsan") / "litmus_mp", env=TSAN_ENV)
    assert "data race" not in r.stderr
    assert "bytes verified" in r.stdout


def test_message_passing_test_fails_without_release_acquire(cbuild):
    r = run_c(cbuild("tsan-break-mp") / "litmus_mp", env=TSAN_ENV, check_rc=None)
    assert r.returncode != 0
    assert "data race" in r.stderr
    assert "fivc_chan_read" in r.stderr and "fivc_chan_write" in r.stderr
