"""`fastivc bench ring` and `fastivc stat` as a user runs them (short
settings: correctness of the output, not speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastivc", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_bench_ring_table_and_json(tmp_path):
    out = tmp_path / "ring.json"
    r = _cli("bench", "ring", "--repeats", "2", "--seconds", "0.05", "--sizes", "64", "65536",
             "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "64 B round trip p50, spinning" in r.stdout
    assert "stream, 64 KiB writes" in r.stdout
    doc = json.loads(out.read_text())
    rows = {row["scenario"]: row for row in doc["rows"]}
    assert len(rows) == 6
    for row in rows.values():
        assert len(row["baseline"]["values"]) == 2 and len(row["fastivc"]["values"]) == 2
        assert row["baseline"]["min"] <= row["baseline"]["median"] <= row["baseline"]["max"]
        assert row["ratio"] > 0
    assert doc["machine"]["cpus"] >= 1 and doc["commands"]
    assert all(r["transport"] == "ring" for r in doc["raw"]["rr-ring-spin"])


def test_bench_ring_rejects_bad_arguments():
    assert _cli("bench", "ring", "--repeats", "0").returncode == 2
    r = _cli("bench", "ring", "--ring-kib", "3")
    assert r.returncode == 2 and "power of two" in r.stderr


def test_stat_json_on_live_fabric(cbuild, shm_path):
    p = subprocess.Popen([str(cbuild("release") / "hold"), shm_path, "5000", "7000"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("ready")
        r = _cli("stat", "--fabric", shm_path, "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        conn = [s for s in doc["slots"] if s["state"] == "connected"]
        assert len(conn) == 1
        assert conn[0]["client_to_server"]["produced"] == 5100
        assert conn[0]["server_to_client"]["produced"] == 7000
        r = _cli("stat", "--fabric", shm_path)
        assert r.returncode == 0 and "connected" in r.stdout
    finally:
        p.kill()
        p.wait()


def test_stat_names_bad_fabric(tmp_path):
    bad = tmp_path / "nope"
    bad.write_bytes(b"\0" * 8192)
    r = _cli("stat", "--fabric", str(bad))
    assert r.returncode == 1 and str(bad) in r.stderr and "bad magic" in r.stderr


def test_stat_into_a_closed_pipe_is_quiet(cbuild, shm_path):
    p = subprocess.Popen([str(cbuild("release") / "hold"), shm_path, "5000", "7000"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("ready")
        rd, wr = os.pipe()
        os.close(rd)  # the reader is gone before stat writes a byte
        r = subprocess.run([sys.executable, "-m", "fastivc", "stat", "--fabric", shm_path],
                           stdout=wr, stderr=subprocess.PIPE, text=True, timeout=60)
        os.close(wr)
        assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
        assert r.returncode == 0
    finally:
        p.kill()
        p.wait()
