"""`fastivc bench tiers`: a multi-tier service consolidated on one host, plain
TCP and under fastivc in the same run.

    wrk --> nginx (reverse proxy) --> gunicorn (a small Python app) --> redis
                                                                   \\-> PostgreSQL

Each tier runs in its own network namespace (`netns.Star`: one veth pair
per tier to a bridge in a namespace of its own, one private /24), or all on
loopback with `--loopback` (or when not root).  Per request the app reads
`item:<id>` from redis and the item's row from PostgreSQL (an indexed
SELECT); one request in ten (id % 10 == 0) also UPDATEs that row and
counts the update in redis, so at the end of each run the sum of the rows'
hits must equal redis's count -- a lost or doubled statement on any tier
shows.  wrk asks for random ids (a Lua script), at each connection count,
with nginx's upstream keepalive on (HTTP/1.1, a pool of idle connections
to the app) and off (a new connection to the app per request).

Figures per case, each plain and fastivc: requests/s, p50 and p99 latency
(wrk --latency), and CPU-seconds per 1,000 requests over every process of
the four tiers (utime + stime, with reaped children's, from /proc, between
the start and the end of wrk's run; wrk itself is not counted).

A fastivc run counts only if the debug logs of every tier show no
connection that fell back to plain TCP, and each tier's server adopted an
offer for at least every connection made to it: wrk's, nginx's upstream
connections (at least one per request with keepalive off), and one redis
and one PostgreSQL connection per app thread.  Each fastivc run gets a
fresh fabric under /dev/shm (0660, group postgres: PostgreSQL runs as
postgres), removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..netns import NetnsError, Star, in_ns
from ..run import build_env
from .servers import (
    LOG_ADOPTED,
    LOG_PLAIN,
    LOG_SWITCHED,
    NGINX_HEAD,
    _backlog,
    _count,
    _plain_env,
    _Server,
    _sigterm_as_interrupt,
    _wait_ready,
    _wrk_errors,
    raise_nofile,
    require,
)
from .stats import compare, fastivc_settings, machine_info, now, tool_version, versions

Progress = Callable[[int, int, str], None]

TIERS = ("client", "web", "app", "cache", "db")
DEFAULT_CONNECTIONS = (10, 100, 1000)
ITEMS = 1000  # rows in PostgreSQL and keys in redis
UPDATE_EVERY = 10  # ids divisible by this also UPDATE
APP_WORKERS, APP_THREADS = 2, 4
BASE_PORT = 22000
WRK_TIMEOUT_S = 15

APP = '''\
"""The application tier of `fastivc bench tiers`: GET /item/<id>."""
import json
import threading

import psycopg2
import redis

CACHE = ({cache_addr!r}, {cache_port})
DB = dict(host={db_addr!r}, port={db_port}, user="postgres", dbname="postgres")
UPDATE_EVERY = {update_every}
_local = threading.local()


def _conns():
    c = getattr(_local, "c", None)
    if c is None:
        db = psycopg2.connect(**DB)
        db.autocommit = True
        c = _local.c = (redis.Redis(host=CACHE[0], port=CACHE[1]), db)
    return c


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if not path.startswith("/item/"):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\\n"]
    item = int(path[6:])
    cache, db = _conns()
    cached = cache.get(f"item:{{item}}")
    with db.cursor() as cur:
        if item % UPDATE_EVERY == 0:
            cur.execute("UPDATE items SET hits = hits + 1 WHERE id = %s", (item,))
            cache.incr("updates")
        cur.execute("SELECT name, hits FROM items WHERE id = %s", (item,))
        row = cur.fetchone()
    body = json.dumps({{"id": item, "cache": cached.decode() if cached else None,
                       "name": row[0] if row else None,
                       "hits": row[1] if row else None}}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''

WRK_SCRIPT = f"""\
math.randomseed(os.time())
request = function()
  return wrk.format(nil, "/item/" .. math.random(1, {ITEMS}))
end
"""

NGINX_CONF = NGINX_HEAD + """\
  keepalive_timeout 65;
  keepalive_requests 1000000;
  upstream app {{
    server {app_addr}:{app_port};
{keepalive}  }}
  server {{
    listen {addr}:{port} backlog={backlog};
    location = /fastivc-status {{ stub_status; }}
    location / {{
      proxy_pass http://app;
{proxy_keepalive}    }}
  }}
}}
"""
KEEPALIVE_ON = ("    keepalive 128;\n    keepalive_requests 1000000;\n",
                "      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n")


def pg_bin() -> str:
    """The newest installed PostgreSQL's bin directory, or an error naming the package."""
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise RuntimeError("postgres not found: install the Debian package postgresql "
                           "(scripts/ensure-deps.sh does)")
    return os.path.dirname(found[-1])


def require_app() -> None:
    require("nginx", "wrk", "curl", "redis-server", "redis-cli", "gunicorn")
    r = subprocess.run(["/usr/bin/python3", "-c", "import psycopg2, redis"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("the app tier needs psycopg2 and redis for /usr/bin/python3: "
                           "install the Debian packages python3-psycopg2 python3-redis "
                           "(scripts/ensure-deps.sh does)")


@dataclass
class Hosts:
    """Where each tier runs: its namespace (None: this one) and address."""

    name: str
    ns: dict[str, str | None]
    addr: dict[str, str]
    star: Star | None = None

    def down(self) -> None:
        if self.star:
            self.star.down()


def place(loopback: bool) -> Hosts:
    if not loopback and os.geteuid() == 0:
        star = Star(TIERS, os.environ.get("FIVC_TIERS_NS", "fivt"),
                    int(os.environ.get("FIVC_TIERS_SUBNET", "203")))
        try:
            star.up()
        except NetnsError:
            star.down()
        else:
            for t in TIERS:
                subprocess.run(in_ns(star.ns(t), ["sysctl", "-q", "-w",
                                                   "net.ipv4.tcp_tw_reuse=1"]),
                               capture_output=True)
            return Hosts("a network namespace per tier, joined by a bridge",
                         {t: star.ns(t) for t in TIERS}, {t: star.addr(t) for t in TIERS}, star)
    why = "loopback" if loopback else "loopback (not root: no network namespaces)"
    return Hosts(why, dict.fromkeys(TIERS), dict.fromkeys(TIERS, "127.0.0.1"))


@dataclass
class Case:
    hosts: Hosts
    fast: bool
    keepalive: bool
    connections: int
    seconds: int
    workdir: str
    pgdata: str
    ports: dict[str, int]
    logs: dict[str, str] = field(default_factory=dict)

    @property
    def fabric(self) -> str:
        return f"/dev/shm/fastivc-bench-tiers-{os.getpid()}-{self.ports['web']}"

    def env(self, tier: str) -> dict[str, str]:
        if not self.fast:
            return _plain_env()
        log = os.path.join(self.workdir, f"{tier}.fastivc.log")
        if tier not in self.logs:
            open(log, "w").close()
            pg = pwd.getpwnam("postgres")
            os.chown(log, pg.pw_uid, pg.pw_gid)
            self.logs[tier] = log
        return build_env(_plain_env(), fabric=self.fabric, log=f"debug:{log}", event_loops=True,
                         fabric_mode="0660", fabric_group="postgres")

    def cmd(self, tier: str, argv: list[str]) -> str:
        prefix = ["fastivc", "run", "--event-loops", "--"] if self.fast else []
        return shlex.join(in_ns(self.hosts.ns[tier], [*prefix, *argv]))


def _run(ns: str | None, argv: list[str], timeout: float = 60, stdin: str | None = None,
         env: dict | None = None) -> str:
    try:
        r = subprocess.run(in_ns(ns, argv), input=stdin, capture_output=True, text=True,
                           timeout=timeout, env=env or _plain_env())
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{' '.join(argv)} hung: no exit within {timeout:.0f} s") from e
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {r.returncode}): "
                           f"{(r.stderr or r.stdout).strip()[-1000:]}")
    return r.stdout


def _probe(ns: str | None, argv: list[str]) -> tuple[int, str]:
    """A readiness probe, plain TCP, 10 s at most: (exit status, stdout),
    (-1, "") for one that hung (not ready yet)."""
    try:
        r = subprocess.run(in_ns(ns, argv), capture_output=True, text=True, timeout=10,
                           env=_plain_env())
    except subprocess.TimeoutExpired:
        return -1, ""
    return r.returncode, r.stdout


def _http_status(ns: str | None, url: str) -> str:
    return _probe(ns, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url])[1]


def _as_postgres(argv: list[str]) -> list[str]:
    return ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups", *argv]


def init_db(pgdir: str, subnet: str) -> str:
    """An empty cluster in pgdir (owned by postgres), trusting the tiers' /24."""
    pg = pwd.getpwnam("postgres")
    os.chown(pgdir, pg.pw_uid, pg.pw_gid)
    data = os.path.join(pgdir, "data")
    _run(None, _as_postgres([f"{pg_bin()}/initdb", "-D", data, "-A", "trust", "-U", "postgres",
                             "--no-sync", "-E", "UTF8"]), timeout=120)
    with open(os.path.join(data, "pg_hba.conf"), "a") as f:
        f.write(f"host all all {subnet} trust\n")
    return data


def _cpu_ticks_by_tree(roots: set[int]) -> dict[int, int]:
    """utime + stime + cutime + cstime of each root and all its descendants
    (by parent pid, not session: PostgreSQL's backends each call setsid()
    and were not counted when this went by session)."""
    ticks: dict[int, int] = {}
    parent: dict[int, int] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        parent[int(pid)] = int(fields[1])  # field 4, the parent
        ticks[int(pid)] = sum(int(x) for x in fields[11:15])  # fields 14-17
    total = dict.fromkeys(roots, 0)
    for pid, t in ticks.items():
        q, seen = pid, 0
        while q > 1 and q not in roots and seen < 64:
            q, seen = parent.get(q, 0), seen + 1
        if q in roots:
            total[q] += t
    return total


def _wrk_latency(out: str, pct: str) -> float:
    """wrk --latency's percentile line ("99%  12.34ms") in milliseconds."""
    m = re.search(rf"^\s*{re.escape(pct)}%\s+([0-9.]+)(us|ms|s)\s*$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk: no {pct}% latency in its output: {out.strip()[-500:]}")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def _accelerated(c: Case, upstream_min: int) -> dict:
    """Each tier's log: offers adopted as a server, switches as a client,
    fallbacks to plain TCP."""
    adopted = {t: _count(c.logs[t], (LOG_ADOPTED,)) for t in ("web", "app", "cache", "db")}
    switched = {t: _count(c.logs[t], (LOG_SWITCHED,)) for t in ("client", "web", "app")}
    plain = {t: _count(p, LOG_PLAIN) for t, p in c.logs.items()}
    # the app's threads connect to redis and PostgreSQL on their first request
    need = {"web": c.connections, "app": upstream_min, "cache": 1, "db": 1}
    short = {t: (adopted[t], n) for t, n in need.items() if adopted[t] < n}
    return {"accelerated": not short and not any(plain.values()), "adopted": adopted,
            "switched": switched, "plain_fallbacks": plain,
            "short": {t: f"{a} adopted, {n} expected" for t, (a, n) in short.items()}}


def _once(c: Case, nginx_workers: int) -> tuple[dict, list[str]]:
    h, p, wd = c.hosts, c.ports, c.workdir
    pgb = pg_bin()
    servers: list[_Server] = []
    tier_of: dict[_Server, str] = {}  # (by the program: postgres, redis, gunicorn, nginx)
    cmds: list[str] = []

    def start(tier: str, argv: list[str], out: str) -> _Server:
        srv = _Server(argv, c.env(tier), h.ns[tier], os.path.join(wd, out))
        servers.append(srv)
        tier_of[srv] = out.split(".")[0]
        cmds.append(c.cmd(tier, argv))
        return srv

    conn_cap = c.connections + 64
    try:
        # the database: the items table, fresh every run
        db_argv = _as_postgres([
            f"{pgb}/postgres", "-D", c.pgdata, "-c", f"listen_addresses={h.addr['db']}",
            "-c", f"port={p['db']}", "-c", f"unix_socket_directories={os.path.dirname(c.pgdata)}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", f"max_connections={APP_WORKERS * APP_THREADS + 20}"])
        db = start("db", db_argv, "postgres.out")
        psql = [f"{pgb}/psql", "-h", h.addr["db"], "-p", str(p["db"]), "-U", "postgres", "-At",
                "-q", "-v", "ON_ERROR_STOP=1", "postgres"]
        _wait_ready(db, lambda: _probe(h.ns["app"], [f"{pgb}/pg_isready", "-q", "-h",
                                                     h.addr["db"], "-p", str(p["db"])])[0] == 0,
                    "postgres")
        _run(h.ns["app"], [*psql, "-c", "DROP TABLE IF EXISTS items; CREATE TABLE items (id int "
                           "PRIMARY KEY, name text NOT NULL, hits bigint NOT NULL DEFAULT 0); "
                           f"INSERT INTO items SELECT i, 'item-' || i, 0 FROM "
                           f"generate_series(1, {ITEMS}) i", "-c", "VACUUM ANALYZE items"])
        # the cache: item:<id> for every id
        cache_argv = ["redis-server", "--port", str(p["cache"]), "--bind", h.addr["cache"],
                      "--save", "", "--appendonly", "no", "--protected-mode", "no"]
        cache = start("cache", cache_argv, "redis.out")
        rcli = ["redis-cli", "-h", h.addr["cache"], "-p", str(p["cache"])]
        _wait_ready(cache, lambda: _probe(h.ns["app"], [*rcli, "ping"])[1].strip() == "PONG",
                    "redis-server")
        _run(h.ns["app"], [*rcli], stdin="".join(f"SET item:{i} cached-{i}\n"
                                                 for i in range(1, ITEMS + 1)) + "SET updates 0\n")
        # the app
        with open(os.path.join(wd, "tierapp.py"), "w") as f:
            f.write(APP.format(cache_addr=h.addr["cache"], cache_port=p["cache"],
                               db_addr=h.addr["db"], db_port=p["db"],
                               update_every=UPDATE_EVERY))
        app_argv = ["gunicorn", "--chdir", wd, "-w", str(APP_WORKERS), "-k", "gthread",
                    "--threads", str(APP_THREADS), "--keep-alive", "65",
                    "--worker-connections", str(conn_cap), "--backlog",
                    str(_backlog(h.ns["app"], c.connections)), "-b",
                    f"{h.addr['app']}:{p['app']}", "tierapp:app"]
        app = start("app", app_argv, "gunicorn.out")
        app_url = f"http://{h.addr['app']}:{p['app']}/item/1"
        _wait_ready(app, lambda: _http_status(h.ns["web"], app_url) == "200", "gunicorn")
        # the front end
        wc = max(1024, 4 * c.connections + 64)  # a client and an upstream connection each
        conf = os.path.join(wd, "nginx.conf")
        ka = KEEPALIVE_ON if c.keepalive else ("", "")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(workers=nginx_workers, dir=wd, addr=h.addr["web"],
                                      port=p["web"], worker_connections=wc, rlimit=2 * wc + 64,
                                      backlog=_backlog(h.ns["web"], c.connections),
                                      app_addr=h.addr["app"], app_port=p["app"],
                                      keepalive=ka[0], proxy_keepalive=ka[1]))
        web_argv = ["nginx", "-p", wd, "-e", os.path.join(wd, "error.log"), "-c", conf]
        web = start("web", web_argv, "nginx.out")
        base = f"http://{h.addr['web']}:{p['web']}"
        _wait_ready(web, lambda: _http_status(h.ns["client"], base + "/fastivc-status") == "200",
                    "nginx")
        # the load
        script = os.path.join(wd, "items.lua")
        with open(script, "w") as f:
            f.write(WRK_SCRIPT)
        # (--timeout: at 1,000 connections on 2 cores a reply may take more
        # than wrk's 2 s, plain or not: latency to measure, not an error;
        # one that never comes still is one)
        wrk_argv = ["wrk", "-t1", f"-c{c.connections}", f"-d{c.seconds}s", "--latency",
                    "--timeout", f"{WRK_TIMEOUT_S}s",
                    "-s", script, base + "/"]
        cmds.append(c.cmd("client", wrk_argv))
        roots = {s.p.pid for s in servers}
        t0 = _cpu_ticks_by_tree(roots)
        w = subprocess.run(in_ns(h.ns["client"], wrk_argv), env=c.env("client"),
                           capture_output=True, text=True, timeout=120 + 4 * c.seconds)
        t1 = _cpu_ticks_by_tree(roots)
        tck = os.sysconf("SC_CLK_TCK")
        cpu_by = {tier_of[s]: (t1[s.p.pid] - t0[s.p.pid]) / tck for s in servers}
        cpu_s = sum(cpu_by.values())
        out = w.stdout
        if w.returncode != 0 or "Requests/sec" not in out:
            raise RuntimeError(f"{' '.join(wrk_argv)} failed (exit {w.returncode}): "
                               f"{(w.stderr or out).strip()[-1000:]}")
        errors = _wrk_errors(out)
        mode = "fastivc" if c.fast else "plain"
        if any(errors.values()) or "Non-2xx" in out:
            raise RuntimeError(f"{' '.join(wrk_argv)} ({mode}) reported errors: "
                               f"{out.strip()[-1000:]}")
        m = re.search(r"(\d+) requests in", out)
        requests = int(m.group(1)) if m else 0
        # the answers: one item through every tier, then the tiers' books
        for item in (7, 10):
            got = _run(h.ns["client"], ["curl", "-s", f"{base}/item/{item}"], env=c.env("client"))
            want = (f'{{"id": {item}, "cache": "cached-{item}", "name": "item-{item}", "hits": ')
            if not got.startswith(want):
                raise RuntimeError(f"wrong result ({mode}): GET /item/{item} returned "
                                   f"{got[:200]!r}, not {want}...")
        # (requests wrk left in flight may still be between their UPDATE and
        # their INCR: the books are compared once they stand still)
        deadline = time.monotonic() + 15
        while True:
            updates = int(_run(h.ns["app"], [*rcli, "get", "updates"]).strip())
            hits = int(_run(h.ns["app"], [*psql, "-c", "SELECT sum(hits) FROM items"]).strip())
            again = int(_run(h.ns["app"], [*rcli, "get", "updates"]).strip())
            if (hits == updates and again == updates) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if hits != updates:
            raise RuntimeError(f"the tiers disagree ({mode}): PostgreSQL counts {hits} updates, "
                               f"redis {updates}")
        status = _run(h.ns["client"], ["curl", "-s", base + "/fastivc-status"])
    finally:
        for srv in reversed(servers):
            srv.stop()
    res: dict = {
        "connections": c.connections, "keepalive": c.keepalive, "seconds": c.seconds,
        "requests": requests, "rps": float(re.search(r"Requests/sec:\s*([0-9.]+)", out).group(1)),
        "p50_ms": _wrk_latency(out, "50"), "p99_ms": _wrk_latency(out, "99"),
        "cpu_s": cpu_s, "cpu_s_per_1k": 1000 * cpu_s / requests if requests else 0.0,
        "cpu_s_by_tier": cpu_by,
        "updates": updates, "wrk_errors": errors, "nginx_status": status.strip(),
    }
    if c.fast:
        # with keepalive off nginx opens one upstream connection per request
        res.update(_accelerated(c, requests if not c.keepalive else 1))
    return res, cmds


METRICS = (("rps", "req/s", "higher", "req/s"), ("p50_ms", "ms", "lower", "p50 latency"),
           ("p99_ms", "ms", "lower", "p99 latency"),
           ("cpu_s_per_1k", "CPU-s per 1k requests", "lower", "CPU per 1,000 requests"))


def run(repeats: int = 3, seconds: int = 3, connections: Sequence[int] = DEFAULT_CONNECTIONS,
        keepalive: Sequence[bool] = (True, False), loopback: bool = False,
        nginx_workers: int = 1, progress: Progress | None = None) -> dict:
    """Measure every (keepalive, connections) case plain and fastivc,
    `repeats` times, alternating which goes first."""
    if repeats < 1 or seconds < 1 or not connections or min(connections) < 1 \
            or nginx_workers < 1 or not keepalive:
        raise ValueError("repeats, seconds, connections and workers must be >= 1")
    require_app()
    pg_bin()
    if os.geteuid() != 0:
        raise RuntimeError("bench tiers runs PostgreSQL as the postgres user: run it as root")
    cases = [(ka, n) for ka in keepalive for n in connections]
    raw: dict[str, list[dict]] = {"plain": [], "fastivc": []}
    commands: dict[str, list[str]] = {}
    total, done = 2 * repeats * len(cases), 0
    port = BASE_PORT + (os.getpid() % 200) * 20
    started, settings, notes = now(), {}, []
    raise_nofile(4 * max(connections) + 256)
    pgdir = tempfile.mkdtemp(prefix="fastivc-bench-tiers-pg-")
    with _sigterm_as_interrupt():
        hosts = place(loopback)
        try:
            subnet = (f"{hosts.addr['db'].rsplit('.', 1)[0]}.0/24" if hosts.star
                      else "127.0.0.1/32")
            pgdata = init_db(pgdir, subnet)
            for rep in range(repeats):
                for ka, n in cases:
                    for mode in (("plain", "fastivc") if rep % 2 == 0 else ("fastivc", "plain")):
                        what = f"keepalive {'on' if ka else 'off'} x{n} {mode}"
                        if progress:
                            progress(done, total, f"{what} ({rep + 1}/{repeats})")
                        ports = {t: port + i for i, t in enumerate(("web", "app", "cache", "db"))}
                        port += 4
                        workdir = tempfile.mkdtemp(prefix="fastivc-bench-tiers-")
                        os.chmod(workdir, 0o755)
                        c = Case(hosts, mode == "fastivc", ka, n, seconds, workdir, pgdata,
                                 ports)
                        try:
                            res, cmds = _once(c, nginx_workers)
                        except BaseException:
                            if os.environ.get("FIVC_BENCH_KEEP"):  # the logs, to look at
                                notes.append(f"kept {workdir}")
                                print(f"fastivc bench tiers: kept {workdir} and {c.fabric}")
                                raise
                            shutil.rmtree(workdir, ignore_errors=True)
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(c.fabric)
                            raise
                        shutil.rmtree(workdir, ignore_errors=True)
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(c.fabric)
                        res["repeat"] = rep
                        raw[mode].append(res)
                        commands.setdefault(f"{mode}, keepalive {'on' if ka else 'off'}", cmds)
                        if c.fast:
                            settings = fastivc_settings(
                                c.env("web"), "a fresh file per run under /dev/shm (0660, group "
                                "postgres), removed afterwards")
                        done += 1
            if progress:
                progress(total, total, "done")
        finally:
            hosts.down()
            shutil.rmtree(pgdir, ignore_errors=True)
    rows = []
    for ka, n in cases:
        plain = [r for r in raw["plain"] if r["keepalive"] == ka and r["connections"] == n]
        fast = [r for r in raw["fastivc"] if r["keepalive"] == ka and r["connections"] == n]
        ok = [i for i, r in enumerate(fast) if r["accelerated"]]
        at = f"upstream keepalive {'on' if ka else 'off'}, wrk -c{n}"
        for i, r in enumerate(fast):
            if not r["accelerated"]:
                notes.append(f"{at}: fastivc run {i + 1} not accelerated on every tier "
                             f"(short: {r['short']}; fallbacks: {r['plain_fallbacks']}); it and "
                             "its plain run are left out of the rows (see raw)")
        if not ok:
            continue
        for key, unit, better, title in METRICS:
            row = compare(f"{title}, {at}", unit, better, [plain[i][key] for i in ok],
                          [fast[i][key] for i in ok])
            row.update(connections=n, keepalive=ka, metric=key, accelerated=len(ok) == repeats,
                       accelerated_runs=len(ok), fastivc_runs=repeats)
            rows.append(row)
    if not rows:
        raise RuntimeError(notes[0] if notes else "no case ran")
    doc_versions = versions()
    doc_versions.update({"nginx": tool_version(["nginx", "-v"]),
                         "wrk": tool_version(["wrk", "--version"]),
                         "gunicorn": tool_version(["gunicorn", "--version"]),
                         "redis-server": tool_version(["redis-server", "--version"]),
                         "postgres": tool_version([f"{pg_bin()}/postgres", "--version"])})
    return {
        "benchmark": "tiers",
        "placement": hosts.name,
        "baseline": f"plain TCP ({hosts.name})",
        "fastivc": "fastivc run --event-loops on every tier, a fresh fabric per run",
        "service": (f"wrk -t1 -> nginx ({nginx_workers} worker) reverse proxy -> gunicorn "
                    f"({APP_WORKERS} gthread workers x {APP_THREADS} threads, a Python app) -> "
                    f"redis GET + PostgreSQL indexed SELECT per request, UPDATE on 1 in "
                    f"{UPDATE_EVERY}"),
        "tiers": {t: {"namespace": hosts.ns[t], "address": hosts.addr[t]} for t in TIERS},
        "repeats": repeats,
        "seconds_per_case": seconds,
        "connections": list(connections),
        "keepalive": list(keepalive),
        "date": started,
        "machine": machine_info(),
        "versions": doc_versions,
        "fastivc_settings": settings,
        "commands": commands,
        "notes": notes,
        "rows": rows,
        "raw": raw,
    }
