"""fastivc.Fabric on a live fabric made by the C helper `hold`, and on
corrupted files."""

from __future__ import annotations

import signal
import struct
import subprocess

import pytest

from fastivc import Fabric, FabricError
from fastivc import fabric as F


@pytest.fixture
def held(cbuild, shm_path):
    p = subprocess.Popen([str(cbuild("release") / "hold"), shm_path, "300000", "4096"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().split()
    assert line[0] == "ready", line
    yield p, shm_path, int(line[1]), int(line[2])
    if p.poll() is None:
        p.kill()
    p.wait()


def test_live_channel_counters_and_offer(held):
    p, path, slot, slot2 = held
    with Fabric(path) as fab:
        snap = fab.snapshot()
        assert snap.header.nslots == 8 and snap.header.ring_size == 65536
        slots = {s.index: s for s in snap.slots}
        s = slots[slot]
        assert s.state == "connected"
        assert s.local.address == "127.0.0.1" and s.local.port == 40000
        assert s.peer.address == "127.0.0.2" and s.peer.port == 6379
        assert s.client_to_server.produced == 300000 + 100
        assert s.client_to_server.consumed == 300000
        assert s.client_to_server.fill == 100
        assert s.server_to_client.produced == 4096 and s.server_to_client.fill == 0
        assert s.client_to_server.valid and s.server_to_client.valid
        assert slots[slot2].state == "offered"
        offers = snap.offers
        assert len(offers) == 1 and offers[0].state == "pending"
        assert offers[0].source.port == 40001 and offers[0].slot == slot2
        members = snap.members
        assert len(members) == 2 and all(m.alive for m in members)
        assert all(m.pid == p.pid for m in members)
        d = snap.to_dict()
        row = next(x for x in d["slots"] if x["index"] == slot)
        assert row["client_to_server"]["produced"] == 300100


def test_dead_members_seen_after_kill9(held):
    p, path, slot, _ = held
    p.send_signal(signal.SIGKILL)
    p.wait()
    with Fabric(path) as fab:
        members = fab.members()  # entries still say alive; the kernel says dead
        assert members and all(m.alive is False for m in members)


def test_clean_close_leaves_nothing(held):
    p, path, _, _ = held
    p.stdin.close()
    assert p.stdout.readline().strip() == "closed"
    p.wait()
    with Fabric(path) as fab:
        snap = fab.snapshot()
        assert snap.slots == [] and snap.offers == [] and snap.members == []


def _patch(path: str, off: int, fmt: str, *vals) -> None:
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, *vals))


def test_corrupt_ring_indices_reported_not_believed(held):
    p, path, slot, _ = held
    with Fabric(path) as fab:
        base = fab.header.slots_off + slot * fab.header.slab_size + F.SLOT_RING_OFF
    _patch(path, base + F.RING_PROD_OFF, "<Q", 1 << 50)
    with Fabric(path) as fab:
        s = next(s for s in fab.slots() if s.index == slot)
        assert not s.client_to_server.valid
        assert "out of range" in s.client_to_server.problem
        assert s.client_to_server.fill == 0


@pytest.mark.parametrize("off,fmt,val,msg", [
    (0, "<Q", 0x1234, "bad magic"),
    # (a version after the current one: never the one the tree has)
    (8, "<I", F.LAYOUT_VERSION + 1, f"layout version {F.LAYOUT_VERSION + 1}"),
    (40, "<I", 3, "offsets are inconsistent"),
    (44, "<I", 12345, "geometry out of range"),
    (16, "<Q", 1 << 40, "offsets are inconsistent"),
])
def test_corrupt_header_refused_with_message(held, off, fmt, val, msg):
    _, path, _, _ = held
    _patch(path, off, fmt, val)
    with pytest.raises(FabricError) as e:
        Fabric(path)
    assert msg in str(e.value) and path in str(e.value)


def test_not_a_fabric(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"hello")
    with pytest.raises(FabricError, match="too short"):
        Fabric(p)
    with pytest.raises(FabricError, match="cannot open"):
        Fabric(tmp_path / "missing")
