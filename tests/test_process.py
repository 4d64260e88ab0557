"""The process model under fastivc: forked workers have member ids of their
own, so what a worker that exits without closing leaves is reclaimed while
its parent lives on (PostgreSQL's backends do this)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from netenv import Proc

from fastivc import Fabric

SERVER = str(Path(__file__).with_name("programs") / "forking_server.py")


def _fastivc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastivc", *args], capture_output=True,
                          text=True, timeout=60)


def test_forked_workers_exiting_without_close_are_reclaimed(shm_path):
    n = 5
    srv = Proc([sys.executable, SERVER, "127.0.0.1", str(n)], shm_path,
               extra_env={"FASTIVC_LOG": "debug"})
    try:
        port = srv.line()["port"]
        client = (
            "import socket,sys\n"
            f"for i in range({n}):\n"
            f"    s = socket.create_connection(('127.0.0.1', {port}))\n"
            "    s.sendall(b'hello %d\\n' % i)\n"
            "    got = b''\n"
            "    while True:\n"
            "        d = s.recv(4096)\n"
            "        if not d: break\n"
            "        got += d\n"
            "    assert got.endswith(b'got hello %d\\n' % i), got\n"
            "    s.close()\n"
            "print('{\"ok\": true}', flush=True)\n")
        cli = Proc([sys.executable, "-c", client], shm_path)
        assert cli.line()["ok"]
        assert cli.finish() == 0
        assert srv.line()["served"] == n
        log = srv.p.stderr  # the server's debug log: every connection adopted
        # The client reaps a side it saw die when it closes; gc frees what
        # is left.  Either way nothing may stay held once the workers are
        # gone, although their parent is alive: each worker had its own id.
        r = _fastivc("gc", "--fabric", shm_path, "--json")
        assert r.returncode == 0, r.stderr
        with Fabric(shm_path) as fab:
            assert fab.slots() == [], (json.loads(r.stdout), fab.slots(), fab.members())
    finally:
        srv.finish()
    text = log.read()
    assert text.count("adopted offer") == n, text


def test_gc_names_a_missing_fabric(tmp_path):
    r = _fastivc("gc", "--fabric", str(tmp_path / "nope"))
    assert r.returncode == 1 and "nope" in r.stderr and "No such file" in r.stderr
