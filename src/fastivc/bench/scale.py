"""`fastivc bench scale`: does a busy connection slow down when many idle ones
are open (DESIGN.md I10), and what does an idle connection cost in shared
memory?

fastivc-tcpbench (an ordinary TCP program) runs its --epoll server (one
thread, every connection in one epoll set) and a client that opens one busy
connection and N idle ones (`--idle N`), then measures 64 B round trips on
the busy one.  Each N runs plain TCP and under `fastivc run`, alternating
which goes first.  Each fastivc run gets a fresh fabric made by
fastivc-mkfabric with enough slots for N + 1 connections.  While the client
waits at its checkpoints (`--pause`) the fabric file's resident size
(st_blocks * 512) is read with the busy connection up and again with all
idle ones up, and the fabric is asked how many of the N + 1 connections are
accelerated: a row where not all were is marked partial.

Rows: p50 and p99 per N (baseline plain TCP), and the flatness figure:
fastivc's p50 at the largest N against fastivc's at N = 0 (acceptance:
within FLAT_LIMIT).  `memory`: shared memory per idle connection per N.
"""

from __future__ import annotations

import json
import os
import resource
import select
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence

from .._paths import helper_path
from ..fabric import MAX_SLOTS, Fabric, resident_bytes
from ..netns import in_ns
from ..run import build_env
from .stats import (
    DEFAULT_RING_KIB,
    compare,
    fastivc_settings,
    machine_info,
    now,
    summarize,
    versions,
)
from .tcp import Placement, place

Progress = Callable[[int, int, str], None]
DEFAULT_IDLE = (0, 100, 1000, 10000)
DEFAULT_SLOTS = 256  # the library's default slot count (FIVC_DEFAULT_SLOTS)
FLAT_LIMIT = 1.2  # acceptance: p50 at the largest N within this factor of N = 0
SLOT_MARGIN = 8  # slots beyond N + 1 in the bench's fabric
MEMORY_SHARE = 8  # rings of all connections may use at most 1/8 of free memory


def _plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k != "LD_PRELOAD" and not k.startswith("FASTIVC_")}


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def auto_ring_kib(max_conns: int, directory: str = "/dev/shm") -> tuple[int, str]:
    """The ring size for the bench's fabrics: the library's default, unless
    whole rings for max_conns connections (the current layout reserves both
    rings of a slot on first use) would take more than 1/MEMORY_SHARE of the
    free memory or of the free space where the fabric lives; then the largest
    power of two that fits (at least 4 KiB), with a note saying so."""
    st = os.statvfs(directory)
    budget = min(st.f_bavail * st.f_frsize, _mem_available() or 1 << 62) // MEMORY_SHARE
    kib = DEFAULT_RING_KIB
    while kib > 4 and max_conns * 2 * kib * 1024 > budget:
        kib //= 2
    note = "" if kib == DEFAULT_RING_KIB else (
        f"rings of {kib} KiB (not the library's {DEFAULT_RING_KIB} KiB): whole rings for "
        f"{max_conns} connections must fit in 1/{MEMORY_SHARE} of the free memory "
        f"({budget * MEMORY_SHARE >> 20} MiB); --ring-kib sets it")
    return kib, note


def _nofile(need: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE (inherited by the helpers) to
    cover `need` descriptors, or say why it cannot be."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise RuntimeError(f"{need} file descriptors needed, but RLIMIT_NOFILE's hard limit "
                           f"is {hard} (raise it, e.g. `ulimit -Hn {need}` as root)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def _readline(p: subprocess.Popen, buf: bytearray, timeout: float, what: str) -> bytes:
    """One line of p's stdout within timeout seconds."""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"{what}: no output within {timeout:.0f} s")
        r, _, _ = select.select([p.stdout], [], [], left)
        if r:
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                err = p.stderr.read().decode(errors="replace").strip() if p.stderr else ""
                raise RuntimeError(f"{what}: exited ({p.wait()}) early: {err[-1000:]}")
            buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line


def _mkfabric(path: str, slots: int, ring_kib: int) -> dict:
    r = subprocess.run([str(helper_path("fastivc-mkfabric")), path, str(slots), str(ring_kib)],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"fastivc-mkfabric {path} {slots} {ring_kib} failed: "
                           f"{r.stderr.strip()}")
    return json.loads(r.stdout)


def _stop(srv: subprocess.Popen, cli: subprocess.Popen | None) -> None:
    """End a --pause client and its server.  The server goes first: its
    side keeps the TIME_WAITs, not the client's ports (the library binds
    them before connecting)."""
    if srv.poll() is None:
        srv.kill()
    srv.wait()
    if cli is not None:
        try:
            cli.communicate(b"\n", timeout=30)
        except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
            cli.kill()
            cli.wait()


def _once(idle: int, fast: bool, pl: Placement, port: int, seconds: float, fabric: str,
          slots: int, ring_kib: int) -> tuple[dict, list[str]]:
    helper = str(helper_path("fastivc-tcpbench"))
    env = build_env(_plain_env(), fabric=fabric) if fast else _plain_env()
    srv_argv = [helper, "server", "--bind", pl.server_addr, "--port", str(port), "--mode", "rr",
                "--epoll"]
    cli_argv = [helper, "client", "--host", pl.server_addr, "--port", str(port), "--mode", "rr",
                "--seconds", str(seconds), "--idle", str(idle), "--pause"]
    res: dict = {"idle": idle, "connections": idle + 1}
    if fast:
        res["fabric"] = _mkfabric(fabric, slots, ring_kib)
        res["fabric"].update(slots=slots, ring_kib=ring_kib)
        res["resident_created"] = resident_bytes(fabric)
    srv = subprocess.Popen(in_ns(pl.server_ns, srv_argv), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    cli = None
    try:
        sbuf = bytearray()
        if _readline(srv, sbuf, 30, "fastivc-tcpbench server") != b"ready":
            raise RuntimeError("fastivc-tcpbench server did not say ready")
        cli = subprocess.Popen(in_ns(pl.client_ns, cli_argv), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        buf = bytearray()
        what = shlex.join(cli_argv)
        limit = 60 + idle / 200  # opening 10,000 connections takes a few seconds
        json.loads(_readline(cli, buf, limit, what))  # {"checkpoint":"busy"}
        if fast:
            res["resident_busy"] = resident_bytes(fabric)
        cli.stdin.write(b"\n")
        cli.stdin.flush()
        if idle:
            json.loads(_readline(cli, buf, limit, what))  # {"checkpoint":"idle",...}
            cli.stdin.write(b"\n")
            cli.stdin.flush()
        if fast:
            res["resident_idle"] = resident_bytes(fabric)
            with Fabric(fabric) as fab:
                res["accelerated_connections"] = fab.connected_count(port)
            res["shm_per_idle_connection"] = ((res["resident_idle"] - res["resident_busy"]) / idle
                                              if idle else None)
        res.update(json.loads(_readline(cli, buf, 60 + 4 * seconds, what)))
    finally:
        _stop(srv, cli)
    prefix = ["fastivc", "run", "--fabric", fabric, "--"] if fast else []
    cmds = [shlex.join(in_ns(pl.server_ns, [*prefix, *srv_argv])),
            shlex.join(in_ns(pl.client_ns, [*prefix, *cli_argv]))]
    return res, cmds


def _fastivc_rows(idle: int, fast: list[dict]) -> dict:
    acc = min(r["accelerated_connections"] for r in fast)
    return {"idle": idle, "connections": idle + 1, "accelerated_connections": acc,
            "partial": acc < idle + 1}


def run(idle: Sequence[int] = DEFAULT_IDLE, repeats: int = 3, seconds: float = 1.0,
        loopback: bool = False, progress: Progress | None = None, *,
        slots: int | None = None, ring_kib: int | None = None) -> dict:
    """Measure; `slots` (default: N + 1 + a margin, at least the library's
    default) and `ring_kib` (default: auto_ring_kib) shape each fastivc run's
    fabric."""
    idle = sorted(set(idle))
    if repeats < 1 or seconds <= 0 or not idle or idle[0] < 0:
        raise ValueError("repeats must be >= 1, seconds > 0 and idle counts >= 0")
    top = idle[-1]

    def nslots(n: int) -> int:
        return slots or max(n + 1 + SLOT_MARGIN, DEFAULT_SLOTS)
    if nslots(top) > MAX_SLOTS:
        raise RuntimeError(f"{top} idle connections need {top + 1 + SLOT_MARGIN} channel slots; "
                           f"a fabric has at most {MAX_SLOTS}")
    notes = []
    if ring_kib is None:
        ring_kib, note = auto_ring_kib(nslots(top))
        if note:
            notes.append(note)
    _nofile(top + 256)
    started = now()
    hosts, pl = place(loopback)
    raw: dict[str, list[dict]] = {"plain": [], "fastivc": []}
    commands: dict[str, list[str]] = {"plain": [], "fastivc": []}
    total, done = len(idle) * repeats * 2, 0
    port = 23000 + os.getpid() % 2000
    fabric = tempfile.mktemp(prefix="fastivc-bench-scale-", dir="/dev/shm")
    try:
        for rep in range(repeats):
            for n in idle:
                for mode in (("plain", "fastivc") if rep % 2 == 0 else ("fastivc", "plain")):
                    if progress:
                        progress(done, total, f"{n} idle, {mode} ({rep + 1}/{repeats})")
                    port += 1
                    try:
                        res, cmds = _once(n, mode == "fastivc", pl, port, seconds, fabric,
                                          nslots(n), ring_kib)
                    except RuntimeError as e:
                        raise RuntimeError(f"{n} idle, {mode}, repeat {rep + 1}: {e}") from e
                    finally:
                        if os.path.exists(fabric):
                            os.unlink(fabric)
                    res["repeat"] = rep
                    raw[mode].append(res)
                    if rep == 0:
                        commands[mode] += cmds
                    done += 1
        if progress:
            progress(total, total, "done")
    finally:
        if hosts:
            hosts.down()
    rows, memory = [], []
    for n in idle:
        plain = [r for r in raw["plain"] if r["idle"] == n]
        fast = [r for r in raw["fastivc"] if r["idle"] == n]
        extra = _fastivc_rows(n, fast)
        for field, label in (("p50_us", "p50"), ("p99_us", "p99")):
            row = compare(f"64 B round trip {label}, {n} idle connections", "us", "lower",
                          [r[field] for r in plain], [r[field] for r in fast])
            row.update(extra, percentile=label)
            rows.append(row)
        if extra["partial"]:
            notes.append(f"{n} idle: only {extra['accelerated_connections']} of {n + 1} "
                         "connections were accelerated (see raw)")
        if n:
            per = [r["shm_per_idle_connection"] for r in fast]
            memory.append({"idle": n, "unit": "bytes", "per_connection": summarize(per)})
    if idle[0] == 0 and top > 0:
        base = [r["p50_us"] for r in raw["fastivc"] if r["idle"] == 0]
        at_top = [r["p50_us"] for r in raw["fastivc"] if r["idle"] == top]
        row = compare(f"fastivc p50, {top} idle vs 0 idle (flatness)", "us", "lower", base,
                      at_top)
        growth = row["fastivc"]["median"] / row["baseline"]["median"]
        row.update(flatness=True, baseline_label="fastivc, 0 idle", idle=top,
                   limit=FLAT_LIMIT, growth=growth, within_limit=growth <= FLAT_LIMIT)
        rows.append(row)
    return {
        "benchmark": "scale",
        "placement": pl.name,
        "baseline": f"plain TCP ({pl.name})",
        "fastivc": "fastivc run, a fresh fabric per run sized for N + 1 connections",
        "idle": idle,
        "repeats": repeats,
        "seconds_per_case": seconds,
        "date": started,
        "machine": machine_info(),
        "versions": versions(),
        "fastivc_settings": fastivc_settings(
            build_env(os.environ, fabric=fabric), "a fresh file per fastivc run under "
            "/dev/shm made by fastivc-mkfabric, removed afterwards: " + fabric,
            ring_kib=ring_kib, slots={n: nslots(n) for n in idle}),
        "commands": commands,
        "notes": notes,
        "rows": rows,
        "memory": memory,
        "raw": raw,
    }


def format_extra(doc: dict) -> str:
    """The lines under the table (which ends with the notes): memory per
    idle connection, and the verdict of the flatness row."""
    from ..stat import human

    lines = []
    for m in doc.get("memory", []):
        s = m["per_connection"]
        lines.append(f"shared memory per idle connection, {m['idle']} idle: "
                     f"{human(round(s['median']))} ({human(round(s['min']))}-"
                     f"{human(round(s['max']))})")
    for r in doc["rows"]:
        if r.get("flatness"):
            lines.append(f"flatness: fastivc p50 at {r['idle']} idle is {r['growth']:.2f}x its "
                         f"p50 at 0 idle ({'within' if r['within_limit'] else 'NOT within'} "
                         f"{r['limit']}x)")
    return "\n".join(lines)
