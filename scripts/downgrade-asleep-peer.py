"""How long `fastivc downgrade --pid CLIENT` takes when the peer makes no
call.

N connections (argv[1], default 100) between two Python processes under the
library, one byte each way on each; then the server sleeps in time.sleep.
The client's watcher takes each connection back in turn and the server's
watcher answers for it (csrc/preload/down.c, POKE_AFTER_MS).  Prints the
tool's JSON ("us": from the ask to the client's last side let go) and "ok"
once the client's next byte went on every connection, plain TCP by then.

    .venv/bin/python scripts/downgrade-asleep-peer.py 100
"""
from __future__ import annotations

import os
import subprocess
import sys

from fastivc.run import build_env

SERVER = """
import socket, sys, time
n = int(sys.argv[1])
lst = socket.socket()
lst.bind(("127.0.0.1", 0))
lst.listen(4096)
print(lst.getsockname()[1], flush=True)
held = []
for _ in range(n):
    s, _ = lst.accept()
    s.recv(1)
    s.send(b"y")
    held.append(s)
print("asleep", flush=True)
time.sleep(60)
"""

CLIENT = """
import socket, sys
n, port = int(sys.argv[1]), int(sys.stdin.readline())
held = []
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    c.send(b"x")
    c.recv(1)
    held.append(c)
print("up", flush=True)
sys.stdin.readline()
for c in held:
    c.send(b"z")
print("ok", flush=True)
"""


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    fabric = f"/dev/shm/fastivc-asleep-peer-{os.getpid()}"
    env = build_env(dict(os.environ), fabric=fabric)
    srv = subprocess.Popen([sys.executable, "-c", SERVER, str(n)], env=env,
                           stdout=subprocess.PIPE, text=True)
    cli = subprocess.Popen([sys.executable, "-c", CLIENT, str(n)], env=env,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        cli.stdin.write(srv.stdout.readline())
        cli.stdin.flush()
        if cli.stdout.readline().strip() != "up" or srv.stdout.readline().strip() != "asleep":
            print("the connections did not come up", file=sys.stderr)
            return 1
        r = subprocess.run([sys.executable, "-m", "fastivc", "downgrade", "--fabric", fabric,
                            "--json", "--wait", "60", "--pid", str(cli.pid)],
                           capture_output=True, text=True, timeout=120)
        print(r.stdout.strip() or r.stderr.strip())
        cli.stdin.write("\n")
        cli.stdin.flush()
        print(cli.stdout.readline().strip())
        return r.returncode
    finally:
        for p in (srv, cli):
            p.kill()
            p.wait()
        if os.path.exists(fabric):
            os.unlink(fabric)


if __name__ == "__main__":
    sys.exit(main())
