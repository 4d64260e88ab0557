"""``fastivc vm demo``: two QEMU guests on one host, plain TCP over their
virtual NICs against fastivc through the ivshmem fabric, measured in the same
run and shown side by side (with KVM or TCG said).

The host creates the fabric file (``fastivc-mkfabric``), both guests get it as
an ivshmem device, and each measurement runs ``fastivc-tcpbench`` in the two
guests twice: plain, and under the library with ``FASTIVC_FABRIC=pci:auto``.
An accelerated run counts only if the client's log says it switched to the
ring."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

from .._paths import helper_path
from ..bench.stats import compare
from .check import start_tcpbench_server
from .guest import Network, VMError

PORT = 7300
PCI_ENV = ("LD_PRELOAD=/opt/fastivc/libfastivc.so FASTIVC_FABRIC=pci:auto "
           "FASTIVC_LOG=debug:/tmp/fastivc.log ")
SCENARIOS = [("64 B round trip, p50 latency", "us", "lower", "rr", "--size 64", "p50_us"),
             ("64 B requests/responses", "per s", "higher", "rr", "--size 64", "rate"),
             ("stream, 64 KiB writes", "GB/s", "higher", "stream", "--size 65536", "gbps")]


def _one(net: Network, mode: str, args: str, seconds: float, fast: bool) -> dict:
    a, b = net.guests
    env = PCI_ENV if fast else ""
    b.run("rm -f /tmp/fastivc.log")
    a.run("rm -f /tmp/fastivc.log")
    start_tcpbench_server(b, env, PORT, f"--mode {mode} {args}")
    try:
        c = a.run(f"{env}fastivc-tcpbench client --host {b.ip} --port {PORT} --mode {mode} "
                  f"{args} --seconds {seconds}", timeout=seconds + 120)
    finally:
        b.run("kill $(cat /tmp/server.pid); sleep 0.2")
    lines = [ln for ln in c.output.splitlines() if ln.startswith("{")]
    if c.rc != 0 or not lines:
        raise VMError(f"{a.name}: tcpbench client failed ({c.rc}): {c.output[-500:]}")
    doc = json.loads(lines[0])
    if fast:
        log = a.run("cat /tmp/fastivc.log").output
        doc["accelerated"] = "switched to the ring" in log
    return doc


def run(repeats: int = 3, seconds: float = 2.0, accel: str = "auto",
        cache=None, progress=None) -> dict:
    fd, fabric = tempfile.mkstemp(prefix="fastivc-vmdemo-", dir="/dev/shm")
    os.close(fd)
    os.unlink(fabric)
    made = subprocess.run([str(helper_path("fastivc-mkfabric")), fabric, "16", "1024"],
                          capture_output=True, text=True)
    if made.returncode != 0:
        raise VMError(f"cannot create the fabric {fabric}: {made.stderr.strip()}")
    try:
        with Network(2, accel=accel, fabric=fabric, cache=cache) as net:
            raw: dict = {}
            step = 0
            total = len({(m, a) for _n, _u, _b, m, a, _k in SCENARIOS}) * repeats * 2
            for name, _unit, _better, mode, args, _key in SCENARIOS:
                if (mode, args) in raw:
                    continue
                runs = {"plain": [], "fastivc": []}
                for i in range(repeats):
                    order = (False, True) if i % 2 == 0 else (True, False)
                    for fast in order:
                        if progress:
                            progress(step, total, name)
                        step += 1
                        d = _one(net, mode, args, seconds, fast)
                        if fast and not d.get("accelerated"):
                            raise VMError("the accelerated run did not switch to the ring "
                                          "(see the guest's /tmp/fastivc.log)")
                        runs["fastivc" if fast else "plain"].append(d)
                raw[(mode, args)] = runs
            rows = []
            for name, unit, better, mode, args, key in SCENARIOS:
                runs = raw[(mode, args)]
                rows.append(compare(name, unit, better, [d[key] for d in runs["plain"]],
                                    [d[key] for d in runs["fastivc"]]))
            return {"accel": net.accel, "guests": [g.ip for g in net.guests],
                    "boot_seconds": {g.name: g.boot_seconds for g in net.guests},
                    "repeats": repeats, "seconds": seconds, "rows": rows,
                    "notes": net.notes,
                    "commands": {
                        "plain": "fastivc-tcpbench server|client --mode rr|stream (in the guests)",
                        "fastivc": PCI_ENV + "fastivc-tcpbench ... (in the guests)"}}
    finally:
        try:
            os.unlink(fabric)
        except FileNotFoundError:
            pass


def print_table(doc: dict) -> None:
    print(f"fastivc vm demo: two QEMU guests ({doc['accel'].upper()}) on one host, "
          f"{doc['guests'][0]} -> {doc['guests'][1]}")
    print("plain: TCP over the guests' virtual NICs; fastivc: the same program under the "
          "library, FASTIVC_FABRIC=pci:auto (the ivshmem fabric)")
    hdr = f"{'scenario':<30} {'unit':<6} {'plain TCP':>12} {'fastivc':>12} {'speedup':>18}"
    print(hdr)
    print("-" * len(hdr))
    for r in doc["rows"]:
        lo, hi = r["ratio_range"]
        print(f"{r['scenario']:<30} {r['unit']:<6} {r['baseline']['median']:>12.4g} "
              f"{r['fastivc']['median']:>12.4g} {r['ratio']:>7.1f}x ({lo:.1f}-{hi:.1f})")
    print(f"median of {doc['repeats']} runs of {doc['seconds']:g} s each; speedup > 1 means "
          "fastivc is better")
    if doc["accel"] == "tcg":
        print("note: TCG emulates the CPU in software; both columns are far slower than "
              "on KVM, and the ratio is what carries over")
