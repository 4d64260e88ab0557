"""Unmodified real programs from Debian under `fastivc run` on both ends,
client and server in two network namespaces: python's http.server with curl,
iperf3, sockperf.  (Python socket programs: tests/peer.py in test_upgrade.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
from netenv import ADDR, NS_CLIENT, NS_SERVER, Proc
from test_upgrade import _ports

from fastivc import Fabric
from fastivc.netns import in_ns
from fastivc.run import build_env

pytestmark = pytest.mark.usefixtures("netns")
SERVER = ADDR[4][1]


def need(prog: str) -> None:
    if not shutil.which(prog):
        pytest.fail(f"{prog} is not installed (make test installs it)")


def run_client(argv: list[str], fabric: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(in_ns(NS_CLIENT, argv), env=build_env(os.environ, fabric=fabric),
                          capture_output=True, text=True, timeout=timeout)


def ring_bytes(fabric: str, port: int) -> int:
    if not os.path.exists(fabric):
        return 0  # created lazily, at the first connection
    with Fabric(fabric) as fab:
        return sum(s.client_to_server.produced + s.server_to_client.produced
                   for s in fab.slots() if s.peer.port == port and s.state == "connected")


def test_curl_against_python_http_server(shm_path, tmp_path):
    need("curl")
    blob = os.urandom(3_000_000)
    (tmp_path / "blob").write_bytes(blob)
    port = next(_ports)
    srv = Proc(["python3", "-m", "http.server", str(port), "--bind", SERVER, "--directory",
                str(tmp_path)], shm_path, True, NS_SERVER)
    try:
        for _ in range(50):  # until it listens
            r = run_client(["curl", "-s", "-o", str(tmp_path / "out"), "-w", "%{http_code}",
                            f"http://{SERVER}:{port}/blob"], shm_path)
            if r.stdout == "200":
                break
            time.sleep(0.1)
        assert r.stdout == "200", r.stderr
        assert (tmp_path / "out").read_bytes() == blob
    finally:
        srv.kill()


def test_iperf3_reports_matching_transfer_through_the_ring(shm_path):
    need("iperf3")
    port = next(_ports)
    srv = Proc(["iperf3", "-s", "-1", "-p", str(port)], shm_path, True, NS_SERVER)
    try:
        time.sleep(0.5)
        cli = subprocess.Popen(in_ns(NS_CLIENT, ["iperf3", "-c", SERVER, "-p", str(port),
                                                 "-t", "2", "-J"]),
                               env=build_env(os.environ, fabric=shm_path),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        during = 0  # the most the live data slot carried while we looked
        while cli.poll() is None:
            during = max(during, ring_bytes(shm_path, port))
            time.sleep(0.05)
        out, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, err
        end = json.loads(out)["end"]
        sent, received = end["sum_sent"]["bytes"], end["sum_received"]["bytes"]
        assert received > 0
        assert abs(sent - received) <= max(sent // 100, 4 << 20), (sent, received)
        assert during > 64 << 20, f"only {during} bytes seen going through the ring"
    finally:
        srv.kill()


def test_sockperf_ping_pong_and_throughput(shm_path):
    need("sockperf")
    port = next(_ports)
    srv = Proc(["sockperf", "server", "--tcp", "-i", SERVER, "-p", str(port)], shm_path, True,
               NS_SERVER)
    try:
        time.sleep(0.5)
        # sockperf sizes its sequence buffer from an assumed maximum message
        # rate; the ring exceeds it ("_seqN > m_maxSequenceNo"), so cap --mps.
        r = run_client(["sockperf", "ping-pong", "--tcp", "-i", SERVER, "-p", str(port), "-t", "1",
                        "-m", "64", "--mps", "300000"], shm_path)
        assert r.returncode == 0 and "Summary: Latency is" in r.stdout + r.stderr, r.stderr
        r = run_client(["sockperf", "throughput", "--tcp", "-i", SERVER, "-p", str(port), "-t", "1",
                        "-m", "65000"], shm_path)
        assert r.returncode == 0 and "BandWidth is" in r.stdout + r.stderr, r.stderr
        # and a plain sockperf client still gets served (mixed: plain TCP)
        r = subprocess.run(in_ns(NS_CLIENT, ["sockperf", "ping-pong", "--tcp", "-i", SERVER,
                                             "-p", str(port), "-t", "1", "-m", "64"]),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "Summary: Latency is" in r.stdout + r.stderr, r.stderr
    finally:
        srv.kill()
