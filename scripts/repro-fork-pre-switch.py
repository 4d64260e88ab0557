"""Reproducer for a known bug (README, "Not there yet"): a fork right after
accept()/connect(), before the upgrade settled, with both processes then
using the socket in turn (the program passes a token over pipes, so the
stream is defined).  Not collected by pytest (no test_ prefix).

    fastivc run --fabric F -- python3 scripts/repro-fork-pre-switch.py server PORT SEED TOTAL
    fastivc run --fabric F -- python3 scripts/repro-fork-pre-switch.py client PORT SEED TOTAL

Env: SDELAY (server sleeps before accept), PREWRITE (client bytes sent
before its fork).  Seen 2026-12-03 with SDELAY=0 PREWRITE=1000: the
server's child spun in a pre-switch TCP read (poll naps) for good.
"""
import os, random, socket, sys

def alternate(sock, role, fn, rounds_rnd):
    # parent and child take turns: token over two pipes
    p2c_r, p2c_w = os.pipe(); c2p_r, c2p_w = os.pipe()
    pid = os.fork()
    me_child = pid == 0
    myr, myw = (p2c_r, c2p_w) if me_child else (c2p_r, p2c_w)
    turn = not me_child  # parent goes first
    while True:
        if not turn:
            t = os.read(myr, 1)
            if not t or t == b"E":
                break
        turn = False
        if fn():
            os.write(myw, b"E"); break
        os.write(myw, b"T")
    if me_child:
        os._exit(0)
    os.waitpid(pid, 0)

def main():
    mode, port, seed, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rnd = random.Random(seed)
    stream = random.Random(seed ^ 0x5a5a).randbytes(total)
    if mode == "server":   # forks right after accept, both read
        ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", port)); ls.listen(8)
        print("ready", flush=True)
        import time; time.sleep(float(os.environ.get("SDELAY","0")))
        s, _ = ls.accept(); ls.close()
        out = f"/tmp/got.{os.getpid()}"
        fd = os.open(out, os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_APPEND)
        def one():
            b = s.recv(rnd.randint(1, 70000))
            os.write(fd, b)
            return not b
        alternate(s, "server", one, rnd)
        got = open(out, "rb").read()
        ok = got == stream
        print("server", "OK" if ok else f"BAD got {len(got)} of {total}, first diff "
              f"{next((i for i in range(min(len(got), total)) if got[i] != stream[i]), None)}", flush=True)
        s.sendall(b"ok" if ok else b"no"); s.close()
        sys.exit(0 if ok else 1)
    else:                  # forks right after connect, both write
        s = socket.create_connection(("127.0.0.1", port))
        pos = [0]
        # the position must be shared: parent and child take turns, so pass it
        # through a file
        posf = f"/tmp/pos.{os.getpid()}"
        first = int(os.environ.get("PREWRITE","0"))
        s.sendall(stream[:first])
        open(posf, "w").write(str(first))
        def one():
            p = int(open(posf).read())
            if p >= total:
                return True
            n = min(rnd.randint(1, 70000), total - p)
            s.sendall(stream[p:p + n])
            open(posf, "w").write(str(p + n))
            return False
        alternate(s, "client", one, rnd)
        s.shutdown(socket.SHUT_WR)
        r = s.recv(2)
        print("client got", r, flush=True)
        sys.exit(0 if r == b"ok" else 1)

main()
