"""A client that writes all it has and shuts down writing before its
switch, then reads a server that writes more than the ring holds from an
event loop (tests/test_eof_before_switch.py).

  eof_before_switch.py server SELECTOR
      listens on 127.0.0.1, prints its port, waits 0.3 s before accepting
      (so the client's bytes and FIN go over TCP before any switch), reads
      to EOF, then writes B bytes non-blocking, waiting for writability
      with selectors.SELECTOR (EpollSelector, PollSelector,
      SelectSelector).  It prints what poll(POLLOUT, 0) says once a send
      met EAGAIN (a full buffer: nothing), and "ok" with the counts.  A
      wait for writability that returns nothing before its 10 s is an
      error (the kernel's select/poll do not return early).
  eof_before_switch.py client PORT
      writes A bytes, shuts down writing, sleeps 0.5 s (no call: no
      switch yet), reads to EOF, checks every byte.
  eof_before_switch.py server-reads
      listens, prints its port, waits 0.3 s before accepting, then reads
      to EOF (its second read blocks before the client's shutdown, the
      ring armed for the client's first ring write), checks every byte,
      answers "done" and prints "ok read N accelerated K".
  eof_before_switch.py client-late-shut PORT
      writes A2 bytes at once (over TCP: the server has not accepted),
      sleeps 0.8 s (no call: still before its switch, while the server
      reads them and waits), shuts down writing, sleeps 0.3 s (the
      server reads to its EOF before any switch), reads the answer."""
from __future__ import annotations

import os
import select
import selectors
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
A, B = 300_000, 4 << 20
A2 = 20_000  # (within the socket buffers: sent at once, before the accept)
PAT = bytes(range(251)) * 300  # (no power-of-two period)


def accept_late() -> socket.socket:
    """Listens, prints the port, accepts 0.3 s later (the client's first
    bytes go over TCP, before any switch)."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    print(lst.getsockname()[1], flush=True)
    time.sleep(0.3)
    return lst.accept()[0]


def server(selector: str) -> None:
    from onfabric import on_fabric
    s = accept_late()
    got = 0
    while b := s.recv(65536):
        got += len(b)
    s.setblocking(False)
    sel = getattr(selectors, selector)()
    sel.register(s, selectors.EVENT_WRITE)
    sent, full = 0, None
    while sent < B:
        n = min(len(PAT) - sent % 251, B - sent)
        try:
            sent += s.send(PAT[sent % 251:sent % 251 + n])
            continue
        except BlockingIOError:
            pass
        if full is None:
            p = select.poll()
            p.register(s, select.POLLOUT)
            full = p.poll(0)
        t0 = time.monotonic()
        if not sel.select(timeout=10):
            raise SystemExit(f"{selector}: no writability after {time.monotonic() - t0:.2f} s, "
                             f"{sent} of {B} sent")
    acc = on_fabric()
    s.shutdown(socket.SHUT_WR)
    print(f"ok read {got} sent {sent} full-poll {full} accelerated {acc}", flush=True)
    s.close()


def client(port: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"a" * A)
    s.shutdown(socket.SHUT_WR)
    time.sleep(0.5)
    data = bytearray()
    while b := s.recv(65536):
        data += b
    want = (PAT * (B // len(PAT) + 2))[:B]
    if bytes(data) != want:
        k = next((i for i in range(min(len(data), B)) if data[i] != want[i]), min(len(data), B))
        raise SystemExit(f"stream: {len(data)} of {B} bytes, first wrong at {k}")
    print(f"ok client read {len(data)}", flush=True)


def server_reads() -> None:
    from onfabric import on_fabric
    s = accept_late()
    data = bytearray()
    while b := s.recv(65536):
        data += b
    if bytes(data) != b"a" * A2:
        k = next((i for i in range(min(len(data), A2)) if data[i] != 97), min(len(data), A2))
        raise SystemExit(f"stream: {len(data)} of {A2} bytes, first wrong at {k}"
                         f" ({data[k:k + 1]!r})")
    s.sendall(b"done")
    acc = on_fabric()
    s.close()
    print(f"ok read {len(data)} accelerated {acc}", flush=True)


def client_late_shut(port: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"a" * A2)
    time.sleep(0.8)
    s.shutdown(socket.SHUT_WR)
    time.sleep(0.3)  # (no call: the server reads to EOF before our switch)
    data = bytearray()
    while b := s.recv(65536):
        data += b
    print(f"ok client got {bytes(data)!r}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2])
    elif sys.argv[1] == "server-reads":
        server_reads()
    elif sys.argv[1] == "client-late-shut":
        client_late_shut(int(sys.argv[2]))
    else:
        client(int(sys.argv[2]))
