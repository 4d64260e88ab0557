"""`fastivc doctor`: check that this machine and this user can use fastivc.

Each check returns a Check: OK, WARN (works, but not as well as it could),
FAIL (fastivc will not accelerate here until fixed: `fix` says how) or SKIP
(does not apply).  `run_checks()` returns the data; the CLI prints it.
Nothing here changes the fabric: the write probe uses a temporary file next
to it.
"""

from __future__ import annotations

import glob
import grp
import os
import pwd
import shutil
import stat as st
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass

from . import fabric as F
from ._paths import helper_path, lib_path
from .run import build_env

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
# The library's geometry for a new fabric (csrc/include/fastivc/fabric.h).
DEFAULT_MEMBERS, DEFAULT_OFFERS, DEFAULT_SLOTS = 4096, 65536, 65536  # fabric.h
DEFAULT_SMALL_RING = 4096
DEFAULT_RING_KIB = 1024
# Free space should hold the rings of at least this many more connections.
MIN_CONNECTIONS = 4
TMPFS = ("tmpfs", "ramfs")
IVSHMEM = ("0x1af4", "0x1110")  # Red Hat, Inc. Inter-VM shared memory
HELPERS = ("fastivc-gc", "fastivc-tcpbench", "fastivc-ringbench")
TIMEOUT = 30


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 100 else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # not reached


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _owner(s: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(s.st_uid).pw_name
    except KeyError:
        user = str(s.st_uid)
    try:
        group = grp.getgrgid(s.st_gid).gr_name
    except KeyError:
        group = str(s.st_gid)
    return f"mode {st.S_IMODE(s.st_mode):04o}, owner {user}, group {group}"


def _ring_size(path: str) -> int:
    """Ring bytes per direction: the fabric's own if it is valid, else what
    a new one would get (FASTIVC_RING_KIB or the default)."""
    try:
        with F.Fabric(path) as fab:
            return fab.header.ring_size
    except F.FabricError:
        pass
    v = os.environ.get("FASTIVC_RING_KIB", "")
    kib = int(v) if v.isdigit() and int(v) >= 4 and int(v) & (int(v) - 1) == 0 else 0
    return (kib or DEFAULT_RING_KIB) * 1024


# -- checks -------------------------------------------------------------------
def check_library() -> Check:
    try:
        lib = lib_path()
    except FileNotFoundError as e:
        return Check("library", FAIL, str(e), "install the package: pip install .")
    try:
        r = subprocess.run([sys.executable, "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1])",
                            str(lib)], capture_output=True, text=True, timeout=TIMEOUT,
                           env={**os.environ, "FASTIVC_DISABLE": "1", "FASTIVC_LOG": "off"})
    except OSError as e:
        return Check("library", FAIL, f"cannot run {sys.executable} to dlopen {lib} in a "
                     f"child: {e.strerror}", f"run fastivc with a python {_user()} can execute")
    if r.returncode != 0:
        err = r.stderr.strip().splitlines()[-1:] or [f"exit status {r.returncode}"]
        return Check("library", FAIL, f"dlopen({lib}) in a child process failed: {err[0]}",
                     "reinstall (pip install --force-reinstall .) on this machine; the library "
                     "needs glibc and is built for this architecture")
    missing = []
    for h in HELPERS:
        try:
            helper_path(h)
        except FileNotFoundError:
            missing.append(h)
    if missing:
        return Check("library", WARN, f"{lib} loads, but helpers are missing: "
                     f"{', '.join(missing)} (fastivc gc and bench need them)",
                     "reinstall the package: pip install --force-reinstall .")
    return Check("library", OK, f"{lib} loads (dlopen in a child process); helpers present")


def check_preload(path: str) -> Check:
    try:
        lib = lib_path()
    except FileNotFoundError:
        return Check("preload", SKIP, "no library to preload (see the library check)")
    true = shutil.which("true") or "/bin/true"
    with tempfile.TemporaryDirectory(prefix="fastivc-doctor-") as tmp:
        log = os.path.join(tmp, "log")
        env = build_env(os.environ, fabric=path, log=f"debug:{log}")
        cmd = f"fastivc run --log debug:{log} -- {true}"
        try:
            r = subprocess.run([true], env=env, capture_output=True, text=True,
                               timeout=TIMEOUT)
        except OSError as e:
            return Check("preload", FAIL, f"{cmd}: cannot run {true}: {e.strerror}",
                         "check that coreutils is installed")
        try:
            with open(log) as f:
                text = f.read()
        except FileNotFoundError:
            text = ""
    if "loaded" in text:
        return Check("preload", OK, f"LD_PRELOAD takes effect: {true} under fastivc run "
                     "logged 'loaded'")
    why = r.stderr.strip().splitlines()[-1:] or [f"nothing in its log, exit {r.returncode}"]
    return Check("preload", FAIL, f"{cmd}: the library did not load in the child "
                 f"({why[0]})",
                 f"make sure nothing clears or overrides LD_PRELOAD (sudo's env_reset, "
                 f"secure-execution mode for setuid programs) and that {lib} is readable by "
                 f"{_user()}")


def _configured_gid() -> int | None:
    g = os.environ.get("FASTIVC_FABRIC_GROUP") or ""
    if not g:
        return None
    try:
        from .run import resolve_fabric_group
        return resolve_fabric_group(g)
    except ValueError:
        return None


def trust_problem(path: str, s: os.stat_result) -> tuple[str, str] | None:
    """The library's rule (DESIGN.md "Fabric trust", fabric.c check_trust)
    for an existing fabric: (what is wrong, the fix), or None when it would
    be trusted.  s: lstat of path."""
    if st.S_ISLNK(s.st_mode):
        return (f"fabric {path} is refused: it is a symbolic link (whoever placed it "
                "chooses the file)",
                f"rm {path}, or point FASTIVC_FABRIC at the file itself")
    mode = st.S_IMODE(s.st_mode)
    group_cfg = s.st_gid == _configured_gid()
    if s.st_uid not in (0, os.geteuid()) and not group_cfg:
        return (f"fabric {path} is refused: it is owned by uid {s.st_uid}, neither root nor "
                f"{_user()}, and its owner could read and steer every connection "
                f"in it ({_owner(s)})",
                f"remove it as root or its owner (rm {path}), or give each user a fabric of "
                "its own via FASTIVC_FABRIC (to share it with its group on purpose: "
                f"FASTIVC_FABRIC_GROUP={s.st_gid})")
    if mode & 0o007:
        return (f"fabric {path} is refused: mode {mode:04o} lets every user at it "
                f"({_owner(s)})",
                f"chmod o-rwx {path} (to share it with a group: chgrp GROUP {path} && "
                f"chmod 0660 {path}, and FASTIVC_FABRIC_GROUP=GROUP)")
    if mode & 0o070 and not group_cfg and s.st_gid != os.getegid() \
            and s.st_gid not in os.getgroups():
        return (f"fabric {path} is refused: mode {mode:04o} gives group {s.st_gid}, which is "
                f"neither FASTIVC_FABRIC_GROUP nor one of {_user()}'s groups, access to it "
                f"({_owner(s)})",
                f"chmod g-rwx {path}, or set FASTIVC_FABRIC_GROUP={s.st_gid} to share "
                "connections with that group")
    return None


def check_fabric(path: str) -> Check:
    """The fabric file exists and is a valid fabric we can open read-write,
    or it does not exist and we can create it in its directory."""
    env_hint = "FASTIVC_FABRIC or --fabric"
    try:
        s = os.lstat(path)
    except FileNotFoundError:
        s = None
    except OSError as e:
        return Check("fabric", FAIL, f"stat({path}): {e.strerror}",
                     f"point {env_hint} at a path on a tmpfs such as /dev/shm/fastivc")
    if s is not None:
        if st.S_ISLNK(s.st_mode):
            what, fix = trust_problem(path, s)
            return Check("fabric", FAIL, what, fix)
        if not st.S_ISREG(s.st_mode):
            return Check("fabric", FAIL, f"{path} exists but is not a regular file",
                         f"remove it, or point {env_hint} elsewhere")
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        except OSError as e:
            return Check("fabric", FAIL, f"open({path}, O_RDWR) as {_user()}: {e.strerror} "
                         f"({_owner(s)})",
                         "run as the fabric's owner, or share it through a group: "
                         f"chgrp GROUP {path} && chmod 0660 {path} (a new fabric: fastivc run "
                         "--fabric-mode 0660 --fabric-group GROUP); each user may also use a "
                         f"fabric of its own via {env_hint}")
        try:
            with F.Fabric(path) as fab:
                h = fab.header
                nconn, nmem = len(fab.slots()), len(fab.members())
        except F.FabricError as e:
            return Check("fabric", FAIL, str(e),
                         f"if no program uses it, remove it (rm {path}); the next accelerated "
                         "connection creates a fresh one")
        trust = trust_problem(path, s)
        if trust:
            return Check("fabric", FAIL, trust[0] + "; programs stay on plain TCP", trust[1])
        return Check("fabric", OK, f"{path} is a valid fabric (layout {h.layout_version}, "
                     f"{h.nslots} slots, rings of {h.small_ring // 1024} to "
                     f"{h.ring_size // 1024} KiB, {nconn} connections, "
                     f"{nmem} members) and opens read-write; {_owner(s)}")
    d = os.path.dirname(os.path.abspath(path))
    try:
        if not st.S_ISDIR(os.stat(d).st_mode):
            return Check("fabric", FAIL, f"cannot create fabric {path}: {d} is not a directory",
                         f"point {env_hint} at a path on a tmpfs such as /dev/shm/fastivc")
    except FileNotFoundError:
        return Check("fabric", FAIL, f"cannot create fabric {path}: directory {d} does not exist",
                     f"mkdir -p {d}, or point {env_hint} at a path on a tmpfs such as "
                     "/dev/shm/fastivc")
    except OSError as e:
        return Check("fabric", FAIL, f"cannot create fabric {path} as {_user()}: stat({d}): "
                     f"{e.strerror}", f"give this user access to {d} (every directory above "
                     f"it needs x), or point {env_hint} at a path such as /dev/shm/fastivc")
    # What the library does: a temporary file, then link() to the name.
    probe = os.path.join(d, f".fastivc-doctor.{os.getpid()}.tmp")
    call = f"open({probe}, O_CREAT)"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            call = f"link({probe})"
            os.link(probe, probe + "2")
            os.unlink(probe + "2")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        try:
            owner = f"; {d}: {_owner(os.stat(d))}"
        except OSError:
            owner = ""
        return Check("fabric", FAIL, f"cannot create fabric {path} as {_user()}: "
                     f"{call}: {e.strerror}{owner}",
                     f"make {d} writable for this user (or run as a user who can write it), "
                     f"or point {env_hint} at a writable tmpfs path such as "
                     "/dev/shm/fastivc-$USER")
    mode = os.environ.get("FASTIVC_FABRIC_MODE") or "0600"
    group = os.environ.get("FASTIVC_FABRIC_GROUP") or "the creator's group"
    return Check("fabric", OK, f"{path} does not exist yet; {d} is writable, so the first "
                 f"accelerated connection creates it (mode {mode}, {group}; other users need "
                 "--fabric-mode 0660 --fabric-group GROUP)")


def _mount_of(path: str) -> tuple[str, str]:
    """(mount point, filesystem type) of the mount holding path."""
    real = os.path.realpath(path)
    best = ("/", "?")
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return best
    for ln in lines:
        left, _, right = ln.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mp = fields[4].encode().decode("unicode_escape")  # \040 for a space
        under = real == mp or real.startswith(mp.rstrip("/") + "/")
        if under and len(mp) >= len(best[0]):
            best = (mp, right.split()[0])
    return best


def _existing_dir(path: str) -> str | None:
    d = os.path.dirname(os.path.abspath(path))
    return d if os.path.isdir(d) else None


def check_filesystem(path: str) -> Check:
    d = _existing_dir(path)
    if d is None:
        return Check("filesystem", SKIP, "the fabric's directory does not exist (see fabric)")
    mp, fstype = _mount_of(d)
    if fstype in TMPFS:
        return Check("filesystem", OK, f"{d} is on {fstype} (mounted at {mp})")
    return Check("filesystem", WARN, f"{d} is on {fstype} (mounted at {mp}), not tmpfs: it "
                 "works, but the rings are pages of a disk-backed file the kernel writes back",
                 "put the fabric on a tmpfs: FASTIVC_FABRIC=/dev/shm/fastivc or --fabric")


def check_space(path: str) -> Check:
    d = _existing_dir(path)
    if d is None:
        return Check("space", SKIP, "the fabric's directory does not exist (see fabric)")
    try:
        vfs = os.statvfs(d)
    except OSError as e:
        return Check("space", FAIL, f"statvfs({d}): {e.strerror}", "")
    free = vfs.f_bavail * vfs.f_frsize
    ring = _ring_size(path)
    small = min(DEFAULT_SMALL_RING, ring)
    # an idle connection costs its slot's slab (control page and two inline
    # rings); streaming ones borrow pool buffers on top, as the pool allows
    per_conn = F.PAGE + 2 * small
    fix = (f"make room on the filesystem of {d} (for /dev/shm: mount -o remount,size=2G "
           f"/dev/shm), or use smaller rings for a new fabric: FASTIVC_RING_KIB=256")
    try:
        fst = os.stat(path)
        have = True
        if os.access(path, os.R_OK):
            with F.Fabric(path) as fab:
                total = fab.header.total_size
        else:  # not ours to read (see the fabric check): its size as the kernel says
            total = fst.st_size
    except (OSError, F.FabricError):  # none yet, or one to be replaced: a new one's needs
        have = False
    if have:
        reserved = fst.st_blocks * 512
        unreserved = max(0, total - reserved)
        room = free // per_conn
        what = (f"fabric {path}: {_human(reserved)} reserved of {_human(total)}; "
                f"{_human(free)} free on {d}")
        if unreserved <= free or room >= MIN_CONNECTIONS:
            n = "all its slots" if unreserved <= free else f"{room} more connections"
            return Check("space", OK, f"{what}: room for {n} "
                         f"({_human(per_conn)} each while idle)")
        status = FAIL if room < 1 else WARN
        return Check("space", status, f"{what}: room for the rings of only {room} more "
                     f"connections ({_human(per_conn)} each); beyond that connections stay "
                     "plain TCP", fix)
    npool = F.default_pool_counts(DEFAULT_SLOTS, ring, small)
    tables = F._layout(DEFAULT_MEMBERS, DEFAULT_OFFERS, DEFAULT_SLOTS, ring, small,
                       npool)["slots_off"]
    need = tables + MIN_CONNECTIONS * per_conn
    what = (f"a new fabric reserves {_human(tables)} of tables, then {_human(per_conn)} "
            f"per connection slot as used; {_human(free)} free on {d}")
    if free >= need:
        room = (free - tables) // per_conn
        return Check("space", OK, f"{what}: room for {min(room, DEFAULT_SLOTS)}"
                     f"{'' if room < DEFAULT_SLOTS else ' (all)'} slots")
    status = FAIL if free < tables + per_conn else WARN
    return Check("space", status, f"{what}: less than the {_human(need)} for "
                 f"{MIN_CONNECTIONS} connections", fix)


def check_netns(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Check:
    if os.geteuid() != 0:
        return Check("netns", SKIP, "not root: network namespaces (fastivc bench puts client and "
                     "server in two of them) need root; bench uses loopback instead")
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if not unshare:
        return Check("netns", WARN, "unshare (util-linux) is not installed; cannot test "
                     "creating a network namespace", "apt-get install util-linux")
    r = run([unshare, "--net", "--", "true"], capture_output=True, text=True, timeout=TIMEOUT)
    if r.returncode != 0:
        return Check("netns", WARN, f"unshare --net: {r.stderr.strip() or r.returncode}: "
                     "this container may not create network namespaces; bench and the "
                     "namespace tests will not run", "run with CAP_SYS_ADMIN (e.g. docker "
                     "--privileged) or use bench --loopback")
    if not ip:
        return Check("netns", WARN, "network namespaces work but `ip` (iproute2) is missing; "
                     "bench needs it", "apt-get install iproute2")
    return Check("netns", OK, "network namespaces can be created (unshare --net); ip is "
                 f"{ip}")


def _in_guest() -> str:
    """Why we think this is a virtual machine ('' if we do not)."""
    try:
        with open("/proc/cpuinfo") as f:
            if any(ln.startswith("flags") and " hypervisor" in ln for ln in f):
                return "the CPU reports a hypervisor"
    except OSError:
        pass
    for fn in ("sys_vendor", "product_name"):
        try:
            with open(f"/sys/class/dmi/id/{fn}") as f:
                v = f.read().strip()
        except OSError:
            continue
        if any(k in v for k in ("QEMU", "KVM")):
            return f"DMI {fn} is {v}"
    return ""


def check_ivshmem(sysfs: str = "/sys/bus/pci/devices") -> Check:
    found = []
    for dev in sorted(glob.glob(os.path.join(sysfs, "*"))):
        try:
            with open(os.path.join(dev, "vendor")) as f:
                vendor = f.read().strip()
            with open(os.path.join(dev, "device")) as f:
                device = f.read().strip()
        except OSError:
            continue
        if (vendor, device) == IVSHMEM:
            found.append(os.path.basename(dev))
    guest = _in_guest()
    later = ("guests share a fabric through an ivshmem device; in a guest use "
             "FASTIVC_FABRIC=pci:auto")
    if found:
        return Check("ivshmem", OK, f"ivshmem device at {', '.join(found)} "
                     f"({IVSHMEM[0]}:{IVSHMEM[1]}); {later}")
    if guest:
        return Check("ivshmem", SKIP, f"a guest ({guest}) without an ivshmem PCI device; "
                     f"{later}")
    return Check("ivshmem", SKIP, f"not a guest; {later}")


def run_checks(path: str) -> list[Check]:
    """All checks for the fabric at path, in the order they are printed."""
    return [check_library(), check_preload(path), check_fabric(path), check_space(path),
            check_filesystem(path), check_netns(), check_ivshmem()]


def document(path: str, checks: list[Check]) -> dict:
    return {"fabric": path, "ok": not any(c.status == FAIL for c in checks),
            "checks": [asdict(c) for c in checks]}


def print_report(path: str, checks: list[Check], file=None) -> None:
    """The checks as a table: on a terminal, long details wrap within their
    column; elsewhere (a pipe, a log) each check stays on its line(s) whole."""
    from rich.table import Table
    from rich.text import Text

    from .stat import console

    con = console(file=file, highlight=False, soft_wrap=False)
    style = {OK: "green", WARN: "yellow", FAIL: "bold red", SKIP: "dim"}
    con.print(Text(f"fastivc doctor: fabric {path}"))
    if con.is_terminal:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold")
        for c in checks:
            grid.add_row(Text(c.status, style=style[c.status]), Text(c.name), Text(c.detail))
            if c.fix and c.status in (FAIL, WARN):
                grid.add_row("", "", Text(f"fix: {c.fix}"))
        con.print(grid)
    else:
        for c in checks:
            print(f"{c.status:<4} {c.name:<10} {c.detail}", file=con.file)
            if c.fix and c.status in (FAIL, WARN):
                print(f"{'':16}fix: {c.fix}", file=con.file)
    fails = sum(c.status == FAIL for c in checks)
    con.print(Text(f"{fails} check{'s' if fails != 1 else ''} failed" if fails
                   else "all checks passed", style="bold red" if fails else "green"))
