"""Socket options set before the connection exists or on it, and what
they do to a connected loopback pair (tests/test_sockopts.py).  A plain
socket program: it knows nothing of fastivc.  It prints one JSON line per
case; under fastivc "accelerated" says how many of the case's two ends
were on the ring (-1: not under fastivc).

    sockopts.py inflight   one line per (SO_SNDBUF, SO_RCVBUF, when):
        bytes a non-blocking writer gets in before EAGAIN holds for
        0.2 s, to a peer that does not read; then, under fastivc, the
        peer reads them all and checks every byte.  when: "before" (the writer's
        before connect(), the reader's on the listener, which its
        connections inherit) or "after" (both on the connected pair)
    sockopts.py reset      4 KiB buffers; the writer's blocking sendall of
        1 MiB meets a peer that reads 1 KiB and closes: the error
    sockopts.py asyncio    the same through asyncio streams (an event loop,
        non-blocking sockets): one write of 512 KiB, whose drain() must
        fail
    sockopts.py threads    a call blocked in one thread, and in another:
        shutdown(SHUT_RD) (the recv returns 0), shutdown(SHUT_WR) (the
        send fails), recv/send with MSG_DONTWAIT (EAGAIN, not a wait for
        the blocked call), close() (the recv goes on and gets the next
        bytes; the peer sees EOF only after that)
    sockopts.py sendfile   sendfile() into the socket: from a file with an
        offset into a non-blocking socket until it is full (the end must
        be EAGAIN, not 0, which says end of file); from a pipe and from a
        socket (EINVAL)
    sockopts.py timeo      SO_RCVTIMEO (0.2 s) set on the listener and on
        the client before connect(): a recv on each end with nothing
        coming, after one byte each way
    sockopts.py linger     SO_LINGER on with 0 s (an abortive close: TCP
        sends RST), set on the connected socket, before connect(), or on
        the listener (inherited): the closing end wrote bytes the peer had
        not read yet, or had read them all; what the peer's poll, recvs
        and SO_ERROR give after the close
    sockopts.py lowat      SO_RCVLOWAT 10 on the reader (after connect, or
        inherited from the listener): poll and select with fewer bytes
        there, a non-blocking recv (what is there), a blocking recv that
        waits for the tenth byte, MSG_WAITALL, a blocking MSG_PEEK (which
        waits too), and the end of the stream
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import struct
import sys
import threading
import time

from onfabric import on_fabric

PERIOD = bytes((i * 131 + 7) & 0xFF for i in range(251))  # (a prime: a byte out of
# place, lost or doubled shows)
TILE = PERIOD * ((8 << 20) // 251 + 2)


def pattern(off: int, n: int) -> bytes:
    """Bytes off..off+n of the stream (up to 8 MiB at once)."""
    return TILE[off % 251:off % 251 + n]


def pair(snd: int = 0, rcv: int = 0, timeo: float = 0.0):
    ls = socket.socket()
    if rcv:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcv)
    if timeo:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv(timeo))
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    c = socket.socket()
    if snd:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, snd)
    if timeo:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv(timeo))
    c.connect(ls.getsockname())
    s, _ = ls.accept()
    ls.close()
    return c, s


def tv(t: float) -> bytes:
    return struct.pack("ll", int(t), int((t - int(t)) * 1e6))


def inflight(snd: int, rcv: int, when: str) -> dict:
    base = on_fabric()
    c, s = pair(snd, rcv) if when == "before" else pair()
    if when == "after":
        if snd:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, snd)
        if rcv:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcv)
    c.setblocking(False)
    total, idle = 0, 0
    while idle < 40:
        try:
            total += c.send(pattern(total, 1 << 16))
            idle = 0
        except BlockingIOError:
            idle += 1
            time.sleep(0.005)
    acc = on_fabric() - base if base >= 0 else -1
    c.shutdown(socket.SHUT_WR)
    got, ok = 0, True
    # (the kernel's bytes are right by definition, and draining megabytes
    # through a 4 KiB window takes it a minute: only the ring's are read)
    while base >= 0:
        b = s.recv(1 << 20)
        if not b:
            break
        ok = ok and b == pattern(got, len(b))
        got += len(b)
    ok = ok and (got == total or base < 0)
    c.close()
    s.close()
    return {"case": "inflight", "snd": snd, "rcv": rcv, "when": when, "inflight": total,
            "exact": ok, "accelerated": acc}


def reset() -> dict:
    base = on_fabric()
    c, s = pair(4096, 4096)
    c.sendall(b"x")  # the switch, then a reader that takes 1 KiB and goes
    assert s.recv(1) == b"x"
    acc = on_fabric() - base if base >= 0 else -1
    out: dict = {}

    def write() -> None:
        try:
            c.sendall(b"y" * (1 << 20))
            out["err"] = None
        except OSError as e:
            out["err"] = errno.errorcode.get(e.errno, str(e.errno))

    t = threading.Thread(target=write)
    t.start()
    time.sleep(0.2)
    n = 0
    while n < 1024:
        n += len(s.recv(1024 - n))
    s.close()
    t.join(10)
    c.close()
    return {"case": "reset", "hung": t.is_alive(), "err": out.get("err"), "accelerated": acc}


def asyncio_reset() -> dict:
    import asyncio

    async def run() -> dict:
        base = on_fabric()
        done = asyncio.get_running_loop().create_future()

        async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.readexactly(1025)
            w.close()
            done.set_result(True)

        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        srv = await asyncio.start_server(serve, sock=ls)
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        c.setblocking(False)
        await asyncio.get_running_loop().sock_connect(c, ls.getsockname())
        r, w = await asyncio.open_connection(sock=c)
        w.write(b"x")  # the switch: the reader then wants 1 KiB more
        await w.drain()
        acc = on_fabric() - base if base >= 0 else -1
        err = None
        try:
            # a "file" that the ring would take whole, and TCP's 4 KiB
            # buffers would not: drain() waits for the reader, which goes
            w.write(b"z" * (512 << 10))
            await asyncio.wait_for(w.drain(), 10)
        except (ConnectionError, OSError) as e:
            err = type(e).__name__
        except asyncio.TimeoutError:
            err = "hung"
        await asyncio.wait_for(done, 10)
        w.close()
        srv.close()
        return {"case": "asyncio", "err": err, "accelerated": acc}

    return asyncio.run(run())


def threads() -> list[dict]:
    out = []
    for case in ("shut_rd", "shut_wr", "dontwait_rd", "dontwait_wr", "close_rd"):
        base = on_fabric()
        c, s = pair()
        c.sendall(b"a")
        assert s.recv(1) == b"a"
        s.sendall(b"b")
        assert c.recv(1) == b"b"
        acc = on_fabric() - base if base >= 0 else -1
        res: dict = {}
        writer = case.endswith("wr")
        if writer:  # fill what the peer's buffers take, so that a send blocks
            c.setblocking(False)
            try:
                while True:
                    c.send(b"f" * 65536)
            except BlockingIOError:
                pass
            c.setblocking(True)

        def blocked(c: socket.socket = c, res: dict = res, writer: bool = writer) -> None:
            try:
                if writer:
                    while True:
                        c.send(b"g" * 65536)
                else:
                    res["blocked"] = repr(c.recv(10))
            except OSError as e:
                res["blocked"] = errno.errorcode.get(e.errno, str(e.errno))
            res["t"] = time.monotonic()

        t = threading.Thread(target=blocked)
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        if case == "close_rd":
            # the kernel keeps the file for the blocked recv: it gets what
            # comes next, and only then does the socket close (FIN)
            os.close(c.detach())
            s.settimeout(0.3)
            try:
                res["peer_before"] = repr(s.recv(1))
            except TimeoutError:
                res["peer_before"] = "nothing"
            s.settimeout(None)
            s.sendall(b"y")
            t.join(5)
            s.settimeout(5)
            try:
                res["peer_after"] = repr(s.recv(1))
            except OSError as e:
                res["peer_after"] = type(e).__name__
        elif case == "shut_rd":
            c.shutdown(socket.SHUT_RD)
        elif case == "shut_wr":
            c.shutdown(socket.SHUT_WR)
        else:
            try:
                (c.send(b"h", socket.MSG_DONTWAIT) if writer else c.recv(1, socket.MSG_DONTWAIT))
                res["other"] = "ok"
            except OSError as e:
                res["other"] = errno.errorcode.get(e.errno, str(e.errno))
            res["other_at_once"] = time.monotonic() - t0 < 0.1
            if writer:  # unblock: the peer reads it all
                s.setblocking(False)
                try:
                    while s.recv(1 << 20):
                        pass
                except BlockingIOError:
                    pass
                c.shutdown(socket.SHUT_WR)
            else:
                s.sendall(b"z")
        t.join(5)
        res["hung"] = t.is_alive()
        res["within_1s"] = not res["hung"] and res["t"] - t0 < 1.0
        res.pop("t", None)
        if writer and case == "dontwait_wr":
            res.pop("blocked", None)  # (how the send ends is the unblocking's)
        c.close()
        s.close()
        out.append({"case": case, **res, "accelerated": acc})
        time.sleep(0.05)
    return out


def sendfile() -> dict:
    import tempfile
    base = on_fabric()
    c, s = pair()
    c.sendall(b"a")
    assert s.recv(1) == b"a"
    acc = on_fabric() - base if base >= 0 else -1
    res: dict = {"case": "sendfile"}
    with tempfile.TemporaryFile() as f:
        f.write(pattern(0, 8 << 20))
        f.flush()
        c.setblocking(False)
        off = 0
        while True:
            try:
                n = os.sendfile(c.fileno(), f.fileno(), off, 1 << 20)
            except OSError as e:
                res["end"] = errno.errorcode.get(e.errno, str(e.errno))
                break
            if n == 0:
                res["end"] = "0"
                break
            off += n
        c.shutdown(socket.SHUT_WR)
        got, ok = 0, True
        while base >= 0:  # (as in inflight: only the ring's bytes are read)
            b = s.recv(1 << 20)
            if not b:
                break
            ok = ok and b == pattern(got, len(b))
            got += len(b)
        res["exact"] = ok and (got == off or base < 0)
    r, w = os.pipe()
    os.write(w, b"p" * 100)
    x, y = socket.socketpair()
    y.send(b"q" * 100)
    for name, fd in (("pipe", r), ("socket", x.fileno())):
        try:
            res[name] = os.sendfile(s.fileno(), fd, None, 100)
        except OSError as e:
            res[name] = errno.errorcode.get(e.errno, str(e.errno))
    for fd in (r, w):
        os.close(fd)
    for x_ in (x, y, c, s):
        x_.close()
    return {**res, "accelerated": acc}


def timeo() -> dict:
    base = on_fabric()
    c, s = pair(timeo=0.2)
    c.sendall(b"a")
    assert s.recv(1) == b"a"
    s.sendall(b"b")
    assert c.recv(1) == b"b"
    acc = on_fabric() - base if base >= 0 else -1
    res = {}
    for name, x in (("client", c), ("server", s)):
        t0 = time.monotonic()
        try:
            x.recv(1)
            res[name] = "data"
        except OSError as e:
            res[name] = errno.errorcode.get(e.errno, str(e.errno))
        res[name + "_waited"] = time.monotonic() - t0 >= 0.15
    c.close()
    s.close()
    return {"case": "timeo", **res, "accelerated": acc}


LINGER0 = struct.pack("ii", 1, 0)


def warm_pair(on_listener=None, on_client=None):
    """A connected pair (client, server) with an option (level, name,
    value) set on the listener (inherited) and/or on the client before
    connect(), one byte each way (the switch); and how many of its ends are
    on the ring."""
    base = on_fabric()
    ls = socket.socket()
    if on_listener:
        ls.setsockopt(*on_listener)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    c = socket.socket()
    if on_client:
        c.setsockopt(*on_client)
    c.connect(ls.getsockname())
    s, _ = ls.accept()
    ls.close()
    c.sendall(b"a")
    assert s.recv(1) == b"a"
    s.sendall(b"b")
    assert c.recv(1) == b"b"
    return c, s, (on_fabric() - base if base >= 0 else -1)


def linger(where: str, unread: bool) -> dict:
    opt = (socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    c, s, acc = warm_pair(opt if where == "listener" else None, opt if where == "before" else None)
    closer, peer = (s, c) if where == "listener" else (c, s)
    if where == "after":
        closer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
    res = {"case": "linger", "where": where, "unread": unread,
           "getsockopt": list(struct.unpack("ii", closer.getsockopt(
               socket.SOL_SOCKET, socket.SO_LINGER, 8)))}
    closer.sendall(b"xyz")
    if not unread:
        time.sleep(0.05)
        res["read_before"] = peer.recv(10).decode()
    closer.close()
    time.sleep(0.1)  # (loopback delivers the RST)
    p = select.poll()
    p.register(peer.fileno(), select.POLLIN | select.POLLOUT)
    ev = p.poll(0)
    res["poll"] = ev[0][1] if ev else 0
    steps = []
    for _ in range(3):
        try:
            steps.append(peer.recv(10, socket.MSG_DONTWAIT).decode())
        except OSError as e:
            steps.append(errno.errorcode.get(e.errno, str(e.errno)))
    res["recvs"] = steps
    res["so_error"] = peer.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    try:
        peer.send(b"q", socket.MSG_NOSIGNAL)
        res["send"] = "ok"
    except OSError as e:
        res["send"] = errno.errorcode.get(e.errno, str(e.errno))
    peer.close()
    res["accelerated"] = acc
    return res


def lowat(where: str) -> dict:
    w, r, acc = warm_pair((socket.SOL_SOCKET, socket.SO_RCVLOWAT, 10) if where == "listener"
                          else None)
    w.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if where == "after":
        r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 10)
    steps: list = [r.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)]

    def ready() -> None:
        p = select.poll()
        p.register(r.fileno(), select.POLLIN)
        ev = p.poll(0)
        steps.append(["poll", ev[0][1] if ev else 0, bool(select.select([r], [], [], 0)[0])])

    w.sendall(b"abcd")
    time.sleep(0.05)
    ready()
    steps.append(["dontwait", r.recv(100, socket.MSG_DONTWAIT).decode()])
    w.sendall(b"efgh")
    time.sleep(0.05)
    ready()
    # (10 more: the kernel wakes a reader for SO_RCVLOWAT new bytes, not
    # for what it already took plus the new)
    threading.Timer(0.1, lambda: w.sendall(b"ijklmnopqr")).start()
    steps.append(["blocking", r.recv(100).decode()])
    w.sendall(b"0123456789xy")
    time.sleep(0.05)
    ready()
    steps.append(["recv 5", r.recv(5).decode()])
    ready()
    steps.append(["waitall 7", r.recv(7, socket.MSG_WAITALL).decode()])
    # a blocking MSG_PEEK, too, waits for SO_RCVLOWAT bytes
    w.sendall(b"ab")
    threading.Timer(0.1, lambda: w.sendall(b"cdefghijkl")).start()
    steps.append(["peek", r.recv(100, socket.MSG_PEEK).decode()])
    steps.append(["after peek", r.recv(100).decode()])
    w.sendall(b"tail")
    w.shutdown(socket.SHUT_WR)
    time.sleep(0.05)
    ready()
    steps.append(["at end", r.recv(100).decode(), r.recv(100).decode()])
    w.close()
    r.close()
    return {"case": "lowat", "where": where, "steps": steps, "accelerated": acc}


def main() -> None:
    what = sys.argv[1]
    if what == "inflight":
        for when in ("before", "after"):
            for snd, rcv in ((4096, 4096), (4096, 0), (0, 4096), (16384, 16384),
                             (65536, 65536), (262144, 262144)):
                print(json.dumps(inflight(snd, rcv, when)), flush=True)
    elif what == "reset":
        print(json.dumps(reset()), flush=True)
    elif what == "sendfile":
        print(json.dumps(sendfile()), flush=True)
    elif what == "threads":
        for r in threads():
            print(json.dumps(r), flush=True)
    elif what == "asyncio":
        print(json.dumps(asyncio_reset()), flush=True)
    elif what == "lowat":
        for where in ("after", "listener"):
            print(json.dumps(lowat(where)), flush=True)
    elif what == "linger":
        for where in ("after", "before", "listener"):
            for unread in (False, True):
                print(json.dumps(linger(where, unread)), flush=True)
    else:
        print(json.dumps(timeo()), flush=True)


if __name__ == "__main__":
    main()
