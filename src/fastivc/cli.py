"""The fastivc command line.  Each subcommand calls a function that returns
data; printing happens here.

Exit codes: 0 success; 1 the operation failed (a benchmark helper failed, a
fabric is unusable, a doctor check FAILed); 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from . import __version__
from ._paths import default_fabric, helper_path, lib_path


def _cmd_lib(args: argparse.Namespace) -> int:
    print(lib_path())
    return 0


def _bench_output(args: argparse.Namespace, measure, baseline_title: str,
                  extra=None) -> int:
    """Run a benchmark function (with a progress bar on a terminal), print its
    table (and `extra(doc)`'s lines), draw --plot, write --json (with this
    invocation's argv)."""
    from .bench import ring
    from .bench.progress import progress_bar, wanted

    try:
        with progress_bar(f"bench {args.scenario}", wanted(args.quiet)) as progress:
            doc = measure(progress)
    except (RuntimeError, FileNotFoundError) as e:
        print(f"fastivc bench {args.scenario}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM; the benchmark has cleaned up
        print(f"\nfastivc bench {args.scenario}: interrupted", file=sys.stderr)
        return 130
    doc.setdefault("commands", {})["invocation"] = shlex.join(["fastivc", *args.argv])
    print(ring.format_table(doc, baseline_title))
    if extra and extra(doc):
        print(extra(doc))
    rc = 0
    if args.plot:
        from .bench import plot

        try:
            doc["plot"] = {"file": args.plot, "series": plot.render(doc, args.plot)}
            print(f"chart written to {args.plot}")
        except (OSError, ValueError) as e:
            print(f"fastivc bench {args.scenario}: --plot {args.plot}: {e}", file=sys.stderr)
            rc = 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
        print(f"results written to {args.json}")
    return rc


def _cmd_bench_ring(args: argparse.Namespace) -> int:
    from .bench import ring

    sizes = tuple(args.sizes) if args.sizes else ring.STREAM_SIZES
    return _bench_output(args, lambda p: ring.run(args.repeats, args.seconds, sizes,
                                                  args.ring_kib, p), "TCP loopback")


def _cmd_run(args: argparse.Namespace) -> int:
    from .run import build_env, exec_command

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("fastivc run: no command given (fastivc run [OPTIONS] -- CMD ARGS...)",
              file=sys.stderr)
        return 2
    env = build_env(os.environ, args.fabric, args.spin_us, args.log, args.ring_kib, args.disable,
                    args.event_loops, args.fabric_mode, args.fabric_group,
                    trap_syscalls=args.trap_syscalls)
    try:
        exec_command(cmd, env)
    except FileNotFoundError:
        print(f"fastivc run: command not found: {cmd[0]}", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"fastivc run: permission denied: {cmd[0]}", file=sys.stderr)
        return 126
    return 1  # not reached


def _cmd_bench_tcp(args: argparse.Namespace) -> int:
    from .bench import tcp

    scenarios = (args.scenario,) if args.scenario != "all" else tcp.SCENARIOS
    sizes = tuple(getattr(args, "sizes", None) or ())
    return _bench_output(args, lambda p: tcp.run(scenarios, args.repeats, args.seconds,
                                                 args.size, args.loopback, p,
                                                 stream_sizes=sizes or None), "plain TCP")


def _cmd_bench_redis(args: argparse.Namespace) -> int:
    from .bench import servers

    return _bench_output(args, lambda p: servers.run_redis(args.repeats, args.seconds,
                                                           args.loopback, p, args.clients),
                         "plain TCP")


def _cmd_bench_nginx(args: argparse.Namespace) -> int:
    from .bench import servers

    return _bench_output(args, lambda p: servers.run_nginx(args.repeats, args.seconds,
                                                           args.workers, args.connections,
                                                           args.loopback, p), "plain TCP")


def _cmd_bench_tiers(args: argparse.Namespace) -> int:
    from .bench import tiers

    keepalive = {"on": (True,), "off": (False,), "both": (True, False)}[args.keepalive]
    return _bench_output(args, lambda p: tiers.run(args.repeats, args.seconds, args.connections,
                                                   keepalive, args.loopback, args.workers,
                                                   progress=p), "plain TCP")


def _cmd_bench_scale(args: argparse.Namespace) -> int:
    from .bench import scale

    return _bench_output(args, lambda p: scale.run(args.idle, args.repeats, args.seconds,
                                                   args.loopback, p, slots=args.slots,
                                                   ring_kib=args.ring_kib),
                         "plain TCP", scale.format_extra)


def _cmd_bench_downgrade(args: argparse.Namespace) -> int:
    from .bench import downgrade
    from .bench.progress import progress_bar, wanted

    try:
        with progress_bar("bench downgrade", wanted(args.quiet)) as progress:
            doc = downgrade.run(args.rounds, args.idle or downgrade.DEFAULT_IDLE,
                                args.loopback, progress)
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        print(f"fastivc bench downgrade: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nfastivc bench downgrade: interrupted", file=sys.stderr)
        return 130
    doc.setdefault("commands", {})["invocation"] = shlex.join(["fastivc", *args.argv])
    print(downgrade.format_table(doc))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"results written to {args.json}")
    return 0


def _cmd_gc(args: argparse.Namespace) -> int:
    from .fabric import QUARANTINE_MAX_S

    path = args.fabric or default_fabric()
    r = subprocess.run([str(helper_path("fastivc-gc")),
                        *(["--lift-quarantine"] if args.lift_quarantine else []), path],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"fastivc gc: {r.stderr.strip() or f'exit {r.returncode}'}", file=sys.stderr)
        return 1
    rep = json.loads(r.stdout)
    if args.json:
        print(json.dumps(rep))
    else:
        print(f"fabric {path}: {rep['members_dead']} dead members; freed "
              f"{rep['offers_freed']} offers, {rep.get('listeners_freed', 0)} listener entries, "
              f"{rep.get('wakers_freed', 0)} wake records, "
              f"{rep['slot_sides_freed']} slot sides "
              f"({rep['slots_freed']} slots now free)")
        if rep.get("quarantines_lifted"):
            print(f"lifted {rep['quarantines_lifted']} quarantines")
        if rep.get("slots_quarantined"):
            print(f"{rep['slots_quarantined']} slot sides stay in quarantine: a guest judged "
                  "dead (its heartbeat stopped) was writing into them and has not come back; "
                  f"they are freed when it does, after {QUARANTINE_MAX_S // 60} minutes, "
                  "or now with `fastivc gc --lift-quarantine` if that guest is gone for good")
    return 0


def _cmd_downgrade(args: argparse.Namespace) -> int:
    path = args.fabric or default_fabric()
    if args.pid is not None and args.pid <= 0:
        print(f"fastivc downgrade: --pid {args.pid}: not a process id", file=sys.stderr)
        return 2
    if args.resume and args.keep_accelerating:
        print("fastivc downgrade: --keep-accelerating goes with --pid or --all",
              file=sys.stderr)
        return 2
    if args.wait < 0:
        print(f"fastivc downgrade: --wait {args.wait}: must be >= 0", file=sys.stderr)
        return 2
    how = (["resume"] if args.resume else
           ["all" if args.all else "pid", *([] if args.all else [str(args.pid)]),
            str(int(args.wait * 1000)), *(["keep"] if args.keep_accelerating else [])])
    r = subprocess.run([str(helper_path("fastivc-downgrade")), path, *how],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"fastivc downgrade: {r.stderr.strip() or f'exit {r.returncode}'}",
              file=sys.stderr)
        return 1
    rep = {"fabric": path, **json.loads(r.stdout),
           "draining": bool(args.all and not args.keep_accelerating)}
    if args.json:
        print(json.dumps(rep))
    elif args.resume:
        print(f"fabric {path}: new connections are accelerated again")
    else:
        who = "every process" if args.all else f"pid {args.pid}"
        if not rep["asked"]:
            print(f"fabric {path}: no process of the fabric is {who}")
        else:
            left, before = rep["sides_left"], rep["sides_before"]
            print(f"fabric {path}: asked {len(rep['asked'])} process(es) ({who}): "
                  f"{before - left} of {before} connection sides back to TCP in "
                  f"{rep['us'] / 1000:.1f} ms"
                  + (f", {left} still on rings after {args.wait:g} s" if left else ""))
        if rep["draining"]:
            print("the fabric drains: new connections stay plain until "
                  "`fastivc downgrade --resume`")
    return 1 if rep.get("sides_left") else 0


def _cmd_stat(args: argparse.Namespace) -> int:
    from . import stat
    from .fabric import FabricError

    path = args.fabric or default_fabric()
    try:
        snap = stat.read(path)
    except FabricError as e:
        print(f"fastivc stat: {e}", file=sys.stderr)
        return 1
    if args.watch:  # Ctrl-C ends the watch even where the shell started us ignoring it
        signal.signal(signal.SIGINT, signal.default_int_handler)
    top = stat.DEFAULT_TOP if args.top is None else args.top  # the table's; JSON: all
    try:
        if args.json:
            print(stat.dumps(stat.document(snap, args.sort, args.top), not args.watch),
                  flush=True)
            while args.watch:  # JSON lines, one snapshot per interval
                time.sleep(args.watch)
                try:
                    print(stat.dumps(stat.document(stat.read(path), args.sort, args.top), False),
                          flush=True)
                except FabricError as e:
                    print(f"fastivc stat: {e}", file=sys.stderr)
        elif args.watch:
            stat.Watch(path, args.watch, args.all, top, args.sort).run()
        else:
            stat.print_wide(stat.render(snap, args.all, top, args.sort))
    except KeyboardInterrupt:  # the way out of --watch
        pass
    return 0


def _bench_output_options(p: argparse.ArgumentParser) -> None:
    """--json, --plot and --quiet, the same for every bench scenario."""
    p.add_argument("--json", metavar="FILE", help="also write the full results as JSON "
                   "(rows, raw data, machine, versions, commands, date, fastivc settings)")
    p.add_argument("--plot", metavar="FILE", help="also draw the results as a PNG chart")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _cmd_doctor(args: argparse.Namespace) -> int:
    from . import doctor

    path = args.fabric or default_fabric()
    checks = doctor.run_checks(path)
    doc = doctor.document(path, checks)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        doctor.print_report(path, checks)
    return 0 if doc["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastivc",
        description="Carry TCP between endpoints on one host through shared memory.",
        epilog="Exit codes: 0 success; 1 the operation failed (the message names the file, "
        "address or call), or doctor found a FAIL; 2 bad usage; 130 a benchmark was "
        "interrupted; run: 126 CMD cannot be executed, 127 CMD not found. "
        "`fastivc COMMAND --help` describes each command.",
    )
    p.add_argument("--version", action="version", version=f"fastivc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    sp = sub.add_parser("lib", help="print the absolute path of the shipped libfastivc.so")
    sp.set_defaults(func=_cmd_lib)

    from .demo import add_parser as add_demo_parser
    add_demo_parser(sub)

    bp = sub.add_parser("bench", help="benchmarks: plain TCP and fastivc side by side")
    bsub = bp.add_subparsers(dest="scenario", metavar="SCENARIO")
    rp = bsub.add_parser("ring", help="the bare shared-memory channel vs TCP loopback "
                         "(64 B round trip; streaming throughput)")
    rp.add_argument("--repeats", type=int, default=5, help="repeats per case (default 5)")
    rp.add_argument("--seconds", type=float, default=0.5,
                    help="seconds per measurement (default 0.5)")
    rp.add_argument("--sizes", type=int, nargs="+", metavar="BYTES",
                    help="write sizes for streaming (default 64 1024 16384 65536 1048576)")
    rp.add_argument("--ring-kib", type=int, default=None,
                    help="ring size per direction in KiB (default: the library's, 1024)")
    _bench_output_options(rp)
    rp.set_defaults(func=_cmd_bench_ring)
    for name, what in (("rr", "64 B request/response latency"),
                       ("stream", "streaming throughput"),
                       ("connect", "connection setup rate (connect, request, response, close)"),
                       ("all", "rr, stream and connect (not redis and nginx: they need those "
                        "programs and take longer)")):
        tp = bsub.add_parser(name, help=f"{what}: an unmodified TCP program, plain and under "
                             "fastivc run (two network namespaces when root, else loopback)")
        tp.add_argument("--repeats", type=int, default=5, help="repeats (default 5)")
        tp.add_argument("--seconds", type=float, default=1.0,
                        help="seconds per measurement (default 1)")
        tp.add_argument("--size", type=int, default=65536,
                        help="write size for stream (default 65536)")
        if name in ("stream", "all"):
            tp.add_argument("--sizes", type=int, nargs="+", metavar="BYTES",
                            help="a size sweep instead of --size: stream plain and fastivc "
                            "at each size, e.g. 64 1024 16384 65536 1048576")
        tp.add_argument("--loopback", action="store_true",
                        help="client and server on loopback even as root")
        _bench_output_options(tp)
        tp.set_defaults(func=_cmd_bench_tcp)
    for name, what in (("redis", "redis-benchmark GET and SET against redis-server"),
                       ("nginx", "wrk against nginx serving a 612-byte static file")):
        sp = bsub.add_parser(name, help=f"{what}, requests/s: plain and under fastivc run "
                             "--event-loops (two network namespaces when root, else loopback)")
        sp.add_argument("--repeats", type=int, default=5, help="repeats (default 5)")
        sp.add_argument("--seconds", type=float, default=1.0, help=(
            "seconds per measurement (default 1); redis-benchmark counts requests, so "
            "this sets -n to seconds x 100000 per test" if name == "redis" else
            "seconds per measurement (default 1; wrk takes whole seconds)"))
        if name == "nginx":
            sp.add_argument("--workers", type=int, default=1,
                            help="nginx worker processes (default 1)")
            sp.add_argument("--connections", type=int, nargs="+", default=[10], metavar="C",
                            help="wrk connections, one thread (default 10); several counts "
                            "(e.g. 10 1000 10000) run plain and fastivc at each, one row each")
        else:
            sp.add_argument("--clients", type=int, nargs="+", default=None, metavar="C",
                            help="redis-benchmark clients (default its 50); several counts "
                            "(e.g. 50 1000 4000) run plain and fastivc at each, one row each")
        sp.add_argument("--loopback", action="store_true",
                        help="client and server on loopback even as root")
        _bench_output_options(sp)
        sp.set_defaults(func=_cmd_bench_redis if name == "redis" else _cmd_bench_nginx)

    dn = bsub.add_parser("downgrade", help="how long the way back to TCP takes: from "
                         "`fastivc downgrade --pid` to the process's last connection side let "
                         "go (p50, p99; loopback or two network namespaces, as rr); no "
                         "baseline")
    dn.add_argument("--rounds", type=int, default=20, help="rounds per count (default 20)")
    dn.add_argument("--idle", type=int, nargs="+", metavar="N", default=None,
                    help="idle connections beside the busy one (default 0 100)")
    dn.add_argument("--loopback", action="store_true",
                    help="client and server on loopback even as root")
    dn.add_argument("--json", metavar="FILE", help="also write the full results as JSON")
    dn.add_argument("--quiet", action="store_true", help="no progress bar")
    dn.set_defaults(func=_cmd_bench_downgrade)

    tr = bsub.add_parser("tiers", help="a multi-tier service: wrk -> nginx reverse proxy -> "
                         "gunicorn (a Python app) -> redis and PostgreSQL, each tier in its own "
                         "network namespace (loopback when not root or with --loopback): req/s, "
                         "p50/p99 latency and CPU per 1,000 requests, plain and under fastivc run "
                         "on every tier (not yet: --vm, the tiers in QEMU guests)")
    tr.add_argument("--repeats", type=int, default=3, help="repeats (default 3)")
    tr.add_argument("--seconds", type=int, default=3,
                    help="seconds of wrk per case (default 3)")
    tr.add_argument("--connections", type=int, nargs="+", metavar="C",
                    default=[10, 100, 1000], help="wrk connections (default 10 100 1000)")
    tr.add_argument("--keepalive", choices=("on", "off", "both"), default="both",
                    help="nginx's upstream keepalive to the app tier (default both)")
    tr.add_argument("--workers", type=int, default=1, help="nginx worker processes (default 1)")
    tr.add_argument("--loopback", action="store_true",
                    help="every tier on loopback in this namespace, even as root")
    _bench_output_options(tr)
    tr.set_defaults(func=_cmd_bench_tiers)

    sc = bsub.add_parser("scale", help="a busy connection's 64 B round trip (p50, p99) with N "
                         "idle connections open, plain and under fastivc run, and fastivc's "
                         "shared memory per idle connection (loopback or two network "
                         "namespaces, as rr)")
    sc.add_argument("--idle", type=int, nargs="+", metavar="N", default=None,
                    help="idle connection counts (default 0 100 1000 10000)")
    sc.add_argument("--repeats", type=int, default=3, help="repeats (default 3)")
    sc.add_argument("--seconds", type=float, default=1.0,
                    help="seconds of round trips per measurement (default 1)")
    sc.add_argument("--slots", type=int, default=None,
                    help="channel slots of each fastivc run's fabric (default N + 9, at least "
                    "256)")
    sc.add_argument("--ring-kib", type=int, default=None,
                    help="ring size per direction of those fabrics in KiB (default 1024, "
                    "smaller when whole rings for all connections would not fit in a quarter "
                    "of the free memory)")
    sc.add_argument("--loopback", action="store_true",
                    help="client and server on loopback even as root")
    _bench_output_options(sc)
    sc.set_defaults(func=_cmd_bench_scale)

    rn = sub.add_parser(
        "run", help="run a program with fastivc (its TCP connections to accelerated peers "
        "on this host go through shared memory)",
        description="Exec CMD with libfastivc.so appended to LD_PRELOAD. Connections "
        "between two accelerated programs on this host switch to shared memory; every other "
        "connection stays plain TCP. Statically linked and setuid programs stay on TCP.",
        usage="fastivc run [--fabric PATH] [--spin-us N] [--log off|info|debug[:FILE]] "
        "[--ring-kib K] [--fabric-mode MODE] [--fabric-group GROUP] [--disable] "
        "[--no-event-loops] [--trap-syscalls] -- CMD ARGS...")
    rn.add_argument("--fabric", metavar="PATH",
                    help="fabric file shared by the peers (default $FASTIVC_FABRIC or "
                    "/dev/shm/fastivc)")
    rn.add_argument("--spin-us", type=int, metavar="N",
                    help="microseconds a side polls before sleeping (default 50)")
    rn.add_argument("--log", metavar="LEVEL[:FILE]",
                    help="off, info or debug, to stderr or to FILE")
    rn.add_argument("--ring-kib", type=int, metavar="K",
                    help="ring size per direction if this run creates the fabric")
    rn.add_argument("--fabric-mode", metavar="MODE",
                    help="octal file mode if this run creates the fabric, e.g. 0660 "
                    "(default 0600; FASTIVC_FABRIC_MODE)")
    rn.add_argument("--fabric-group", metavar="GROUP",
                    help="group name or gid if this run creates the fabric, for servers "
                    "that drop privileges (FASTIVC_FABRIC_GROUP)")
    rn.add_argument("--disable", action="store_true",
                    help="load the library but accelerate nothing (FASTIVC_DISABLE=1)")
    rn.add_argument("--event-loops", action=argparse.BooleanOptionalAction, default=None,
                    help="accelerate sockets that are non-blocking at connect/accept "
                    "(epoll and other event loops); on by default, --no-event-loops "
                    "leaves them on plain TCP (FASTIVC_NONBLOCK=0)")
    rn.add_argument("--trap-syscalls", action="store_true",
                    help="see system calls the program makes outside libc (inline assembly, "
                    "a static liburing, runtimes with their own syscalls) through Syscall User "
                    "Dispatch, so they follow the ring; costs ~50-180 ns on every system call "
                    "and ~7 us on each one it traps (FASTIVC_TRAP_SYSCALLS=1)")
    rn.add_argument("cmd", nargs=argparse.REMAINDER, help="the command and its arguments")
    rn.set_defaults(func=_cmd_run)

    st = sub.add_parser(
        "stat", help="list the accelerated connections of a fabric, like ss",
        description="One row per accelerated connection: the client's (local) and the "
        "server's (peer) address, state, bytes carried each way (the rings' byte counters, "
        "after the switch; switch_bytes in --json went over TCP before it), ring fill, "
        "whether each side is active or sleeping (announced waiting), and the pids holding "
        "each side. Pids marked * are in another pid namespace.")
    st.add_argument("--fabric", metavar="PATH",
                    help="fabric file (default $FASTIVC_FABRIC or /dev/shm/fastivc)")
    st.add_argument("--json", action="store_true",
                    help="print JSON: the raw snapshot (header, members, slots, offers) and "
                    "'connections', the table's rows; with --watch one line per refresh")
    st.add_argument("--watch", nargs="?", type=float, const=1.0, default=None,
                    metavar="SECONDS", help="refresh every SECONDS (default 1) until Ctrl-C")
    st.add_argument("--all", action="store_true", help="also list offers and members")
    st.add_argument("--top", type=int, metavar="N", default=None,
                    help="show the first N connections (default 50 in the table, all in "
                    "--json; 0: all), then how many more there are")
    st.add_argument("--sort", choices=("bytes", "fill", "age", "pid", "port"), default=None,
                    help="order of the rows (default: slot order): bytes carried, ring fill, "
                    "age (of the client process: no time is kept per connection), client "
                    "pid, server port")
    st.set_defaults(func=_cmd_stat)

    gc = sub.add_parser("gc", help="reclaim the offers and slot sides of dead processes "
                        "(or dead guests) and report what was freed")
    gc.add_argument("--fabric", metavar="PATH",
                    help="fabric file (default $FASTIVC_FABRIC or /dev/shm/fastivc)")
    gc.add_argument("--json", action="store_true", help="print the report as JSON")
    gc.add_argument("--lift-quarantine", action="store_true",
                    help="also free slots held in quarantine for dead guests that were "
                         "writing into them (only when those guests will never resume: "
                         "a paused VM that resumes would write into the next connection)")
    gc.set_defaults(func=_cmd_gc)

    dg = sub.add_parser("downgrade", help="take accelerated connections back to plain TCP, "
                        "byte-exact, and accelerate no new ones (e.g. to drain a fabric "
                        "before upgrading the library)")
    g = dg.add_mutually_exclusive_group(required=True)
    g.add_argument("--pid", type=int, metavar="PID",
                   help="the process with this pid (as it sees itself: in a container, its "
                        "pid there)")
    g.add_argument("--all", action="store_true",
                   help="every process of the fabric; the fabric then drains (no new "
                        "connection is accelerated) until --resume")
    g.add_argument("--resume", action="store_true",
                   help="end a drain: new connections are accelerated again")
    dg.add_argument("--fabric", metavar="PATH",
                    help="fabric file (default $FASTIVC_FABRIC or /dev/shm/fastivc)")
    dg.add_argument("--keep-accelerating", action="store_true",
                    help="only the connections they have now go back; new ones are "
                         "accelerated (no drain): to test or to shed rings")
    dg.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                    help="how long to wait for the processes to go back (default 10)")
    dg.add_argument("--json", action="store_true", help="print the report as JSON")
    dg.set_defaults(func=_cmd_downgrade)

    dr = sub.add_parser(
        "doctor", help="check that fastivc can work here, and say how to fix what cannot",
        description="Checks the library (loads, and LD_PRELOAD takes effect in a child), the "
        "fabric (its path is usable by this user, an existing file is a valid fabric), free "
        "space and filesystem type where it lives, network namespaces (as root) and, in a "
        "guest, the ivshmem device. Each check prints OK, WARN, FAIL or SKIP; FAIL and WARN "
        "come with a fix.",
        epilog="Exit status: 0 when no check failed (WARN and SKIP allowed), 1 when any did.")
    dr.add_argument("--fabric", metavar="PATH",
                    help="fabric file to check (default $FASTIVC_FABRIC or /dev/shm/fastivc)")
    dr.add_argument("--json", action="store_true",
                    help="print {fabric, ok, checks: [{name, status, detail, fix}]} as JSON")
    dr.set_defaults(func=_cmd_doctor)
    from .vm.cli import add_parser as add_vm_parser

    add_vm_parser(sub)
    _describe(p)
    return p


def _describe(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand without a description its one-line help as one,
    so that `fastivc CMD --help` says what CMD does."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sp in action.choices.items():
                if not sp.description and helps.get(name):
                    h = helps[name]
                    sp.description = h[0].upper() + h[1:] + "."
                _describe(sp)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if not getattr(args, "func", None):
        if args.command == "bench":
            parser.parse_args(["bench", "--help"])
        parser.print_help()
        return 2
    if args.command == "stat" and args.watch is not None and not args.watch > 0:
        parser.error("--watch SECONDS must be > 0")
    if args.command == "stat" and args.top is not None and args.top < 0:
        parser.error("--top N must be >= 0")
    if args.command == "run":
        if args.spin_us is not None and args.spin_us < 0:
            parser.error("--spin-us must be >= 0")
        if args.log and args.log.split(":", 1)[0] not in ("off", "info", "debug"):
            parser.error("--log must be off, info or debug (optionally :FILE)")
        if args.ring_kib is not None and (args.ring_kib < 4 or args.ring_kib & (args.ring_kib - 1)):
            parser.error("--ring-kib must be a power of two >= 4")
        from .run import parse_fabric_mode, resolve_fabric_group
        try:
            if args.fabric_mode is not None:
                parse_fabric_mode(args.fabric_mode)
            if args.fabric_group is not None:
                # pass the gid on: the library then needs no group lookup
                args.fabric_group = str(resolve_fabric_group(args.fabric_group))
        except ValueError as e:
            parser.error(str(e))
    if args.command == "bench" and args.scenario in ("rr", "stream", "connect", "all"):
        if args.repeats < 1 or args.seconds <= 0:
            parser.error("--repeats must be >= 1 and --seconds > 0")
        if not 1 <= args.size <= 64 << 20:
            parser.error("--size must be between 1 and 67108864 bytes")
        if getattr(args, "sizes", None) and any(not 1 <= s <= 64 << 20 for s in args.sizes):
            parser.error("--sizes must be between 1 and 67108864 bytes")
    if args.command == "bench" and args.scenario in ("redis", "nginx"):
        if args.repeats < 1 or args.seconds <= 0:
            parser.error("--repeats must be >= 1 and --seconds > 0")
        if args.scenario == "nginx" and (args.workers < 1 or min(args.connections) < 1):
            parser.error("--workers and --connections must be >= 1")
        if args.scenario == "redis" and args.clients and min(args.clients) < 1:
            parser.error("--clients must be >= 1")
    if args.command == "bench" and args.scenario == "tiers":
        if args.repeats < 1 or args.seconds < 1:
            parser.error("--repeats and --seconds must be >= 1")
        if min(args.connections) < 1 or args.workers < 1:
            parser.error("--connections and --workers must be >= 1")
    if args.command == "bench" and args.scenario == "scale":
        from .bench.scale import DEFAULT_IDLE
        from .fabric import MAX_SLOTS

        args.idle = args.idle if args.idle is not None else list(DEFAULT_IDLE)
        if args.repeats < 1 or args.seconds <= 0:
            parser.error("--repeats must be >= 1 and --seconds > 0")
        if any(n < 0 for n in args.idle):
            parser.error("--idle counts must be >= 0")
        if args.slots is not None and not 1 <= args.slots <= MAX_SLOTS:
            parser.error(f"--slots must be between 1 and {MAX_SLOTS}")
        if args.ring_kib is not None and (args.ring_kib < 4 or args.ring_kib & (args.ring_kib - 1)):
            parser.error("--ring-kib must be a power of two >= 4")
    if args.command == "bench" and args.scenario == "ring":
        if args.repeats < 1 or args.seconds <= 0:
            parser.error("--repeats must be >= 1 and --seconds > 0")
        if args.ring_kib is not None and (args.ring_kib < 4 or args.ring_kib & (args.ring_kib - 1)):
            parser.error("--ring-kib must be a power of two >= 4")
        if args.sizes and any(s < 1 or s > 64 << 20 for s in args.sizes):
            parser.error("--sizes must be between 1 and 67108864 bytes")
    try:
        return args.func(args)
    except FileNotFoundError as e:
        print(f"fastivc: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader went away (`fastivc stat | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
