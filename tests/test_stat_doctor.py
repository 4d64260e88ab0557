"""`fastivc stat` on a live accelerated connection, `stat --watch`, `fastivc
doctor` on good and broken setups, and `--help` of every command."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from netenv import Proc

import fastivc
from fastivc.cli import build_parser

XFER = str(Path(__file__).with_name("xfer_peer.py"))
C2S, S2C = 5000, 7000  # bytes the client sends, bytes the server sends


def _cli(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastivc", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)


@pytest.fixture
def conn(shm_path):
    """A client and a server under fastivc on loopback that moved C2S and S2C
    bytes and hold the connection open: (server, client, server port)."""
    srv = Proc([sys.executable, XFER, "server", "127.0.0.1", "0", str(S2C), str(C2S)], shm_path)
    cli = None
    try:
        port = srv.line()["port"]
        cli = Proc([sys.executable, XFER, "client", "127.0.0.1", str(port), str(C2S), str(S2C)],
                   shm_path)
        assert cli.line()["received"] == S2C
        assert srv.line()["received"] == C2S
        yield srv, cli, port
    finally:
        for p in (cli, srv):
            if p:
                p.kill()


def test_stat_json_shows_the_connection_its_bytes_and_pids(conn, shm_path):
    srv, cli, port = conn
    r = _cli("stat", "--fabric", shm_path, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"header", "members", "slots", "offers"} <= doc.keys()  # the raw snapshot, as before
    rows = [c for c in doc["connections"] if c["peer"] == f"127.0.0.1:{port}"]
    assert len(rows) == 1, doc["connections"]
    row = rows[0]
    assert row["state"] == "connected" and row["valid"]
    assert row["local"].startswith("127.0.0.1:")
    # Bytes the client sent before the switch went over TCP, not the ring.
    assert row["switch_bytes"] + row["bytes_client_to_server"] == C2S
    assert row["bytes_server_to_client"] == S2C
    # Both sides have read everything: nothing queued.
    assert row["queued_client_to_server"] == row["queued_server_to_client"] == 0
    assert row["fill_client_to_server"] == row["fill_server_to_client"] == 0
    # the buffer the ring writes to now: its inline one, or one it grew onto
    assert row["ring_size"] in (doc["header"]["small_ring"], *doc["header"]["pool_size"])
    assert row["client_mode"] in ("active", "sleeping")
    assert [h["pid"] for h in row["client_holders"]] == [cli.p.pid]
    assert [h["pid"] for h in row["server_holders"]] == [srv.p.pid]
    for h in row["client_holders"] + row["server_holders"]:
        assert h["alive"] is True and h["other_pidns"] is False and h["comm"].startswith("python")
    slot = next(s for s in doc["slots"] if s["index"] == row["slot"])
    assert slot["client_to_server"]["produced"] == row["bytes_client_to_server"]


def test_stat_table_has_one_row_per_connection(conn, shm_path):
    srv, cli, port = conn
    r = _cli("stat", "--fabric", shm_path, "--all")
    assert r.returncode == 0, r.stderr
    row = next(ln for ln in r.stdout.splitlines() if f"127.0.0.1:{port}" in ln)
    assert "connected" in row and "5000 B" in row and "7000 B" in row
    assert str(srv.p.pid) in row and str(cli.p.pid) in row
    assert "1 connection," in r.stdout and "members" in r.stdout


def test_stat_watch_exits_cleanly_on_sigint(conn, shm_path):
    p = subprocess.Popen([sys.executable, "-m", "fastivc", "stat", "--fabric", shm_path,
                          "--watch", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        first = p.stdout.readline()  # the first frame is out: the loop is running
        assert first.startswith(f"fabric {shm_path}"), first
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_stat_rejects_a_nonpositive_watch_interval(shm_path):
    r = _cli("stat", "--fabric", shm_path, "--watch", "0")
    assert r.returncode == 2 and "--watch" in r.stderr


def _doctor(fabric: str, *extra: str, **kw) -> tuple[int, dict]:
    r = _cli("doctor", "--fabric", fabric, "--json", *extra, **kw)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout)


def _by_name(doc: dict) -> dict:
    return {c["name"]: c for c in doc["checks"]}


def test_doctor_passes_before_the_fabric_exists(shm_path):
    rc, doc = _doctor(shm_path)
    checks = _by_name(doc)
    assert rc == 0 and doc["ok"], doc
    assert {"library", "preload", "fabric", "space", "filesystem", "netns",
            "ivshmem"} <= checks.keys()
    assert all(c["status"] in ("OK", "WARN", "SKIP") for c in doc["checks"]), doc
    for name in ("library", "preload", "fabric", "space", "filesystem"):
        assert checks[name]["status"] == "OK", checks[name]
    assert "does not exist yet" in checks["fabric"]["detail"]
    assert not os.path.exists(shm_path)  # doctor creates no fabric


def test_doctor_passes_on_a_live_fabric(conn, shm_path):
    rc, doc = _doctor(shm_path)
    fab = _by_name(doc)["fabric"]
    assert rc == 0 and fab["status"] == "OK", doc
    assert "valid fabric" in fab["detail"] and "mode 0600" in fab["detail"]
    r = _cli("doctor", "--fabric", shm_path)
    assert r.returncode == 0 and "all checks passed" in r.stdout, r.stdout


def test_doctor_fails_on_a_fabric_in_a_missing_directory(tmp_path):
    path = str(tmp_path / "no-such-dir" / "fabric")
    rc, doc = _doctor(path)
    fab = _by_name(doc)["fabric"]
    assert rc == 1 and not doc["ok"]
    assert fab["status"] == "FAIL" and path in fab["detail"] and "does not exist" in fab["detail"]
    assert "mkdir -p" in fab["fix"]
    r = _cli("doctor", "--fabric", path)
    assert r.returncode == 1
    fail = [ln for ln in r.stdout.splitlines() if ln.startswith("FAIL")]
    assert len(fail) == 1 and path in fail[0], r.stdout
    assert "fix: mkdir -p" in r.stdout


def test_doctor_fails_on_a_corrupt_fabric(tmp_path):
    bad = tmp_path / "fabric"
    bad.write_bytes(b"\0" * 8192)
    rc, doc = _doctor(str(bad))
    fab = _by_name(doc)["fabric"]
    assert rc == 1 and fab["status"] == "FAIL"
    assert str(bad) in fab["detail"] and "bad magic" in fab["detail"]
    assert f"rm {bad}" in fab["fix"]


@pytest.fixture
def as_daemon():
    """Run the CLI as user daemon: the system python with this package on its
    path (a checkout's venv interpreter may not be runnable by daemon)."""
    if os.geteuid() != 0:
        pytest.skip("changing user needs root")
    if not shutil.which("setpriv"):
        pytest.fail("setpriv is missing (util-linux)")
    site = str(Path(fastivc.__file__).resolve().parents[1])

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["setpriv", "--reuid", "daemon", "--regid", "daemon",
                               "--clear-groups", "/usr/bin/python3", "-m", "fastivc", *args],
                              env={**os.environ, "PYTHONPATH": site}, capture_output=True,
                              text=True, timeout=120, cwd="/")
    return run


def test_doctor_fails_where_the_user_cannot_create_the_fabric(as_daemon, shm_path):
    d = shm_path + ".dir"  # root's, 0755: daemon may look but not write
    os.mkdir(d, 0o755)
    try:
        path = f"{d}/fabric"
        r = as_daemon("doctor", "--fabric", path)
        assert r.returncode == 1, r.stdout + r.stderr
        fail = [ln for ln in r.stdout.splitlines() if ln.startswith("FAIL")]
        assert len(fail) == 1 and path in fail[0] and "Permission denied" in fail[0], r.stdout
        assert "owner root" in fail[0]
        assert f"fix: make {d} writable" in r.stdout
    finally:
        os.rmdir(d)


def test_doctor_fails_where_the_user_cannot_open_the_fabric(as_daemon, conn, shm_path):
    r = as_daemon("doctor", "--fabric", shm_path, "--json")
    assert r.returncode == 1, r.stderr
    fab = _by_name(json.loads(r.stdout))["fabric"]
    assert fab["status"] == "FAIL" and shm_path in fab["detail"]
    assert "O_RDWR" in fab["detail"] and "mode 0600, owner root" in fab["detail"]
    assert "chmod 0660" in fab["fix"]


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sp in action.choices.items():
                yield (*prefix, name), sp
                yield from _commands(sp, (*prefix, name))


COMMANDS = [c for c, _ in _commands(build_parser())]


def test_every_command_is_listed():
    assert {("lib",), ("run",), ("stat",), ("gc",), ("doctor",), ("bench",),
            ("bench", "ring"), ("bench", "all")} <= set(COMMANDS)


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_help_of_every_command(cmd):
    r = _cli(*cmd, "--help", timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: fastivc {' '.join(cmd)}"), r.stdout
    # a description after the usage, and help for every option
    sp = dict(_commands(build_parser()))[cmd]
    assert sp.description and sp.description.split()[0] in r.stdout
    for a in sp._actions:
        if isinstance(a, argparse._SubParsersAction):
            continue  # its choices are commands, checked on their own
        assert a.help, f"fastivc {' '.join(cmd)}: {a.option_strings or a.dest} has no help"


MANY = str(Path(__file__).parent / "programs" / "many_conns.py")


@pytest.fixture
def many(shm_path):
    """320 accelerated connections held by one process, on a fabric of 512
    slots of 4 KiB rings: (process, server port)."""
    from fastivc._paths import helper_path
    subprocess.run([str(helper_path("fastivc-mkfabric")), shm_path, "512", "4"], check=True,
                   capture_output=True)
    p = subprocess.Popen([sys.executable, "-m", "fastivc", "run", "--fabric", shm_path, "--",
                          sys.executable, MANY, "320"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(p.stdout.readline())
        yield p, info["port"]
    finally:
        p.kill()
        p.wait()


def test_stat_summary_top_and_sort_with_many_connections(many, shm_path):
    _, port = many
    r = _cli("stat", "--fabric", shm_path, "--top", "20", "--sort", "port")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0].startswith(f"fabric {shm_path}: 512 slots") and "320 connections" in out[0]
    assert any("accelerated 320" in ln and "connected 320" in ln for ln in out), out[:6]
    assert any(ln.strip().startswith("memory: file") and "resident" in ln for ln in out)
    rows = [ln for ln in out if f"127.0.0.1:{port}" in ln and "connected" in ln]
    assert len(rows) == 20
    local = [int(ln.split()[0].rsplit(":", 1)[1]) for ln in rows]
    assert local == sorted(local)
    assert out[-1].startswith("… 300 more")


def test_stat_json_summary_and_sorted_top(many, shm_path):
    _, port = many
    r = _cli("stat", "--fabric", shm_path, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"header", "members", "slots", "offers", "connections", "summary"} <= doc.keys()
    s = doc["summary"]
    assert len(doc["connections"]) == s["connections"] == 320  # --json: all by default
    assert s["accelerated"] == s["by_state"]["connected"] == 320 and s["pending"] == 0
    f = s["fabric"]
    assert f["slots"] == 512 and f["slots_used"] == 320 and f["ring_size"] == 4096
    assert f["resident_bytes"] >= 320 * 2 * 4096 and f["file_size"] >= f["layout_size"]
    assert s["members"]["alive"] >= 1 and s["largest_in_flight"] == []
    r = _cli("stat", "--fabric", shm_path, "--json", "--top", "10", "--sort", "bytes")
    conns = json.loads(r.stdout)["connections"]
    carried = [c["bytes_client_to_server"] + c["bytes_server_to_client"] for c in conns]
    assert len(conns) == 10 and carried == sorted(carried, reverse=True)
    assert carried[0] == 2 * 7 - sum(c["switch_bytes"] for c in conns[:1])


def test_stat_rejects_a_negative_top(shm_path):
    r = _cli("stat", "--fabric", shm_path, "--top", "-1")
    assert r.returncode == 2 and "--top" in r.stderr
