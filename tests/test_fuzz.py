"""Fuzzing what the library reads from shared memory: tests/c/fuzz_fabric.c
(an in-memory fabric, one process) and tests/c/fuzz_peer.c (a hostile peer
process on a real fabric file, with member locks and reclaim).

Each runs a random-input driver under the gcc ASan+UBSan build and 20 s of
libFuzzer (clang, ASan+UBSan); `make fuzz` is the long run (README,
Reliability)."""

from __future__ import annotations

import pytest
from conftest import run_c
from test_c_core import ASAN_ENV

# target -> random inputs of the standalone driver
TARGETS = {"fuzz_fabric": 20000, "fuzz_peer": 300}


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_random_inputs_under_asan(cbuild, target):
    r = run_c(cbuild("asan") / target, str(TARGETS[target]), env=ASAN_ENV, timeout=600)
    assert "no fault" in r.stdout


@pytest.mark.parametrize("target", TARGETS)
def test_libfuzzer_short_run(cbuild, tmp_path, target):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    r = run_c(cbuild("libfuzzer") / f"{target}_libfuzzer", str(corpus),
              "-max_total_time=20", "-timeout=20", "-rss_limit_mb=1024",
              "-print_final_stats=1", timeout=300, check_rc=None)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Done" in r.stderr
