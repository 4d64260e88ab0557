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

The chaos test kills at random in every state at random: the survivor in
each of those waits, the victim blocked in recv/send, poll or epoll_wait,
a connection whose upgrade is still under way (idle), a side shared by two
processes after fork (one holder is killed first, maybe holding the side's
lock: the other must go on, and the survivor must not notice; then the
other), with or without FIN, over loopback and namespaces; and after it,
once `fastivc gc` ran, no slot, offer, listener or member is left.

FIVC_DEATH_ROUNDS (default 20) sets the rounds per operation;
FIVC_CHAOS_ROUNDS (default 40) the chaos rounds per place (`make chaos`:
1,000 in all), FIVC_CHAOS_SEED the seed, FIVC_CHAOS_JSON a file for the
per-round results."""

from __future__ import annotations

import json
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
CHAOS_OPS = (*OPS, "idle", "shared")
WAITS = ("plain", "poll", "epoll")  # how the victim waits when it is killed
# what TCP gives the survivor when its peer dies (poll-type waits are the
# writer's: they end in a failed send or a recv that sees EOF/RST)
ALLOWED = {"write": {"ECONNRESET", "EPIPE"}, "read": {"EOF", "ECONNRESET"},
           "idle": {"EOF", "ECONNRESET"}, "shared": {"ECONNRESET", "EPIPE"},
           **{op: {"ECONNRESET", "EPIPE", "EOF"} for op in ("poll", "select", "epoll")}}
CHAOS_ROUNDS = int(os.environ.get("FIVC_CHAOS_ROUNDS", "40"))
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
                if op in ("read", "idle") or ring.produced > 0:
                    return ""
            if time.monotonic() > end:
                return f"no connected slot carrying {client}->{server}: {mine}"
            time.sleep(0.01)

    def _result(self, deadline: float) -> dict:
        """The survivor's next line that is not a progress report."""
        while True:
            r = self.s.line(max(0.0, deadline - time.monotonic()))
            if "progress" not in r:
                return r

    def round(self, op: str, side: str, nofin: bool = False, wait: str = "plain",
              rnd: random.Random | None = None, fallback_ok: bool = False) -> dict:
        rnd = rnd or random.Random()
        send = lambda p, text: (p.p.stdin.write(text + "\n"), p.p.stdin.flush())  # noqa: E731
        send(self.s, f"{op} {side}")
        send(self.v, f"{op} {side}{' nofin' if nofin else ''} wait={wait}")
        assert self.s.line(10)["connected"]
        v = self.v.line(10)
        assert v["taken"]
        send(self.s, "go")
        b = self.s.line(10)
        assert b["blocking"]
        res = {"op": op, "side": side, "wait": wait, "nofin": nofin}
        if self.fastivc and op != "idle":  # idle: no byte has gone yet
            problem = self._accelerated(b["lport"], b["rport"], side, op)
            # a connection left on TCP (the library let it go) is TCP's to
            # report when the victim dies: the chaos test counts these
            assert not problem or (fallback_ok and not nofin), problem
            if problem:
                res["fallback"] = problem
        time.sleep(rnd.uniform(0, 0.1))  # a random moment of the wait
        victims = [v["pid"]]
        if op == "shared":
            # one holder dies (maybe holding the side's lock): the other
            # still holds the end, so the survivor must go on, and its
            # writes must still be read
            victims = [v["pid"], v["pid2"]][::rnd.choice((1, -1))]
            first = victims.pop(0)
            os.kill(first, signal.SIGKILL)
            t_first = time.monotonic()
            progress = 0
            while time.monotonic() < t_first + 0.5:
                try:
                    r = self.s.line(max(0.0, t_first + 0.5 - time.monotonic()))
                except TimeoutError:
                    break
                if "progress" not in r:
                    return {**res, "delay": 0.0, "fatal": True,
                            "err": f"returned with a holder alive: {r}"}
                if time.monotonic() > t_first + 0.2:
                    progress += 1
            if not progress:
                return {**res, "delay": 0.0, "fatal": True,
                        "err": "no progress after one holder's death"}
            if self.fastivc:
                # its member id died with it (a fork child that kept a
                # copy of the parent's fabric fd kept its lock, and so
                # hid the parent's death while the child lived)
                with F.Fabric(self.fabric) as fab:
                    alive = [m for m in fab.members() if m.pid == first and m.alive]
                if alive:
                    return {**res, "delay": 0.0, "fatal": True,
                            "err": f"the killed holder's member lives on: {alive}"}
            time.sleep(rnd.uniform(0, 0.05))
        t0 = time.monotonic()
        os.kill(victims[0], signal.SIGKILL)
        try:
            r = self._result(t0 + 10)
        except TimeoutError:
            return {**res, "delay": float("inf"), "err": "still blocked at 10 s"}
        return {**res, "delay": r["t"] - t0, "err": r["err"]}


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


def leaks(fabric: str) -> list[str]:
    """What is left in the fabric once every process of the test is dead
    and `fastivc gc` ran: its slots, offers, listeners and live members."""
    r = subprocess.run([str(helper_path("fastivc-gc")), fabric], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with F.Fabric(fabric) as fab:
        left = [f"slot {s.index} {s.state}" for s in fab.slots()]
        left += [f"offer {o.index} {o.state}" for o in fab.offers() if o.state != "free"]
        left += [f"listener {li.index} :{li.port}" for li in fab.listeners()]
        left += [f"member {m.index} pid {m.pid}" for m in fab.members() if m.alive]
    return left


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


@pytest.mark.parametrize("where", ["loopback", "netns"])
def test_random_kill9_chaos_no_hang_no_leak(fabric, where, request):
    """CHAOS_ROUNDS kills, each in a state drawn at random; then no leak."""
    netns = where == "netns"
    if netns:
        request.getfixturevalue("netns")
    seed = int(os.environ.get("FIVC_CHAOS_SEED", str(random.randrange(1 << 32))))
    rnd = random.Random(seed)
    print(f"chaos seed {seed}")
    pair = Pair(fabric, True, netns, PORT0 + (400 if netns else 300))
    results = []
    try:
        for _ in range(CHAOS_ROUNDS):
            op, side = rnd.choice(CHAOS_OPS), rnd.choice(("server", "client"))
            r = pair.round(op, side, nofin=rnd.random() < 0.25, wait=rnd.choice(WAITS), rnd=rnd,
                           fallback_ok=True)
            results.append(r)
            if os.environ.get("FIVC_CHAOS_VERBOSE"):
                with F.Fabric(fabric) as fab:
                    print(r, "slots in use", len(fab.slots()),
                          "members", sum(bool(m.alive) for m in fab.members()),
                          "offers", sum(o.state != "free" for o in fab.offers()),
                          "listeners", len(fab.listeners()))
            if r["delay"] == float("inf") or r.get("fatal"):
                break  # the pair is in no state for another round
    finally:
        pair.close()
    if os.environ.get("FIVC_CHAOS_JSON"):
        with open(os.environ["FIVC_CHAOS_JSON"], "a") as f:
            f.write(json.dumps({"where": where, "seed": seed, "rounds": results}) + "\n")
    check(results, f"chaos, {where}, seed {seed}")
    # Rarely (2 in about 3,000 rounds, a shared side after fork, survivor
    # the server) a connection stayed on TCP: not yet understood, allowed
    # at 1 % and listed, never silently
    fallbacks = [r for r in results if r.get("fallback")]
    print(f"chaos, {where}: {len(fallbacks)} rounds left on TCP: {fallbacks}")
    assert len(fallbacks) <= max(1, len(results) // 100), fallbacks
    # before any gc: the survivors' closes reaped what their dead peers
    # held (a server whose client died before the switch left its slot
    # to the next gc, one per round), all but the last round's or so
    with F.Fabric(fabric) as fab:
        waiting = [(s.index, s.state) for s in fab.slots()]
        offers = [(o.index, o.state) for o in fab.offers() if o.state != "free"]
    assert len(waiting) <= 3, f"chaos, {where}: slots left for a gc: {waiting}"
    # (an adopted offer of a client killed before it switched stayed until a
    # gc: one per such round, until the registry was full and connections
    # went plain)
    assert len(offers) <= 3, f"chaos, {where}: offers left for a gc: {offers}"
    left = leaks(fabric)
    assert not left, f"chaos, {where}, seed {seed}: left after gc: {left}"
