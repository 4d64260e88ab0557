"""A server and a client that each fork right after accept()/connect(),
before fastivc's upgrade of the connection settled, and then use the socket
from both processes (tests/test_fork_pre_switch.py).  A plain socket
program: it knows nothing of fastivc.

    fork_pre_switch.py server SEED TOTAL MODE SDELAY
    fork_pre_switch.py client PORT SEED TOTAL PREWRITE

The stream is TOTAL bytes of 4-byte big-endian counters, so any piece of at
least 8 bytes says where it belongs.
- server: listens on 127.0.0.1, prints {"port": P}, sleeps SDELAY s once a
  connection is queued (the client then writes and forks while its offer
  is still pending), accepts
  and forks.  MODE "alt": the two processes take turns (a token over pipes)
  at recv() of random sizes, appending to one file, so the stream read is
  defined.  MODE "both": they read at once, each keeping its pieces, and
  the pieces must tile the stream.  Then {"ok": .., "got": N, "why": ..},
  and "ok"/"no" back to the client.
- client: connects, sends the first PREWRITE bytes, forks; the two take
  turns at sendall() of random sizes (the position passed through a file);
  then shutdown(SHUT_WR) and {"reply": what the server said}.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import struct
import sys
import tempfile


def stream_of(total: int) -> bytes:
    n = (total + 3) // 4
    return struct.pack(f">{n}I", *range(n))[:total]


def take_turns(step) -> None:
    """Parent and child call step() in turn until it returns True."""
    p2c_r, p2c_w = os.pipe()
    c2p_r, c2p_w = os.pipe()
    pid = os.fork()
    child = pid == 0
    myr, myw = (p2c_r, c2p_w) if child else (c2p_r, p2c_w)
    turn = not child  # the parent goes first
    while True:
        if not turn:
            t = os.read(myr, 1)
            if not t or t == b"E":
                break
        turn = False
        if step():
            os.write(myw, b"E")
            break
        os.write(myw, b"T")
    if child:
        os._exit(0)
    os.waitpid(pid, 0)


def place(pieces: list[bytes], stream: bytes) -> str | None:
    """None when the pieces tile the stream exactly, else why not."""
    total, spans, short = len(stream), [], []
    for p in pieces:
        if len(p) < 8:
            short.append(p)
            continue
        for a in range(4):
            start = struct.unpack(">I", p[a:a + 4])[0] * 4 - a
            if 0 <= start and stream[start:start + len(p)] == p:
                spans.append((start, len(p)))
                break
        else:
            return f"a piece of {len(p)} bytes is not in the stream"
    spans.sort()
    pos, gaps = 0, []
    for start, n in spans:
        if start < pos:
            return f"bytes at {start} were read twice"
        if start > pos:
            gaps.append((pos, start))
        pos = start + n
    if pos < total:
        gaps.append((pos, total))
    for lo, hi in gaps:  # (pieces under 8 bytes: fill the gaps in order)
        while lo < hi:
            k = next((i for i, p in enumerate(short) if stream[lo:lo + len(p)] == p), None)
            if k is None:
                return f"bytes {lo}..{hi} are missing"
            lo += len(short.pop(k))
    return f"{len(short)} short pieces left over" if short else None


def server(seed: int, total: int, mode: str, sdelay: float) -> int:
    import time
    rnd = random.Random(seed)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    print(json.dumps({"port": ls.getsockname()[1]}), flush=True)
    if sdelay:  # from the client's connect(): a connection is queued
        select.select([ls], [], [])
        time.sleep(sdelay)
    s, _ = ls.accept()
    ls.close()
    stream = stream_of(total)
    tmp = tempfile.mkdtemp(prefix="fork-pre-switch.")
    if mode == "alt":
        out = os.path.join(tmp, "got")
        fd = os.open(out, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)

        def step() -> bool:
            b = s.recv(rnd.randint(1, 70000))
            os.write(fd, b)
            return not b
        take_turns(step)
        with open(out, "rb") as f:
            got = f.read()
        why = None if got == stream else (
            f"got {len(got)} of {total}, first difference at "
            f"{next((i for i in range(min(len(got), total)) if got[i] != stream[i]), None)}")
        n = len(got)
    else:
        pid = os.fork()
        name = os.path.join(tmp, "child" if pid == 0 else "parent")
        r = random.Random(seed + (pid == 0))
        with open(name, "wb") as f:
            while True:
                b = s.recv(r.randint(1, 70000))
                if not b:
                    break
                f.write(struct.pack(">I", len(b)) + b)
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        pieces = []
        for who in ("parent", "child"):
            with open(os.path.join(tmp, who), "rb") as f:
                data = f.read()
            i = 0
            while i < len(data):
                k = struct.unpack(">I", data[i:i + 4])[0]
                pieces.append(data[i + 4:i + 4 + k])
                i += 4 + k
        n = sum(len(p) for p in pieces)
        why = f"got {n} of {total}" if n != total else place(pieces, stream)
    s.sendall(b"ok" if why is None else b"no")
    s.close()
    print(json.dumps({"ok": why is None, "got": n, "why": why}), flush=True)
    return 0


def client(port: int, seed: int, total: int, prewrite: int) -> int:
    rnd = random.Random(seed ^ 0x5A5A)
    stream = stream_of(total)
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(stream[:prewrite])
    fd, posf = tempfile.mkstemp(prefix="fork-pre-switch.")
    os.write(fd, str(prewrite).encode())
    os.close(fd)

    def step() -> bool:
        with open(posf) as f:
            p = int(f.read())
        if p >= total:
            return True
        n = min(rnd.randint(1, 70000), total - p)
        s.sendall(stream[p:p + n])
        with open(posf, "w") as f:
            f.write(str(p + n))
        return False
    take_turns(step)
    os.unlink(posf)
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while len(reply) < 2:
        b = s.recv(2 - len(reply))
        if not b:
            break
        reply += b
    print(json.dumps({"reply": reply.decode()}), flush=True)
    return 0


if __name__ == "__main__":
    a = sys.argv
    if a[1] == "server":
        sys.exit(server(int(a[2]), int(a[3]), a[4], float(a[5])))
    sys.exit(client(int(a[2]), int(a[3]), int(a[4]), int(a[5])))
