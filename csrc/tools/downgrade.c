/* fastivc-downgrade: ask members of a fabric to take their connections back
 * to TCP and accelerate no new one (`fastivc downgrade`, issue 12).
 *
 *   fastivc-downgrade FABRIC all [WAIT_MS]      every live member, and the
 *                                               fabric drains: no member
 *                                               accelerates a new connection
 *                                               until "resume"
 *   fastivc-downgrade FABRIC pid PID [WAIT_MS]  the members whose pid (in
 *                                               their own pid namespace) is PID
 *   fastivc-downgrade FABRIC resume             new connections accelerate again
 *
 * "keep" last: the connections they have now go back, but new ones are
 * accelerated (no drain either).  With WAIT_MS it then waits, up to WAIT_MS, until the asked members hold
 * no connection side any more (they answer from their own thread), looking
 * every 20 us.  Prints one JSON object: {"asked": [member indexes],
 * "sides_before": N, "sides_left": N, "us": from the ask to the last side
 * let go (or to the end of the wait)}.  Joins the fabric as a member for
 * the duration, like gc; never creates one.  Exit 0, or 2 when the fabric
 * cannot be opened, 1 for bad arguments (message on stderr). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "fastivc/atomics.h"
#include "fastivc/fabric.h"

static uint32_t asked[FIVC_MAX_MEMBERS]; /* member indexes */
static uint32_t nasked;

/* The slot sides the asked members hold: found once (a whole scan), then
 * only those are looked at again, in the generation they had (with
 * `keep` an asked member accelerates new connections, which may take the
 * same slot again). */
static uint32_t *sides; /* slot * 2 + side */
static uint32_t *gens;  /* the slot's lease generation then */
static uint32_t nsides;

static uint32_t gen_of(struct fivc_fabric *f, uint32_t slot)
{
	return FIVC_LEASE_GEN(fivc_load_acquire(&fivc_slot_at(f, slot)->lease));
}

static int held_by_asked(struct fivc_fabric *f, uint32_t slot, int side)
{
	for (uint32_t k = 0; k < nasked; k++)
		if (fivc_slot_held_by(f, slot, side, asked[k] + 1))
			return 1;
	return 0;
}

static uint32_t find_held(struct fivc_fabric *f)
{
	sides = calloc((size_t)f->g.nslots * 2, sizeof(*sides));
	gens = calloc((size_t)f->g.nslots * 2, sizeof(*gens));
	if (!sides || !gens)
		return 0;
	for (uint32_t s = 0; s < f->g.nslots; s++)
		for (int side = 0; side < 2; side++)
			if (held_by_asked(f, s, side)) {
				gens[nsides] = gen_of(f, s);
				sides[nsides++] = s * 2 + (uint32_t)side;
			}
	return nsides;
}

static uint32_t held(struct fivc_fabric *f)
{
	uint32_t n = 0;
	for (uint32_t k = 0; k < nsides; k++)
		n += (uint32_t)(gen_of(f, sides[k] / 2) == gens[k] &&
				held_by_asked(f, sides[k] / 2, (int)(sides[k] % 2)));
	return n;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv)
{
	int keep = argc > 2 && !strcmp(argv[argc - 1], "keep");
	if (keep)
		argc--;
	int all = (argc == 3 || argc == 4) && !strcmp(argv[2], "all");
	int resume = argc == 3 && !strcmp(argv[2], "resume");
	int bypid = (argc == 4 || argc == 5) && !strcmp(argv[2], "pid");
	char *end = NULL, *wend = NULL;
	long pid = bypid ? strtol(argv[3], &end, 10) : 0;
	const char *w = all && argc == 4 ? argv[3] : bypid && argc == 5 ? argv[4] : NULL;
	long wait_ms = w ? strtol(w, &wend, 10) : -1;
	if (!(all || resume || bypid) || (bypid && (!*argv[3] || *end || pid <= 0)) ||
	    (w && (!*w || *wend || wait_ms < 0))) {
		fprintf(stderr, "usage: fastivc-downgrade FABRIC all|resume|pid PID [WAIT_MS] [keep]\n");
		return 1;
	}
	struct stat st;
	if (stat(argv[1], &st) < 0) {
		fprintf(stderr, "cannot open fabric %s: %s\n", argv[1], strerror(errno));
		return 2;
	}
	struct fivc_fabric f;
	char err[512];
	struct fivc_geometry g = {.any_owner = 0};
	if (fivc_fabric_open(argv[1], &g, &f, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		return 2;
	}
	if (resume) {
		fivc_drain_set(&f, 0);
		printf("{\"asked\": []}\n");
		fivc_fabric_close(&f);
		return 0;
	}
	if (all && !keep) /* first: a member that joins meanwhile sees it */
		fivc_drain_set(&f, 1);
	for (uint32_t i = 0; i < f.g.nmembers; i++) {
		struct fivc_member *m = fivc_member_at(&f, i);
		uint32_t s = __atomic_load_n(&m->state, __ATOMIC_ACQUIRE);
		if ((s == FIVC_MEMBER_ALIVE || s == FIVC_MEMBER_GUEST) && i + 1 != f.self &&
		    (!bypid || m->pid == (uint32_t)pid) && nasked < FIVC_MAX_MEMBERS)
			asked[nasked++] = i;
	}
	uint32_t before = w ? find_held(&f) : 0;
	uint64_t t0 = now_ns();
	printf("{\"asked\": [");
	int first = 1;
	for (uint32_t k = 0; k < nasked; k++) /* all marked, then all woken (fabric.h) */
		if (fivc_down_mark(&f, asked[k] + 1, keep)) {
			printf("%s%u", first ? "" : ", ", asked[k]);
			first = 0;
		}
	for (uint32_t k = 0; k < nasked; k++)
		fivc_down_wake(&f, asked[k] + 1);
	printf("]");
	if (w) {
		uint32_t left;
		uint64_t t = t0;
		while ((left = held(&f)) && (t = now_ns()) - t0 < (uint64_t)wait_ms * 1000000u) {
			struct timespec ts = {0, 20000};
			nanosleep(&ts, NULL);
		}
		if (!left)
			t = now_ns();
		printf(", \"sides_before\": %u, \"sides_left\": %u, \"us\": %.1f", before, left,
		       (double)(t - t0) / 1e3);
	}
	printf("}\n");
	free(sides);
	free(gens);
	fivc_fabric_close(&f);
	return 0;
}
