"""``fastivc vm build|run|check``: the argument parsers and the printing; the
work is in build.py, guest.py and check.py."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_build(args: argparse.Namespace) -> int:
    from .build import BuildError, build

    try:
        img = build(args.cache, force=args.force)
    except BuildError as e:
        print(f"fastivc vm build: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(img.to_dict(), indent=2))
    else:
        print(f"{'built' if img.built else 'cached'} in {img.seconds:.1f} s: kernel "
              f"{img.kernel_version}\n  kernel    {img.kernel}\n  initramfs {img.initramfs}"
              f" ({img.initramfs.stat().st_size // 1024} KiB)\n  modules   "
              f"{' '.join(img.modules)}")
    return 0


def _guarded(name: str, fn, also: tuple = ()):
    """fn() with its guests killed on Ctrl-C: (its result, None), or (None,
    the exit code) once the error or the interruption has been said."""
    from .build import BuildError
    from .guest import VMError, interrupt_safe

    try:
        return interrupt_safe(fn), None
    except (VMError, BuildError, *also) as e:
        print(f"fastivc vm {name}: {e}", file=sys.stderr)
        return None, 1
    except KeyboardInterrupt:
        print(f"\nfastivc vm {name}: interrupted (guests killed)", file=sys.stderr)
        return None, 130


def _cmd_run(args: argparse.Namespace) -> int:
    from .guest import Network

    script = " ".join(args.script[1:] if args.script[:1] == ["--"] else args.script)
    if not script:
        print("fastivc vm run: no command given (fastivc vm run [OPTIONS] -- CMD)",
              file=sys.stderr)
        return 2

    def work() -> int:
        with Network(args.guests, accel=args.accel, fabric=args.fabric,
                     fabric_size=args.fabric_size, cache=args.cache) as net:
            for note in net.notes:
                print(f"note: {note}", file=sys.stderr)
            print(f"{len(net.guests)} guests up ({net.accel}): " + ", ".join(
                f"{g.name} {g.ip} in {g.boot_seconds:.1f} s" for g in net.guests),
                file=sys.stderr)
            rc = 0
            for g in net.guests:
                r = g.run(script, timeout=args.timeout)
                print(f"--- {g.name} ({g.ip}): exit {r.rc}")
                sys.stdout.write(r.output)
                rc = rc or (1 if r.rc else 0)
            return rc

    rc, err = _guarded("run", work, (ValueError,))
    return rc if err is None else err


def _cmd_check(args: argparse.Namespace) -> int:
    from . import check

    doc, err = _guarded("check", lambda: check.run(args.cache, args.accel, args.seconds))
    if err is not None:
        return err
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    for note in doc["notes"]:
        print(f"note: {note}")
    boot = ", ".join(f"{k} {v:.1f} s" for k, v in doc["boot_seconds"].items())
    print(f"two guests ({doc['accel']}), kernel {doc['image']['kernel_version']}, boot {boot}")
    for name, devs in doc["ivshmem"].items():
        for d in devs:
            print(f"  {name}: ivshmem {d['bdf']} BAR 2 at {d['bar2']:#x}, {d['size']} bytes")
    sm = doc["shared_memory"]
    print(f"  shared memory host->guests {'ok' if sm['guests_read_host_word'] else 'FAILED'}, "
          f"guests->host {'ok' if sm['host_read_guest_words'] else 'FAILED'}")
    print(f"  ping {'ok' if doc['ping'] else 'FAILED'}")
    for key, title in (("rr_plain", "plain"), ("rr_preload", "under LD_PRELOAD (still plain)")):
        r = doc[key]
        print(f"  rr 64 B {title}: {r['rate']:.0f}/s, p50 {r['p50_us']:.0f} us, "
              f"p99 {r['p99_us']:.0f} us ({r['samples']} round trips)")
    if not doc["rr_preload"].get("loaded"):
        print("  libfastivc.so did not report 'loaded' in a guest")
    ok = sm["guests_read_host_word"] and sm["host_read_guest_words"] and doc["ping"]
    return 0 if ok else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    if args.repeats < 1 or args.seconds <= 0:
        print("fastivc vm demo: --repeats must be >= 1 and --seconds > 0", file=sys.stderr)
        return 2

    def progress(i: int, n: int, what: str) -> None:
        if not args.json:
            print(f"fastivc vm demo: [{i}/{n}] {what} ...", file=sys.stderr)
    doc, err = _guarded("demo", lambda: demo.run(args.repeats, args.seconds, args.accel,
                                                args.cache, progress))
    if err is not None:
        return err
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        demo.print_table(doc)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``vm`` and its subcommands to the top-level parser's subparsers."""
    vp = sub.add_parser("vm", help="QEMU guests: build one, launch several on one network "
                        "with an ivshmem fabric, and measure them")
    vsub = vp.add_subparsers(dest="vm_command", metavar="VMCOMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--cache", type=Path, metavar="DIR", help="where the guest is built "
                       "(default $FASTIVC_VM_CACHE or ~/.cache/fastivc/vm)")

    def accel(p: argparse.ArgumentParser) -> None:
        p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                       help="auto (default): KVM if a guest boots with it, else TCG")

    bp = vsub.add_parser("build", help="build and cache the guest kernel and initramfs")
    common(bp)
    bp.add_argument("--force", action="store_true", help="rebuild even if cached")
    bp.add_argument("--json", action="store_true", help="print the result as JSON")
    bp.set_defaults(func=_cmd_build)

    rp = vsub.add_parser("run", help="boot N guests and run a shell command in each",
                         usage="fastivc vm run [--guests N] [--accel A] [--fabric PATH] "
                         "[--fabric-size BYTES] [--timeout S] [--cache DIR] -- CMD")
    common(rp)
    accel(rp)
    rp.add_argument("--guests", type=int, default=2, help="number of guests (default 2); "
                    "guest i is vm<i> at 10.230.0.<11+i>/24")
    rp.add_argument("--fabric", metavar="PATH", help="an existing fabric file to share as "
                    "the ivshmem device (grown to a power of two); default a fresh file")
    rp.add_argument("--fabric-size", type=int, default=16 << 20, metavar="BYTES",
                    help="size of the fresh fabric file, a power of two (default 16 MiB)")
    rp.add_argument("--timeout", type=float, default=120, help="seconds per command")
    rp.add_argument("script", nargs=argparse.REMAINDER, help="the shell command")
    rp.set_defaults(func=_cmd_run)

    cp = vsub.add_parser("check", help="boot two guests: plain TCP request/response between "
                         "them, the ivshmem device, LD_PRELOAD of the library")
    common(cp)
    accel(cp)
    cp.add_argument("--seconds", type=float, default=2.0, help="rr measurement (default 2)")
    cp.add_argument("--json", action="store_true", help="print the result as JSON")
    cp.set_defaults(func=_cmd_check)
    dp = vsub.add_parser("demo", help="two guests: plain TCP over their virtual NICs vs "
                         "fastivc through the ivshmem fabric, side by side (KVM or TCG said)")
    common(dp)
    accel(dp)
    dp.add_argument("--repeats", type=int, default=3, help="runs of each (default 3)")
    dp.add_argument("--seconds", type=float, default=2.0, help="seconds per run (default 2)")
    dp.add_argument("--json", action="store_true", help="print the results as JSON")
    dp.set_defaults(func=_cmd_demo)
    vp.set_defaults(func=lambda args: (vp.print_help(), 2)[1])
