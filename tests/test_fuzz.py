"""Fuzzing what the library reads from shared memory (tests/c/fuzz_fabric.c).

A short libFuzzer run (clang, ASan+UBSan) is part of the tests; a longer run
is documented in README.md ("Fuzzing").  The standalone random driver runs
under the gcc ASan+UBSan build as well."""

from __future__ import annotations

from conftest import run_c
from test_c_core import ASAN_ENV


def test_fuzz_random_inputs_under_asan(cbuild):
    r = run_c(cbuild("asan") / "fuzz_fabric", "20000", env=ASAN_ENV, timeout=600)
    assert "no fault" in r.stdout


def test_libfuzzer_short_run(cbuild, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    r = run_c(cbuild("libfuzzer") / "fuzz_fabric_libfuzzer", str(corpus),
              "-max_total_time=20", "-rss_limit_mb=1024", "-print_final_stats=1",
              timeout=300, check_rc=None)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Done" in r.stderr


def test_fuzz_two_processes_real_fabric_under_asan(cbuild):
    """A hostile peer process on a fabric file (tests/c/fuzz_peer.c):
    random scripts of patches, ring calls, offers and deaths, with real
    locks and reclaim; the honest side never faults or hangs."""
    r = run_c(cbuild("asan") / "fuzz_peer", "300", env=ASAN_ENV, timeout=600)
    assert "no fault" in r.stdout


def test_libfuzzer_two_processes_short_run(cbuild, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    r = run_c(cbuild("libfuzzer") / "fuzz_peer_libfuzzer", str(corpus),
              "-max_total_time=20", "-timeout=20", "-rss_limit_mb=1024",
              "-print_final_stats=1", timeout=300, check_rc=None)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Done" in r.stderr
