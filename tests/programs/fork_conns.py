"""A process with many connections forks (issue 10, "cheap process events").
A plain socket program: under `fastivc run` it also reads the library's
process counters (fastivc_fork_stats through ctypes; absent when plain).

    python fork_conns.py MODE COUNT

COUNT connections on loopback, both ends in this process, each used once.
Then, by MODE:

  child-exits   the child exits at once without closing anything; the
                parent then moves checked bytes both ways on every connection
  child-closes  the child closes its copies and stays alive while the parent
                moves checked bytes on every connection
  both-use      on the first few connections the child reads what the parent
                writes on the same socket, at once, then they take turns
                writing one socket and reading the other; after the child
                exits the parent moves checked bytes on every connection
  prefork       no connections before the fork: two forked workers accept
                COUNT connections from the parent between them and echo

Prints one JSON line: {"ok": true, "before": STATS, "after": STATS, ...}
where STATS is {"held", "shared", "unshared", "forks"} or null when plain.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import random
import resource
import socket
import sys
import threading
import time


def stats() -> dict | None:
    try:
        fn = ctypes.CDLL(None).fastivc_fork_stats
    except AttributeError:
        return None
    out = (ctypes.c_uint64 * 4)()
    fn(out)
    return dict(zip(("held", "shared", "unshared", "forks"), map(int, out), strict=True))


def recv_exact(s: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        d = s.recv(n - len(got))
        if not d:
            raise EOFError(f"EOF after {len(got)} of {n} bytes")
        got += d
    return bytes(got)


def pairs(count: int) -> list[tuple[socket.socket, socket.socket]]:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4096)
    out = []
    for _ in range(count):
        c = socket.create_connection(lst.getsockname())
        s, _ = lst.accept()
        c.sendall(b"x")
        assert s.recv(1) == b"x"
        s.sendall(b"y")
        assert c.recv(1) == b"y"
        out.append((c, s))
    lst.close()
    return out


def exchange_all(conns: list, rnd: random.Random) -> None:
    """Checked bytes both ways on every connection."""
    for c, s in conns:
        a, b = rnd.randbytes(rnd.randint(1, 3000)), rnd.randbytes(rnd.randint(1, 3000))
        c.sendall(a)
        assert recv_exact(s, len(a)) == a
        s.sendall(b)
        assert recv_exact(c, len(b)) == b


def settle(conns: list, seed: int) -> dict:
    """Checked bytes on every connection until no side is shared any more
    (a shared side looks whether it is alone at most every 10 ms), or for
    about a second; how many rounds that took."""
    rnd = random.Random(seed)
    rounds = 0
    while rounds < 40:
        rounds += 1
        exchange_all(conns, rnd)
        st = stats()
        if not st or not st["shared"]:
            break
        time.sleep(0.03)
    return {"rounds": rounds}


def wait_child(pid: int) -> None:
    _, st = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(st) == 0, f"child exited {st}"


def mode_child_exits(count: int) -> dict:
    conns = pairs(count)
    pid = os.fork()
    if pid == 0:
        os._exit(0)  # no close: the kernel closes the fds, fastivc is not told
    wait_child(pid)
    before = stats()
    rounds = settle(conns, 1)
    return {"before": before, "after": stats(), **rounds}


def mode_child_closes(count: int) -> dict:
    conns = pairs(count)
    r, w = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w2)
        for c, s in conns:
            c.close()
            s.close()
        os.write(w, b"c")
        os.read(r2, 1)  # alive until the parent is done
        os._exit(0)
    assert os.read(r, 1) == b"c"
    before = stats()
    rounds = settle(conns, 2)
    after = stats()
    os.close(w2)
    wait_child(pid)
    return {"before": before, "after": after, **rounds}


def mode_both_use(count: int) -> dict:
    conns = pairs(count)
    few = conns[:4]
    stream = 256 * 1024
    data = random.Random(3).randbytes(stream)
    p2c_r, p2c_w = os.pipe()
    c2p_r, c2p_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        res = b"ok"
        try:
            # at once: the parent writes c and echoes s; we read c
            for c, _ in few:
                assert recv_exact(c, stream) == data
            os.write(c2p_w, b"1")
            # in turns, on the same sockets: odd rounds are ours
            rnd = random.Random(4)
            for rnd_i in range(40):
                c, s = few[rnd_i % len(few)]
                msg = rnd.randbytes(rnd.randint(1, 5000))
                if rnd_i % 2:
                    c.sendall(msg)
                    os.write(c2p_w, b"t")
                else:
                    assert os.read(p2c_r, 1) == b"t"
                    assert recv_exact(s, len(msg)) == msg
            os.write(c2p_w, json.dumps(stats()).encode() + b"\n")
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            res = repr(e).encode()
        os.write(c2p_w, b"=" + res + b"\n")
        os._exit(0)

    def echo(s: socket.socket) -> None:
        left = stream
        while left:
            d = s.recv(min(left, 65536))
            s.sendall(d)
            left -= len(d)

    threads = [threading.Thread(target=echo, args=(s,)) for _, s in few]
    for t in threads:
        t.start()
    for c, _ in few:
        c.sendall(data)
    for t in threads:
        t.join()
    assert os.read(c2p_r, 1) == b"1"
    rnd = random.Random(4)
    for rnd_i in range(40):
        c, s = few[rnd_i % len(few)]
        msg = rnd.randbytes(rnd.randint(1, 5000))
        if rnd_i % 2:
            assert os.read(c2p_r, 1) == b"t"
            assert recv_exact(s, len(msg)) == msg
        else:
            c.sendall(msg)
            os.write(p2c_w, b"t")
    during = stats()
    f = os.fdopen(c2p_r, "rb")
    child_stats = json.loads(f.readline())
    res = f.readline().strip()
    assert res == b"=ok", res
    wait_child(pid)
    before = stats()
    rounds = settle(conns, 5)
    return {"during": during, "child": child_stats, "before": before, "after": stats(),
            **rounds}


def mode_prefork(count: int) -> dict:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4096)
    port = lst.getsockname()[1]
    res_r, res_w = os.pipe()
    kids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            served = 0
            try:
                while True:
                    s, _ = lst.accept()
                    n = int.from_bytes(recv_exact(s, 4), "big")
                    if n == 0:  # the parent's "stop"
                        break
                    s.sendall(hashlib.sha256(recv_exact(s, n)).digest())
                    served += 1
                    s.close()
                line = {"served": served, "stats": stats()}
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                line = {"error": repr(e)}
            os.write(res_w, json.dumps(line).encode() + b"\n")
            os._exit(0)
        kids.append(pid)
    lst.close()
    rnd = random.Random(6)
    held = []
    for _ in range(count):
        c = socket.create_connection(("127.0.0.1", port))
        data = rnd.randbytes(rnd.randint(1, 20000))
        c.sendall(len(data).to_bytes(4, "big") + data)
        assert recv_exact(c, 32) == hashlib.sha256(data).digest()
        held.append(c)
    before = stats()
    for c in held:
        c.close()
    for _ in kids:
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall((0).to_bytes(4, "big"))
        c.close()
    f = os.fdopen(res_r, "rb")
    workers = [json.loads(f.readline()) for _ in kids]
    for pid in kids:
        wait_child(pid)
    return {"before": before, "after": stats(), "workers": workers}


def main() -> None:
    mode, count = sys.argv[1], int(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * count + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * count + 64), hard))
    out = {"child-exits": mode_child_exits, "child-closes": mode_child_closes,
           "both-use": mode_both_use, "prefork": mode_prefork}[mode](count)
    print(json.dumps({"ok": True, "mode": mode, **out}), flush=True)


if __name__ == "__main__":
    main()
