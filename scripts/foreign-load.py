#!/usr/bin/env python3
"""make foreign-load (issue 11): the foreign suites several at once under CPU
load, so that races show.  Each round runs, under `fastivc run` on one
fabric, tornado's suite, twisted's TCP suite and a second copy of twisted's
two TCP modules at the same time, next to two busy loops, and compares
every test's outcome with a plain-TCP run of each suite made first.  The
one allowed difference is tornado's test_stop_in_callback (tests/
test_foreign.py: tornado skips it when all its racing connects win, which
under fastivc they do).  Exit 1 on any other difference.

    scripts/foreign-load.py [ROUNDS]      (default 3)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from fastivc.run import build_env

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from foreign_suites import (  # noqa: E402
    RACY,
    TORNADO_SUITE,
    TWISTED,
    TWISTED_SUITE,
    outcomes,
    twisted_suite,
)

TWISTED_TCP = twisted_suite(TWISTED[:2])  # the second copy: the two TCP modules


def run_all(cmds: list[list[str]], env: dict) -> list[str]:
    ps = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           cwd="/tmp") for c in cmds]
    return [p.communicate(timeout=1200)[0] for p in ps]


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    plain = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    base_t = outcomes(TORNADO_SUITE, run_all([TORNADO_SUITE[0]], plain)[0])
    base_w = outcomes(TWISTED_SUITE, run_all([TWISTED_SUITE[0]], plain)[0])
    print(f"plain: tornado {len(base_t)} tests, twisted {len(base_w)}", flush=True)
    bad = 0
    for k in range(rounds):
        fab = f"/dev/shm/fastivc-foreign-load-{os.getpid()}-{k}"
        hogs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(2)]
        t0 = time.monotonic()
        try:
            outs = run_all([TORNADO_SUITE[0], TWISTED_SUITE[0], TWISTED_TCP[0]],
                           build_env(os.environ, fabric=fab))
        finally:
            for h in hogs:
                h.kill()
            if os.path.exists(fab):
                os.unlink(fab)
        got = [(base_t, outcomes(TORNADO_SUITE, outs[0])),
               (base_w, outcomes(TWISTED_SUITE, outs[1])), (base_w, outcomes(TWISTED_TCP, outs[2]))]
        diffs = {}
        for base, fast in got:
            if not fast:
                diffs["(no outcomes)"] = "the suite printed none"
            diffs.update({t: (base.get(t), v) for t, v in fast.items()
                          if base.get(t) != v and t not in RACY})
        diffs.update({t: (v, None) for t, v in got[0][0].items() if t not in got[0][1]})
        diffs.update({t: (v, None) for t, v in got[1][0].items() if t not in got[1][1]})
        print(f"round {k}: {time.monotonic() - t0:.0f} s, tornado {len(got[0][1])} + twisted "
              f"{len(got[1][1])} + {len(got[2][1])} tests at once, {len(diffs)} differ "
              f"from plain TCP{': ' + str(diffs) if diffs else ''}", flush=True)
        bad += bool(diffs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
