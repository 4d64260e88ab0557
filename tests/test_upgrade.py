"""The upgrade protocol with unmodified programs (tests/peer.py) under
`fastivc run`: the fallback matrix, I2, exactness across the switch, peer
death and short connections (issue: transparent upgrade)."""

from __future__ import annotations

import itertools
import os
import signal
import time

import pytest
from netenv import ADDR, LOOPBACK, NS_CLIENT, NS_SERVER, peer, tcp_counters

from fastivc import Fabric

N = 300_000
# Listening ports for the tests: below the kernel's ephemeral range (32768 and
# up), where client sockets of earlier tests (10,000 short connections) may
# still hold a port.
_ports = itertools.count(10000 + os.getpid() % 250 * 40)  # below 20000 (test_scale.py)


def place(placement: str, ipv: int, request) -> tuple[str | None, str | None, str]:
    """(client ns, server ns, server address)."""
    if placement == "netns":
        request.getfixturevalue("netns")
        return NS_CLIENT, NS_SERVER, ADDR[ipv][1]
    return None, None, LOOPBACK[ipv]


def _slot_for(fabric: str, cport: int, sport: int):
    with Fabric(fabric) as fab:
        return [s for s in fab.slots() if s.local.port == cport and s.peer.port == sport]


@pytest.mark.parametrize("ipv", [4, 6])
@pytest.mark.parametrize("placement", ["loopback", "netns"])
@pytest.mark.parametrize("mode", ["client-first", "server-first", "both"])
@pytest.mark.parametrize("cfast,sfast", [(True, True), (True, False), (False, True),
                                         (False, False)],
                         ids=["both-fastivc", "plain-server", "plain-client", "both-plain"])
def test_fallback_matrix(request, shm_path, cfast, sfast, mode, placement, ipv):
    fallback_case(request, shm_path, cfast, sfast, mode, placement, ipv)


def fallback_case(request, shm_path, cfast, sfast, mode, placement, ipv, io="blocking"):
    """One case of the fallback matrix: data intact both ways; both under
    fastivc -> upgraded, every byte but the pre-switch ones through the ring;
    otherwise plain TCP carried it all; nothing left in the fabric after.
    io other than blocking: non-blocking sockets in an event loop, fastivc
    with event loops on."""
    cns, sns, host = place(placement, ipv, request)
    port = next(_ports)
    args = ("--mode", mode, "--bytes", str(N), "--io", io)
    nb = io != "blocking"
    srv = peer("server", host, port, shm_path, sfast, sns, *args, event_loops=nb)
    cli = None
    try:
        srv.line()
        cli = peer("client", host, port, shm_path, cfast, cns, *args, event_loops=nb)
        c, s = cli.line(), srv.line()
        assert c["intact"] and s["intact"], (c, s)
        assert c["received"] == N and s["received"] == N
        cport = c["local"][1]
        slots = _slot_for(shm_path, cport, port) if os.path.exists(shm_path) else []
        if cfast and sfast:
            assert len(slots) == 1, slots
            sl = slots[0]
            assert sl.state == "connected"
            # every byte went through the ring, but the client's pre-switch TCP bytes
            assert sl.client_to_server.produced + sl.switch_bytes == N
            assert sl.server_to_client.produced == N
            kc = tcp_counters(sns, port)  # the server's side of the connection
            assert kc["bytes_sent"] < 4096, kc  # doorbells only
            assert kc["bytes_received"] < sl.switch_bytes + 4096, kc
        else:
            assert not [sl for sl in slots if sl.state == "connected"], slots
            kc = tcp_counters(sns, port)
            assert kc["bytes_sent"] >= N and kc["bytes_received"] >= N
    finally:
        if cli:
            assert cli.finish() == 0
        assert srv.finish() == 0
    with Fabric(shm_path) if os.path.exists(shm_path) else _nullfab() as fab:
        if fab:
            assert fab.slots() == [] and fab.offers() == []


class _nullfab:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return None


I2_SCRIPT = r"""
import json, socket, sys
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)
c = socket.create_connection(ls.getsockname())   # connect: must not wait for accept
c.sendall(b"hello before accept " * 100)
s, _ = ls.accept()                                # accept: must not wait for the client
got = b""
while len(got) < 2000:
    got += s.recv(4096)
s.sendall(b"reply via ring")
r = c.recv(100)
c.sendall(b"after the switch")
tail = s.recv(100)
print(json.dumps({"ok": got == b"hello before accept " * 100 and r == b"reply via ring"
                  and tail == b"after the switch", "cport": c.getsockname()[1],
                  "sport": ls.getsockname()[1]}), flush=True)
sys.stdin.read()
"""


def test_i2_single_thread_connects_to_own_listener_then_accepts(shm_path):
    import sys

    from netenv import Proc
    p = Proc([sys.executable, "-c", I2_SCRIPT], shm_path, True)
    try:
        out = p.line(timeout=20)
        assert out["ok"]
        (sl,) = _slot_for(shm_path, out["cport"], out["sport"])
        assert sl.state == "connected"
        assert sl.switch_bytes == 2000  # written before accept, over TCP
        assert sl.server_to_client.produced == len(b"reply via ring")
        assert sl.client_to_server.produced == len(b"after the switch")
    finally:
        assert p.finish() == 0


@pytest.mark.parametrize("mode", ["client-first", "both"])
def test_exact_across_switch_with_late_accept(request, shm_path, mode):
    n = 6_000_000
    port = next(_ports)
    srv = peer("server", "127.0.0.1", port, shm_path, True, None, "--mode", mode,
               "--bytes", str(n), "--accept-delay", "0.5", "--chunk-max", "70000")
    srv.line()
    cli = peer("client", "127.0.0.1", port, shm_path, True, None, "--mode", mode,
               "--bytes", str(n), "--chunk-max", "70000")
    try:
        c, s = cli.line(), srv.line()
        assert c["intact"] and s["intact"] and s["received"] == n
        (sl,) = _slot_for(shm_path, c["local"][1], port)
        # the client wrote into TCP before the server accepted: N > 0
        assert sl.switch_bytes > 0
        assert sl.switch_bytes + sl.client_to_server.produced == n
    finally:
        cli.finish()
        srv.finish()


@pytest.mark.parametrize("victim", ["client", "server"])
@pytest.mark.parametrize("placement", ["loopback", "netns"])
def test_peer_death_mid_transfer(request, shm_path, victim, placement):
    cns, sns, host = place(placement, 4, request)
    port = next(_ports)
    srv = peer("server", host, port, shm_path, True, sns, "--mode", "sink")
    srv.line()
    cli = peer("client", host, port, shm_path, True, cns, "--mode", "sink")
    try:
        addr = cli.line()
        time.sleep(0.3)  # data is flowing through the ring
        (sl,) = _slot_for(shm_path, addr["local"][1], port)
        assert sl.state == "connected" and sl.client_to_server.produced > 0
        dead, survivor = (cli, srv) if victim == "client" else (srv, cli)
        os.kill(dead.p.pid, signal.SIGKILL)
        if placement == "netns":  # `ip netns exec` execs: the pid is the program
            pass
        t0 = time.monotonic()
        out = survivor.line(timeout=10)  # EOF / ECONNRESET / EPIPE, not a hang
        assert time.monotonic() - t0 < 5
        if victim == "client":
            assert out["received"] > 0
        else:
            assert out["error"]
        assert survivor.finish() == 0
    finally:
        cli.kill()
        srv.kill()
    with Fabric(shm_path) as fab:  # the survivor's close reclaimed the dead side
        assert fab.slots() == [] and fab.offers() == []


def test_short_connections_leave_nothing_behind(shm_path):
    count = 10_000
    port = next(_ports)
    srv = peer("server", "127.0.0.1", port, shm_path, True, None, "--mode", "cycles",
               "--count", str(count))
    srv.line()
    cli = peer("client", "127.0.0.1", port, shm_path, True, None, "--mode", "cycles",
               "--count", str(count))
    try:
        out = cli.line(timeout=300)
        assert out == {"cycles": count, "ok": count}
        assert srv.line(timeout=60) == {"served": count}
    finally:
        try:
            cli.finish()
        finally:
            srv.finish()
    with Fabric(shm_path) as fab:
        assert fab.slots() == [] and fab.offers() == []


FD_SCRIPT = r"""
import json, os, socket, sys
from fastivc import Fabric
fabric = os.environ["FASTIVC_FABRIC"]
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)
c = socket.create_connection(ls.getsockname()); s, _ = ls.accept()
c.sendall(b"one"); assert s.recv(10) == b"one"
mine = [int(f) for f in os.listdir("/proc/self/fd")
        if os.path.realpath(f"/proc/self/fd/{f}") == os.path.realpath(fabric)]
for fd in mine:          # what a daemon closing "all other fds" would do
    os.close(fd)
    os.dup2(0, fd)
c.sendall(b"two"); got = s.recv(10)
with Fabric(fabric) as fab:
    alive = [m.alive for m in fab.members()]
print(json.dumps({"found": len(mine), "got": got.decode(), "alive": alive}), flush=True)
"""


def test_program_closing_the_fabric_fd_keeps_the_member_alive(shm_path):
    import sys

    from netenv import Proc
    p = Proc([sys.executable, "-c", FD_SCRIPT], shm_path, True)
    try:
        out = p.line(timeout=20)
        assert out["found"] == 1 and out["got"] == "two"
        assert out["alive"] and all(out["alive"]), out
    finally:
        p.finish()


FORK_SERVER = r"""
import json, os, socket, sys
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", int(sys.argv[1]))); ls.listen(8)
print(json.dumps({"listening": 1}), flush=True)
kids = []
for _ in range(3):
    c, _ = ls.accept()
    pid = os.fork()
    if pid == 0:            # the child serves the connection
        ls.close()
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
        c.close()           # as socketserver's ForkingMixIn does before _exit
        os._exit(0)
    c.close()               # the parent lets go of its copy at once
    kids.append(pid)
for p in kids:
    os.waitpid(p, 0)
print(json.dumps({"served": 3}), flush=True)
"""

ECHO_CLIENT = r"""
import json, os, socket, sys, threading
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
data = os.urandom(3_000_000)
got = bytearray()
def rd():
    while len(got) < len(data):
        d = c.recv(65536)
        if not d:
            break
        got.extend(d)
t = threading.Thread(target=rd); t.start(); c.sendall(data); t.join()
print(json.dumps({"intact": bytes(got) == data}), flush=True)
"""


def test_accept_then_fork_server(shm_path, tmp_path):
    """The parent closes its copy right after fork(); the child's channel
    must live on (shared holder count), and all of it ends cleanly."""
    import sys

    from netenv import Proc
    port = next(_ports)
    log = tmp_path / "log"
    srv = Proc([sys.executable, "-c", FORK_SERVER, str(port)], shm_path, True,
               extra_env={"FASTIVC_LOG": f"debug:{log}"})
    try:
        srv.line()
        for _ in range(3):
            cli = Proc([sys.executable, "-c", ECHO_CLIENT, str(port)], shm_path, True)
            assert cli.line(timeout=30) == {"intact": True}
            cli.finish()
        assert srv.line(timeout=30) == {"served": 3}
    finally:
        srv.finish()
    assert log.read_text().count("adopted offer") == 3
    with Fabric(shm_path) as fab:
        assert fab.slots() == [] and fab.offers() == []
