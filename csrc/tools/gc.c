/* fastivc-gc: reclaim what dead members left in a fabric (their offers and
 * slot sides) and print what was freed as one JSON object.  Joins the fabric
 * as a member for the duration, like any participant; never creates one.
 * Exit 0 on success, 2 when the fabric cannot be opened (message on stderr). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "fastivc/fabric.h"

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: fastivc-gc FABRIC\n");
		return 2;
	}
	struct stat st;
	if (stat(argv[1], &st) < 0) {
		fprintf(stderr, "cannot open fabric %s: %s\n", argv[1], strerror(errno));
		return 2;
	}
	struct fivc_fabric f;
	char err[512];
	int r = fivc_fabric_open(argv[1], NULL, &f, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "%s\n", err);
		return 2;
	}
	struct fivc_gc_report rep;
	fivc_gc(&f, &rep);
	printf("{\"members_dead\": %u, \"offers_freed\": %u, \"slot_sides_freed\": %u, "
	       "\"slots_freed\": %u}\n",
	       rep.members_dead, rep.offers_freed, rep.slot_sides_freed, rep.slots_freed);
	fivc_fabric_close(&f);
	return 0;
}
