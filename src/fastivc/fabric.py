"""Read-only inspection of a fabric (the shared region described in
csrc/include/fastivc/layout.h).

Like the C side, this treats the region as untrusted: the header is checked
(magic, layout version, structure sizes, geometry, offsets recomputed, size
within the file) before anything else is read, and every index or counter
read afterwards is range-checked; a ring whose indices violate
``0 <= tail - head <= size`` is reported as corrupt rather than believed.
Only slots whose pages were ever reserved are read (the fabric's "backed"
map): reading a hole of a tmpfs mapping would allocate it.

Member liveness asks the kernel: each member holds an OFD write lock on byte
``FIVC_LOCK_BASE + index`` of the fabric file while it lives.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import ipaddress
import mmap
import os
import struct
from dataclasses import asdict, dataclass, field

LAYOUT_VERSION = 9
FABRIC_MAGIC = 0x3143564954534146  # "FASTIVC1"
RING_MAGIC = 0x474E4952  # "RING"
LOCK_BASE = 1 << 40
PAGE = 4096
MIN_RING, MAX_RING = 4 * 1024, 64 * 1024 * 1024
MAX_SLOTS, MAX_MEMBERS, MAX_OFFERS = 1 << 22, 65533, 65536
# a side's member field when a reclaimer found that member dead while it
# was storing into the slot (layout.h): held by nobody, the slot not free
LEASE_QUARANTINE = 0xFFFF
QUARANTINE_MAX_S = 300  # then a reclaim pass lifts it (a killed VM never comes back)
POOL_CLASSES, MAX_POOL, MID_RING = 2, 1 << 22, 64 * 1024
POOL_NAMES = ("mid", "big")
OFFER_BUCKET = 8
LISTENERS, LISTENER_SIZE = 4096, 64
WAKERS, WAKER_SIZE = 2048, 1024  # layout.h: wake records (one per sleeping epoll set)

# struct layouts (checked against the C structs by tests/test_layout.py)
HDR = struct.Struct("<QIIQQIIIIQQQQQIIIIIIIIIIQQQQQIIQII")
POOL_ENT = struct.Struct("<QII")
DOWNGRADES, DOWNGRADES_OFF = struct.Struct("<8Q"), 192  # after HDR, in its reserved page
# (FIVC_DOWN_* in preload.h)
DOWNGRADE_REASONS = {1: "peer_left", 2: "exec", 3: "io_uring", 4: "operator",
                     5: "fd_beyond_table"}
HDR_SIZE, MEMBER_SIZE, OFFER_SIZE, SLOT_SIZE = 4096, 64, 128, 1024
MEMBER = struct.Struct("<IIQQQ16sI")  # ... comm, touched
TUPLE = struct.Struct("<16s16sHHI")
OFFER = struct.Struct("<QQ40sIII")
LISTENER = struct.Struct("<Q16sHHI")
SLOT_HEAD = struct.Struct("<QQ40s")
SLOT_SWITCH = struct.Struct("<QIIII8H8HII")  # ..., holder_ids, busy[2]
SLOT_HOLDERS = 8
SLOT_SWITCH_OFF = 64
SLOT_RING_OFF = 128
RING_HDR_SIZE = 320
RING_RO = struct.Struct("<II")
RING_PROD = struct.Struct("<QIIIIQII")
RING_PROD_OFF = 64
RING_CONS = struct.Struct("<QIII")
RING_CONS_OFF = 192

OFFER_STATES = {0: "free", 1: "writing", 2: "pending", 3: "adopted", 4: "withdrawn"}


class FabricError(Exception):
    """The file is not a usable fabric; the message names the file and why."""


@dataclass(frozen=True)
class Header:
    path: str
    layout_version: int
    total_size: int
    epoch_ns: int
    nmembers: int
    noffers: int
    nslots: int
    ring_size: int
    members_off: int
    offers_off: int
    slots_off: int
    small_ring: int = 0
    slab_size: int = 0
    npool: tuple[int, ...] = ()
    pool_size: tuple[int, ...] = ()
    slotmap_off: int = 0
    backed_off: int = 0
    pool_off: tuple[int, ...] = ()
    pooldata_off: tuple[int, ...] = ()
    listeners_off: int = 0
    wakers_off: int = 0


@dataclass(frozen=True)
class Member:
    index: int
    pid: int
    comm: str
    joined_ns: int
    pidns_ino: int
    alive: bool | None  # None: the kernel could not be asked


@dataclass(frozen=True)
class Ring:
    """One direction of a channel; byte counters are the free-running indices."""

    produced: int
    consumed: int
    fill: int
    size: int  # of the buffer it writes to now
    writer_closed: bool
    reader_closed: bool
    consumer_waiting: bool
    producer_waiting: bool
    valid: bool
    problem: str = ""
    buffer: str = "inline"  # inline, mid or big (a pool buffer)


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int


@dataclass(frozen=True)
class Slot:
    index: int
    generation: int
    client_member: int | None  # member index, None when that side is gone
    server_member: int | None
    state: str  # offered, connected, half-closed, quarantined (LEASE_QUARANTINE)
    local: Endpoint  # the client's address (the 4-tuple's source)
    peer: Endpoint  # the server's address
    nonce: int
    switch_bytes: int
    client_to_server: Ring
    server_to_client: Ring
    # member indexes of the processes holding each side (several after fork)
    client_holders: tuple[int, ...] = ()
    server_holders: tuple[int, ...] = ()


@dataclass(frozen=True)
class Listener:
    """A listening socket of an accelerated process: clients post offers
    only to destinations some listener entry matches."""
    index: int
    generation: int
    owner_member: int | None
    address: str  # "*" for any address
    port: int
    netns: int


@dataclass(frozen=True)
class Offer:
    index: int
    generation: int
    state: str
    owner_member: int | None
    source: Endpoint
    destination: Endpoint
    nonce: int
    slot: int | None
    slot_generation: int
    adopter_member: int | None


@dataclass
class Snapshot:
    header: Header
    members: list[Member] = field(default_factory=list)
    slots: list[Slot] = field(default_factory=list)
    offers: list[Offer] = field(default_factory=list)
    listeners: list[Listener] = field(default_factory=list)
    # connections that went back to TCP (issue 12), by reason (DOWNGRADE_REASONS)
    downgrades: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=4096)  # a fabric of 65k slots has few distinct addresses
def _addr(raw: bytes) -> str:
    a = ipaddress.IPv6Address(raw)
    return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)


def _page_up(v: int) -> int:
    return (v + PAGE - 1) & ~(PAGE - 1)


def default_pool_counts(nslots: int, ring_size: int, small_ring: int) -> tuple[int, ...]:
    """The pool buffers a new fabric gets (csrc/fabric.c, pool_default)."""
    psize = (min(MID_RING, ring_size), ring_size)
    out = []
    for c in range(POOL_CLASSES):
        if psize[c] <= small_ring or (c == 0 and psize[0] >= psize[1]):
            out.append(0)
        else:
            per, floor = (64, 16) if c else (16, 64)
            out.append(max(nslots // per, min(2 * nslots, floor)))
    return tuple(out)


def _layout(nmembers: int, noffers: int, nslots: int, ring_size: int, small_ring: int,
            npool: tuple[int, ...]) -> dict:
    """The offsets csrc/fabric.c (fivc_layout_compute) gives these counts."""
    psize = (min(MID_RING, ring_size), ring_size)
    below = small_ring
    for c in range(POOL_CLASSES):
        useless = psize[c] <= below or (c == 0 and psize[0] >= psize[1])
        if useless and npool[c]:
            raise ValueError("a pool class that could never be used has buffers")
        if npool[c]:
            below = psize[c]
    L: dict = {}
    off = PAGE
    L["members_off"] = off
    off += nmembers * MEMBER_SIZE
    L["offers_off"] = off
    off += noffers * OFFER_SIZE
    L["listeners_off"] = off
    off += LISTENERS * LISTENER_SIZE
    L["wakers_off"] = off
    off += WAKERS * WAKER_SIZE
    L["slotmap_off"] = off
    off += (nslots + 63) // 64 * 8
    L["backed_off"] = off
    off += (nslots + 7) & ~7
    pool_off = []
    for c in range(POOL_CLASSES):
        pool_off.append(off)
        off += npool[c] * POOL_ENT.size
    off = _page_up(off)
    L["slots_off"] = off
    L["slab_size"] = PAGE + 2 * small_ring
    off += nslots * L["slab_size"]
    pooldata_off = []
    for c in range(POOL_CLASSES):
        off = _page_up(off)
        pooldata_off.append(off)
        off += npool[c] * psize[c]
    L["pool_off"], L["pooldata_off"], L["pool_size"] = tuple(pool_off), tuple(pooldata_off), psize
    L["total"] = off
    return L


def resident_bytes(path: str | os.PathLike[str]) -> int:
    """st_blocks * 512 of the file at path: the memory a (sparse) fabric holds."""
    return os.stat(path).st_blocks * 512


class Fabric:
    """A read-only view of the fabric at ``path``.

    >>> with Fabric("/dev/shm/fastivc") as fab:
    ...     snap = fab.snapshot()
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._fd = -1
        self._map = None
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise FabricError(f"cannot open fabric {self.path}: {e.strerror}") from e
        try:
            st = os.fstat(self._fd)
            if not (st.st_mode & 0o170000) == 0o100000:
                raise FabricError(f"fabric {self.path} is not a regular file")
            if st.st_size < HDR_SIZE:
                raise FabricError(
                    f"{self.path} is not a fastivc fabric (too short: {st.st_size} bytes)"
                )
            raw = os.pread(self._fd, HDR.size, 0)
            self.header = self._validate(HDR.unpack(raw), st.st_size)
            self._map = mmap.mmap(self._fd, self.header.total_size, mmap.MAP_SHARED, mmap.PROT_READ)
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise

    # -- header ---------------------------------------------------------
    def _validate(self, h: tuple, file_size: int) -> Header:
        (magic, version, hdr_size, total, epoch, nmem, noff, nslot, ring, mo, oo, so,
         pd0, pd1, msz, osz, ssz, _flags, small, slab, np0, np1, ps0, ps1, smo, bko,
         po0, po1, lo, nlis, lsz, wo, nwak, wsz) = h
        if magic != FABRIC_MAGIC:
            raise FabricError(f"{self.path} is not a fastivc fabric (bad magic 0x{magic:016x})")
        if version != LAYOUT_VERSION:
            raise FabricError(
                f"fabric {self.path} has layout version {version} but this fastivc speaks "
                f"version {LAYOUT_VERSION}; refusing to reinterpret it"
            )
        if ((hdr_size, msz, osz, ssz, lsz, nlis, wsz, nwak) !=
                (HDR_SIZE, MEMBER_SIZE, OFFER_SIZE, SLOT_SIZE, LISTENER_SIZE, LISTENERS,
                 WAKER_SIZE, WAKERS)):
            raise FabricError(f"fabric {self.path}: structure sizes in the header do not match")
        if not (0 < nmem <= MAX_MEMBERS and 0 < noff <= MAX_OFFERS and 0 < nslot <= MAX_SLOTS
                and MIN_RING <= ring <= MAX_RING and ring & (ring - 1) == 0
                and MIN_RING <= small <= ring and small & (small - 1) == 0
                and small <= 16 * PAGE and np0 <= MAX_POOL and np1 <= MAX_POOL
                and (noff <= OFFER_BUCKET or noff % OFFER_BUCKET == 0)):
            raise FabricError(f"fabric {self.path}: header geometry out of range")
        try:
            L = _layout(nmem, noff, nslot, ring, small, (np0, np1))
        except ValueError:
            raise FabricError(f"fabric {self.path}: header geometry out of range") from None
        if ((L["members_off"], L["offers_off"], L["listeners_off"], L["wakers_off"],
             L["slots_off"], L["slotmap_off"], L["backed_off"], L["slab_size"], L["pool_off"],
             L["pooldata_off"], L["pool_size"], L["total"]) !=
                (mo, oo, lo, wo, so, smo, bko, slab, (po0, po1), (pd0, pd1), (ps0, ps1), total)):
            raise FabricError(f"fabric {self.path}: header offsets are inconsistent")
        if total > file_size:
            raise FabricError(
                f"fabric {self.path}: header says {total} bytes but the file has {file_size}"
            )
        return Header(self.path, version, total, epoch, nmem, noff, nslot, ring, mo, oo, so,
                      small, slab, (np0, np1), (ps0, ps1), smo, bko, (po0, po1), (pd0, pd1), lo,
                      wo)

    # -- liveness -------------------------------------------------------
    def member_alive(self, index: int) -> bool | None:
        """Whether member ``index`` holds its lock (the kernel is the witness)."""
        if not 0 <= index < self.header.nmembers:
            return False
        fl = struct.pack("hhqqi4x", fcntl.F_RDLCK, os.SEEK_SET, LOCK_BASE + index, 1, 0)
        try:
            res = fcntl.fcntl(self._fd, fcntl.F_OFD_GETLK, fl)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOLCK, errno.EBADF):
                return None
            raise
        return struct.unpack("hhqqi4x", res)[0] != fcntl.F_UNLCK

    def _member_ref(self, m1: int) -> int | None:
        return m1 - 1 if 0 < m1 <= self.header.nmembers else None

    # -- tables ---------------------------------------------------------
    def members(self) -> list[Member]:
        """Members whose entry says alive, with what the kernel says."""
        out = []
        h = self.header
        for i in range(h.nmembers):
            state, pid, joined, _hb, ino, comm, _touched = MEMBER.unpack_from(
                self._map, h.members_off + i * MEMBER_SIZE)
            if state not in (1, 2):  # ALIVE (a process here), GUEST (in a VM)
                continue
            name = comm.split(b"\0", 1)[0].decode("utf-8", "replace")
            # a guest's liveness is its heartbeat's progress: not judged here
            out.append(Member(i, pid, name, joined, ino,
                              self.member_alive(i) if state == 1 else None))
        return out

    def _buffer(self, word: int) -> tuple[str, int] | None:
        """A ring's buffer word: (name, size), or None if it names no buffer."""
        if word == 0:
            return "inline", self.header.small_ring
        c, i = (word >> 24) - 1, word & 0xFFFFFF
        if not 0 <= c < POOL_CLASSES or i >= self.header.npool[c]:
            return None
        return POOL_NAMES[c], self.header.pool_size[c]

    def _ring(self, off: int) -> Ring:
        h = self.header
        magic, rsize = RING_RO.unpack_from(self._map, off)
        tail, wr_closed, _cw, prod_waiting, _seq, from_, buf, prev = RING_PROD.unpack_from(
            self._map, off + RING_PROD_OFF)
        head, rd_closed, _pw, cons_waiting = RING_CONS.unpack_from(self._map, off + RING_CONS_OFF)
        fill = (tail - head) & 0xFFFFFFFFFFFFFFFF
        cur, old = self._buffer(buf), self._buffer(prev)
        size = cur[1] if cur else h.small_ring
        # bytes before `from` may still sit in the previous buffer
        cap = size + (old[1] if old and (from_ - head) & (1 << 63) == 0 and from_ != head else 0)
        problem = ""
        if magic != RING_MAGIC or rsize != h.small_ring:
            problem = "bad ring magic or size"
        elif cur is None:
            problem = f"ring names no buffer (0x{buf:08x})"
        elif fill > cap:
            problem = f"indices out of range (tail - head = {fill} > {cap})"
        return Ring(tail, head, fill if not problem else 0, size, bool(wr_closed),
                    bool(rd_closed & 3),  # (FIVC_RD_GONE | FIVC_RD_RST; 4 is a SHUT_RD hint)
                    bool(cons_waiting), bool(prod_waiting),
                    not problem, problem, cur[0] if cur else "?")

    def used_slot_indexes(self) -> list[int]:
        """Slots whose pages were ever reserved (the others were never used,
        and reading them would allocate their pages)."""
        h = self.header
        backed = self._map[h.backed_off:h.backed_off + h.nslots]
        return [i for i, b in enumerate(backed) if b]

    def slots(self) -> list[Slot]:
        """Channel slots in use."""
        out = []
        h = self.header
        for i in self.used_slot_indexes():
            base = h.slots_off + i * h.slab_size
            lease, nonce, tup = SLOT_HEAD.unpack_from(self._map, base)
            if lease & 0xFFFFFFFF == 0:
                continue
            m0, m1 = lease & 0xFFFF, (lease >> 16) & 0xFFFF
            saddr, daddr, sport, dport, _ = TUPLE.unpack(tup)
            switch_bytes, _st, _q, _h0, _h1, *ids = SLOT_SWITCH.unpack_from(
                self._map, base + SLOT_SWITCH_OFF)
            ids = ids[:2 * SLOT_HOLDERS]
            holders = [tuple(r for r in map(self._member_ref, ids[k * SLOT_HOLDERS:
                                                                   (k + 1) * SLOT_HOLDERS])
                             if r is not None) for k in (0, 1)]
            state = "connected" if m0 and m1 else ("offered" if m0 else "half-closed")
            rings = [self._ring(base + SLOT_RING_OFF + d * RING_HDR_SIZE) for d in (0, 1)]
            if m0 and not m1 and (rings[0].writer_closed or rings[1].reader_closed):
                state = "half-closed"
            if LEASE_QUARANTINE in (m0, m1):
                state = "quarantined"
            out.append(Slot(i, lease >> 32, self._member_ref(m0), self._member_ref(m1), state,
                            Endpoint(_addr(saddr), sport), Endpoint(_addr(daddr), dport),
                            nonce, switch_bytes, rings[0], rings[1], holders[0], holders[1]))
        return out

    def pool_usage(self) -> dict[str, dict[str, int]]:
        """Per pool class: buffers, how many are lent to rings, how many hold pages."""
        h = self.header
        out = {}
        for c in range(POOL_CLASSES):
            used = backed = 0
            for i in range(h.npool[c]):
                owner, bk, _aged = POOL_ENT.unpack_from(self._map,
                                                        h.pool_off[c] + i * POOL_ENT.size)
                used += owner not in (0, 0xFFFFFFFFFFFFFFFF)
                backed += bool(bk)
            out[POOL_NAMES[c]] = {"buffers": h.npool[c], "size": h.pool_size[c],
                                  "in_use": used, "backed": backed}
        return out

    def offers(self) -> list[Offer]:
        """Offer registry entries that are not free."""
        out = []
        h = self.header
        for i in range(h.noffers):
            state, nonce, key, slot, slot_gen, adopter = OFFER.unpack_from(
                self._map, h.offers_off + i * OFFER_SIZE)
            st = state & 0xFF
            if st == 0:
                continue
            saddr, daddr, sport, dport, _ = TUPLE.unpack(key)
            out.append(Offer(i, state >> 32, OFFER_STATES.get(st, f"invalid({st})"),
                             self._member_ref((state >> 16) & 0xFFFF),
                             Endpoint(_addr(saddr), sport), Endpoint(_addr(daddr), dport),
                             nonce, slot if slot < h.nslots else None, slot_gen,
                             self._member_ref(adopter)))
        return out

    def listeners(self) -> list[Listener]:
        """Live listener entries (accelerated processes listening)."""
        out = []
        h = self.header
        for i in range(LISTENERS):
            state, addr, port, _, netns = LISTENER.unpack_from(
                self._map, h.listeners_off + i * LISTENER_SIZE)
            if state & 0xFF != 2:  # LIVE
                continue
            a = _addr(addr)
            out.append(Listener(i, state >> 32, self._member_ref((state >> 16) & 0xFFFF),
                                "*" if a in ("::", "0.0.0.0") else a, port, netns))
        return out

    def downgrades(self) -> dict[str, int]:
        """The header's counts of connections that went back to TCP, by
        reason (layout.h fivc_fabric_hdr.downgrades; 0 on fabrics made
        before they existed: reserved bytes)."""
        vals = DOWNGRADES.unpack_from(self._map, DOWNGRADES_OFF)
        return {name: vals[i] for i, name in DOWNGRADE_REASONS.items()}

    def snapshot(self) -> Snapshot:
        return Snapshot(self.header, self.members(), self.slots(), self.offers(),
                        self.listeners(), self.downgrades())

    def resident_bytes(self) -> int:
        """Bytes of the fabric file that hold memory (st_blocks * 512): a
        fabric is sparse, and this is what it costs the machine."""
        return os.fstat(self._fd).st_blocks * 512

    def connected_count(self, port: int | None = None) -> int:
        """Slots with both sides attached (accelerated connections), only
        those to server ``port`` when given."""
        # (lean: only the lease and the port of each used slot; slots()
        # costs ~20 us a slot, and a benchmark samples this while it runs)
        h, n = self.header, 0
        for i in self.used_slot_indexes():
            lease, _nonce, tup = SLOT_HEAD.unpack_from(self._map, h.slots_off + i * h.slab_size)
            m0, m1 = lease & 0xFFFF, (lease >> 16) & 0xFFFF
            if m0 and m1 and LEASE_QUARANTINE not in (m0, m1) and (
                    port is None or TUPLE.unpack(tup)[3] == port):
                n += 1
        return n

    # -- lifetime -------------------------------------------------------
    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Fabric:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()
