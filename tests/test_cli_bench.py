"""`fastivc bench ring|rr|stream|redis|nginx` and `fastivc stat` as a user
runs them (short settings: correctness of the output, charts and results
files, not speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fastivc import fabric as F
from fastivc.bench import plot, servers, tcp
from fastivc.bench.stats import compare

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def _check_chart(png, doc: dict, expected_series: list[str]) -> None:
    """A real PNG a person can open, naming the plotted series in its
    metadata, and the same series listed in the results file."""
    from PIL import Image

    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 20_000
    with Image.open(png) as im:
        im.load()
        assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 400
        described = im.text["Description"]
    for name in expected_series:
        assert name in described, (name, described)
    assert doc["plot"]["file"] == str(png)
    assert doc["plot"]["series"] == described.removeprefix("series: ").split("; ")
    assert set(expected_series) <= set(doc["plot"]["series"])


def _check_record(doc: dict, argv: list[str]) -> None:
    """What every results file records: machine, versions, commands, date,
    fastivc settings."""
    m = doc["machine"]
    for key in ("hostname", "cpu", "cpus", "memory_bytes", "kernel", "debian_version", "os"):
        assert key in m, key
    assert m["cpus"] >= 1 and m["memory_bytes"] > 0
    v = doc["versions"]
    for key in ("fastivc", "layout", "python", "gcc", "glibc"):
        assert key in v, key
    c = doc["commands"]
    assert c["plain"] and c["fastivc"]
    assert c["invocation"] == " ".join(["fastivc", *argv])
    assert doc["date"][:2] == "20" and "T" in doc["date"]
    assert "fabric" in doc["fastivc_settings"] and "spin_us" in doc["fastivc_settings"]


def test_bench_ring_plot_and_record(tmp_path):
    """Throughput against size and the latency CDF of all three transports;
    no progress bar when stderr is not a terminal."""
    png, out = tmp_path / "ring.png", tmp_path / "ring.json"
    argv = ["bench", "ring", "--repeats", "1", "--seconds", "0.05", "--sizes", "64", "65536",
            "--plot", str(png), "--json", str(out)]
    r = _cli(*argv)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert f"chart written to {png}" in r.stdout
    doc = json.loads(out.read_text())
    _check_record(doc, argv)
    assert any("--transport tcp" in c for c in doc["commands"]["plain"])
    assert all("--transport ring" in c for c in doc["commands"]["fastivc"])
    _check_chart(png, doc, ["throughput vs write size: TCP loopback",
                            "throughput vs write size: fastivc",
                            "round-trip latency CDF: TCP loopback",
                            "round-trip latency CDF: fastivc, spinning",
                            "round-trip latency CDF: fastivc, sleeping"])


def test_bench_rr_latency_distribution_plot(tmp_path):
    """tcpbench's rr output keeps p50/p99 and adds percentiles and a
    quantile curve, which the chart draws as a CDF, plain against fastivc."""
    png, out = tmp_path / "rr.png", tmp_path / "rr.json"
    argv = ["bench", "rr", "--repeats", "1", "--seconds", "0.2", "--loopback", "--quiet",
            "--plot", str(png), "--json", str(out)]
    r = _cli(*argv)
    assert r.returncode == 0, r.stderr
    assert "64 B request/response p50" in r.stdout
    doc = json.loads(out.read_text())
    _check_record(doc, argv)
    assert any(c.startswith("fastivc run --fabric ") for c in doc["commands"]["fastivc"])
    for res in doc["raw"]["rr"]["plain"] + doc["raw"]["rr"]["fastivc"]:
        for key in ("samples", "p50_us", "p99_us", "rate", "min_us", "p10_us", "p25_us",
                    "p75_us", "p90_us", "p999_us", "p9999_us", "max_us"):
            assert key in res, key
        q = res["quantiles_us"]
        assert len(q) == len(res["quantile_levels"]) > 100
        assert q == sorted(q) and q[0] == res["min_us"] and q[-1] == res["max_us"]
        assert res["p10_us"] <= res["p50_us"] <= res["p99_us"] <= res["p999_us"]
    _check_chart(png, doc, ["round-trip latency CDF: plain TCP",
                            "round-trip latency CDF: fastivc"])


def test_bench_stream_size_sweep_plot(tmp_path):
    """`bench stream --sizes`: plain and fastivc at every size in one run, one
    row per size, drawn as throughput against write size."""
    png, out = tmp_path / "stream.png", tmp_path / "stream.json"
    argv = ["bench", "stream", "--repeats", "1", "--seconds", "0.1", "--loopback", "--quiet",
            "--sizes", "64", "16384", "1048576", "--plot", str(png), "--json", str(out)]
    r = _cli(*argv)
    assert r.returncode == 0, r.stderr
    for label in ("64 B", "16 KiB", "1 MiB"):
        assert f"stream, {label} writes" in r.stdout
    doc = json.loads(out.read_text())
    _check_record(doc, argv)
    assert [row["size"] for row in doc["rows"]] == [64, 16384, 1048576]
    assert doc["stream_sizes"] == [64, 16384, 1048576]
    for mode in ("plain", "fastivc"):
        assert sorted(res["size"] for res in doc["raw"]["stream"][mode]) == [64, 16384, 1048576]
    assert len(doc["commands"]["plain"]) == len(doc["commands"]["fastivc"]) == 6
    _check_chart(png, doc, ["throughput vs write size: plain TCP",
                            "throughput vs write size: fastivc"])


def test_plot_of_server_results_is_a_bar_chart(tmp_path):
    """redis/nginx results (no sizes, no latency curves) become plain-vs-fastivc
    bars, one panel per unit; needs no servers, only a results document."""
    def row(name: str, b: list[float], f: list[float]) -> dict:
        return compare(name, "req/s", "higher", b, f)
    doc = {"benchmark": "redis", "baseline": "plain TCP (loopback)", "fastivc": "fastivc run",
           "repeats": 2, "seconds_per_case": 1, "machine": {"cpus": 2}, "raw": {},
           "rows": [row("redis-benchmark GET", [1e5, 1.2e5], [2e5, 2.1e5]),
                    row("redis-benchmark SET", [1e5, 1.1e5], [2e5, 2.2e5])]}
    png = tmp_path / "bars.png"
    names = plot.render(doc, str(png))
    assert names == ["req/s bars: plain TCP", "req/s bars: fastivc"]
    doc["plot"] = {"file": str(png), "series": names}
    _check_chart(png, doc, names)


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


def _bench_servers_json(tmp_path, *args: str) -> dict:
    """`fastivc bench redis|nginx ...` briefly; its JSON, checked for what every
    server scenario must hold: positive numbers and accelerated fastivc runs."""
    out = tmp_path / "bench.json"
    png = tmp_path / "bench.png"
    argv = ["bench", *args, "--repeats", "1", "--seconds", "1", "--quiet", "--json", str(out),
            "--plot", str(png)]
    r = _cli(*argv)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    _check_record(doc, argv)
    _check_chart(png, doc, ["req/s bars: plain TCP", "req/s bars: fastivc"])
    assert doc["notes"] == [], doc["notes"]
    for row in doc["rows"]:
        assert row["accelerated"] is True and row["accelerated_runs"] == 1, row
        assert row["unit"] == "req/s"
        assert row["baseline"]["median"] > 0 and row["fastivc"]["median"] > 0
        assert row["ratio"] > 0
    counts = len({row.get("count") for row in doc["rows"]})  # one run per count and mode
    assert len(doc["raw"]["plain"]) == counts and len(doc["raw"]["fastivc"]) == counts
    for fast in doc["raw"]["fastivc"]:
        assert fast["accelerated"] and fast["plain_fallbacks"] == 0
        assert fast["server_adopted"] >= fast["connections_expected"]
    assert doc["commands"]["fastivc"] and doc["commands"]["plain"]
    return doc


def test_bench_redis_get_and_set_accelerated(tmp_path):
    doc = _bench_servers_json(tmp_path, "redis")
    assert [row["scenario"] for row in doc["rows"]] == ["redis-benchmark GET",
                                                          "redis-benchmark SET"]


def test_bench_nginx_with_two_workers_accelerated(tmp_path):
    doc = _bench_servers_json(tmp_path, "nginx", "--workers", "2")
    assert len(doc["rows"]) == 1 and "nginx (2 workers)" in doc["rows"][0]["scenario"]
    assert doc["workers"] == 2 and doc["page_bytes"] == 612


def test_bench_servers_reject_bad_arguments():
    assert _cli("bench", "redis", "--repeats", "0").returncode == 2
    r = _cli("bench", "nginx", "--workers", "0")
    assert r.returncode == 2 and "--workers" in r.stderr


def test_bench_names_a_missing_program_and_its_package(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no nginx, wrk, curl there
    r = subprocess.run([sys.executable, "-m", "fastivc", "bench", "nginx", "--repeats", "1"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1
    assert "nginx not found" in r.stderr and "nginx-light" in r.stderr, r.stderr


def test_unaccelerated_fastivc_run_is_not_reported_as_fastivc(tmp_path, monkeypatch):
    """A fastivc run whose logs show a plain fallback is flagged, and it and its
    paired plain run are left out of the row; none accelerated is an error."""
    slog, clog = tmp_path / "s.log", tmp_path / "c.log"
    slog.write_text("fd 7: adopted offer 1 (slot 0) for port 1 -> 2\n" * 10)
    clog.write_text("fd 5: switched to the ring after 0 TCP bytes\n" * 10)
    assert servers.acceleration(str(slog), str(clog), 10)["accelerated"]
    assert not servers.acceleration(str(slog), str(clog), 11)["accelerated"]
    clog.write_text("fd 5: peer is not accelerated: plain TCP\n")
    assert not servers.acceleration(str(slog), str(clog), 10)["accelerated"]

    fast_rps = iter([30.0, 99.0, 40.0])  # repeat 1's fastivc run was plain

    def once(r):
        v = next(fast_rps) if r.fast else 10.0 + len(calls)
        calls.append(v)
        res = {"rps": v}
        if r.fast:
            res.update(accelerated=v != 99.0, server_adopted=0, connections_expected=1,
                       plain_fallbacks=int(v == 99.0))
        return res, []
    calls: list[float] = []
    monkeypatch.setattr(servers, "place", lambda loopback: (None, tcp.Placement(
        "loopback", None, None, "127.0.0.1")))
    doc = servers._drive("t", once, [("rps", "t")], 3, 1.0, True, 20000, None)
    row = doc["rows"][0]
    assert row["accelerated"] is False and row["accelerated_runs"] == 2
    assert row["fastivc"]["values"] == [30.0, 40.0]
    # plain runs were 10, 13 (after repeat 1's fastivc run: alternating order), 14
    assert row["baseline"]["values"] == [10.0, 14.0]
    assert doc["notes"] and len(doc["raw"]["fastivc"]) == 3
    fast_rps = iter([99.0])
    with pytest.raises(RuntimeError, match="no fastivc run was accelerated"):
        servers._drive("t", once, [("rps", "t")], 1, 1.0, True, 20000, None)


def _row_counts(doc: dict) -> list:
    return [row.get("count") for row in doc["rows"]]


def test_bench_redis_several_client_counts_accelerated(tmp_path):
    """--clients 5 20: plain and fastivc at each count, one row per count and
    test, every fastivc connection accelerated as the fabric saw it, and the
    counts really reached the server (INFO stats)."""
    doc = _bench_servers_json(tmp_path, "redis", "--clients", "5", "20", "--loopback")
    assert _row_counts(doc) == [5, 5, 20, 20]
    assert [row["scenario"] for row in doc["rows"]][:2] == ["redis-benchmark GET, 5 clients",
                                                            "redis-benchmark SET, 5 clients"]
    for row in doc["rows"]:
        assert row["partial"] is False and row["connections"] == row["count"]
        assert row["accelerated_connections"] >= row["count"], row
    for mode in ("plain", "fastivc"):
        assert sorted(r["clients"] for r in doc["raw"][mode]) == [5, 20]
        for r in doc["raw"][mode]:
            assert r["connections_rejected"] == 0
            assert r["connections_received"] >= 2 * r["clients"]
    assert doc["clients"] == [5, 20]


def test_bench_nginx_several_connection_counts_accelerated(tmp_path):
    doc = _bench_servers_json(tmp_path, "nginx", "--connections", "5", "20", "--loopback")
    assert _row_counts(doc) == [5, 20]
    assert "wrk -c5," in doc["rows"][0]["scenario"] and "wrk -c20," in doc["rows"][1]["scenario"]
    for row in doc["rows"]:
        assert row["partial"] is False and row["accelerated_connections"] >= row["count"], row
    for mode in ("plain", "fastivc"):
        for r in doc["raw"][mode]:
            assert r["nginx_handled"] == r["nginx_accepts"] >= r["connections"]
            assert not any(r["wrk_errors"].values()), r["wrk_errors"]
    assert doc["connections"] == [5, 20]


def test_fabric_full_run_is_reported_as_partial(tmp_path):
    """A run whose only fallbacks are a full fabric counts, as partial."""
    slog, clog = tmp_path / "s.log", tmp_path / "c.log"
    slog.write_text("fd 7: adopted offer 1 (slot 0) for port 1 -> 2\n" * 4)
    clog.write_text("fd 5: no free channel slot: plain\n" * 6)
    acc = servers.acceleration(str(slog), str(clog), 10)
    assert not acc["accelerated"] and acc["partial"] and acc["fabric_full_fallbacks"] == 6
    clog.write_text("fd 5: no free channel slot: plain\nfd 6: peer is not accelerated: plain\n")
    assert not servers.acceleration(str(slog), str(clog), 10)["partial"]


def _scale(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict, list[str]]:
    out, png = tmp_path / "scale.json", tmp_path / "scale.png"
    argv = ["bench", "scale", *args, "--repeats", "1", "--seconds", "0.2", "--loopback",
            "--quiet", "--json", str(out), "--plot", str(png)]
    r = _cli(*argv)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    _check_record(doc, argv)
    _check_chart(png, doc, ["round trip vs idle connections: plain TCP p50",
                            "round trip vs idle connections: fastivc p99"])
    return r, doc, argv


def test_bench_scale_idle_connections_accelerated_with_memory(tmp_path):
    """scale --idle 0 50: p50 and p99 rows per N, every one of the N + 1
    connections accelerated (the fabric's count, taken while they were open),
    the flatness row, and shared memory per idle connection from st_blocks."""
    r, doc, _ = _scale(tmp_path, "--idle", "0", "50")
    rows = doc["rows"]
    assert [(row.get("idle"), row.get("percentile")) for row in rows] == [
        (0, "p50"), (0, "p99"), (50, "p50"), (50, "p99"), (50, None)]
    for row in rows[:4]:
        assert row["unit"] == "us" and row["better"] == "lower"
        assert row["baseline"]["median"] > 0 and row["fastivc"]["median"] > 0
        assert row["accelerated_connections"] == row["connections"] == row["idle"] + 1
        assert row["partial"] is False
    flat = rows[4]
    assert flat["flatness"] and flat["limit"] == 1.2
    assert flat["baseline"]["values"] == rows[0]["fastivc"]["values"]
    assert flat["fastivc"]["values"] == rows[2]["fastivc"]["values"]
    assert "flatness: fastivc p50 at 50 idle" in r.stdout
    for res in doc["raw"]["fastivc"]:
        assert res["accelerated_connections"] == res["idle"] + 1
        assert res["fabric"]["slots"] >= res["idle"] + 1
        assert res["resident_idle"] >= res["resident_busy"] >= res["resident_created"]
    for res in doc["raw"]["plain"]:
        assert "accelerated_connections" not in res and res["samples"] > 0
    (mem,) = doc["memory"]
    # the current layout reserves both rings of a slot for each connection
    ring = doc["fastivc_settings"]["ring_kib"] * 1024
    assert mem["idle"] == 50 and 0 < mem["per_connection"]["median"] <= 2 * ring + 8192
    assert "shared memory per idle connection, 50 idle:" in r.stdout


def test_bench_scale_marks_rows_partial_when_the_fabric_is_too_small(tmp_path):
    r, doc, _ = _scale(tmp_path, "--idle", "0", "20", "--slots", "10", "--ring-kib", "4")
    at20 = [row for row in doc["rows"] if row.get("idle") == 20 and "percentile" in row]
    assert at20 and all(row["partial"] and row["accelerated_connections"] == 10 for row in at20)
    assert "[partial: 10 of 21 accelerated]" in r.stdout
    assert any("only 10 of 21" in n for n in doc["notes"])


def test_bench_scale_rejects_bad_arguments():
    assert _cli("bench", "scale", "--idle", "-1").returncode == 2
    assert _cli("bench", "scale", "--slots", str(F.MAX_SLOTS + 1)).returncode == 2
