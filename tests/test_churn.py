"""Connection churn: connect, request, response, close, as fast as one
client can, every connection accelerated and none hung.

The upgrade's two sides race at every connection: the client may switch
before or after it writes its request, the server may be spinning, asleep in
a TCP read with its ring armed, or not yet in accept.  A lost wake-up in any
of those orders shows up here as a client that never finishes (it did: a
server that armed its ring after the client's ring write slept in recv for
ever)."""

from __future__ import annotations

import os
import subprocess

import pytest
from netenv import ADDR, NS_CLIENT, NS_SERVER

from fastivc._paths import helper_path
from fastivc.netns import in_ns
from fastivc.run import build_env

PORT = 22100 + os.getpid() % 2000  # below the ephemeral range (test_scale.py)


def churn(shm_path: str, tmp_path, host: str, ns_s, ns_c, spin_us: int, port: int) -> None:
    tb = str(helper_path("fastivc-tcpbench"))
    slog, clog = tmp_path / f"s{port}.log", tmp_path / f"c{port}.log"
    env_s = build_env(os.environ, fabric=shm_path, log=f"debug:{slog}", spin_us=spin_us)
    env_c = build_env(os.environ, fabric=shm_path, log=f"debug:{clog}", spin_us=spin_us)
    srv = subprocess.Popen(in_ns(ns_s, [tb, "server", "--bind", host, "--port", str(port),
                                        "--mode", "connect"]),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_s, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        try:
            c = subprocess.run(in_ns(ns_c, [tb, "client", "--host", host, "--port", str(port),
                                            "--mode", "connect", "--seconds", "2"]),
                               capture_output=True, text=True, env=env_c, timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the churning client hung (spin {spin_us} us); its log ends: "
                        f"{clog.read_text()[-2000:]}")
        assert c.returncode == 0, c.stderr
    finally:
        srv.kill()
        srv.wait()
    import json

    n = json.loads(c.stdout)["connections"]
    assert n > 50, c.stdout
    # every connection switched to the ring on both sides
    assert clog.read_text().count("switched to the ring") == n
    assert slog.read_text().count("adopted offer") >= n


@pytest.mark.parametrize("spin_us", [50, 0])
def test_churn_on_loopback_accelerates_every_connection_and_never_hangs(
        shm_path, tmp_path, spin_us):
    churn(shm_path, tmp_path, "127.0.0.1", None, None, spin_us, PORT + (spin_us > 0))


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
@pytest.mark.parametrize("spin_us", [50, 0])
def test_churn_between_namespaces_accelerates_every_connection_and_never_hangs(
        shm_path, tmp_path, netns, spin_us):
    churn(shm_path, tmp_path, ADDR[4][1], NS_SERVER, NS_CLIENT, spin_us,
          PORT + 2 + (spin_us > 0))
