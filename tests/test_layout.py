"""The Python inspection API reads the same layout the C structs define."""

from __future__ import annotations

import json

from conftest import run_c

from fastivc import fabric as F


def test_python_layout_matches_c_structs(cbuild):
    c = json.loads(run_c(cbuild("release") / "layout_dump").stdout)
    assert c["FIVC_LAYOUT_VERSION"] == F.LAYOUT_VERSION
    assert c["FIVC_LOCK_BASE"] == F.LOCK_BASE
    assert c["sizeof.fivc_fabric_hdr"] == F.HDR_SIZE
    assert c["sizeof.fivc_member"] == F.MEMBER_SIZE == F.MEMBER.size + 12
    assert c["sizeof.fivc_offer"] == F.OFFER_SIZE
    assert c["sizeof.fivc_slot"] == F.SLOT_SIZE
    assert c["sizeof.fivc_ring_hdr"] == F.RING_HDR_SIZE
    assert c["sizeof.fivc_tuple"] == F.TUPLE.size
    # header: the fields in struct order, packed as HDR describes
    fields = ["magic", "layout_version", "hdr_size", "total_size", "epoch", "nmembers",
              "noffers", "nslots", "ring_size", "members_off", "offers_off", "slots_off",
              "pooldata_off", None, "member_size", "offer_size", "slot_size", "flags",
              "small_ring", "slab_size", "npool", None, "pool_size", None, "slotmap_off",
              "backed_off", "pool_off", None, "listeners_off", "nlisteners", "listener_size",
              "wakers_off", "nwakers", "waker_size"]
    offs, off = [], 0
    for ch in F.HDR.format[1:]:
        offs.append(off)
        off += 8 if ch == "Q" else 4
    for name, o in zip(fields, offs[:len(fields)], strict=True):
        if name:  # (None: the second element of an array)
            assert c[f"fivc_fabric_hdr.{name}"] == o, name
    assert c["sizeof.fivc_pool_ent"] == F.POOL_ENT.size
    assert c["fivc_pool_ent.backed"] == 8 and c["fivc_pool_ent.aged"] == 12
    assert c["fivc_member.comm"] == F.MEMBER.size - 20
    assert c["fivc_member.touched"] == F.MEMBER.size - 4
    assert c["fivc_offer.key"] == 16 and c["fivc_offer.slot"] == 56
    assert c["fivc_offer.adopter"] == 64
    assert c["sizeof.fivc_listener"] == F.LISTENER_SIZE
    assert c["fivc_listener.port"] == 24 and c["fivc_listener.netns"] == 28
    assert c["FIVC_LISTENERS"] == F.LISTENERS
    assert c["sizeof.fivc_waker"] == F.WAKER_SIZE and c["FIVC_WAKERS"] == F.WAKERS
    assert (c["fivc_waker.armed"], c["fivc_waker.summary"], c["fivc_waker.bits"]) == (64, 128, 192)
    assert c["fivc_slot.tuple"] == 16
    assert c["fivc_slot.switch_bytes"] == F.SLOT_SWITCH_OFF
    assert c["fivc_slot.quarantine_s"] == F.SLOT_SWITCH_OFF + 12
    assert c["fivc_slot.holder_ids"] == F.SLOT_SWITCH_OFF + 24
    assert c["fivc_slot.busy"] == F.SLOT_SWITCH_OFF + 24 + 4 * F.SLOT_HOLDERS
    assert F.SLOT_SWITCH.size == 32 + 4 * F.SLOT_HOLDERS
    assert c["FIVC_LEASE_QUARANTINE"] == F.LEASE_QUARANTINE
    assert c["FIVC_QUARANTINE_MAX_S"] == F.QUARANTINE_MAX_S
    assert c["FIVC_MAX_MEMBERS"] == F.MAX_MEMBERS
    assert c["fivc_slot.ring"] == F.SLOT_RING_OFF
    assert c["fivc_ring_hdr.tail"] == F.RING_PROD_OFF
    assert c["fivc_ring_hdr.prod_waiting"] == F.RING_PROD_OFF + 16
    assert c["fivc_ring_hdr.desc_seq"] == F.RING_PROD_OFF + 20
    assert c["fivc_ring_hdr.from"] == F.RING_PROD_OFF + 24
    assert c["fivc_ring_hdr.buf"] == F.RING_PROD_OFF + 32
    assert c["fivc_ring_hdr.prev"] == F.RING_PROD_OFF + 36
    assert c["fivc_ring_hdr.head"] == F.RING_CONS_OFF
    assert c["fivc_ring_hdr.cons_waiting"] == F.RING_CONS_OFF + 16
