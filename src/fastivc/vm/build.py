"""Build and cache a minimal guest: a Debian kernel and an initramfs.

The kernel comes from Debian's ``linux-image-amd64`` package (the versioned
``linux-image-6.1.*-amd64`` package it depends on), unpacked with ``dpkg-deb
-x``.  The initramfs (cpio newc, gzip) carries busybox (``busybox-static``),
the kernel modules the guest needs (virtio_net and virtio_pci are modules in
Debian's kernel) with their dependencies, ``libfastivc.so`` and the helper
programs with the shared libraries they link, and ``/init`` (``init.sh``).

Nothing is rebuilt when the cached files match: the kernel is keyed by its
package version, the initramfs by a hash of everything put into it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .._paths import lib_path

KERNEL_META_PACKAGE = "linux-image-amd64"
# What the guest loads, in no particular order: their dependencies are added
# and the whole set is sorted so that each module follows what it needs.
GUEST_MODULES = ("virtio_pci", "virtio_net")
BUSYBOX = "/bin/busybox"  # from busybox-static: the guest has no libc of its own
INIT_SCRIPT = Path(__file__).resolve().parent / "init.sh"
FORMAT = 1  # bump when the initramfs layout changes


def default_cache() -> Path:
    """``$FASTIVC_VM_CACHE``, else ``$XDG_CACHE_HOME/fastivc/vm`` (``~/.cache/fastivc/vm``)."""
    if os.environ.get("FASTIVC_VM_CACHE"):
        return Path(os.environ["FASTIVC_VM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "fastivc" / "vm"


@dataclass(frozen=True)
class GuestImage:
    """A built guest: what QEMU's -kernel and -initrd take."""

    kernel: Path
    initramfs: Path
    kernel_version: str  # uname -r in the guest, e.g. 6.1.0-56-amd64
    modules: tuple[str, ...]  # insmod order
    built: bool  # False when everything came from the cache
    seconds: float  # time this call took

    def to_dict(self) -> dict:
        return {"kernel": str(self.kernel), "initramfs": str(self.initramfs),
                "kernel_version": self.kernel_version, "modules": list(self.modules),
                "built": self.built, "seconds": round(self.seconds, 2)}


class BuildError(RuntimeError):
    pass


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise BuildError(f"{cmd[0]}: not found ({e}); run scripts/ensure-deps.sh") from e
    if r.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} (in {cwd or os.getcwd()}) failed, exit "
                         f"{r.returncode}: {r.stderr.strip()[-500:]}")
    return r.stdout


def _apt_download(package: str, dest: Path) -> Path:
    """The .deb of ``package`` (candidate version) in ``dest``, downloaded if absent."""
    version = ""
    for line in _run(["apt-cache", "policy", package]).splitlines():
        if line.strip().startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
    if not version or version == "(none)":
        raise BuildError(f"apt-cache policy {package}: no candidate version "
                         "(is the Debian archive in sources.list? apt-get update)")
    fname_version = version.split(":", 1)[-1]  # an epoch is not in the file name
    existing = list(dest.glob(f"{package}_{fname_version}_*.deb"))
    if existing:
        return existing[0]
    dest.mkdir(parents=True, exist_ok=True)
    # Sandbox.User=root: the _apt user could not write into a root-owned cache
    _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root",
          f"{package}={version}"], cwd=dest)
    found = list(dest.glob(f"{package}_{fname_version}_*.deb"))
    if not found:
        raise BuildError(f"apt-get download {package}={version}: no .deb appeared in {dest}")
    return found[0]


def _kernel_package(debs: Path) -> Path:
    """The versioned linux-image-6.1.*-amd64 .deb that linux-image-amd64 depends on."""
    meta = _apt_download(KERNEL_META_PACKAGE, debs)
    depends = _run(["dpkg-deb", "-f", str(meta), "Depends"])
    m = re.search(r"(linux-image-[0-9][^\s,(]*)", depends)
    if not m:
        raise BuildError(f"{meta}: no linux-image-* in Depends: {depends.strip()}")
    return _apt_download(m.group(1), debs)


def _module_depends(ko: Path) -> list[str]:
    """The ``depends=`` field of a module's .modinfo section (what modinfo -F depends says)."""
    data = ko.read_bytes()
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    if not m or not m.group(1):
        return []
    return m.group(1).decode().split(",")


def _module_order(moddir: Path, wanted: tuple[str, ...]) -> list[tuple[str, Path]]:
    """``wanted`` and their dependencies, each after what it depends on."""
    index: dict[str, Path] = {}
    for ko in moddir.rglob("*.ko"):
        index[ko.stem.replace("-", "_")] = ko
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        if name in chain:
            raise BuildError(f"module dependency cycle: {' -> '.join(chain + (name,))}")
        if name not in index:
            raise BuildError(f"module {name} (needed by {chain[-1] if chain else 'the guest'}) "
                             f"not found under {moddir}; is it built into the kernel?")
        for dep in _module_depends(index[name]):
            visit(dep, chain + (name,))
        seen.add(name)
        order.append((name, index[name]))

    for w in wanted:
        visit(w, ())
    return order


def _ldd(binary: Path) -> list[Path]:
    """The shared libraries ``binary`` loads (the dynamic loader included), as host paths."""
    out = _run(["ldd", str(binary)])
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


class _Cpio:
    """A cpio archive in the "newc" format, the one the kernel's initramfs unpacker reads."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1) -> None:
        name_b = name.encode() + b"\0"
        hdr = b"070701" + b"".join(b"%08X" % v for v in (
            self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name_b), 0))
        self._ino += 1
        blob = hdr + name_b
        blob += b"\0" * (-len(blob) % 4)
        blob += data + b"\0" * (-len(data) % 4)
        self._parts.append(blob)

    def mkdir(self, path: str) -> None:
        path = path.strip("/")
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self._dirs:
                self._dirs.add(d)
                self._entry(d, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = path.strip("/")
        if "/" in path:
            self.mkdir(path.rsplit("/", 1)[0])
        self._entry(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        path = path.strip("/")
        if "/" in path:
            self.mkdir(path.rsplit("/", 1)[0])
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def bytes(self) -> bytes:
        trailer = _Cpio()
        trailer._entry("TRAILER!!!", 0)
        return b"".join(self._parts) + trailer._parts[0]


def overlay_cpio(files: dict[str, bytes]) -> bytes:
    """A small uncompressed archive to append to an initramfs: the kernel unpacks
    concatenated archives in order, so later files are added (or replace earlier ones)."""
    c = _Cpio()
    for path, data in files.items():
        c.file(path, data, 0o755)
    return c.bytes()


def _fastivc_files() -> dict[str, Path]:
    """Guest path -> host path for libfastivc.so and the helpers in libexec."""
    lib = lib_path()
    files = {"opt/fastivc/libfastivc.so": lib}
    for h in sorted((lib.parent / "libexec").iterdir()):
        if h.is_file() and os.access(h, os.X_OK):
            files[f"opt/fastivc/libexec/{h.name}"] = h
    return files


def build(cache: Path | None = None, force: bool = False) -> GuestImage:
    """Build the guest into ``cache`` (default ``default_cache()``), or reuse what is there."""
    t0 = time.monotonic()
    cache = Path(cache) if cache else default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    deb = _kernel_package(cache / "debs")
    kdir = cache / deb.stem
    built = False
    if force or not (kdir / ".done").exists():
        shutil.rmtree(kdir, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=".kernel-", dir=cache))
        try:
            _run(["dpkg-deb", "-x", str(deb), str(tmp)])
            tmp.rename(kdir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        (kdir / ".done").touch()
        built = True
    vmlinuz = sorted((kdir / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise BuildError(f"{deb}: no boot/vmlinuz-* in the package")
    kernel = vmlinuz[-1]
    kver = kernel.name.removeprefix("vmlinuz-")
    moddir = kdir / "lib" / "modules" / kver
    modules = _module_order(moddir, GUEST_MODULES)

    if not Path(BUSYBOX).exists():
        raise BuildError(f"{BUSYBOX} not found: install busybox-static (scripts/ensure-deps.sh)")
    if subprocess.run(["ldd", BUSYBOX], capture_output=True).returncode == 0:
        raise BuildError(f"{BUSYBOX} is dynamically linked; the guest has no libc for it: "
                         "install busybox-static (scripts/ensure-deps.sh)")
    # Everything that goes into the initramfs, keyed so the cache notices changes.
    contents: dict[str, Path] = {"bin/busybox": Path(BUSYBOX)}
    for name, ko in modules:
        contents[f"lib/modules/{name}.ko"] = ko
    fastivc = _fastivc_files()
    contents.update(fastivc)
    for binary in fastivc.values():
        for lib in _ldd(binary):
            contents[str(lib).lstrip("/")] = lib  # same path in the guest (the loader too)
    h = hashlib.sha256(f"format {FORMAT} {kver}".encode())
    h.update(INIT_SCRIPT.read_bytes())
    for gpath in sorted(contents):
        h.update(gpath.encode() + b"\0" + contents[gpath].read_bytes())
    initramfs = cache / f"initramfs-{kver}-{h.hexdigest()[:16]}.cpio.gz"
    if force or not initramfs.exists():
        c = _Cpio()
        for d in ("proc", "sys", "dev", "tmp", "run", "root", "etc/fastivc", "usr/bin",
                  "usr/sbin", "sbin"):
            c.mkdir(d)
        c.file("init", INIT_SCRIPT.read_bytes(), 0o755)
        c.file("etc/fastivc/modules", "".join(f"{n}\n" for n, _ in modules).encode())
        for gpath, hpath in sorted(contents.items()):
            mode = 0o755 if os.access(hpath, os.X_OK) else 0o644
            c.file(gpath, hpath.read_bytes(), mode)
        applets = _run([BUSYBOX, "--list-full"]).split()
        for a in applets:
            if a not in contents and a != "bin/busybox":
                c.symlink(a, "/bin/busybox")
        tmp = initramfs.with_suffix(".tmp")
        with open(tmp, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6,
                                                 mtime=0) as gz:
            gz.write(c.bytes())
        tmp.rename(initramfs)
        for old in cache.glob(f"initramfs-{kver}-*.cpio.gz"):
            if old != initramfs:
                old.unlink()
        built = True
    return GuestImage(kernel, initramfs, kver, tuple(n for n, _ in modules), built,
                      time.monotonic() - t0)
