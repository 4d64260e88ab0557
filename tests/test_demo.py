"""`fastivc demo`: the table, the chart and the JSON agree and every row was
measured; it cleans up when interrupted; without root it runs on loopback and
says so.  Short runs (--quick): whether numbers were measured, not how fast."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from PIL import Image

from fastivc.demo import measure, report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TITLES = [sc.title for sc in measure.SCENARIOS]
# the demo's namespaces: FIVC_BENCH_NS, else next to this checkout's test namespaces
BENCH_NS = os.environ.get("FIVC_BENCH_NS") or os.environ.get("FIVC_TEST_NS", "fivc-test") + "d"
ENV = {**os.environ, "FIVC_BENCH_NS": BENCH_NS, "FIVC_TIERS_NS": "fivt-demo",
       "FIVC_TIERS_SUBNET": "205"}
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _demo(*args: str, env: dict | None = None, cwd: str | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastivc", "demo", *args], capture_output=True,
                          text=True, timeout=timeout, env=env or ENV, cwd=cwd)


def _table_speedups(stdout: str) -> dict[str, float]:
    """Each table line that names a scenario, and the speedup printed in it."""
    got = {}
    for line in stdout.splitlines():
        for title in TITLES:
            if title in line:
                m = re.search(r"([0-9.]+)×", line)
                assert m, f"no speedup in the row {line!r}"
                got[title] = float(m.group(1))
    return got


def _netns() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def _check_png(path, doc: dict) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert w >= 300 * len(TITLES) and h >= 300, im.size
        text = im.text
    assert json.loads(text["fastivc:series"]) == ["plain TCP", "fastivc"]
    assert json.loads(text["fastivc:panels"]) == TITLES
    for title in TITLES:
        assert title in text["Description"]
    assert doc["chart"]["series"] == ["plain TCP", "fastivc"]
    assert doc["chart"]["panels"] == [row["title"] for row in doc["rows"]] == TITLES


@root_only
def test_demo_quick_measures_every_row_in_namespaces(tmp_path):
    png, js = tmp_path / "demo.png", tmp_path / "demo.json"
    r = _demo("--quick", "--png", str(png), "--json", str(js))
    assert r.returncode == 0, r.stdout + r.stderr
    speedups = _table_speedups(r.stdout)
    assert list(speedups) == TITLES, r.stdout
    assert all(s > 0 for s in speedups.values()), r.stdout
    assert "missing" not in r.stdout
    assert f"chart written to {png}" in r.stdout
    doc = json.loads(js.read_text())
    assert doc["demo"] == "quick" and doc["settings"]["repeats"] == 1
    assert doc["placement"] == "two network namespaces joined by veth"
    assert doc["namespaces"] == [f"{BENCH_NS}-a", f"{BENCH_NS}-b"]
    assert [row["title"] for row in doc["rows"]] == TITLES
    for row in doc["rows"]:
        assert row["status"] == "measured", row
        assert row["plain"]["median"] > 0 and row["fastivc"]["median"] > 0
        assert row["speedup"] > 0
        # the table shows the JSON's number
        assert speedups[row["title"]] == pytest.approx(row["speedup"], abs=0.051)
    assert set(doc["benches"]) == {"tcp", "redis", "nginx", "tiers"}
    _check_png(png, doc)
    assert BENCH_NS not in _netns()


@root_only
def test_demo_interrupted_removes_namespaces_servers_and_fabrics(tmp_path):
    png = tmp_path / "demo.png"
    p = subprocess.Popen([sys.executable, "-m", "fastivc", "demo", "--quick", "--png", str(png)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        # progress goes to stderr a line per benchmark when it is not a terminal
        for line in p.stderr:
            if "redis" in line:
                break
        time.sleep(0.3)  # into a redis run: a server, a fabric and the namespaces exist
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, out + err
    assert "interrupted" in err
    assert not png.exists()
    assert BENCH_NS not in _netns()
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"fastivc-bench-{p.pid}-")]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        assert f"fastivc-bench-{p.pid}-".encode() not in env, f"process {pid} is left"


def test_demo_without_root_runs_on_loopback_and_says_so():
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed to drop root")
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    d = tempfile.mkdtemp(prefix="fastivc-demo-nobody-")
    try:
        os.chmod(d, 0o777)  # pytest's tmp_path is not reachable for nobody
        env = {**ENV, "HOME": d, "MPLCONFIGDIR": d}
        nobody = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
                  sys.executable]
        probe = subprocess.run([*nobody, "-c", "import fastivc.demo"], capture_output=True,
                               text=True, timeout=60, env=env, cwd=d)
        if probe.returncode != 0:
            pytest.skip(f"nobody cannot run this Python and package: {probe.stderr.strip()}")
        argv = [*nobody, "-m", "fastivc", "demo", "--quick", "--png", "c.png", "--json",
                "c.json"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=d)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "loopback (not root: no network namespaces)" in r.stdout
        assert "run as root for the two-container setup" in r.stdout
        with open(os.path.join(d, "c.json")) as f:
            doc = json.load(f)
        assert doc["namespaces"] == []
        # the fastivc-tcpbench rows need nothing but the package
        for row in doc["rows"][:2]:
            assert row["status"] == "measured" and row["speedup"] > 0, row
        with open(os.path.join(d, "c.png"), "rb") as f:
            assert f.read(8) == PNG_SIGNATURE
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _fake_doc(rows: list[dict]) -> dict:
    return {"demo": "quick", "placement": "loopback", "namespaces": [], "subnet": None,
            "settings": {"repeats": 2}, "rows": rows}


def test_missing_row_is_shown_with_its_reason_and_charted(monkeypatch, tmp_path):
    """A bench that fails (here: its program is not installed) gives missing
    rows with the reason; the other benches' rows are still measured."""
    def fails(s, lb, p):
        raise RuntimeError("redis-server not found: install the Debian package redis-server")

    def works(s, lb, p):
        p(1, 2, "tcp plain")
        return {"placement": "loopback", "rows": [
            {"scenario": "a", "baseline": {"median": 10.0, "min": 9.0, "max": 11.0},
             "fastivc": {"median": 20.0, "min": 19.0, "max": 21.0}, "ratio": 2.0,
             "ratio_range": [1.8, 2.2]}]}
    monkeypatch.setattr(measure, "GROUPS", (
        measure.Group("tcp", "fake tcp", 2, works, {"stream": "a", "rr_p50": "b"}),
        measure.Group("redis", "redis-server with redis-benchmark", 2, fails,
                      {"redis_get": "x", "redis_set": "y"})))
    monkeypatch.setattr(measure, "SCENARIOS", tuple(
        measure.BY_KEY[k] for k in ("rr_p50", "stream", "redis_get", "redis_set")))
    seen = []
    doc = measure.measure(measure.Settings("t", 2, 0.1, 0.1, 1, 1), loopback=True,
                          progress=lambda d, t, w: seen.append((d, t)))
    assert seen[-1] == (8, 8)
    st = {row["key"]: row["status"] for row in doc["rows"]}
    assert st == {"rr_p50": "missing", "stream": "measured", "redis_get": "missing",
                  "redis_set": "missing"}
    assert "no row 'b'" in doc["rows"][0]["reason"]
    assert "redis-server not found" in doc["rows"][2]["reason"]

    from rich.console import Console
    buf = io.StringIO()
    report.print_report(doc, Console(file=buf, width=160))
    out = buf.getvalue()
    assert "2.0×" in out and out.count("missing") >= 6
    assert "redis-server not found: install the Debian package redis-server" in out
    assert "loopback" in out
    chart = report.write_chart(doc, str(tmp_path / "m.png"))
    assert chart["panels"] == [row["title"] for row in doc["rows"]]
    with Image.open(tmp_path / "m.png") as im:
        assert "missing (redis-server with redis-benchmark: redis-server not found" in \
            im.text["Description"]


def test_demo_help_names_every_option():
    r = subprocess.run([sys.executable, "-m", "fastivc", "demo", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    for opt in ("--quick", "--png", "--json", "--loopback", "--quiet", "FIVC_BENCH_NS"):
        assert opt in r.stdout
    top = subprocess.run([sys.executable, "-m", "fastivc", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert "demo" in top.stdout


def test_demo_refuses_unwritable_outputs_before_measuring(tmp_path):
    r = _demo("--png", str(tmp_path / "nope" / "c.png"), timeout=60)
    assert r.returncode == 2 and "--png" in r.stderr and "does not exist" in r.stderr
    r = _demo("--json", str(tmp_path), timeout=60)
    assert r.returncode == 2 and "is a directory" in r.stderr
