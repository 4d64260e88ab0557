"""The process model under fastivc: forked workers have member ids of their
own, so what a worker that exits without closing leaves is reclaimed while
its parent lives on (PostgreSQL's backends do this)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from netenv import Proc

from fastivc import Fabric
from fastivc.run import build_env

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


OOB_SCRIPT = r"""
import errno, json, os, socket
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)
c = socket.create_connection(ls.getsockname()); s, _ = ls.accept()
c.sendall(b"hello"); assert s.recv(5) == b"hello"; s.sendall(b"back"); assert c.recv(4) == b"back"
out = {}
try:
    c.send(b"!", socket.MSG_OOB); out["oob_send"] = "sent"
except OSError as e:
    out["oob_send"] = errno.errorcode[e.errno]
try:
    out["oob_recv"] = s.recv(1, socket.MSG_OOB).decode()
except OSError as e:
    out["oob_recv"] = errno.errorcode[e.errno]
try:
    s.recvmsg(16, 64, socket.MSG_ERRQUEUE); out["errqueue"] = "got"
except OSError as e:
    out["errqueue"] = errno.errorcode[e.errno]
try:
    c.send(b"z", 0x4000000)  # MSG_ZEROCOPY, SO_ZEROCOPY off: ignored, as by the kernel
    out["zc_off"] = s.recv(1).decode()
    c.setsockopt(socket.SOL_SOCKET, 60, 1)  # SO_ZEROCOPY
    c.send(b"z", 0x4000000); out["zc_on"] = "sent"
except OSError as e:
    out["zc_on"] = errno.errorcode[e.errno]
rp, wp = os.pipe()
c.sendall(b"spl")
try:
    os.splice(s.fileno(), wp, 3); out["splice"] = "spliced"
except OSError as e:
    out["splice"] = errno.errorcode[e.errno]
out["unspliced"] = s.recv(3).decode()
c.sendall(b"after"); out["after"] = s.recv(5).decode()
print(json.dumps(out))
"""


def test_urgent_data_errqueue_zerocopy_splice_and_the_stream_goes_on(shm_path, tmp_path):
    """MSG_OOB is the ring's (tests/test_oob.py has the kernel's details):
    the urgent byte is sent and read out of band; the error queue is the
    kernel's (empty: EAGAIN); MSG_ZEROCOPY with SO_ZEROCOPY on gets ENOBUFS
    (no completions would ever come); splice gets EINVAL (the program falls
    back to read/write); the stream is intact."""
    log = tmp_path / "log"
    env = build_env(os.environ, fabric=shm_path, log=f"debug:{log}")
    r = subprocess.run([sys.executable, "-c", OOB_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"oob_send": "sent", "oob_recv": "!", "errqueue": "EAGAIN",
                   "zc_off": "z", "zc_on": "ENOBUFS", "splice": "EINVAL", "unspliced": "spl",
                   "after": "after"}, out
    assert "switched to the ring" in log.read_text()
