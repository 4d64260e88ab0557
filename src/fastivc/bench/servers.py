"""`fastivc bench redis|nginx`: unmodified servers and their usual load
generators, plain TCP and under fastivc in the same run.

- redis: redis-server in the server namespace, redis-benchmark (`-t get,set`,
  its default 50 clients, or each count of `clients`) in the client
  namespace; GET and SET requests/s.
- nginx: nginx (N workers, Debian's default sendfile/tcp_nopush settings)
  serving a 612-byte static file, wrk (`-t1 -cC`, C each count of
  `connections`); requests/s.

Several counts run in one go, plain and fastivc at each, one row per count.
High counts get what they need: this process's RLIMIT_NOFILE soft limit
(inherited by the clients) raised, redis `maxclients` and `tcp-backlog`,
nginx `worker_connections` and `worker_rlimit_nofile`; and each run checks
that the count really happened (redis INFO stats: connections received, none
rejected; nginx stub_status: accepted = handled; wrk: no connect errors).

Both are epoll event loops, so the fastivc runs use `fastivc run
--event-loops` (FASTIVC_NONBLOCK=1) on both sides.  Each repeat runs plain and
fastivc back to back, alternating which goes first.  Each fastivc run gets a
fresh fabric under /dev/shm (removed afterwards) and debug logs for the
server and the client; a run counts as accelerated only if the server
adopted an offer for at least every benchmark connection and no client
connection fell back to plain TCP.  A run that was not accelerated is kept
in "raw" but never reported as a fastivc number -- except where the only
fallbacks were a full fabric ("no free channel slot", "offer registry
full"; the default fabric has fewer slots than the high counts): such a run
is reported, the row marked partial with the number of connections the
fabric showed accelerated at once (`accelerated_connections`, sampled from
the fabric while the client runs).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ..fabric import Fabric, FabricError
from ..netns import in_ns
from ..run import build_env
from .stats import compare, fastivc_settings, machine_info, now, tool_version, versions
from .tcp import Placement, place

Progress = Callable[[int, int, str], None]

# program -> the Debian package that provides it
PACKAGES = {
    "redis-server": "redis-server",
    "redis-benchmark": "redis-tools",
    "redis-cli": "redis-tools",
    "nginx": "nginx-light",
    "wrk": "wrk",
    "curl": "curl",
}
REDIS_PORT, NGINX_PORT = 16379, 18080
REDIS_RPS_GUESS = 100_000  # redis-benchmark counts requests: --seconds x this per test
PAGE_SIZE = 612  # the size of nginx's own welcome page

# What the library logs (csrc/preload/connect.c, io.c, init.c) per connection.
LOG_ADOPTED = "adopted offer"
LOG_SWITCHED = "switched to the ring"
LOG_FABRIC_FULL = ("no free channel slot", "offer registry full")
LOG_PLAIN = ("peer is not accelerated", "no free channel slot", "offer registry full",
             "bind before connect failed", "several offers match", "acceleration off",
             "no free member id")


def require(*programs: str) -> None:
    """A clear error naming the program and its Debian package when one is missing."""
    for prog in programs:
        if not shutil.which(prog):
            raise RuntimeError(f"{prog} not found: install the Debian package "
                               f"{PACKAGES.get(prog, prog)} (scripts/ensure-deps.sh does)")


def _plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k != "LD_PRELOAD" and not k.startswith("FASTIVC_")}


class _Server:
    """A server in its own session (so nginx's workers go with it), output to a file."""

    def __init__(self, argv: list[str], env: dict, ns: str | None, out: str):
        self.argv = in_ns(ns, argv)
        self.out = out
        with open(out, "wb") as f:
            self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                      env=env, start_new_session=True)

    def output(self) -> str:
        try:
            with open(self.out, errors="replace") as f:
                return f.read()[-2000:].strip()
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the server's process group; SIGKILL to whatever is left
        once the leader has exited (or 5 s later).  The leader is reaped only
        after that, so the group id cannot have been reused meanwhile."""
        pid = self.p.pid
        if self.p.returncode is not None:
            return  # reaped already (died at start): its group id is not ours any more
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        self.p.wait()


def _client(pl: Placement, argv: list[str], env: dict, timeout: float
            ) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(in_ns(pl.client_ns, argv), env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{' '.join(argv)} hung: no exit within {timeout:.0f} s") from e


def _wait_ready(srv: _Server, probe: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if srv.p.poll() is not None:
            raise RuntimeError(f"{what} exited {srv.p.returncode} at start: {srv.output()}")
        if probe():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer within 15 s: {srv.output()}")


def _count(path: str, needles: tuple[str, ...]) -> int:
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return 0
    return sum(text.count(n) for n in needles)


def acceleration(server_log: str, client_log: str, connections: int) -> dict:
    """What the fastivc logs say about one run: accelerated when the server
    adopted an offer for at least every benchmark connection and nothing fell
    back to plain TCP."""
    adopted = _count(server_log, (LOG_ADOPTED,))
    plain = _count(server_log, LOG_PLAIN) + _count(client_log, LOG_PLAIN)
    full = _count(server_log, LOG_FABRIC_FULL) + _count(client_log, LOG_FABRIC_FULL)
    accelerated = adopted >= connections and plain == 0
    return {"accelerated": accelerated,
            "partial": not accelerated and adopted > 0 and plain == full,
            "connections_expected": connections, "server_adopted": adopted,
            "client_switched": _count(client_log, (LOG_SWITCHED,)), "plain_fallbacks": plain,
            "fabric_full_fallbacks": full}


class _PeakSampler:
    """Samples how many connections to `port` the fabric at `path` shows
    accelerated at once, every `interval` s in a thread, keeping the peak.
    The interval grows to 20 times what a count takes, so the sampler
    takes at most 5 % of a CPU from the run it watches (measured: sampling
    10,000 connections every 50 ms took a fifth of this 2-vCPU machine and
    made nginx at -c10000 look 0.5x plain)."""

    def __init__(self, path: str, port: int, interval: float = 0.05):
        self.path, self.port, self.interval = path, port, interval
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with Fabric(self.path) as fab:
                    while not self._stop.is_set():
                        t0 = time.monotonic()
                        self.peak = max(self.peak, fab.connected_count(self.port))
                        self._stop.wait(max(self.interval, 20 * (time.monotonic() - t0)))
            except FabricError:  # not created yet by the first process
                self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def raise_nofile(need: int) -> None:
    """This process's soft RLIMIT_NOFILE up to need (clients inherit it), or
    an error naming the hard limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise RuntimeError(f"{need} file descriptors needed, but RLIMIT_NOFILE's hard limit is "
                           f"{hard} (raise it, e.g. `ulimit -Hn {need}` as root)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@dataclass
class Run:
    """What one case needs: where, which port, plain or not, a scratch directory."""

    pl: Placement
    port: int
    fast: bool
    seconds: float
    workdir: str
    count: int | None = None  # clients or connections; None: the scenario's default

    @property
    def fabric(self) -> str:
        return os.path.join("/dev/shm", f"fastivc-bench-{os.getpid()}-{self.port}")

    def env(self, side: str) -> dict[str, str]:
        if not self.fast:
            return _plain_env()
        log = os.path.join(self.workdir, f"{side}.fastivc.log")
        return build_env(_plain_env(), fabric=self.fabric, log=f"debug:{log}", event_loops=True)

    def logs(self) -> tuple[str, str]:
        return (os.path.join(self.workdir, "server.fastivc.log"),
                os.path.join(self.workdir, "client.fastivc.log"))

    def cmd(self, ns: str | None, argv: list[str]) -> str:
        prefix = ["fastivc", "run", "--event-loops", "--"] if self.fast else []
        return shlex.join(in_ns(ns, [*prefix, *argv]))


# --- redis -------------------------------------------------------------------------------

REDIS_CLIENTS = 50  # redis-benchmark's default


def _somaxconn(ns: str | None = None) -> int:
    try:
        r = subprocess.run(in_ns(ns, ["cat", "/proc/sys/net/core/somaxconn"]),
                           capture_output=True, text=True, timeout=10)
        return int(r.stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return 4096


def _backlog(ns: str | None, clients: int) -> int:
    """A listen backlog for `clients` connecting at once.  In the server's
    namespace (ours: the bench made it) the accept queue limit is raised to
    fit them, as a server for so many would be configured: with the default
    4,096, wrk -c10000 got SYNs dropped and counted connect errors on plain
    TCP.  On the machine's own (loopback runs) it stays as it is."""
    want = max(511, clients)
    if ns is not None and _somaxconn(ns) < want:
        subprocess.run(in_ns(ns, ["sysctl", "-q", "-w", f"net.core.somaxconn={want}",
                                  f"net.ipv4.tcp_max_syn_backlog={want}"]),
                       capture_output=True, timeout=10)
    return min(want, _somaxconn(ns))


def _redis_info(r: Run, section: str) -> dict[str, str]:
    out = _client(r.pl, ["redis-cli", "-h", r.pl.server_addr, "-p", str(r.port), "info",
                         section], _plain_env(), 30).stdout
    return dict(line.strip().split(":", 1) for line in out.splitlines() if ":" in line)


def _redis_once(r: Run) -> tuple[dict, list[str]]:
    addr, port = r.pl.server_addr, str(r.port)
    clients = r.count or REDIS_CLIENTS
    srv_argv = ["redis-server", "--port", port, "--bind", addr, "--save", "", "--appendonly",
                "no", "--protected-mode", "no"]
    if clients > REDIS_CLIENTS:  # room for every client (and a few probes), a backlog for them
        srv_argv += ["--maxclients", str(clients + 32), "--tcp-backlog",
                     str(_backlog(r.pl.server_ns, clients))]
    # every client makes at least 50 requests per test, so all of them are busy at once
    n = max(1000, int(r.seconds * REDIS_RPS_GUESS), 50 * clients)
    cli_argv = ["redis-benchmark", "-h", addr, "-p", port, "-t", "set,get", "-n", str(n),
                "-c", str(clients), "--csv"]
    srv = _Server(srv_argv, r.env("server"), r.pl.server_ns,
                  os.path.join(r.workdir, "redis.out"))
    try:
        _wait_ready(srv, lambda: _client(r.pl, ["redis-cli", "-h", addr, "-p", port, "ping"],
                                         _plain_env(), 10).stdout.strip() == "PONG",
                    "redis-server")
        b = _client(r.pl, cli_argv, r.env("client"), 120 + 4 * r.seconds)
        if b.returncode != 0:
            raise RuntimeError(f"{' '.join(cli_argv)} failed (exit {b.returncode}): "
                               f"{b.stderr.strip()[-1000:]}")
        # redis-benchmark's SET stores a 3-byte value (-d 3) under this very key (no -r)
        got = _client(r.pl, ["redis-cli", "-h", addr, "-p", port, "strlen", "key:__rand_int__"],
                      r.env("client"), 30).stdout.strip()
        if got != "3":
            raise RuntimeError(f"wrong result: STRLEN key:__rand_int__ after redis-benchmark "
                               f"returned {got!r}, not 3 ({'fastivc' if r.fast else 'plain'})")
        stats = _redis_info(r, "stats")
    finally:
        srv.stop()
    received = int(stats.get("total_connections_received", 0))
    rejected = int(stats.get("rejected_connections", 0))
    if rejected or received < 2 * clients:  # GET and SET each connect every client
        raise RuntimeError(f"redis-benchmark -c {clients} did not make its connections "
                           f"({'fastivc' if r.fast else 'plain'}): redis-server received "
                           f"{received}, rejected {rejected}")
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
    # "p99_latency_ms","max_latency_ms"
    res: dict = {"requests": n, "clients": clients, "connections_received": received,
                 "connections_rejected": rejected}
    for line in b.stdout.splitlines():
        f = [x.strip('"') for x in line.strip().split(",")]
        if len(f) >= 8 and f[0] in ("SET", "GET"):
            t = f[0].lower()
            res.update({f"{t}_rps": float(f[1]), f"{t}_p50_ms": float(f[4]),
                        f"{t}_p99_ms": float(f[6]), f"{t}_max_ms": float(f[7])})
    if "get_rps" not in res or "set_rps" not in res:
        raise RuntimeError(f"{' '.join(cli_argv)}: no SET/GET rates in its output: "
                           f"{b.stdout.strip()[-1000:]}")
    if r.fast:
        res.update(acceleration(*r.logs(), 2 * clients))
    return res, [r.cmd(r.pl.server_ns, srv_argv), r.cmd(r.pl.client_ns, cli_argv)]


# --- nginx -------------------------------------------------------------------------------

# nginx.conf's start, in the run's own directory (fastivc bench nginx, tiers)
NGINX_HEAD = """\
user root;
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
worker_rlimit_nofile {rlimit};
events {{ worker_connections {worker_connections}; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
"""

NGINX_CONF = NGINX_HEAD + """\
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 65;
  server {{
    listen {addr}:{port} backlog={backlog};
    root {dir}/html;
    location = /fastivc-status {{ stub_status; }}
  }}
}}
"""


def _page() -> bytes:
    head = b"<!DOCTYPE html>\n<html><head><title>fastivc bench</title></head><body>\n"
    tail = b"\n</body></html>\n"
    return head + b"x" * (PAGE_SIZE - len(head) - len(tail)) + tail


def _wrk_errors(out: str) -> dict[str, int]:
    """wrk's "Socket errors: connect A, read B, write C, timeout D" (zeros when absent)."""
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return dict(zip(("connect", "read", "write", "timeout"),
                    (int(x) for x in m.groups()) if m else (0, 0, 0, 0), strict=True))


def _nginx_once(r: Run, workers: int, connections: int | None = None) -> tuple[dict, list[str]]:
    connections = r.count or connections or 10
    os.makedirs(os.path.join(r.workdir, "html"), exist_ok=True)
    page = _page()
    with open(os.path.join(r.workdir, "html", "index.html"), "wb") as f:
        f.write(page)
    conf = os.path.join(r.workdir, "nginx.conf")
    # every worker may get all connections (the kernel spreads them unevenly),
    # and with exactly that many nginx warned "worker_connections are not
    # enough, reusing connections" and closed some of wrk's (wrk -c1000:
    # hundreds of read errors on plain TCP): twice as many
    wc = max(1024, 2 * connections + 64)
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(workers=workers, dir=r.workdir, addr=r.pl.server_addr,
                                  port=r.port, worker_connections=wc, rlimit=2 * wc + 64,
                                  backlog=_backlog(r.pl.server_ns, connections)))
    url = f"http://{r.pl.server_addr}:{r.port}/index.html"
    secs = max(1, round(r.seconds))  # wrk takes whole seconds
    srv_argv = ["nginx", "-p", r.workdir, "-e", os.path.join(r.workdir, "error.log"), "-c", conf]
    cli_argv = ["wrk", "-t1", f"-c{connections}", f"-d{secs}s", url]
    srv = _Server(srv_argv, r.env("server"), r.pl.server_ns,
                  os.path.join(r.workdir, "nginx.out"))
    try:
        _wait_ready(srv, lambda: _client(r.pl, ["curl", "-s", "-o", "/dev/null", "-w",
                                                "%{http_code}", url],
                                         _plain_env(), 10).stdout == "200", "nginx")
        w = _client(r.pl, cli_argv, r.env("client"), 120 + 4 * secs)
        out = w.stdout
        if w.returncode != 0 or "Requests/sec" not in out:
            raise RuntimeError(f"{' '.join(cli_argv)} failed (exit {w.returncode}): "
                               f"{(w.stderr or out).strip()[-1000:]}")
        errors = _wrk_errors(out)
        if any(errors.values()) or "Non-2xx" in out:
            raise RuntimeError(f"{' '.join(cli_argv)} ({'fastivc' if r.fast else 'plain'}) "
                               f"reported errors: {out.strip()[-1000:]}")
        status = _client(r.pl, ["curl", "-s", f"http://{r.pl.server_addr}:{r.port}"
                                "/fastivc-status"], _plain_env(), 30).stdout
        m = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", status, re.M)
        accepts, handled = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        if not m or handled < accepts or accepts < connections:
            raise RuntimeError(f"nginx did not take wrk's {connections} connections "
                               f"({'fastivc' if r.fast else 'plain'}): stub_status says "
                               f"{status.strip()!r}")
        got = subprocess.run(in_ns(r.pl.client_ns, ["curl", "-s", url]), env=r.env("client"),
                             capture_output=True, timeout=30).stdout
        if got != page:
            raise RuntimeError(f"wrong result: curl {url} returned {len(got)} bytes, not the "
                               f"{len(page)}-byte page ({'fastivc' if r.fast else 'plain'})")
    finally:
        srv.stop()
    m = re.search(r"Requests/sec:\s*([0-9.]+)", out)
    if not m:
        raise RuntimeError(f"{' '.join(cli_argv)}: no Requests/sec in its output: {out[-500:]}")
    res: dict = {"rps": float(m.group(1)), "seconds": secs, "connections": connections,
                 "nginx_accepts": accepts, "nginx_handled": handled, "wrk_errors": errors}
    if r.fast:
        res.update(acceleration(*r.logs(), connections))
    return res, [r.cmd(r.pl.server_ns, srv_argv), r.cmd(r.pl.client_ns, cli_argv)]


# --- the driver --------------------------------------------------------------------------

@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so servers, fabrics and namespaces go too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _drive(name: str, once: Callable[[Run], tuple[dict, list[str]]],
           metrics: list[tuple[str, str]], repeats: int, seconds: float, loopback: bool,
           base_port: int, progress: Progress | None,
           counts: Sequence[int | None] = (None,)) -> dict:
    """Each repeat runs every count, plain and fastivc (alternating which
    goes first); metrics' titles may name the count ("{count}")."""
    if repeats < 1 or seconds <= 0:
        raise ValueError("repeats must be >= 1 and seconds > 0")
    counts = list(counts)
    raw: dict[str, list[dict]] = {"plain": [], "fastivc": []}
    commands: dict[str, list[str]] = {}
    total, done = 2 * repeats * len(counts), 0
    port = base_port + os.getpid() % 1000
    started, settings = now(), {}
    raise_nofile(max((c or 0) for c in counts) + 256)
    with _sigterm_as_interrupt():
        hosts, pl = place(loopback)
        try:
            for rep in range(repeats):
                for count in counts:
                    # alternate which goes first: a noisy neighbour hits both alike
                    for mode in (("plain", "fastivc") if rep % 2 == 0 else ("fastivc", "plain")):
                        if progress:
                            at = f" x{count}" if count is not None else ""
                            progress(done, total, f"{name}{at} {mode} ({rep + 1}/{repeats})")
                        port += 1
                        workdir = tempfile.mkdtemp(prefix=f"fastivc-bench-{name}-")
                        r = Run(pl, port, mode == "fastivc", seconds, workdir, count)
                        sampler = _PeakSampler(r.fabric, r.port) if r.fast else None
                        try:
                            res, cmds = once(r)
                        finally:
                            peak = sampler.stop() if sampler else 0
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(r.fabric)
                            shutil.rmtree(workdir, ignore_errors=True)
                        if r.fast:
                            res.setdefault("accelerated_connections", peak)
                        res["repeat"] = rep
                        res["count"] = count
                        raw[mode].append(res)
                        commands.setdefault(mode, cmds)
                        if r.fast:
                            settings = fastivc_settings(
                                r.env("server"), "a fresh file per run under /dev/shm, removed "
                                "afterwards (first run: " + r.fabric + ")")
                        done += 1
            if progress:
                progress(total, total, "done")
        finally:
            if hosts:
                hosts.down()
    notes, rows = [], []
    for count in counts:
        plain = [f for f in raw["plain"] if f["count"] == count]
        fast = [f for f in raw["fastivc"] if f["count"] == count]
        ok = [i for i, f in enumerate(fast) if f["accelerated"] or f.get("partial")]
        at = f" at {count}" if count is not None else ""
        if not ok:
            f = fast[0]
            notes.append(f"no fastivc run{at} was accelerated (first run: server adopted "
                         f"{f['server_adopted']} offers for {f['connections_expected']} "
                         f"connections, {f['plain_fallbacks']} fell back to plain TCP)")
            continue
        full = [i for i in ok if fast[i]["accelerated"]]
        if len(ok) < repeats:
            notes.append(f"{repeats - len(ok)} of {repeats} fastivc runs{at} were not "
                         "accelerated; they and their paired plain runs are left out of the "
                         "rows (see raw)")
        partial = len(full) < len(ok)
        if partial:
            runs = "; ".join(f"run {i + 1}: the server adopted {fast[i]['server_adopted']} "
                             f"offers for {fast[i]['connections_expected']} connections, "
                             f"{fast[i]['plain_fallbacks']} fell back to plain TCP"
                             for i in ok if not fast[i]["accelerated"])
            notes.append(f"partial{at}: at most "
                         f"{min(fast[i].get('accelerated_connections', 0) for i in ok)} "
                         f"connections were accelerated at once ({runs}); the rest ran "
                         "plain TCP or were not made yet")
        for field, title in metrics:
            row = compare(title.format(count=count), "req/s", "higher",
                          [plain[i][field] for i in ok], [fast[i][field] for i in ok])
            row.update(accelerated=len(full) == repeats, accelerated_runs=len(ok),
                       fastivc_runs=repeats, partial=partial)
            if count is not None:
                row.update(count=count, connections=count, accelerated_connections=min(
                    fast[i].get("accelerated_connections", 0) for i in ok))
            rows.append(row)
    if not rows:
        raise RuntimeError(notes[0])
    return {
        "benchmark": name,
        "placement": pl.name,
        "baseline": f"plain TCP ({pl.name})",
        "fastivc": "fastivc run --event-loops, a fresh fabric per run",
        "repeats": repeats,
        "seconds_per_case": seconds,
        "date": started,
        "machine": machine_info(),
        "versions": versions(),
        "fastivc_settings": settings,
        "commands": commands,
        "notes": notes,
        "rows": rows,
        "raw": raw,
    }


def run_redis(repeats: int = 5, seconds: float = 1.0, loopback: bool = False,
              progress: Progress | None = None, clients: Sequence[int] | None = None) -> dict:
    """redis-benchmark GET and SET against redis-server: requests/s, at each
    count of `clients` (default: redis-benchmark's 50)."""
    require("redis-server", "redis-benchmark", "redis-cli")
    counts = list(clients) if clients else [REDIS_CLIENTS]
    if min(counts) < 1:
        raise ValueError("clients must be >= 1")
    at = ", {count} clients" if counts != [REDIS_CLIENTS] else ""
    doc = _drive("redis", _redis_once,
                 [("get_rps", "redis-benchmark GET" + at), ("set_rps", "redis-benchmark SET" + at)],
                 repeats, seconds, loopback, REDIS_PORT, progress, counts)
    doc["clients"] = counts
    doc["versions"].update({"redis-server": tool_version(["redis-server", "--version"]),
                            "redis-benchmark": tool_version(["redis-benchmark", "--version"])})
    doc["requests_per_test"] = max(1000, int(seconds * REDIS_RPS_GUESS))
    return doc


def run_nginx(repeats: int = 5, seconds: float = 1.0, workers: int = 1,
              connections: int | Sequence[int] = 10, loopback: bool = False,
              progress: Progress | None = None) -> dict:
    """wrk against nginx serving a small static file: requests/s, at each
    count of `connections`."""
    require("nginx", "wrk", "curl")
    counts = [connections] if isinstance(connections, int) else list(connections)
    if workers < 1 or not counts or min(counts) < 1:
        raise ValueError("workers and connections must be >= 1")
    title = (f"nginx ({workers} worker{'s' if workers > 1 else ''}) + wrk -c{{count}}, "
             f"{PAGE_SIZE} B file")
    doc = _drive("nginx", lambda r: _nginx_once(r, workers), [("rps", title)],
                 repeats, seconds, loopback, NGINX_PORT, progress, counts)
    connections = counts if len(counts) > 1 else counts[0]
    doc["versions"].update({"nginx": tool_version(["nginx", "-v"]),
                            "wrk": tool_version(["wrk", "--version"])})
    doc.update(workers=workers, connections=connections, page_bytes=PAGE_SIZE)
    return doc
