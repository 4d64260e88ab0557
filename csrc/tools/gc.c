/* fastivc-gc: reclaim what dead members left in a fabric (their offers and
 * slot sides) and print what was freed as one JSON object.  With
 * --lift-quarantine, the quarantines of dead guests' sides go too, inside
 * or not (the operator knows those guests are gone for good).  Joins the fabric
 * as a member for the duration, like any participant; never creates one.
 * Exit 0 on success, 2 when the fabric cannot be opened (message on stderr). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "fastivc/fabric.h"

int main(int argc, char **argv)
{
	unsigned flags = 0;
	if (argc == 3 && !strcmp(argv[1], "--lift-quarantine")) {
		flags = FIVC_GC_LIFT_QUARANTINE;
		argv++;
		argc--;
	}
	if (argc != 2) {
		fprintf(stderr, "usage: fastivc-gc [--lift-quarantine] FABRIC\n");
		return 2;
	}
	struct stat st;
	if (stat(argv[1], &st) < 0) {
		fprintf(stderr, "cannot open fabric %s: %s\n", argv[1], strerror(errno));
		return 2;
	}
	struct fivc_fabric f;
	char err[512];
	/* gc puts no connection through the fabric: whoever owns it, clean it */
	struct fivc_geometry g = {.any_owner = 1};
	int r = fivc_fabric_open(argv[1], &g, &f, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "%s\n", err);
		return 2;
	}
	struct fivc_gc_report rep;
	fivc_gc_flags(&f, &rep, flags);
	/* A guest (a process in a VM, no kernel in common) is dead when its
	 * heartbeat stops: that takes two looks, FIVC_HEARTBEAT_DEAD_MS apart. */
	int guests = 0;
	for (uint32_t m = 0; m < f.g.nmembers; m++)
		guests |= __atomic_load_n(&fivc_member_at(&f, m)->state, __ATOMIC_ACQUIRE) ==
			  FIVC_MEMBER_GUEST;
	if (guests) {
		struct fivc_gc_report more;
		struct timespec ts = {FIVC_HEARTBEAT_DEAD_MS / 1000 + 1, 0};
		nanosleep(&ts, NULL);
		fivc_gc_flags(&f, &more, flags);
		rep.members_dead = more.members_dead > rep.members_dead ? more.members_dead
									  : rep.members_dead;
		rep.offers_freed += more.offers_freed;
		rep.listeners_freed += more.listeners_freed;
		rep.wakers_freed += more.wakers_freed;
		rep.slot_sides_freed += more.slot_sides_freed;
		rep.slots_freed += more.slots_freed;
		rep.buffers_freed += more.buffers_freed;
		rep.quarantines_lifted += more.quarantines_lifted;
		rep.slots_quarantined = more.slots_quarantined; /* (what is left now) */
	}
	/* free pool buffers give their pages back now (a janitor would wait a
	 * period first: the first look marks them, the second punches) */
	fivc_pool_trim(&f);
	fivc_pool_trim(&f);
	printf("{\"members_dead\": %u, \"offers_freed\": %u, \"slot_sides_freed\": %u, "
	       "\"slots_freed\": %u, \"buffers_freed\": %u, \"listeners_freed\": %u, "
	       "\"wakers_freed\": %u, \"quarantines_lifted\": %u, \"slots_quarantined\": %u}\n",
	       rep.members_dead, rep.offers_freed, rep.slot_sides_freed, rep.slots_freed,
	       rep.buffers_freed, rep.listeners_freed, rep.wakers_freed, rep.quarantines_lifted,
	       rep.slots_quarantined);
	fivc_fabric_close(&f);
	return 0;
}
