"""Event loops (experimental, `fastivc run --event-loops`): epoll-driven,
non-blocking programs, each end under fastivc, client and server in two
network namespaces: Python asyncio streams, redis-server with
redis-benchmark and redis-cli, nginx with curl and wrk, node http, memcached,
PostgreSQL with pgbench and psql.  Each is shown to be accelerated."""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from netenv import ADDR, HOSTS, NS_CLIENT, NS_SERVER, Proc
from test_upgrade import _ports

from fastivc.bench.servers import LOG_PLAIN
from fastivc.netns import in_ns
from fastivc.run import build_env

pytestmark = pytest.mark.usefixtures("netns")
SERVER = ADDR[4][1]

ASYNCIO_SERVER = r"""
import asyncio, json, sys
async def handle(r, w):
    while d := await r.read(65536):
        w.write(d)
        await w.drain()
    w.close()
async def main():
    srv = await asyncio.start_server(handle, sys.argv[1], int(sys.argv[2]))
    print(json.dumps({"listening": 1}), flush=True)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
"""

ASYNCIO_CLIENT = r"""
import asyncio, json, os, sys
async def main():
    r, w = await asyncio.open_connection(sys.argv[1], int(sys.argv[2]))
    data = os.urandom(4_000_000)
    async def send():
        for i in range(0, len(data), 100_000):
            w.write(data[i:i + 100_000])
            await w.drain()
        w.write_eof()
    t = asyncio.create_task(send())
    got = bytearray()
    while d := await r.read(1 << 20):
        got += d
    await t
    w.close()
    print(json.dumps({"intact": bytes(got) == data, "received": len(got)}), flush=True)
asyncio.run(main())
"""


def test_asyncio_streams(shm_path, tmp_path):
    port = next(_ports)
    slog, clog = tmp_path / "s.log", tmp_path / "c.log"
    srv = Proc([sys.executable, "-c", ASYNCIO_SERVER, SERVER, str(port)], shm_path, True,
               NS_SERVER, {"FASTIVC_LOG": f"debug:{slog}"}, event_loops=True)
    try:
        srv.line()
        cli = Proc([sys.executable, "-c", ASYNCIO_CLIENT, SERVER, str(port)], shm_path, True,
                   NS_CLIENT, {"FASTIVC_LOG": f"debug:{clog}"}, event_loops=True)
        assert cli.line(timeout=60) == {"intact": True, "received": 4_000_000}
        cli.finish()
    finally:
        srv.kill()
    assert "adopted offer" in slog.read_text()
    assert "switched to the ring" in clog.read_text()


REDIS_STATE = [("dbsize",), ("get", "counter:__rand_int__"), ("llen", "mylist"),
               ("scard", "myset:__rand_int__"), ("hlen", "myhash"),
               ("zcard", "myzset:__rand_int__"), ("get", "k")]


def _redis_round(shm_path, tmp_path, fast: bool) -> tuple[list[str], list[str], str]:
    """redis-server and redis-benchmark's default test set (-n 2000), both
    plain or both under fastivc; the tests run and the data they leave."""
    port = next(_ports)
    slog = tmp_path / f"s{int(fast)}.log"
    srv = Proc(["redis-server", "--port", str(port), "--bind", SERVER, "--save", "",
                "--appendonly", "no", "--protected-mode", "no"], shm_path, fast, NS_SERVER,
               {"FASTIVC_LOG": f"debug:{slog}"}, event_loops=True)
    env = (build_env(os.environ, fabric=shm_path, event_loops=True) if fast else
           {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"})

    def client(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(in_ns(NS_CLIENT, list(argv)), env=env, capture_output=True,
                              text=True, timeout=120)
    try:
        for _ in range(50):
            if client("redis-cli", "-h", SERVER, "-p", str(port), "ping").stdout.strip() == "PONG":
                break
            time.sleep(0.1)
        assert client("redis-cli", "-h", SERVER, "-p", str(port), "set", "k",
                      "through the ring").stdout.strip() == "OK"
        r = client("redis-benchmark", "-h", SERVER, "-p", str(port), "-n", "2000", "--csv")
        assert r.returncode == 0, r.stderr
        tests = [ln.split(",")[0].strip('"') for ln in r.stdout.splitlines()[1:] if ln]
        state = [client("redis-cli", "-h", SERVER, "-p", str(port), *q).stdout.strip()
                 for q in REDIS_STATE]
    finally:
        srv.kill()
    return tests, state, slog.read_text() if fast else ""


def test_redis_benchmark_and_cli(shm_path, tmp_path):
    """redis-benchmark's default test set and redis-cli give the same tests
    and leave the same data plain and accelerated; accelerated it was."""
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed (make test installs it)")
    p_tests, p_state, _ = _redis_round(shm_path, tmp_path, False)
    f_tests, f_state, log = _redis_round(shm_path, tmp_path, True)
    assert len(p_tests) >= 15 and "GET" in p_tests and "SET" in p_tests, p_tests
    assert f_tests == p_tests
    assert f_state == p_state and p_state[-1] == "through the ring", (p_state, f_state)
    assert p_state[1] == "2000"  # INCR ran exactly n times
    assert log.count("adopted offer") >= 50  # the benchmark's 50 clients
    assert "plain TCP" not in log


def test_epoll_semantics_same_with_and_without_fastivc(cbuild, shm_path, tmp_path):
    """tests/c/epoll_surface.c: non-blocking connect, LT, EPOLLET,
    EPOLLONESHOT, EPOLLRDHUP, ADD/MOD/DEL errors; identical output plain and
    accelerated, and accelerated it was."""
    prog = str(cbuild("release") / "epoll_surface")
    plain_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    plain = subprocess.run([prog], capture_output=True, text=True, timeout=60, env=plain_env)
    assert plain.returncode == 0, plain.stderr
    log = tmp_path / "log"
    env = build_env(os.environ, fabric=shm_path, log=f"debug:{log}", event_loops=True)
    fast = subprocess.run([prog], capture_output=True, text=True, timeout=60, env=env)
    assert fast.returncode == 0, fast.stderr
    assert fast.stdout.splitlines() == plain.stdout.splitlines()
    assert "ET: no new edge" in plain.stdout
    text = log.read_text()
    assert "adopted offer" in text and "switched to the ring" in text, text


NGINX_CONF = """
user root;
worker_processes 2;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  server {{
    listen {addr}:{port};
    root {dir}/html;
  }}
}}
"""


def test_nginx_workers_with_curl_and_wrk(shm_path, tmp_path):
    """Several nginx workers (epoll, accept4 non-blocking, sendfile) and wrk
    (epoll, non-blocking connect).  Regression: a client whose epoll_wait
    began before the server's accept slept until wrk's timeout, because
    epoll did not arm pending sockets; wrk would report timeouts."""
    for prog in ("nginx", "wrk", "curl"):
        if not shutil.which(prog):
            pytest.fail(f"{prog} is not installed (make test installs it)")
    port = next(_ports)
    (tmp_path / "html").mkdir()
    page = os.urandom(200_000)
    (tmp_path / "html" / "blob").write_bytes(page)
    (tmp_path / "nginx.conf").write_text(NGINX_CONF.format(dir=tmp_path, addr=SERVER, port=port))
    slog = tmp_path / "fastivc.log"
    srv = Proc(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], shm_path,
               True, NS_SERVER, {"FASTIVC_LOG": f"debug:{slog}"}, event_loops=True)
    env = build_env(os.environ, fabric=shm_path, event_loops=True)

    def client(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(in_ns(NS_CLIENT, list(argv)), env=env, capture_output=True,
                              timeout=120)
    try:
        url = f"http://{SERVER}:{port}/blob"
        for _ in range(50):
            r = client("curl", "-s", "-o", str(tmp_path / "out"), "-w", "%{http_code}", url)
            if r.stdout == b"200":
                break
            time.sleep(0.1)
        assert r.stdout == b"200", r.stderr
        assert (tmp_path / "out").read_bytes() == page
        r = client("wrk", "-t1", "-c10", "-d1s", url)
        out = r.stdout.decode()
        assert r.returncode == 0 and "Requests/sec" in out, out
        assert "Socket errors" not in out and "Non-2xx" not in out, out
    finally:
        srv.kill()
        subprocess.run(["pkill", "-f", f"nginx -p {tmp_path}"], capture_output=True)
    assert slog.read_text().count("adopted offer") >= 10  # curl and wrk's 10 connections


PROGRAMS = os.path.join(os.path.dirname(__file__), "programs")


def _serve_and_run(shm_path, tmp_path, server_argv, client_argv, ready_wait=0.5):
    slog = tmp_path / "s.log"
    srv = Proc(server_argv, shm_path, True, NS_SERVER, {"FASTIVC_LOG": f"debug:{slog}"},
               event_loops=True)
    try:
        env = build_env(os.environ, fabric=shm_path, event_loops=True)
        for _ in range(50):
            time.sleep(ready_wait / 5)
            r = subprocess.run(in_ns(NS_CLIENT, client_argv), env=env, capture_output=True,
                               text=True, timeout=120)
            if r.returncode == 0:
                break
        return r, slog.read_text() if slog.exists() else ""
    finally:
        srv.kill()


def test_node_http_server_and_client(shm_path, tmp_path):
    if not shutil.which("node"):
        pytest.fail("node is not installed (make test installs nodejs)")
    port = str(next(_ports))
    r, log = _serve_and_run(shm_path, tmp_path,
                            ["node", os.path.join(PROGRAMS, "node_server.js"), SERVER, port],
                            ["node", os.path.join(PROGRAMS, "node_client.js"), SERVER, port])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '{"done":200,"ok":200}'
    assert "adopted offer" in log


def test_memcached_with_a_text_protocol_client(shm_path, tmp_path):
    if not shutil.which("memcached"):
        pytest.fail("memcached is not installed (make test installs it)")
    port = str(next(_ports))
    r, log = _serve_and_run(shm_path, tmp_path,
                            ["memcached", "-u", "root", "-l", SERVER, "-p", port, "-t", "4"],
                            [sys.executable, os.path.join(PROGRAMS, "memcached_client.py"),
                             SERVER, port])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '{"ok": 500}'
    assert "adopted offer" in log


PG_BIN = (sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres")) or [""])[-1].rsplit("/", 1)[0]
PG_COUNTS = ("select count(*) from pgbench_accounts", "select count(*) from pgbench_branches",
             "select count(*) from pgbench_tellers", "select count(*) from pgbench_history",
             # TPC-B keeps these four sums equal; a lost or doubled statement breaks it
             "select (select sum(abalance) from pgbench_accounts) = "
             "(select sum(delta) from pgbench_history) and (select sum(tbalance) from "
             "pgbench_tellers) = (select sum(bbalance) from pgbench_branches) and "
             "(select sum(tbalance) from pgbench_tellers) = (select sum(delta) from "
             "pgbench_history)")


def _pgbench_numbers(out: str) -> dict:
    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        assert m, f"{pattern!r} not in pgbench output:\n{out}"
        return float(m.group(1))
    return {"processed": int(num(r"number of transactions actually processed: (\d+)")),
            "failed": int(num(r"number of failed transactions: (\d+)")),
            "tps": num(r"tps = ([\d.]+) \(without initial connection time\)")}


def _pg_round(pgdir: str, port: int, fastivc: bool, fabric: str, client_log: str) -> dict:
    """Start postgres (as postgres, server namespace), initialise with pgbench,
    run TPC-B and select-only from the client namespace, read the row counts,
    stop postgres.  Under fastivc, both ends run with --event-loops and the
    fabric is created 0660 group postgres by whichever end comes first."""
    plain = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    pg = pwd.getpwnam("postgres")
    slog = os.path.join(pgdir, "fastivc.log")
    if fastivc:
        # opened by every process of the chain: root's `ip` first, postgres last
        open(slog, "w").close()
        os.chown(slog, pg.pw_uid, pg.pw_gid)
        perms = {"fabric_mode": "0660", "fabric_group": "postgres"}
        senv = build_env(plain, fabric=fabric, log=f"debug:{slog}", event_loops=True, **perms)
        cenv = build_env(plain, fabric=fabric, log=f"debug:{client_log}", event_loops=True,
                         **perms)
    else:
        senv = cenv = plain
    with open(os.path.join(pgdir, f"postgres-{'fastivc' if fastivc else 'plain'}.log"),
              "w") as pglog:
        srv = subprocess.Popen(in_ns(NS_SERVER, [
            "setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups",
            f"{PG_BIN}/postgres", "-D", f"{pgdir}/data", "-c", f"listen_addresses={SERVER}",
            "-c", f"port={port}", "-c", f"unix_socket_directories={pgdir}", "-c", "fsync=off",
            "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]),
            env=senv, stdout=pglog, stderr=subprocess.STDOUT)
    conn = ["-h", SERVER, "-p", str(port), "-U", "postgres"]

    def client(prog: str, *args: str) -> str:
        r = subprocess.run(in_ns(NS_CLIENT, [f"{PG_BIN}/{prog}", *conn, *args]), env=cenv,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{prog} {args} exited {r.returncode}: {r.stderr}{r.stdout}"
        return r.stdout + r.stderr
    try:
        for _ in range(100):
            r = subprocess.run(in_ns(NS_CLIENT, [f"{PG_BIN}/pg_isready", *conn]), env=plain,
                               capture_output=True)
            if r.returncode == 0:
                break
            assert srv.poll() is None, "postgres exited at start (see its log in the tmp dir)"
            time.sleep(0.1)
        client("pgbench", "-i", "-s", "1", "-q", "postgres")
        tpcb = _pgbench_numbers(client("pgbench", "-c", "4", "-j", "2", "-T", "3", "postgres"))
        counts = client("psql", "-At", *(a for q in PG_COUNTS for a in ("-c", q)),
                        "postgres").split()
        select = _pgbench_numbers(client("pgbench", "-S", "-c", "4", "-j", "2", "-T", "2",
                                         "postgres"))
    finally:
        # fast shutdown; p.pid is the postmaster (ip netns exec and setpriv exec)
        srv.send_signal(signal.SIGINT)
        try:
            srv.wait(30)
        except subprocess.TimeoutExpired:
            srv.send_signal(signal.SIGQUIT)
            srv.wait(10)
    assert srv.returncode == 0, f"postgres exited {srv.returncode}"
    return {"tpcb": tpcb, "select": select, "counts": counts,
            "server_log": open(slog).read() if fastivc else ""}


def test_postgresql_pgbench_same_results_plain_and_accelerated(shm_path, tmp_path):
    """PostgreSQL 15 (a postmaster that accepts and forks a backend per
    connection, backends running as postgres on epoll) with pgbench and psql,
    unmodified: initialise, TPC-B, select-only, row counts; plain TCP first,
    then each end under fastivc.  Same results, every connection adopted,
    nothing held in the fabric once postgres is gone."""
    if not PG_BIN or not shutil.which(f"{PG_BIN}/pgbench"):
        pytest.fail("postgresql is not installed (make test installs it)")
    pg = pwd.getpwnam("postgres")
    pgdir = tempfile.mkdtemp(prefix="fivc-pg-")  # tmp_path is not reachable as postgres
    try:
        os.chown(pgdir, pg.pw_uid, pg.pw_gid)
        subprocess.run(["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups",
                        f"{PG_BIN}/initdb", "-D", f"{pgdir}/data", "-A", "trust", "-U",
                        "postgres", "--no-sync", "-E", "UTF8"], check=True, capture_output=True,
                       env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"},
                       timeout=60)
        with open(f"{pgdir}/data/pg_hba.conf", "a") as f:
            f.write(f"host all all 10.{HOSTS.subnet}.0.0/24 trust\n")
        port = next(_ports)
        clog = str(tmp_path / "client.fastivc.log")
        plain = _pg_round(pgdir, port, False, shm_path, clog)
        fast = _pg_round(pgdir, port, True, shm_path, clog)
    finally:
        shutil.rmtree(pgdir, ignore_errors=True)
    print(f"pgbench TPC-B tps: plain {plain['tpcb']['tps']:.0f}, fastivc "
          f"{fast['tpcb']['tps']:.0f}; select-only tps: plain {plain['select']['tps']:.0f}, "
          f"fastivc {fast['select']['tps']:.0f}")
    for run in (plain, fast):
        assert run["tpcb"]["failed"] == 0 and run["select"]["failed"] == 0
        assert run["tpcb"]["processed"] > 0 and run["select"]["processed"] > 0
        assert run["counts"] == ["100000", "1", "10", str(run["tpcb"]["processed"]), "t"], run

    slog, clog_text = fast["server_log"], open(clog).read()
    st = os.stat(shm_path)
    assert oct(st.st_mode & 0o777) == "0o660" and st.st_gid == pg.pw_gid
    # pgbench -i, each pgbench's 4 clients and its setup connection, psql
    assert slog.count("adopted offer") >= 12, slog
    assert "fork: member" in slog, slog  # backends are forked with their own member id
    assert clog_text.count("switched to the ring") >= 12, clog_text
    fallbacks = [ln for ln in (slog + clog_text).splitlines() if any(p in ln for p in LOG_PLAIN)]
    assert not fallbacks, fallbacks

    def cli(*args: str) -> dict:
        r = subprocess.run([sys.executable, "-m", "fastivc", *args, "--fabric", shm_path,
                            "--json"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)
    gc = cli("gc")
    print(f"fastivc gc after postgres stopped: {gc}")
    assert cli("stat")["slots"] == [], gc
