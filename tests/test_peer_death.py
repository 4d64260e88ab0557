"""No wait outlives a dead peer (issue 13, DESIGN.md I5): one end of an
accelerated connection is killed with SIGKILL at a random moment while the
other is blocked in write (full ring, a slow reader), read, poll, select or
epoll_wait; the survivor's call must come back with what TCP gives (EOF,
ECONNRESET, EPIPE) within 1 s.  Over loopback and between two namespaces,
with the survivor as client and as server, on the ring and, for
comparison, on plain TCP; and once more with the victim's socket kept open
by another process, so that its death sends no FIN and only the fabric's
liveness can tell (TCP would wait forever there).

Regression: a server that had not read yet, blocked writing on a full ring,
stayed blocked after its reader's kill -9 (10 of 40 rounds in the issue,
every round here), because its doorbell never reported a timeout.

FIVC_DEATH_ROUNDS (default 20) sets the rounds per operation."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netenv import ADDR, NS_CLIENT, NS_SERVER, Proc

from fastivc import fabric as F
from fastivc._paths import helper_path

DEATH_PEER = str(Path(__file__).with_name("death_peer.py"))
ROUNDS = int(os.environ.get("FIVC_DEATH_ROUNDS", "20"))
BOUND = 1.0  # seconds from the kill to the survivor's return
OPS = ("write", "read", "poll", "select", "epoll")
# what TCP gives the survivor when its peer dies (poll-type waits are the
# writer's: they end in a failed send or a recv that sees EOF/RST)
ALLOWED = {"write": {"ECONNRESET", "EPIPE"}, "read": {"EOF", "ECONNRESET"},
           **{op: {"ECONNRESET", "EPIPE", "EOF"} for op in ("poll", "select", "epoll")}}
PORT0 = 26300 + os.getpid() % 5000  # below the ephemeral range (test_scale.py)


@pytest.fixture
def fabric(shm_path):
    r = subprocess.run([str(helper_path("fastivc-mkfabric")), shm_path, "64"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return shm_path


class Pair:
    """A survivor and a victims process (tests/death_peer.py)."""

    def __init__(self, fabric: str, fastivc: bool, netns: bool, port: int):
        if netns:
            (s_host, v_host), (s_ns, v_ns) = ADDR[4][::-1], (NS_SERVER, NS_CLIENT)
        else:
            s_host = v_host = "127.0.0.1"
            s_ns = v_ns = None
        self.fabric, self.fastivc = fabric, fastivc
        argv = lambda role, me, peer, mp, pp: [sys.executable, DEATH_PEER, role, me, peer,  # noqa: E731
                                              str(mp), str(pp)]
        self.s = Proc(argv("survivor", s_host, v_host, port, port + 1), fabric, fastivc, s_ns)
        self.v = Proc(argv("victims", v_host, s_host, port + 1, port), fabric, fastivc, v_ns)
        assert self.s.line()["ready"] and self.v.line()["ready"]

    def close(self) -> None:
        self.s.kill()
        self.v.kill()

    def _accelerated(self, lport: int, rport: int, side: str, op: str) -> str:
        """The round's connection is on a ring (and the survivor's writes
        went there): "" or what is wrong."""
        client, server = (rport, lport) if side == "server" else (lport, rport)
        end = time.monotonic() + 5
        while True:
            with F.Fabric(self.fabric) as fab:
                mine = [s for s in fab.slots() if s.local.port == client and
                        s.peer.port == server and s.state == "connected"]
            if mine:
                ring = mine[0].server_to_client if side == "server" else mine[0].client_to_server
                if op == "read" or ring.produced > 0:
                    return ""
            if time.monotonic() > end:
                return f"no connected slot carrying {client}->{server}: {mine}"
            time.sleep(0.01)

    def round(self, op: str, side: str, nofin: bool = False) -> dict:
        send = lambda p, text: (p.p.stdin.write(text + "\n"), p.p.stdin.flush())  # noqa: E731
        send(self.s, f"{op} {side}")
        send(self.v, f"{op} {side}{' nofin' if nofin else ''}")
        assert self.s.line(10)["connected"]
        v = self.v.line(10)
        assert v["taken"]
        send(self.s, "go")
        b = self.s.line(10)
        assert b["blocking"]
        if self.fastivc:
            problem = self._accelerated(b["lport"], b["rport"], side, op)
            assert not problem, problem
        time.sleep(random.uniform(0, 0.1))  # a random moment of the wait
        t0 = time.monotonic()
        os.kill(v["pid"], signal.SIGKILL)
        try:
            r = self.s.line(10)
        except TimeoutError:
            return {"op": op, "side": side, "delay": float("inf"), "err": "still blocked at 10 s"}
        return {"op": op, "side": side, "delay": r["t"] - t0, "err": r["err"]}


def run_rounds(fabric: str, fastivc: bool, netns: bool, rounds: int, nofin: bool = False,
               port: int = PORT0) -> list[dict]:
    pair = Pair(fabric, fastivc, netns, port)
    out = []
    try:
        for i in range(rounds * len(OPS)):
            op, side = OPS[i % len(OPS)], ("server", "client")[(i // len(OPS)) % 2]
            r = pair.round(op, side, nofin)
            out.append(r)
            if r["delay"] == float("inf"):
                break  # the survivor is stuck: no later round can run
    finally:
        pair.close()
    return out


def check(results: list[dict], what: str) -> None:
    worst = max(results, key=lambda r: r["delay"])
    summary = f"{what}: {len(results)} rounds, worst {worst['delay'] * 1000:.1f} ms ({worst})"
    print(summary)
    late = [r for r in results if r["delay"] > BOUND]
    assert not late, f"{summary}; {len(late)} beyond {BOUND} s: {late[:5]}"
    wrong = [r for r in results if r["err"] not in ALLOWED[r["op"]]]
    assert not wrong, f"{what}: not what TCP gives: {wrong[:5]}"


@pytest.mark.parametrize("where", ["loopback", "netns"])
def test_survivor_returns_within_1s_of_peer_kill9_as_tcp_does(fabric, where, request):
    netns = where == "netns"
    if netns:
        request.getfixturevalue("netns")
    port = PORT0 + (100 if netns else 0)
    ring = run_rounds(fabric, True, netns, ROUNDS, port=port)
    check(ring, f"ring, {where}")
    tcp = run_rounds(fabric, False, netns, max(2, ROUNDS // 5), port=port + 10)
    check(tcp, f"plain TCP, {where}")
    # the same kinds of errors as TCP, per operation
    for op in OPS:
        kinds = {r["err"] for r in ring if r["op"] == op}
        assert kinds <= ALLOWED[op], (op, kinds)


def test_survivor_returns_within_1s_when_the_dead_peer_sends_no_fin(fabric):
    """The victim's socket stays open in another process (as after fork,
    or in a guest, whose death the host kernel never sees): no FIN, so
    only the fabric's liveness ends the wait."""
    check(run_rounds(fabric, True, False, max(2, ROUNDS // 5), nofin=True, port=PORT0 + 200),
          "ring, no FIN")
