"""Two hosts on one machine for the tests: network namespaces joined by a
veth pair, with private addresses created here; and helpers that start
test programs with or without fastivc and read what they print."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from fastivc.netns import TwoHosts, in_ns
from fastivc.run import build_env

# FIVC_TEST_NS / FIVC_TEST_SUBNET let two checkouts run their tests at once.
HOSTS = TwoHosts(os.environ.get("FIVC_TEST_NS", "fivc-test"),
                 int(os.environ.get("FIVC_TEST_SUBNET", "201")))
NS_CLIENT, NS_SERVER = HOSTS.client_ns, HOSTS.server_ns
ADDR = {v: (HOSTS.addr(v, 1), HOSTS.addr(v, 2)) for v in (4, 6)}
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
PEER = str(Path(__file__).with_name("peer.py"))
netns_up, netns_down = HOSTS.up, HOSTS.down


class Proc:
    """A test program; `fastivc` decides whether it runs under the library."""

    def __init__(self, argv: list[str], fabric: str, fastivc: bool = True, ns: str | None = None,
                 extra_env: dict | None = None, event_loops: bool | None = None):
        env = (build_env(os.environ, fabric=fabric, event_loops=event_loops) if fastivc
               else dict(os.environ))
        if not fastivc:
            env.pop("LD_PRELOAD", None)
        env.update(extra_env or {})
        # its own session: kill() ends the whole group (nginx's workers too)
        self.p = subprocess.Popen(in_ns(ns, argv), start_new_session=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env, text=True)
        self._buf = b""

    def line(self, timeout: float = 30) -> dict:
        # Our own buffer over the raw pipe: a buffered readline() after
        # select() would keep a second line that arrived with the first in
        # Python's buffer, where select() never sees it (a false timeout).
        fd, deadline = self.p.stdout.fileno(), time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"no output from {self.p.args} in {timeout}s")
            chunk = os.read(fd, 65536)
            if not chunk:
                err = self.p.stderr.read()
                raise RuntimeError(f"{self.p.args} exited {self.p.wait()} without output: {err}")
            self._buf += chunk
        ln, _, self._buf = self._buf.partition(b"\n")
        return json.loads(ln)

    def finish(self, timeout: float = 30) -> int:
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            return self.p.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


def server_then_client(server_argv: list[str], client_argv, fabric: str, fastivc: bool,
                       log: str | None = None, timeout: float = 60) -> tuple[dict, dict]:
    """A server program that prints {"port": P} first, then a client made
    with client_argv(P); both must exit 0.  Returns the client's first line
    and the server's next one.  log: FASTIVC_LOG's file (under fastivc)."""
    env = {"FASTIVC_LOG": f"debug:{log}"} if fastivc and log else {}
    srv = Proc(server_argv, fabric, fastivc, extra_env=env)
    try:
        cli = Proc(client_argv(srv.line()["port"]), fabric, fastivc, extra_env=env)
        try:
            out = cli.line(timeout=timeout)
        finally:
            assert cli.finish() == 0
        report = srv.line(timeout=timeout)
    finally:
        assert srv.finish() == 0
    return out, report


def peer(role: str, host: str, port: int, fabric: str, fastivc: bool, ns: str | None,
         *args: str, event_loops: bool | None = None) -> Proc:
    return Proc([sys.executable, PEER, role, host, str(port), *args], fabric, fastivc, ns,
                event_loops=event_loops)


def tcp_counters(ns: str | None, port: int) -> dict:
    """Kernel byte counters of the established TCP connection with local port
    `port` (ss -i), in namespace ns."""
    out = subprocess.run(in_ns(ns, ["ss", "-HtinO", "state", "established",
                                    f"( sport = :{port} )"]),
                         capture_output=True, text=True, check=True).stdout
    line = out.strip().splitlines()
    assert len(line) == 1, f"expected one connection on port {port}: {out!r}"
    get = lambda k: int(m.group(1)) if (m := re.search(rf"\b{k}:(\d+)", line[0])) else 0  # noqa: E731
    return {"bytes_sent": get("bytes_sent"), "bytes_received": get("bytes_received")}
