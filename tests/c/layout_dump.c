/* Prints the shared layout as JSON so the Python inspection API can be
 * checked against the C structs (tests/test_layout.py). */
#include <stddef.h>
#include <stdio.h>

#include "fastivc/fabric.h"

#define F(type, field) printf("\"%s.%s\": %zu, ", #type, #field, offsetof(struct type, field))
#define S(type) printf("\"sizeof.%s\": %zu, ", #type, sizeof(struct type))

int main(void)
{
	printf("{");
	S(fivc_fabric_hdr); S(fivc_member); S(fivc_offer); S(fivc_slot); S(fivc_ring_hdr); S(fivc_tuple);
	S(fivc_pool_ent); S(fivc_listener); S(fivc_waker);
	F(fivc_fabric_hdr, magic); F(fivc_fabric_hdr, layout_version); F(fivc_fabric_hdr, hdr_size);
	F(fivc_fabric_hdr, total_size); F(fivc_fabric_hdr, epoch); F(fivc_fabric_hdr, nmembers);
	F(fivc_fabric_hdr, noffers); F(fivc_fabric_hdr, nslots); F(fivc_fabric_hdr, ring_size);
	F(fivc_fabric_hdr, members_off); F(fivc_fabric_hdr, offers_off); F(fivc_fabric_hdr, slots_off);
	F(fivc_fabric_hdr, pooldata_off); F(fivc_fabric_hdr, member_size); F(fivc_fabric_hdr, offer_size);
	F(fivc_fabric_hdr, slot_size); F(fivc_fabric_hdr, flags); F(fivc_fabric_hdr, small_ring);
	F(fivc_fabric_hdr, slab_size); F(fivc_fabric_hdr, npool); F(fivc_fabric_hdr, pool_size);
	F(fivc_fabric_hdr, slotmap_off); F(fivc_fabric_hdr, backed_off); F(fivc_fabric_hdr, pool_off);
	F(fivc_fabric_hdr, listeners_off); F(fivc_fabric_hdr, nlisteners);
	F(fivc_fabric_hdr, listener_size); F(fivc_fabric_hdr, wakers_off);
	F(fivc_fabric_hdr, nwakers); F(fivc_fabric_hdr, waker_size);
	F(fivc_waker, state); F(fivc_waker, armed); F(fivc_waker, summary); F(fivc_waker, bits);
	F(fivc_listener, state); F(fivc_listener, addr); F(fivc_listener, port);
	F(fivc_listener, netns);
	F(fivc_pool_ent, owner); F(fivc_pool_ent, backed); F(fivc_pool_ent, aged);
	F(fivc_member, state); F(fivc_member, pid); F(fivc_member, joined_ns);
	F(fivc_member, heartbeat_ns); F(fivc_member, pidns_ino); F(fivc_member, comm);
	F(fivc_member, touched);
	F(fivc_tuple, saddr); F(fivc_tuple, daddr); F(fivc_tuple, sport); F(fivc_tuple, dport);
	F(fivc_offer, state); F(fivc_offer, nonce); F(fivc_offer, key); F(fivc_offer, slot);
	F(fivc_offer, slot_gen); F(fivc_offer, adopter);
	F(fivc_slot, lease); F(fivc_slot, nonce); F(fivc_slot, tuple); F(fivc_slot, switch_bytes);
	F(fivc_slot, switch_state); F(fivc_slot, quarantine_s); F(fivc_slot, holders);
	F(fivc_slot, holder_ids); F(fivc_slot, busy); F(fivc_slot, ring);
	F(fivc_ring_hdr, magic); F(fivc_ring_hdr, size); F(fivc_ring_hdr, tail);
	F(fivc_ring_hdr, wr_closed); F(fivc_ring_hdr, cons_wake); F(fivc_ring_hdr, prod_waiting);
	F(fivc_ring_hdr, desc_seq); F(fivc_ring_hdr, from); F(fivc_ring_hdr, buf); F(fivc_ring_hdr, prev);
	F(fivc_ring_hdr, head); F(fivc_ring_hdr, rd_closed); F(fivc_ring_hdr, prod_wake);
	F(fivc_ring_hdr, cons_waiting);
	printf("\"FIVC_LISTENERS\": %u, \"FIVC_WAKERS\": %u, ", FIVC_LISTENERS, FIVC_WAKERS);
	printf("\"FIVC_LEASE_QUARANTINE\": %u, \"FIVC_QUARANTINE_MAX_S\": %u, "
	       "\"FIVC_MAX_MEMBERS\": %u, ", FIVC_LEASE_QUARANTINE, FIVC_QUARANTINE_MAX_S,
	       FIVC_MAX_MEMBERS);
	printf("\"FIVC_LAYOUT_VERSION\": %u, \"FIVC_LOCK_BASE\": %llu}\n", FIVC_LAYOUT_VERSION,
	       (unsigned long long)FIVC_LOCK_BASE);
	return 0;
}
