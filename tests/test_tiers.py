"""`fastivc bench tiers` on a short run (issue 14): wrk -> nginx (reverse
proxy) -> gunicorn (a Python app) -> redis and PostgreSQL, each tier in
its own network namespace, plain TCP and every tier under fastivc, with
nginx's upstream keepalive on and off.  Each run checks its own answers
(GET /item/<id> through every tier returns the item's row from PostgreSQL
and its key from redis; PostgreSQL's count of updates equals redis's) and
that every inter-tier connection was adopted onto a ring (each tier's
log: adoptions for every connection made to it, none fell back to TCP);
the JSON has the benchmarks' schema and the plot is drawn."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fastivc.bench import tiers


def test_bench_tiers_short_run_is_accelerated_end_to_end(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("run as root (network namespaces, PostgreSQL as postgres)")
    out, png = tmp_path / "tiers.json", tmp_path / "tiers.png"
    r = subprocess.run([sys.executable, "-m", "fastivc", "bench", "tiers", "--repeats", "1",
                        "--seconds", "1", "--connections", "10", "--keepalive", "both",
                        "--quiet", "--json", str(out), "--plot", str(png)],
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, FIVC_TIERS_NS="fivt-test", FIVC_TIERS_SUBNET="204"))
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "tiers" and doc["placement"].startswith("a network namespace")
    assert len({t["namespace"] for t in doc["tiers"].values()}) == len(tiers.TIERS)
    rows = doc["rows"]
    assert {(r["keepalive"], r["metric"]) for r in rows} == {
        (ka, m) for ka in (True, False) for m, *_ in tiers.METRICS}
    for row in rows:
        assert row["accelerated"] and row["connections"] == 10, row
        assert row["ratio"] > 0 and row["baseline"]["median"] > 0, row
        assert {"median", "min", "max", "values"} <= set(row["fastivc"])
        assert row["better"] == ("higher" if row["metric"] == "rps" else "lower")
    for mode in ("plain", "fastivc"):
        for run in doc["raw"][mode]:
            assert run["requests"] > 0 and run["updates"] >= 0 and run["cpu_s"] > 0, run
    for run in doc["raw"]["fastivc"]:
        assert run["accelerated"] and not any(run["plain_fallbacks"].values()), run
        # wrk's connections, nginx's upstreams (one per request without
        # keepalive), the app's redis and PostgreSQL connections: all adopted
        assert run["adopted"]["web"] >= 10 and run["adopted"]["cache"] >= 1, run
        assert run["adopted"]["db"] >= 1 and run["adopted"]["app"] >= 1, run
        if not run["keepalive"]:
            assert run["adopted"]["app"] >= run["requests"], run
    assert png.stat().st_size > 10_000
    assert "req/s" in r.stdout and "CPU per 1,000 requests" in r.stdout
