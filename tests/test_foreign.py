"""Foreign suites (issue 11): tornado's own tests (its TCP, IOStream,
HTTP server and client, process and asyncio tests, 1,517 of them) and
twisted's TCP tests (twisted.internet.test.test_tcp and twisted.test.test_tcp
under every reactor, FTP, web client, endpoints, XML-RPC, IRC: 1,548) run on
plain TCP and under `fastivc run`, and every test must end the same way.
Their sockets are non-blocking, so this is the event-loop path, and most
of their connections go through the ring (the log's switches are counted).

Found by it, fixed (regressions): a 10 MB write to a closed peer
"succeeded" whole (test_write_bytearray_resizable_after_error); a server's
os._exit after reading a request gave its client ECONNRESET where TCP
gives EOF (test_multi_process).  Allowed: test_stop_in_callback, which
tornado itself skips when every one of its 40 racing connects succeeds:
under fastivc they all do (connect costs more, so all 40 are established
before the server stops listening), on plain TCP some fail.

Found by twisted's, fixed (regressions): an epoll_wait that had ring events
to report asked the kernel for the program's plain fds only every 8th call,
so a listener's readiness came a loop turn after the connect's completion,
which the kernel reports in the same call (test_connectionLostAfterPaused-
Transport, and test_doubleHalfClose hung after it); SO_LINGER 0 (twisted's
abortConnection) closed the ring with a FIN, so the peer saw EOF where TCP
gives ECONNRESET (test_serverAbortsConnectionTwice and four more, under
five reactors)."""

from __future__ import annotations

import os
import subprocess

import pytest
from foreign_suites import RACY, TORNADO_SUITE, TWISTED_SUITE, outcomes

from fastivc.run import build_env


def _outcomes(suite: tuple, env: dict) -> tuple[dict, str]:
    r = subprocess.run(suite[0], env=env, capture_output=True, text=True, timeout=600, cwd="/tmp")
    out = r.stdout + r.stderr
    return outcomes(suite, out), out


def _plain_and_fast(suite: tuple, shm_path: str, tmp_path) -> tuple[dict, dict, str, int]:
    """Outcomes on plain TCP, outcomes and output under fastivc, and how
    many connections the library's log says went to the ring."""
    plain_env = dict(os.environ)
    plain_env.pop("LD_PRELOAD", None)
    plain, _ = _outcomes(suite, plain_env)
    log = tmp_path / "log"
    fast, fast_out = _outcomes(suite, build_env(os.environ, fabric=shm_path, log=f"debug:{log}"))
    return plain, fast, fast_out, log.read_text(errors="replace").count("switched to the ring")


def test_tornado_suite_same_as_on_plain_tcp(shm_path, tmp_path):
    pytest.importorskip("tornado")
    plain, fast, fast_out, switched = _plain_and_fast(TORNADO_SUITE, shm_path, tmp_path)
    assert plain and fast, fast_out[-3000:]
    assert set(plain) == set(fast), set(plain) ^ set(fast)
    differ = {t: (plain[t], fast[t]) for t in plain if plain[t] != fast[t] and t not in RACY}
    assert not differ, (differ, fast_out[-3000:])
    assert switched > len(plain) // 2, f"only {switched} connections on the ring"


def test_twisted_tcp_suite_same_as_on_plain_tcp(shm_path, tmp_path):
    pytest.importorskip("twisted")
    pytest.importorskip("hamcrest")  # (twisted.test.test_tcp imports it)
    plain, fast, fast_out, switched = _plain_and_fast(TWISTED_SUITE, shm_path, tmp_path)
    assert len(plain) > 1000 and len(fast) > 1000, fast_out[-3000:]
    assert set(plain) == set(fast), set(plain) ^ set(fast)
    differ = {t: (plain[t], fast[t]) for t in plain if plain[t] != fast[t]}
    assert not differ, (differ, fast_out[-3000:])
    assert sum(v == "OK" for v in fast.values()) > 1000, fast_out[-3000:]
    assert switched > 500, f"only {switched} connections on the ring"
