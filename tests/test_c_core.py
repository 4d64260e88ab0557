"""The C unit, hostile-input and multi-process tests, in the release build and
under ASan+UBSan (and the threaded ones under TSan)."""

from __future__ import annotations

import pytest
from conftest import run_c

ASAN_ENV = {"ASAN_OPTIONS": "abort_on_error=0:detect_leaks=1:exitcode=23",
            "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=24"}


@pytest.mark.parametrize("variant", ["release", "asan"])
@pytest.mark.parametrize("prog", ["test_ring", "test_hostile", "test_procs"])
def test_c_program(cbuild, variant, prog):
    r = run_c(cbuild(variant) / prog, env=ASAN_ENV if variant == "asan" else None)
    assert "ok " in r.stdout


@pytest.mark.parametrize("prog", ["test_ring", "test_hostile"])
def test_c_program_under_tsan(cbuild, prog):
    r = run_c(cbuild("tsan") / prog, env={"TSAN_OPTIONS": "halt_on_error=1:exitcode=66"})
    assert "ThreadSanitizer" not in r.stderr


def test_stress_1gib_each_way_default_ring(cbuild, shm_path):
    r = run_c(cbuild("release") / "stress", shm_path, "1024", timeout=600)
    assert "zero mismatches" in r.stdout
    assert r.stdout.count("mismatches 0") == 2


def test_stress_small_ring_many_wraps(cbuild, shm_path):
    r = run_c(cbuild("release") / "stress", shm_path, "512", "16", timeout=600)
    assert "zero mismatches" in r.stdout


def test_stress_rings_grow_and_shrink_back_with_bytes_in_flight(cbuild, shm_path):
    r = run_c(cbuild("release") / "stress", shm_path, "256", timeout=600,
              env={"FASTIVC_STRESS_SHRINK": "1"})
    assert "zero mismatches" in r.stdout
    assert r.stdout.count("mismatches 0") == 2
    assert int(r.stdout.split(" shrinks")[0].rsplit(" ", 1)[1]) > 0


def test_stress_under_asan(cbuild, shm_path):
    r = run_c(cbuild("asan") / "stress", shm_path, "64", "64", timeout=600, env=ASAN_ENV)
    assert "zero mismatches" in r.stdout
