"""``fastivc vm check``: boot two guests and check what the guest tooling provides.

- plain TCP between the guests over their virtual NICs (``fastivc-tcpbench``
  request/response, 64 B), the numbers collected on the host;
- the ivshmem device in each guest (vendor 0x1af4, device 0x1110, BAR 2 the
  size of the fabric), and that the host and the guests see the same memory
  through it (a word written on the host is read in both guests with devmem,
  a word written in a guest is read on the host);
- that LD_PRELOAD of libfastivc.so loads in a guest and a connection made
  under it still works.  It stays plain TCP: each guest has its own
  /dev/shm, and the library has no PCI fabric yet (issue 6, item 1).

Returns data; the CLI prints it.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import time
from pathlib import Path

from .build import build
from .guest import Guest, Network, VMError

IVSHMEM_VENDOR, IVSHMEM_DEVICE = "0x1af4", "0x1110"
PORT = 5201
HOST_MAGIC = 0x46495643  # "FIVC", written by the host at offset 0
GUEST_MAGIC = 0x5155454E  # written by guest i at offset 8 + 4*i

FIND_IVSHMEM = f"""
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat $d/vendor)" = {IVSHMEM_VENDOR} ] && [ "$(cat $d/device)" = {IVSHMEM_DEVICE} ]; then
    set -- $(sed -n 3p $d/resource)
    echo "${{d##*/}} $1 $(stat -c %s $d/resource2)"
  fi
done
"""


def ivshmem_devices(g: Guest) -> list[dict]:
    """The ivshmem devices a guest sees: PCI address, BAR 2 physical address and size."""
    r = g.run(FIND_IVSHMEM)
    if r.rc != 0:
        raise VMError(f"guest {g.name}: listing PCI devices failed: {r.output}")
    devs = []
    for line in r.output.splitlines():
        bdf, bar, size = line.split()
        devs.append({"bdf": bdf, "bar2": int(bar, 16), "size": int(size)})
    return devs


def start_tcpbench_server(g: Guest, env: str, port: int, args: str) -> None:
    """fastivc-tcpbench server in the background in guest g (output in
    /tmp/server.log, pid in /tmp/server.pid), once it says it is ready."""
    r = g.run(f"{env}fastivc-tcpbench server --bind 0.0.0.0 --port {port} {args} "
              ">/tmp/server.log 2>&1 & echo $! >/tmp/server.pid\n"
              "for i in $(seq 100); do\n"
              "  grep -q ready /tmp/server.log && break; sleep 0.1\ndone\n"
              "cat /tmp/server.log")
    if "ready" not in r.output:
        raise VMError(f"guest {g.name}: tcpbench server not ready: {r.output}")


def _rr(server: Guest, client: Guest, seconds: float, preload: bool) -> dict:
    env = "LD_PRELOAD=/opt/fastivc/libfastivc.so FASTIVC_LOG=debug " if preload else ""
    start_tcpbench_server(server, env, PORT, "--mode rr")
    try:
        c = client.run(f"{env}fastivc-tcpbench client --host {server.ip} --port {PORT} "
                       f"--mode rr --seconds {seconds}", timeout=seconds + 60)
    finally:
        s = server.run("kill $(cat /tmp/server.pid); sleep 0.2; cat /tmp/server.log")
    if c.rc != 0:
        raise VMError(f"guest {client.name}: tcpbench client failed ({c.rc}): {c.output}")
    lines = c.output.splitlines()
    doc = json.loads(next(ln for ln in lines if ln.startswith("{")))
    out = {k: doc[k] for k in ("samples", "rate", "p50_us", "p99_us", "mean_us", "min_us")}
    if preload:
        out["client_log"] = [ln for ln in lines if "fastivc" in ln][:5]
        out["server_log"] = [ln for ln in s.output.splitlines() if "fastivc" in ln][:5]
        out["loaded"] = any("loaded" in ln for ln in out["client_log"]) and \
            any("loaded" in ln for ln in out["server_log"])
    return out


def _shared_memory(net: Network, devs: list[dict]) -> dict:
    """Host writes a word, every guest reads it; every guest writes one, the host reads."""
    fd = os.open(net.fabric, os.O_RDWR)
    try:
        m = mmap.mmap(fd, 4096, mmap.MAP_SHARED)
    finally:
        os.close(fd)
    try:
        m[0:4] = struct.pack("<I", HOST_MAGIC)
        seen = []
        for i, (g, d) in enumerate(zip(net.guests, devs, strict=True)):
            r = g.run(f"devmem {d['bar2']:#x} 32; devmem {d['bar2'] + 8 + 4 * i:#x} 32 "
                      f"{GUEST_MAGIC + i:#x}")
            seen.append(int(r.output.split()[0], 16) if r.rc == 0 and r.output else None)
        written = [struct.unpack_from("<I", m, 8 + 4 * i)[0] for i in range(len(net.guests))]
    finally:
        m.close()
    return {"guests_read_host_word": seen == [HOST_MAGIC] * len(net.guests),
            "host_read_guest_words": written == [GUEST_MAGIC + i
                                                 for i in range(len(net.guests))]}


def run(cache: Path | None = None, accel: str = "auto", seconds: float = 2.0) -> dict:
    """Build (or reuse) the guest, boot two, run the checks; a dict of what was seen."""
    image = build(cache)
    t0 = time.monotonic()
    with Network(2, accel=accel, cache=cache) as net:
        a, b = net.guests
        doc: dict = {
            "image": image.to_dict(), "accel": net.accel, "notes": net.notes,
            "boot_seconds": {g.name: round(g.boot_seconds, 2) for g in net.guests},
            "start_seconds": round(time.monotonic() - t0, 2),
            "fabric": {"path": str(net.fabric), "size": net.fabric_size},
        }
        devs = [ivshmem_devices(g) for g in net.guests]
        doc["ivshmem"] = {g.name: d for g, d in zip(net.guests, devs, strict=True)}
        if not all(len(d) == 1 and d[0]["size"] == net.fabric_size for d in devs):
            raise VMError(f"ivshmem device missing or of the wrong size: {doc['ivshmem']}")
        doc["shared_memory"] = _shared_memory(net, [d[0] for d in devs])
        ping = a.run(f"ping -c 3 -W 5 {b.ip}", timeout=30)
        doc["ping"] = ping.rc == 0
        doc["rr_plain"] = _rr(b, a, seconds, preload=False)
        doc["rr_preload"] = _rr(b, a, seconds, preload=True)
    return doc
