"""The listener table (issue 10, item 3): a client takes a slot and posts an
offer only for a destination that some accelerated process listens on.  A
connection to anything else is plain from connect() on and holds nothing of
the fabric, however long it stays open."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from netenv import ADDR, NS_CLIENT, NS_SERVER

from fastivc import fabric as F
from fastivc._paths import helper_path
from fastivc.netns import in_ns
from fastivc.run import build_env

PORT = 24200 + os.getpid() % 2000  # below the ephemeral range (test_scale.py)

# A server that knows nothing of fastivc: it listens, prints its state as
# JSON lines on request, and answers a few commands on stdin.
SERVER = r"""
import json, os, socket, sys
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
l = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((host, port)); l.listen(64)
print(json.dumps({"ready": True}), flush=True)
conns = []
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "accept":   # accept one and echo 5 bytes
        c, _ = l.accept()
        if mode == "fork":   # a fork-per-connection server: the child serves
            pid = os.fork()
            if pid == 0:
                l.close()
                c.sendall(c.recv(5)); c.close(); os._exit(0)
            c.close(); os.waitpid(pid, 0)
        else:
            c.sendall(c.recv(5)); conns.append(c)
        print(json.dumps({"accepted": True}), flush=True)
    elif cmd[0] == "hold":   # accept one and never send
        c, _ = l.accept(); conns.append(c)
        print(json.dumps({"held": True}), flush=True)
    elif cmd[0] == "unlisten":
        l.close()
        print(json.dumps({"unlistened": True}), flush=True)
"""

CLIENT = r"""
import json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
socks = []
for line in sys.stdin:
    cmd = line.split()
    s = socket.create_connection((host, port)); socks.append(s)
    if cmd[0] == "echo":
        s.sendall(b"hello"); got = b""
        while len(got) < 5:
            d = s.recv(5 - len(got))
            if not d: break
            got += d
        print(json.dumps({"echo": got.decode()}), flush=True)
    else:                    # "idle": connect and send nothing
        print(json.dumps({"connected": True}), flush=True)
"""


class Py:
    def __init__(self, code: str, args: list[str], fabric: str, fast: bool, ns=None):
        env = build_env(os.environ, fabric=fabric) if fast else {
            k: v for k, v in os.environ.items()
            if k != "LD_PRELOAD" and not k.startswith("FASTIVC_")}
        self.p = subprocess.Popen(in_ns(ns, [sys.executable, "-c", code, *args]), env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)

    def ask(self, cmd: str | None = None) -> dict:
        if cmd:
            self.p.stdin.write(cmd + "\n")
            self.p.stdin.flush()
        line = self.p.stdout.readline()
        assert line, self.p.stderr.read()
        return json.loads(line)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def state(path: str) -> tuple[list, list, list]:
    with F.Fabric(path) as fab:
        return ([s for s in fab.slots() if s.state != "free"], fab.offers(), fab.listeners())


def mkfabric(path: str) -> None:
    r = subprocess.run([str(helper_path("fastivc-mkfabric")), path], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


@pytest.fixture(params=["loopback", "namespaces"])
def where(request, netns_if_root):
    if request.param == "loopback":
        return "127.0.0.1", None, None
    if not netns_if_root:
        pytest.skip("network namespaces need root")
    return ADDR[4][1], NS_SERVER, NS_CLIENT


@pytest.fixture
def netns_if_root(request):
    if os.geteuid() != 0:
        return False
    request.getfixturevalue("netns")  # (up for the session)
    return True


def test_a_plain_server_costs_the_client_no_slot_and_no_offer(shm_path, where):
    host, ns_s, ns_c = where
    mkfabric(shm_path)
    srv = Py(SERVER, [host, str(PORT), "plain"], shm_path, False, ns_s)
    cli = Py(CLIENT, [host, str(PORT)], shm_path, True, ns_c)
    try:
        assert srv.ask()["ready"]
        srv.p.stdin.write("hold\n")
        srv.p.stdin.flush()
        assert cli.ask("idle")["connected"]
        assert srv.ask()["held"]
        # the server never sends: before the table the client held a slot
        # and an offer for as long as the connection lived
        slots, offers, listeners = state(shm_path)
        assert (slots, offers, listeners) == ([], [], [])
        srv.p.stdin.write("accept\n")
        srv.p.stdin.flush()
        assert cli.ask("echo") == {"echo": "hello"}
        assert srv.ask()["accepted"]
        assert state(shm_path)[:2] == ([], [])
    finally:
        cli.kill()
        srv.kill()


def test_an_accelerated_listener_is_listed_and_withdrawn_when_closed(shm_path, where):
    host, ns_s, ns_c = where
    srv = Py(SERVER, [host, str(PORT + 1), "plain"], shm_path, True, ns_s)
    try:
        assert srv.ask()["ready"]
        listeners = state(shm_path)[2]
        assert [(x.address, x.port) for x in listeners] == [(host, PORT + 1)]
        assert listeners[0].owner_member is not None
        cli = Py(CLIENT, [host, str(PORT + 1)], shm_path, True, ns_c)
        try:
            srv.p.stdin.write("accept\n")
            srv.p.stdin.flush()
            assert cli.ask("echo") == {"echo": "hello"}
            assert srv.ask()["accepted"]
            slots = state(shm_path)[0]
            assert len(slots) == 1 and slots[0].server_to_client.produced == 5  # on the ring
        finally:
            cli.kill()
        assert srv.ask("unlisten")["unlistened"]
        assert state(shm_path)[2] == []
    finally:
        srv.kill()


def test_a_fork_per_connection_server_keeps_its_listener_entry(shm_path):
    srv = Py(SERVER, ["127.0.0.1", str(PORT + 2), "fork"], shm_path, True)
    cli = Py(CLIENT, ["127.0.0.1", str(PORT + 2)], shm_path, True)
    try:
        assert srv.ask()["ready"]
        for _ in range(3):  # each child closes its copy of the listener
            srv.p.stdin.write("accept\n")
            srv.p.stdin.flush()
            assert cli.ask("echo") == {"echo": "hello"}
            assert srv.ask()["accepted"]
            assert len(state(shm_path)[2]) == 1
        # and the connections were accelerated: the client holds three slots
        slots = state(shm_path)[0]
        assert len(slots) == 3 and all(s.server_to_client.produced == 5 for s in slots)
    finally:
        cli.kill()
        srv.kill()


def test_gc_frees_the_listener_entries_of_a_killed_server(shm_path):
    srv = Py(SERVER, ["127.0.0.1", str(PORT + 3), "plain"], shm_path, True)
    try:
        assert srv.ask()["ready"]
        assert len(state(shm_path)[2]) == 1
        os.kill(srv.p.pid, signal.SIGKILL)
        srv.p.wait()
        r = subprocess.run([sys.executable, "-m", "fastivc", "gc", "--fabric", shm_path,
                            "--json"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["listeners_freed"] == 1
        assert state(shm_path)[2] == []
    finally:
        srv.kill()


def test_a_listener_inherited_through_exec_is_listed_again_at_accept(shm_path):
    # The listener is made before the library is loaded (as systemd socket
    # activation or a supervisor does): its first accept lists it.
    import socket

    code = SERVER.replace('l = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)',
                          'l = socket.socket(fileno=int(os.environ["LFD"]))')
    code = code.replace("l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                        "l.bind((host, port)); l.listen(64)\n", "")
    assert "LFD" in code and "l.listen" not in code
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", PORT + 4))
    ls.listen(64)
    env = {**build_env(os.environ, fabric=shm_path), "LFD": str(ls.fileno())}
    srv = Py.__new__(Py)
    srv.p = subprocess.Popen([sys.executable, "-c", code, "127.0.0.1", str(PORT + 4), "plain"],
                             env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, pass_fds=(ls.fileno(),))
    ls.close()
    cli = Py(CLIENT, ["127.0.0.1", str(PORT + 4)], shm_path, True)
    try:
        assert srv.ask()["ready"]
        srv.p.stdin.write("accept\n")
        srv.p.stdin.flush()
        assert cli.ask("echo") == {"echo": "hello"}  # (plain if it came before the listing)
        assert srv.ask()["accepted"]
        assert [x.port for x in state(shm_path)[2]] == [PORT + 4]
        srv.p.stdin.write("accept\n")
        srv.p.stdin.flush()
        time.sleep(0.2)  # (the server is in accept(), listed again)
        assert cli.ask("echo") == {"echo": "hello"}
        assert srv.ask()["accepted"]
        produced = [s.server_to_client.produced for s in state(shm_path)[0]]
        assert produced and all(n == 5 for n in produced), produced  # on the ring
    finally:
        cli.kill()
        srv.kill()
