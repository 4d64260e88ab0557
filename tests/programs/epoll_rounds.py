"""Short exchanges on fresh connections, each reply awaited in epoll_wait
(tests/test_epoll_wakes.py): ROUNDS times, connect (non-blocking), send a
67-byte request, wait in epoll for the 209-byte reply, close; the server
is another program, a thread per connection.  Scenarios: the socket added
to the set before connect (as nginx adds an upstream connection) or after,
edge- or level-triggered; and one kept connection that another thread
adds to the set while this one sleeps in it (ROUNDS / 10 times), the set
otherwise empty or not.  A plain socket program; one JSON line per
scenario: {"name", "steps", "accelerated", "late"}; "late" is the
library's count of events found only after a sleep no wake-up ended
(fastivc_epoll_late), -1 without the library."""

from __future__ import annotations

import ctypes
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time

from onfabric import on_fabric

ROUNDS = int(os.environ.get("FIVC_EPOLL_ROUNDS", "150"))
REQ, REPLY, WAIT_S = 67, 209, 5.0


def late() -> int:
    try:
        fn = ctypes.CDLL(None).fastivc_epoll_late
        fn.restype = ctypes.c_uint64
        return int(fn())
    except AttributeError:
        return -1


def serve(ls: socket.socket) -> None:
    def one(c: socket.socket) -> None:
        with c:
            while c.recv(4096):
                c.sendall(b"R" * REPLY)
    while True:
        try:
            c, _ = ls.accept()
        except OSError:
            return
        threading.Thread(target=one, args=(c,), daemon=True).start()


def await_reply(ep: select.epoll, s: socket.socket, i: int, timeouts: list) -> bytes:
    """The reply, each piece awaited in epoll_wait; round i goes to
    timeouts when a wait sees nothing for WAIT_S."""
    got = b""
    while len(got) < REPLY:
        if not ep.poll(WAIT_S):
            timeouts.append(i)
            break
        try:
            d = s.recv(4096)
        except BlockingIOError:
            continue
        if not d:
            break
        got += d
    return got


def scenario(addr: tuple, before: bool, et: bool) -> dict:
    ep = select.epoll()
    mask = select.EPOLLIN | select.EPOLLRDHUP | (select.EPOLLOUT | select.EPOLLET if et else 0)
    replies = total = 0
    accelerated = -1
    timeouts = []
    for i in range(ROUNDS):
        if len(timeouts) >= 3:
            break  # (it hangs: the steps say so)
        s = socket.socket()
        s.setblocking(False)
        if before:
            ep.register(s.fileno(), mask | select.EPOLLOUT)
        try:
            s.connect(addr)
        except BlockingIOError:
            pass
        if not before:
            ep.register(s.fileno(), mask | select.EPOLLOUT)
        got = b""
        if ep.poll(WAIT_S):  # connected (EPOLLOUT)
            if not et:
                ep.modify(s.fileno(), mask)
            s.send(b"G" * REQ)
            got = await_reply(ep, s, i, timeouts)
        else:
            timeouts.append(i)
        replies += len(got) == REPLY
        total += len(got)
        accelerated = max(accelerated, on_fabric())
        ep.unregister(s.fileno())
        s.close()
        os.write(2, b".")  # (a line of log between rounds, as a real client writes)
    ep.close()
    return {"steps": [f"{replies} of {ROUNDS} replies, {total} bytes, timeouts {timeouts[:5]}"],
            "accelerated": accelerated}


def added_while_asleep(addr: tuple, other: bool) -> dict:
    """One connection, kept: each round another thread adds it to the set
    while this one sleeps in epoll_wait, then sends the request; this
    thread must wake for the reply (gunicorn's gthread worker: its pool
    threads put a kept-alive connection back while its main thread
    waits).  other: the set holds another (idle) connection too."""
    ep = select.epoll()
    s = socket.create_connection(addr)
    idle = socket.create_connection(addr) if other else None
    if idle:
        ep.register(idle.fileno(), select.EPOLLIN)
    s.sendall(b"G" * REQ)  # the switch, both ways
    got = b""
    while len(got) < REPLY:
        got += s.recv(4096)
    s.setblocking(False)
    replies = total = 0
    timeouts = []

    def add() -> None:
        time.sleep(0.02)  # (so that the other thread sleeps first; it need not)
        ep.register(s.fileno(), select.EPOLLIN)
        s.send(b"G" * REQ)
    for i in range(ROUNDS // 10):
        t = threading.Thread(target=add)
        t.start()
        got = await_reply(ep, s, i, timeouts)
        t.join()
        ep.unregister(s.fileno())
        replies += len(got) == REPLY
        total += len(got)
        if len(timeouts) >= 3:
            break
    rec = {"steps": [f"{replies} of {ROUNDS // 10} replies, {total} bytes, timeouts "
                     f"{timeouts[:5]}"], "accelerated": on_fabric()}
    for x in (s, idle):
        if x:
            x.close()
    ep.close()
    return rec


def main() -> None:
    if sys.argv[1:2] == ["serve"]:  # the server: another program, as a real one is
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(64)
        print(ls.getsockname()[1], flush=True)
        serve(ls)
        return
    srv = subprocess.Popen([sys.executable, __file__, "serve"], stdout=subprocess.PIPE, text=True)
    try:
        addr = ("127.0.0.1", int(srv.stdout.readline()))
        for name, before, et in (("added before connect, edge-triggered", True, True),
                                 ("added after connect, edge-triggered", False, True),
                                 ("added before connect, level-triggered", True, False)):
            l0 = late()
            rec = scenario(addr, before, et)
            rec.update(name=name, late=late() - l0 if l0 >= 0 else -1)
            print(json.dumps(rec), flush=True)
        for name, other in (("added by another thread while the set sleeps, alone", False),
                            ("added by another thread while the set sleeps, beside another",
                             True)):
            l0 = late()
            rec = added_while_asleep(addr, other)
            rec.update(name=name, late=late() - l0 if l0 >= 0 else -1)
            print(json.dumps(rec), flush=True)
    finally:
        srv.kill()
        srv.wait()


if __name__ == "__main__":
    main()
