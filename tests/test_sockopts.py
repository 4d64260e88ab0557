"""Socket options, and calls from other threads, against the kernel
(issue 11): the same program
(tests/programs/sockopts.py) on plain TCP and under fastivc, every case
with both ends on the ring.

- SO_SNDBUF / SO_RCVBUF bound the bytes in flight: a writer to a peer that
  does not read gets EAGAIN after no more than the kernel takes with the
  same buffers (before: the whole ring, 1 MiB and more, whatever was set),
  and not absurdly less (an eighth); set before connect(), on the
  listener (inherited) or on the connected pair.  Every byte is checked.
- So a writer with small buffers to a reader that reads 1 KiB and closes
  gets the kernel's error, blocking and through asyncio (before: a 512
  KiB asyncio write "succeeded" into the ring).
- SO_RCVTIMEO set on the listener (inherited) or before connect() holds
  after the switch (before: ignored, the recv slept for ever)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastivc.run import build_env

PROG = str(Path(__file__).with_name("programs") / "sockopts.py")


def _run(case: str, env: dict) -> list[dict]:
    r = subprocess.run([sys.executable, PROG, case], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(ln) for ln in r.stdout.splitlines()]


def _both(case: str, shm_path: str) -> tuple[list[dict], list[dict]]:
    import os
    plain = dict(os.environ)
    plain.pop("LD_PRELOAD", None)
    return _run(case, plain), _run(case, build_env(os.environ, fabric=shm_path))


def test_buffer_sizes_bound_the_bytes_in_flight(shm_path):
    plain, fast = _both("inflight", shm_path)
    assert len(plain) == len(fast) == 12
    for p, f in zip(plain, fast, strict=True):
        what = f"SO_SNDBUF {p['snd']}, SO_RCVBUF {p['rcv']}, {p['when']}"
        assert p["exact"] and f["exact"], what
        assert f["accelerated"] == 2, (what, f)
        assert 0 < f["inflight"] <= p["inflight"], (what, p["inflight"], f["inflight"])
        assert f["inflight"] >= p["inflight"] // 8 or f["inflight"] >= 1 << 20, \
            (what, p["inflight"], f["inflight"])


@pytest.mark.parametrize("case", ["reset", "asyncio"])
def test_small_buffers_writer_sees_the_readers_close(shm_path, case):
    (p,), (f,) = _both(case, shm_path)
    assert f["accelerated"] == 2, f
    assert p["err"] not in (None, "hung"), p
    assert {k: v for k, v in f.items() if k != "accelerated"} == \
        {k: v for k, v in p.items() if k != "accelerated"}, (p, f)


def test_rcvtimeo_inherited_and_set_before_connect(shm_path):
    (p,), (f,) = _both("timeo", shm_path)
    assert f["accelerated"] == 2, f
    assert p["client"] == p["server"] == "EAGAIN", p
    assert {k: v for k, v in f.items() if k != "accelerated"} == \
        {k: v for k, v in p.items() if k != "accelerated"}, (p, f)


def test_linger_zero_close_resets_as_the_kernels(shm_path):
    """SO_LINGER on with 0 s (an abortive close, twisted's abortConnection):
    the peer gets what the kernel gives after TCP's RST (ECONNRESET once,
    then end of stream; POLLERR|POLLHUP), whether the option was set on the
    connection, before connect() or on the listener, with bytes unread or
    none (before: the ring closed with a FIN, and the peer saw EOF)."""
    plain, fast = _both("linger", shm_path)
    assert len(plain) == len(fast) == 6
    for p, f in zip(plain, fast, strict=True):
        assert f["accelerated"] == 2, f
        assert "ECONNRESET" in p["recvs"], p
        assert {k: v for k, v in f.items() if k != "accelerated"} == \
            {k: v for k, v in p.items() if k != "accelerated"}, (p, f)


def test_rcvlowat_as_the_kernels(shm_path):
    """SO_RCVLOWAT 10, set on the connection or inherited from the listener:
    poll and select say not readable below it, a blocking recv waits for
    the tenth byte, a non-blocking one takes what is there, and the end of
    the stream is readable whatever is left (before: the ring was readable
    with one byte, and the blocking recv returned the first four); a
    blocking MSG_PEEK waits for the tenth byte too (before: it peeked two)."""
    plain, fast = _both("lowat", shm_path)
    assert len(plain) == len(fast) == 2
    for p, f in zip(plain, fast, strict=True):
        assert f["accelerated"] == 2, f
        assert p["steps"][1] == ["poll", 0, False], p  # (the kernel: 4 < 10)
        assert f["steps"] == p["steps"], (p, f)


def test_calls_from_another_thread_while_one_blocks(shm_path):
    """A recv or send blocked in one thread, and in another: shutdown
    (SHUT_RD ends the recv with 0, SHUT_WR the send with EPIPE, within 1 s:
    before, the recv slept until data came), or the same direction with
    MSG_DONTWAIT (EAGAIN at once: before, it waited for the blocked call's
    lock, i.e. for its data).  Allowed difference: a 1-byte MSG_DONTWAIT
    send while another send blocks may be taken by TCP (room left in its
    last segment) where the full ring gives EAGAIN."""
    plain, fast = _both("threads", shm_path)
    assert [p["case"] for p in plain] == [f["case"] for f in fast]
    for p, f in zip(plain, fast, strict=True):
        assert f["accelerated"] == 2, f
        assert not p["hung"] and p["within_1s"], p
        if p["case"] == "dontwait_wr":
            assert f["other"] in ("EAGAIN", "ok") and f["other_at_once"], (p, f)
            p, f = ({k: v for k, v in x.items() if k != "other"} for x in (p, f))
        assert {k: v for k, v in f.items() if k != "accelerated"} == \
            {k: v for k, v in p.items() if k != "accelerated"}, (p, f)


def test_sendfile_ends_and_errors_as_the_kernels(shm_path):
    """sendfile() with an offset into a full non-blocking socket ends with
    EAGAIN (before: 0, the caller's end of file), every byte exact; from a
    pipe or a socket EINVAL (before: the pipe's unsent tail was lost)."""
    (p,), (f,) = _both("sendfile", shm_path)
    assert f["accelerated"] == 2, f
    assert p["end"] == "EAGAIN" and p["pipe"] == p["socket"] == "EINVAL", p
    assert {k: v for k, v in f.items() if k != "accelerated"} == \
        {k: v for k, v in p.items() if k != "accelerated"}, (p, f)
