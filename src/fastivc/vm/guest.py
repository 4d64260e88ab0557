"""Launch QEMU guests on one virtual network, sharing one ivshmem fabric.

Each guest is a ``qemu-system-x86_64`` process booting the image from
``build.build()``:

- ``-netdev socket,mcast=230.0.0.1:PORT,localaddr=127.0.0.1`` and
  ``-device virtio-net-pci``: every guest of a ``Network`` joins one multicast
  group on the host's loopback, which acts as a hub (no root, no bridge, any
  number of guests).
- ``-object memory-backend-file,share=on,mem-path=FABRIC`` and ``-device
  ivshmem-plain``: the fabric file, mapped by every guest as PCI BAR 2 of a
  device with vendor 0x1af4, device 0x1110.  QEMU requires the size to be a
  power of two (it asserts otherwise) and the file to be at least that big.
- ttyS0, the console, goes to a log file; ttyS1 is the agent's line, a UNIX
  socket: the host sends one base64 shell script per line and reads the output
  back between markers (see ``init.sh``).

Acceleration: KVM when a guest actually boots with it (it reaches
FASTIVC-READY within ``KVM_PROBE_S``), else TCG.  Nested KVM has been seen to
hang right after the kernel's decompression, so the verdict comes from booting,
not from /dev/kvm existing; it is remembered in the cache directory per host
kernel and QEMU version.

QEMU processes are always killed: on close(), on errors, on Ctrl-C (the
``with`` block), and at interpreter exit.
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .build import GuestImage, build, default_cache

QEMU = "qemu-system-x86_64"
KVM_PROBE_S = 15.0  # a KVM guest is READY in a few seconds; TCG in about 5 here
BOOT_TIMEOUT_S = 120.0
READY = "FASTIVC-READY"
BEGIN = "FASTIVC-BEGIN"
END = "FASTIVC-END"
AGENT = "FASTIVC-AGENT"  # the agent's greeting on its line, once it listens
SUBNET = "10.230.0"  # guest i has SUBNET.(11 + i)/24
DEFAULT_FABRIC_SIZE = 16 << 20

_live: set[subprocess.Popen] = set()


def _kill_all() -> None:
    for p in list(_live):
        _kill(p)


atexit.register(_kill_all)


def _kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    _live.discard(p)


def _die_with_parent() -> None:
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class VMError(RuntimeError):
    pass


@dataclass
class Result:
    rc: int
    output: str
    seconds: float


def qemu_available() -> str | None:
    """None when QEMU can run here, else why not."""
    if not shutil.which(QEMU):
        return f"{QEMU} not found (apt-get install qemu-system-x86; scripts/ensure-deps.sh)"
    r = subprocess.run([QEMU, "-version"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"{QEMU} -version failed: {r.stderr.strip()}"
    return None


def _qemu_version() -> str:
    r = subprocess.run([QEMU, "-version"], capture_output=True, text=True)
    return r.stdout.splitlines()[0] if r.stdout else "?"


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


class Guest:
    """One QEMU guest.  Usually made by ``Network``; ``start()``, ``wait_ready()``,
    ``run()``, ``close()``."""

    def __init__(self, image: GuestImage, name: str, ip: str, workdir: Path,
                 netdev: str, mac: str, fabric: Path | None, fabric_size: int,
                 accel: str, memory_mb: int = 256, ns: str | None = None):
        self.image, self.name, self.ip, self.accel = image, name, ip, accel
        self.console = workdir / f"{name}.console"
        self.agent_path = workdir / f"{name}.agent"
        self.netdev, self.mac, self.ns = netdev, mac, ns
        self.fabric, self.fabric_size, self.memory_mb = fabric, fabric_size, memory_mb
        self.proc: subprocess.Popen | None = None
        self.boot_seconds: float | None = None
        self._sock: socket.socket | None = None
        self._buf = b""
        self._greeted = False
        self._t0 = 0.0

    def command(self) -> list[str]:
        cmd = [QEMU, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
               "-m", str(self.memory_mb), "-smp", "1",
               "-kernel", str(self.image.kernel), "-initrd", str(self.image.initramfs),
               "-append", f"console=ttyS0 quiet panic=-1 fastivc.ip={self.ip}/24 "
               f"fastivc.name={self.name}",
               "-serial", f"file:{self.console}",
               "-chardev", f"socket,id=agent,path={self.agent_path},server=on,wait=off",
               "-serial", "chardev:agent",
               "-netdev", self.netdev,
               "-device", f"virtio-net-pci,netdev=n0,mac={self.mac}"]
        if self.fabric is not None:
            cmd += ["-object", f"memory-backend-file,id=fabric,size={self.fabric_size},"
                    f"share=on,mem-path={self.fabric}",
                    "-device", "ivshmem-plain,memdev=fabric"]
        if self.ns:  # its tap lives in the host link's namespace
            cmd = ["ip", "netns", "exec", self.ns, *cmd]
        if self.accel == "kvm":
            # -cpu host alone aborts here ("failed to set MSR 0x10a"): nested KVM
            # without IA32_ARCH_CAPABILITIES; leaving that feature out is harmless.
            cmd += ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
        else:
            cmd += ["-accel", "tcg"]
        return cmd

    def start(self) -> None:
        self.console.unlink(missing_ok=True)
        self.agent_path.unlink(missing_ok=True)
        self._t0 = time.monotonic()
        # Own session: Ctrl-C reaches us, and we kill QEMU.  PDEATHSIG: QEMU
        # dies with us even when we are killed with SIGKILL.
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        _live.add(self.proc)
        # Connect to the agent's line now, before the guest can write to it:
        # QEMU drops what a serial port sends while no client is connected.
        deadline = time.monotonic() + 30
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self.agent_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
                if self.proc.poll() is not None:
                    raise self._died() from None
                if time.monotonic() > deadline:
                    raise VMError(f"guest {self.name}: QEMU did not create "
                                  f"{self.agent_path} within 30 s") from None
                time.sleep(0.02)
        self._sock = s

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _died(self) -> VMError:
        err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc else ""
        return VMError(f"guest {self.name}: QEMU exited ({self.proc.returncode}) "
                       f"{err[-400:]}; console: {self.console_text()[-400:]!r}")

    def wait_ready(self, timeout: float) -> bool:
        """True once the console shows READY; False after ``timeout``; VMError if QEMU died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.console_text()
            if "FASTIVC-ERROR" in text:
                raise VMError(f"guest {self.name}: {text[text.index('FASTIVC-ERROR'):][:200]}")
            if READY in text:
                self.boot_seconds = time.monotonic() - self._t0
                return True
            if self.proc.poll() is not None:
                raise self._died()
            time.sleep(0.05)
        return False

    def _connect(self, timeout: float) -> None:
        """Connect to the agent's line and wait for its FASTIVC-AGENT greeting:
        a script sent before the guest opened the port could be lost."""
        if self._greeted:
            return
        greeting = re.compile(re.escape(AGENT.encode()) + rb"\r?\n")
        m = self._read_until(greeting, time.monotonic() + timeout, "the agent")
        self._buf = self._buf[m.end():]
        self._greeted = True

    def _read_until(self, pattern: re.Pattern, deadline: float, what: str) -> re.Match:
        while not (m := pattern.search(self._buf)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise VMError(f"guest {self.name}: no answer from {what} in time")
            if self.proc.poll() is not None:
                raise self._died()
            self._sock.settimeout(min(left, 1.0))
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise VMError(f"guest {self.name}: agent line closed")
            self._buf += chunk
        return m

    def run(self, script: str, timeout: float = 60.0) -> Result:
        """Run a shell script in the guest (busybox sh, PATH has the fastivc helpers,
        the library is /opt/fastivc/libfastivc.so) and return its exit code and output."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        self._connect(timeout)
        self._sock.sendall(base64.b64encode(script.encode()) + b"\n")
        done = re.compile(rb"\n" + re.escape(END.encode()) + rb" (-?\d+)\r?\n")
        try:
            m = self._read_until(done, deadline, f"{script[:80]!r}")
        except VMError as e:
            raise VMError(f"{e} (within {timeout:.0f} s)") from None
        head, rc = self._buf[:m.start()], int(m.group(1))
        self._buf = self._buf[m.end():]
        b = head.find(BEGIN.encode())
        body = head[b + len(BEGIN):] if b >= 0 else b""
        out = base64.b64decode(b"".join(body.split())).decode(errors="replace")
        return Result(rc, out, time.monotonic() - t0)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.proc is not None:
            _kill(self.proc)


def _accel_cache_file(cache: Path) -> Path:
    return cache / "accel.json"


def _accel_key() -> str:
    return f"{platform.release()} | {_qemu_version()}"


def remembered_accel(cache: Path) -> str | None:
    try:
        doc = json.loads(_accel_cache_file(cache).read_text())
    except (OSError, ValueError):
        return None
    return doc.get("accel") if doc.get("key") == _accel_key() else None


def _remember_accel(cache: Path, accel: str) -> None:
    _accel_cache_file(cache).write_text(json.dumps({"key": _accel_key(), "accel": accel}))


class Network:
    """N guests on one virtual network sharing one ivshmem fabric.

    ``with Network(2) as net: net.guests[0].run("ping -c1 10.230.0.12")``

    accel: "auto" (KVM if a guest boots with it, else TCG), "kvm" or "tcg".
    fabric: an existing file to share (its size is rounded up to a power of two,
    which the fastivc library tolerates: it only needs the file to be at least as
    big as its layout); None creates a fresh sparse file of ``fabric_size`` bytes
    in /dev/shm, removed on close.
    """

    def __init__(self, n: int = 2, accel: str = "auto", fabric: str | Path | None = None,
                 fabric_size: int = DEFAULT_FABRIC_SIZE, cache: Path | None = None,
                 memory_mb: int = 256, boot_timeout: float = BOOT_TIMEOUT_S,
                 host_link: bool = False):
        if not 1 <= n <= 200:
            raise ValueError("between 1 and 200 guests")
        if accel not in ("auto", "kvm", "tcg"):
            raise ValueError("accel must be auto, kvm or tcg")
        if not _is_pow2(fabric_size):
            raise ValueError(f"fabric size {fabric_size} is not a power of two "
                             "(QEMU's ivshmem requires one)")
        self.n, self.accel_wanted, self.memory_mb = n, accel, memory_mb
        self.cache = Path(cache) if cache else default_cache()
        self.boot_timeout = boot_timeout
        self.fabric_arg, self.fabric_size = fabric, fabric_size
        self.fabric: Path | None = None
        self._own_fabric = False
        self.guests: list[Guest] = []
        self.accel: str | None = None
        self.notes: list[str] = []
        self.image: GuestImage | None = None
        self._workdir: Path | None = None
        # host_link: the guests' NICs are taps on a bridge in a network
        # namespace where the host has SUBNET.1, so host processes run there
        # (in_ns(net.host_ns, argv)) reach the guests with the same 4-tuple
        # the guests see: host-guest connections can be accelerated.  Root.
        self.host_link = host_link
        self.host_ns: str | None = None
        self.host_ip = f"{SUBNET}.1"

    def __enter__(self) -> Network:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _prepare_fabric(self) -> None:
        if self.fabric_arg is None:
            fd, path = tempfile.mkstemp(prefix="fastivc-vm-fabric-", dir="/dev/shm")
            os.ftruncate(fd, self.fabric_size)
            os.close(fd)
            self.fabric, self._own_fabric = Path(path), True
            return
        self.fabric = Path(self.fabric_arg)
        try:
            size = self.fabric.stat().st_size
        except FileNotFoundError:
            raise VMError(f"fabric {self.fabric}: no such file (create it first, e.g. by "
                          "running a program under fastivc run with FASTIVC_FABRIC)") from None
        p2 = 1 << max(size - 1, 0).bit_length()
        if p2 != size:
            os.truncate(self.fabric, p2)
            self.notes.append(f"fabric {self.fabric}: grew {size} -> {p2} bytes "
                              "(ivshmem needs a power-of-two size)")
        self.fabric_size = p2

    def _host_link_up(self) -> None:
        if os.geteuid() != 0:
            raise VMError("host_link needs root (a network namespace with a bridge and taps)")
        self.host_ns = f"fivc-vm-{os.getpid()}"
        cmds = [["ip", "netns", "add", self.host_ns],
                ["ip", "-n", self.host_ns, "link", "set", "lo", "up"],
                ["ip", "-n", self.host_ns, "link", "add", "br0", "type", "bridge"],
                ["ip", "-n", self.host_ns, "addr", "add", f"{self.host_ip}/24", "dev", "br0"],
                ["ip", "-n", self.host_ns, "link", "set", "br0", "up"]]
        for i in range(self.n):
            cmds += [["ip", "-n", self.host_ns, "tuntap", "add", "dev", f"tap{i}", "mode", "tap"],
                     ["ip", "-n", self.host_ns, "link", "set", f"tap{i}", "master", "br0"],
                     ["ip", "-n", self.host_ns, "link", "set", f"tap{i}", "up"]]
        for c in cmds:
            r = subprocess.run(c, capture_output=True, text=True)
            if r.returncode != 0:
                raise VMError(f"{' '.join(c)}: {r.stderr.strip()}")

    def _host_link_down(self) -> None:
        if self.host_ns:
            subprocess.run(["ip", "netns", "del", self.host_ns], capture_output=True)
            self.host_ns = None

    def _make_guests(self, accel: str) -> None:
        port = _free_udp_port()
        for i in range(self.n):
            netdev = (f"tap,id=n0,ifname=tap{i},script=no,downscript=no" if self.host_ns
                      else f"socket,id=n0,mcast=230.0.0.1:{port},localaddr=127.0.0.1")
            g = Guest(self.image, f"vm{i}", f"{SUBNET}.{11 + i}", self._workdir, netdev,
                      f"52:54:00:fa:57:{i + 1:02x}", self.fabric, self.fabric_size,
                      accel, self.memory_mb, ns=self.host_ns)
            self.guests.append(g)

    def _boot(self, accel: str, timeout: float) -> bool:
        for g in self.guests:
            g.close()
        self.guests = []
        self._make_guests(accel)
        for g in self.guests:
            g.start()
        deadline = time.monotonic() + timeout
        for g in self.guests:
            if not g.wait_ready(max(deadline - time.monotonic(), 0.1)):
                return False
        return True

    def start(self) -> None:
        if why := qemu_available():
            raise VMError(why)
        self.image = build(self.cache)
        self._workdir = Path(tempfile.mkdtemp(prefix="fastivc-vm-"))
        self._prepare_fabric()
        if self.host_link:
            self._host_link_up()
        accel = self.accel_wanted
        if accel == "auto":
            kvm_usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
            accel = remembered_accel(self.cache) or ("kvm" if kvm_usable else "tcg")
            if accel == "kvm":
                try:
                    ok = self._boot("kvm", KVM_PROBE_S)
                except VMError as e:
                    ok = False
                    self.notes.append(f"KVM: {e}")
                if ok:
                    self.accel = "kvm"
                    _remember_accel(self.cache, "kvm")
                    return
                self.notes.append(f"KVM did not boot a guest within {KVM_PROBE_S:.0f} s; "
                                  "using TCG")
                _remember_accel(self.cache, "tcg")
                accel = "tcg"
            else:
                self.notes.append("TCG (KVM unavailable or remembered as not booting; "
                                  f"remove {_accel_cache_file(self.cache)} to retry)")
        if not self._boot(accel, self.boot_timeout):
            slow = [g.name for g in self.guests if g.boot_seconds is None]
            raise VMError(f"guests {', '.join(slow)} not ready within {self.boot_timeout:.0f} s "
                          f"({accel}); console of {slow[0]}: "
                          f"{self.guests[0].console_text()[-400:]!r}")
        self.accel = accel

    def close(self) -> None:
        for g in self.guests:
            g.close()
        self._host_link_down()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if self._own_fabric and self.fabric is not None:
            self.fabric.unlink(missing_ok=True)
            self._own_fabric = False


def _free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def interrupt_safe(fn):
    """Run fn() with SIGTERM turned into KeyboardInterrupt, so ``with Network``
    blocks kill their guests when the command is terminated."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, handler)
    try:
        return fn()
    finally:
        signal.signal(signal.SIGTERM, old)
