"""Both ends of the peer-death test (tests/test_peer_death.py); a plain
socket program that knows nothing of fastivc.

    death_peer.py survivor LISTEN_HOST PEER_HOST MY_PORT PEER_PORT
    death_peer.py victims  LISTEN_HOST PEER_HOST MY_PORT PEER_PORT

Each listens on LISTEN_HOST:MY_PORT and reads one command a line on stdin:
"OP SIDE [nofin] [wait=plain|poll|epoll]", SIDE being the survivor's side of
the next connection (server: it accepts, client: it connects to
PEER_HOST:PEER_PORT).

The survivor makes the connection, prints {"connected"}, waits for a line
"go", prints {"blocking", "lport", "rport"}
just before it blocks, then blocks in OP until the connection fails, and
prints {"t", "err", ...}: the CLOCK_MONOTONIC time its call came back, and
the errno (or "EOF").  OP:
  write   blocking send() on a full ring / full socket buffers
  read    blocking recv() (the victim writes a little now and then)
  poll, select, epoll   non-blocking: send until EAGAIN, then wait for
          POLLIN|POLLOUT in that call, and go on sending after each report
  idle    blocking recv() on a connection nobody has written to yet: the
          upgrade is still under way (offered, not yet adopted or used)
  shared  blocking send() of 64 KiB chunks, printing {"progress": bytes}
          after each: the victim's end is held by two processes (a fork
          right after connect or accept, before the upgrade settled), both
          reading it, so they contend for the side's lock

The victims process forks one child per command, which takes the other end
and plays the victim (a slow reader, or for OP read a slow writer; for idle
it only holds the end) until the test kills it with SIGKILL; the parent
never touches the connection.  It prints {"pid", "pid2", "taken"} once the
child holds its end (pid2: for shared, the child's own fork, which holds
the end too and reads it; else 0).  wait= is how the victim waits for its
socket between reads (or writes): blocked in recv/send, in poll, or in
epoll_wait, so that the kill finds it in each of these states.
"""

from __future__ import annotations

import errno
import json
import os
import random
import select
import signal
import socket
import sys
import time


def out(**kw) -> None:
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def listener(host: str, port: int) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(64)
    return ls


def take(ls: socket.socket, side: str, peer: str, port: int) -> socket.socket:
    """side: ours.  server accepts, client connects."""
    if side == "server":
        return ls.accept()[0]
    fam = socket.AF_INET6 if ":" in peer else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.connect((peer, port))
    return s


def errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno, str(e.errno))


CHUNK = b"x" * (1 << 20)


def survive(s: socket.socket, op: str) -> dict:
    lport, rport = s.getsockname()[1], s.getpeername()[1]
    if op == "write":
        out(blocking=True, lport=lport, rport=rport)
        try:
            while True:
                s.send(CHUNK)
        except OSError as e:
            return {"err": errname(e)}
    if op == "shared":
        out(blocking=True, lport=lport, rport=rport)
        sent = 0
        try:
            while True:
                s.sendall(CHUNK[:65536])
                sent += 65536
                out(progress=sent)
        except OSError as e:
            return {"err": errname(e), "sent": sent}
    if op in ("read", "idle"):
        out(blocking=True, lport=lport, rport=rport)
        try:
            while s.recv(65536):
                pass
            return {"err": "EOF"}
        except OSError as e:
            return {"err": errname(e)}
    s.setblocking(False)
    sent = 0
    waits = 0
    ep = None
    if op == "epoll":
        ep = select.epoll()
        ep.register(s.fileno(), select.EPOLLIN | select.EPOLLOUT)
    blocking = False
    while True:
        try:
            while True:
                sent += s.send(CHUNK)
        except BlockingIOError:
            pass
        except OSError as e:
            return {"err": errname(e), "sent": sent, "waits": waits}
        if not blocking:
            out(blocking=True, lport=lport, rport=rport)
            blocking = True
        waits += 1
        if op == "poll":
            p = select.poll()
            p.register(s.fileno(), select.POLLIN | select.POLLOUT)
            ev = p.poll()[0][1]
            readable = ev & (select.POLLIN | select.POLLHUP | select.POLLERR)
        elif op == "select":
            r, _w, _x = select.select([s], [s], [])
            readable = bool(r)
        else:
            ev = ep.poll()[0][1]
            readable = ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR)
        if readable:
            try:
                if not s.recv(65536):
                    return {"err": "EOF", "sent": sent, "waits": waits}
            except BlockingIOError:
                pass
            except OSError as e:
                return {"err": errname(e), "sent": sent, "waits": waits}


def survivor(ls: socket.socket, peer: str, pport: int) -> None:
    for line in sys.stdin:
        op, side = line.split()
        s = take(ls, side, peer, pport)
        out(connected=True)
        # the test says go once the victim holds its end: a connection
        # still in the accept queue is not accelerated yet (and is TCP's)
        assert sys.stdin.readline().strip() == "go"
        r = survive(s, op)
        out(t=time.monotonic(), **r)
        s.close()


def victim(s: socket.socket, op: str, wait: str) -> None:
    rnd = random.Random()
    if op == "idle":
        while True:
            time.sleep(60)
    writer = op == "read"
    if wait != "plain":
        s.setblocking(False)
    ev = select.POLLOUT if writer else select.POLLIN
    p = select.poll() if wait == "poll" else select.epoll() if wait == "epoll" else None
    if p is not None:
        p.register(s.fileno(), ev)
    while True:
        if p is not None:
            p.poll()  # the kill may find us here
        try:
            if writer:
                s.send(b"y" * 64)
            else:
                s.recv(4096)
        except BlockingIOError:
            continue
        time.sleep(rnd.uniform(0, 0.005 if writer else 0.003))


def victims(ls: socket.socket, peer: str, pport: int) -> None:
    kept: list[int] = []
    for line in sys.stdin:
        op, side, *opts = line.split()
        wait = next((o[5:] for o in opts if o.startswith("wait=")), "plain")
        for fd in kept:  # the last round's victim socket (nofin)
            os.close(fd)
        kept = []
        while True:  # reap the killed ones
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)
                s = take(ls, "client" if side == "server" else "server", peer, pport)
                ls.close()
                # shared: the fork comes right after connect or accept,
                # before the upgrade settled (tests/test_fork_pre_switch.py)
                pid2 = os.fork() if op == "shared" else 0
                if op != "shared" or pid2 > 0:
                    socket.send_fds(theirs, [b"t" + str(pid2).encode()],
                                    [s.fileno()] if "nofin" in opts else [])
                theirs.close()
                victim(s, op, wait)
            finally:
                os._exit(0)
        theirs.close()
        # Killed before it holds its end, it would leave the connection in
        # our accept queue: no FIN then, TCP or not.  nofin: we keep a copy
        # of its socket (passed as SCM_RIGHTS, which the library does not
        # follow), so its death sends no FIN: only fastivc's liveness can
        # tell the survivor.
        msg, fds, _flags, _addr = socket.recv_fds(ours, 32, 1)
        kept = list(fds)
        ours.close()
        out(pid=pid, pid2=int(msg[1:] or b"0"), taken=msg[:1] == b"t")


def main() -> None:
    role, host, peer, port, pport = sys.argv[1:6]
    ls = listener(host, int(port))
    out(ready=True)
    (survivor if role == "survivor" else victims)(ls, peer, int(pport))


if __name__ == "__main__":
    main()
