/* fastivc — the fabric: creation, validation, members, slots, offers, gc.
 *
 * Trust: every byte of the region can be written by any participant.  The
 * geometry is validated once and copied into struct fivc_fabric; indices read
 * from shared words (member ids, slot indices) are range-checked before use.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fastivc/atomics.h"
#include "fastivc/fabric.h"
#include "fastivc/util.h"

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static int is_pow2(uint32_t v) { return v && !(v & (v - 1)); }

static uint8_t *slot_backed(struct fivc_fabric *f, uint32_t i);
static void slot_free_buffers(struct fivc_fabric *f, uint32_t i, uint32_t gen);
static void slotmap_clear(struct fivc_fabric *f, uint32_t i);

/* Default pool sizes: one mid buffer per 16 slots and one big buffer per
 * 64 (enough for every connection of a busy host to stream at once is not
 * the goal: connections that find the pool empty stay on their inline ring,
 * correct and slower), and a floor for small fabrics (tests, guests). */
static uint32_t pool_default(uint32_t nslots, int c)
{
	uint32_t per = c ? 64 : 16, floor = c ? 16 : 64;
	uint64_t n = nslots / per, lo = (uint64_t)nslots * 2 < floor ? (uint64_t)nslots * 2 : floor;
	return (uint32_t)(n > lo ? n : lo);
}

static uint64_t page_up(uint64_t v) { return (v + FIVC_PAGE - 1) & ~(uint64_t)(FIVC_PAGE - 1); }

int fivc_layout_compute(struct fivc_geometry *g, struct fivc_fabric *f, uint64_t *total)
{
	if (!g->nslots) g->nslots = FIVC_DEFAULT_SLOTS;
	if (!g->nmembers) g->nmembers = FIVC_DEFAULT_MEMBERS;
	if (!g->noffers) g->noffers = FIVC_DEFAULT_OFFERS;
	if (!g->ring_size) g->ring_size = FIVC_DEFAULT_RING;
	if (!g->small_ring)
		g->small_ring = g->ring_size < FIVC_DEFAULT_SMALL_RING ? g->ring_size
								       : FIVC_DEFAULT_SMALL_RING;
	if (g->nslots > FIVC_MAX_SLOTS || g->nmembers > FIVC_MAX_MEMBERS ||
	    g->noffers > FIVC_MAX_OFFERS || !is_pow2(g->ring_size) ||
	    (g->noffers > FIVC_OFFER_BUCKET && g->noffers % FIVC_OFFER_BUCKET) ||
	    g->ring_size < FIVC_MIN_RING || g->ring_size > FIVC_MAX_RING ||
	    !is_pow2(g->small_ring) || g->small_ring < FIVC_MIN_RING ||
	    g->small_ring > g->ring_size || g->small_ring > FIVC_PAGE * 16)
		return -EINVAL;
	uint32_t psize[FIVC_POOL_CLASSES] = {
		FIVC_MID_RING < g->ring_size ? FIVC_MID_RING : g->ring_size, g->ring_size};
	uint32_t below = g->small_ring;
	for (int c = 0; c < FIVC_POOL_CLASSES; c++) {
		/* a class no larger than the one below it (or than the next, for
		 * mid) would never be chosen: it has no buffers */
		int useless = psize[c] <= below || (c == 0 && psize[0] >= psize[1]);
		if (useless)
			g->npool[c] = 0;
		else if (!g->npool[c] && !g->exact)
			g->npool[c] = pool_default(g->nslots, c);
		if (g->npool[c] > FIVC_MAX_POOL)
			return -EINVAL;
		if (g->npool[c])
			below = psize[c];
	}
	uint64_t off = FIVC_PAGE;
	f->members_off = off;
	off += (uint64_t)g->nmembers * sizeof(struct fivc_member);
	f->offers_off = off;
	off += (uint64_t)g->noffers * sizeof(struct fivc_offer);
	f->listeners_off = off;
	off += (uint64_t)FIVC_LISTENERS * sizeof(struct fivc_listener);
	f->wakers_off = off;
	off += (uint64_t)FIVC_WAKERS * sizeof(struct fivc_waker);
	f->slotmap_off = off;
	off += ((uint64_t)g->nslots + 63) / 64 * 8;
	f->backed_off = off;
	off += ((uint64_t)g->nslots + 7) & ~(uint64_t)7;
	for (int c = 0; c < FIVC_POOL_CLASSES; c++) {
		f->pool_off[c] = off;
		off += (uint64_t)g->npool[c] * sizeof(struct fivc_pool_ent);
	}
	off = page_up(off);
	f->slots_off = off;
	f->slab_size = FIVC_PAGE + 2 * g->small_ring;
	off += (uint64_t)g->nslots * f->slab_size;
	for (int c = 0; c < FIVC_POOL_CLASSES; c++) {
		off = page_up(off);
		f->pooldata_off[c] = off;
		f->pool_size[c] = psize[c];
		off += (uint64_t)g->npool[c] * psize[c];
	}
	*total = off;
	return 0;
}

int fivc_fabric_format(void *base, uint64_t len, const struct fivc_geometry *gin)
{
	struct fivc_geometry g = *gin;
	struct fivc_fabric L;
	uint64_t total;
	int r = fivc_layout_compute(&g, &L, &total);
	if (r < 0)
		return r;
	if (len < total)
		return -ENOSPC;
	struct fivc_fabric_hdr *h = base;
	memset(h, 0, sizeof(*h));
	h->layout_version = FIVC_LAYOUT_VERSION;
	h->hdr_size = sizeof(*h);
	h->total_size = total;
	h->epoch = fivc_now_ns(CLOCK_REALTIME);
	h->nmembers = g.nmembers;
	h->noffers = g.noffers;
	h->nslots = g.nslots;
	h->ring_size = g.ring_size;
	h->small_ring = g.small_ring;
	h->slab_size = L.slab_size;
	h->members_off = L.members_off;
	h->offers_off = L.offers_off;
	h->listeners_off = L.listeners_off;
	h->nlisteners = FIVC_LISTENERS;
	h->listener_size = sizeof(struct fivc_listener);
	h->wakers_off = L.wakers_off;
	h->nwakers = FIVC_WAKERS;
	h->waker_size = sizeof(struct fivc_waker);
	h->slotmap_off = L.slotmap_off;
	h->backed_off = L.backed_off;
	h->slots_off = L.slots_off;
	for (int c = 0; c < FIVC_POOL_CLASSES; c++) {
		h->npool[c] = g.npool[c];
		h->pool_size[c] = L.pool_size[c];
		h->pool_off[c] = L.pool_off[c];
		h->pooldata_off[c] = L.pooldata_off[c];
	}
	h->member_size = sizeof(struct fivc_member);
	h->offer_size = sizeof(struct fivc_offer);
	h->slot_size = sizeof(struct fivc_slot);
	/* The region is zero-filled (fresh file / caller's memset): zero is
	 * FREE for members, offers, slots and pool buffers.  Magic last, so a
	 * reader of a region formatted in place (no link(2) step) never sees a
	 * half header.
	 * SYNC POINT WRITE: pairs with the acquire load in validate_hdr(). */
	fivc_store_release(&h->magic, FIVC_FABRIC_MAGIC);
	return 0;
}

/* Validate a private copy of the header against the region length; fill f
 * (its layout fields are written even when the header is refused). */
static int validate_hdr(const struct fivc_fabric_hdr *h, uint64_t len,
			struct fivc_fabric *f, const char *name, char *err,
			size_t errlen)
{
	uint64_t magic = fivc_load_acquire(&h->magic);
	if (magic != FIVC_FABRIC_MAGIC) {
		seterr(err, errlen, "%s is not a fastivc fabric (bad magic 0x%016llx)",
		       name, (unsigned long long)magic);
		return -EPROTO;
	}
	if (h->layout_version != FIVC_LAYOUT_VERSION) {
		seterr(err, errlen,
		       "fabric %s has layout version %u but this library speaks version %u; "
		       "refusing to reinterpret it (remove it when no program uses it, or "
		       "set FASTIVC_FABRIC to another path)",
		       name, h->layout_version, FIVC_LAYOUT_VERSION);
		return -EPROTONOSUPPORT;
	}
	if (h->hdr_size != sizeof(struct fivc_fabric_hdr) ||
	    h->member_size != sizeof(struct fivc_member) ||
	    h->offer_size != sizeof(struct fivc_offer) ||
	    h->slot_size != sizeof(struct fivc_slot) ||
	    h->listener_size != sizeof(struct fivc_listener) || h->nlisteners != FIVC_LISTENERS ||
	    h->waker_size != sizeof(struct fivc_waker) || h->nwakers != FIVC_WAKERS) {
		seterr(err, errlen, "fabric %s: structure sizes in the header do not match this library",
		       name);
		return -EPROTO;
	}
	struct fivc_geometry g = {.nmembers = h->nmembers, .noffers = h->noffers,
				  .nslots = h->nslots, .ring_size = h->ring_size,
				  .small_ring = h->small_ring, .exact = 1};
	for (int c = 0; c < FIVC_POOL_CLASSES; c++)
		g.npool[c] = h->npool[c];
	if (!g.nmembers || !g.noffers || !g.nslots || !g.ring_size || !g.small_ring) {
		seterr(err, errlen, "fabric %s: header has a zero count", name);
		return -EPROTO;
	}
	uint64_t total;
	uint32_t np[FIVC_POOL_CLASSES] = {g.npool[0], g.npool[1]};
	if (fivc_layout_compute(&g, f, &total) < 0 || np[0] != g.npool[0] || np[1] != g.npool[1]) {
		seterr(err, errlen, "fabric %s: header geometry out of range", name);
		return -EPROTO;
	}
	int same = f->members_off == h->members_off && f->offers_off == h->offers_off &&
		   f->listeners_off == h->listeners_off && f->wakers_off == h->wakers_off &&
		   f->slots_off == h->slots_off && f->slotmap_off == h->slotmap_off &&
		   f->backed_off == h->backed_off && f->slab_size == h->slab_size &&
		   total == h->total_size;
	for (int c = 0; c < FIVC_POOL_CLASSES; c++)
		same = same && f->pool_off[c] == h->pool_off[c] &&
		       f->pooldata_off[c] == h->pooldata_off[c] && f->pool_size[c] == h->pool_size[c];
	if (!same) {
		seterr(err, errlen, "fabric %s: header offsets are inconsistent", name);
		return -EPROTO;
	}
	if (total > len) {
		seterr(err, errlen, "fabric %s: header says %llu bytes but the region has %llu",
		       name, (unsigned long long)total, (unsigned long long)len);
		return -EPROTO;
	}
	g.exact = 0;
	f->g = g;
	f->size = total;
	f->epoch = h->epoch;
	return 0;
}

int fivc_fabric_attach_mem(void *base, uint64_t len, struct fivc_fabric *f,
			   char *err, size_t errlen)
{
	struct fivc_fabric_hdr h;
	memset(f, 0, sizeof(*f));
	f->fd = -1;
	if (len < sizeof(h)) {
		seterr(err, errlen, "memory region of %llu bytes is too small for a fabric",
		       (unsigned long long)len);
		return -EPROTO;
	}
	memcpy(&h, base, sizeof(h)); /* private copy: validated once */
	int r = validate_hdr(&h, len, f, "(memory)", err, errlen);
	if (r < 0)
		return r;
	f->base = base;
	snprintf(f->path, sizeof(f->path), "(memory)");
	return 0;
}

/* ---- members and their locks ---- */

static int lock_member(int fd, uint32_t m, short type, int cmd, struct flock *out)
{
	struct flock fl = {0};
	fl.l_type = type;
	fl.l_whence = SEEK_SET;
	fl.l_start = (off_t)(FIVC_LOCK_BASE + m);
	fl.l_len = 1;
	if (fcntl(fd, cmd, &fl) < 0)
		return -errno;
	if (out)
		*out = fl;
	return 0;
}

/* A GUEST member is alive while its heartbeat moves, as seen on our clock. */
static int heartbeat_alive(struct fivc_fabric *f, uint32_t m)
{
	uint64_t v = fivc_load_acquire(&fivc_member_at(f, m)->heartbeat_ns);
	uint64_t now = fivc_now_ns(CLOCK_MONOTONIC);
	if (!f->hb_seen)
		return 1; /* no memory to remember: never reclaim on doubt */
	uint64_t *val = &f->hb_seen[2 * m], *when = &f->hb_seen[2 * m + 1];
	if (!fivc_load_relaxed(when) || fivc_load_relaxed(val) != v) {
		fivc_store_relaxed(val, v);
		fivc_store_relaxed(when, now);
		return 1;
	}
	return now - fivc_load_relaxed(when) < FIVC_HEARTBEAT_DEAD_MS * 1000000ull;
}

int fivc_member_alive(struct fivc_fabric *f, uint32_t member1)
{
	if (member1 == 0 || member1 > f->g.nmembers)
		return 0; /* none, or a corrupt id: nobody can hold it */
	if (member1 == f->self)
		return 1;
	uint32_t st = fivc_load_acquire(&fivc_member_at(f, member1 - 1)->state);
	if (st == FIVC_MEMBER_GUEST)
		return heartbeat_alive(f, member1 - 1);
	if (f->fd < 0) /* no kernel witness: a guest asking about a host process, or a
			  memory fabric; only a freed id is known dead (guests) */
		return !(f->guest && st == FIVC_MEMBER_FREE);
	struct flock fl = {0};
	if (lock_member(f->fd, member1 - 1, F_WRLCK, F_OFD_GETLK, &fl) < 0)
		return 1; /* cannot tell: never reclaim on doubt */
	return fl.l_type != F_UNLCK;
}

static int can_witness(const struct fivc_fabric *f) { return f->fd >= 0 || f->guest; }

typedef int (*dead_fn)(struct fivc_fabric *f, uint32_t member1, void *arg);

static int dead_by_lock(struct fivc_fabric *f, uint32_t m1, void *arg)
{
	(void)arg;
	return m1 != 0 && !fivc_member_alive(f, m1);
}

/* The same question for a waiter that asks again every few hundred ms
 * (channel.c, poll, epoll): a member seen alive less than *arg ns ago is
 * not asked about again, so that one sweep over many connections to one
 * peer costs one lock test, not one per connection.  Only "alive" is
 * remembered: a death is seen at the next look after the age. */
static int dead_recent(struct fivc_fabric *f, uint32_t m1, void *arg)
{
	if (m1 == 0)
		return 0;
	if (!f->alive_ns || m1 > f->g.nmembers)
		return !fivc_member_alive(f, m1);
	uint64_t now = fivc_now_ns(CLOCK_MONOTONIC), *at = &f->alive_ns[m1 - 1];
	uint64_t seen = fivc_load_relaxed(at);
	if (seen && now - seen < *(uint64_t *)arg)
		return 0;
	if (!fivc_member_alive(f, m1))
		return 1;
	fivc_store_relaxed(at, now);
	return 0;
}

static int dead_exact(struct fivc_fabric *f, uint32_t m1, void *arg)
{
	(void)f;
	return m1 != 0 && m1 == *(uint32_t *)arg;
}

/* 1 when a live holder (with or without an entry) of the side is left;
 * with clear, the dead entries are removed from the table. */
static int side_live(struct fivc_fabric *f, struct fivc_slot *s, int side, uint32_t lease_m,
		     dead_fn is_dead, void *arg, int clear)
{
	/* holders[] is a count anyone in the fabric can write: one larger than
	 * the member table (no more processes can hold a side without an
	 * entry than can join, give or take a few without an id) is garbage
	 * and counts for nothing, so it cannot keep a dead side alive. */
	uint32_t count = fivc_load_acquire(&s->holders[side]);
	int live = count != 0 && count <= f->g.nmembers, seen = 0;
	for (int k = 0; k < FIVC_SLOT_HOLDERS; k++) {
		uint16_t id = fivc_load_acquire(&s->holder_ids[side][k]);
		if (!id)
			continue;
		seen = 1;
		if (is_dead(f, id, arg)) {
			/* only by a reclaimer that then frees the side: an
			 * emptied table would hand the verdict to the lease */
			if (clear)
				fivc_cas(&s->holder_ids[side][k], &id, (uint16_t)0);
		} else
			live = 1;
	}
	/* An empty table under a held side: the claimer or attacher between
	 * its lease CAS and its entry, or the last holder about to release.
	 * The lease's member decides. */
	if (!seen && !live)
		live = !is_dead(f, lease_m, arg);
	return live;
}

/* CLOCK_REALTIME seconds: a quarantine's age must mean the same to a host
 * process and a guest (their monotonic clocks do not). */
static uint32_t wall_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint32_t)ts.tv_sec;
}

/* Whether a thread of the member on `side` of slot gen may be inside the
 * slot (see FIVC_LEASE_QUARANTINE).  A count under another generation's
 * tag is a left-over of an earlier connection: nobody of this one. */
static int side_busy(struct fivc_slot *s, int side, uint32_t gen)
{
	uint32_t b = __atomic_load_n(&s->busy[side], __ATOMIC_SEQ_CST);
	return FIVC_BUSY_WORD_TAG(b) == FIVC_BUSY_TAG(gen) && FIVC_BUSY_WORD_N(b) != 0;
}

static int quarantine_expired(struct fivc_slot *s)
{
	uint32_t at = fivc_load_relaxed(&s->quarantine_s), now = wall_s();
	return now - at >= FIVC_QUARANTINE_MAX_S && now - at < 0x80000000u;
}

/* Lift the quarantine of `side` of slot i, generation gen: when no thread
 * of its member is inside, or `force`.  1 when lifted; the slot's memory
 * goes back if that left it free (counted in r when given). */
static int quarantine_lift(struct fivc_fabric *f, uint32_t i, uint32_t gen, int side, int force,
			   struct fivc_gc_report *r)
{
	struct fivc_slot *s = fivc_slot_at(f, i);
	fivc_smp_mb(); /* SYNC POINT: the mark's CAS before the look at busy (reclaim_slot) */
	if (!force && side_busy(s, side, gen))
		return 0;
	uint64_t w = fivc_load_acquire(&s->lease), nw;
	do {
		if (FIVC_LEASE_GEN(w) != gen || FIVC_LEASE_SIDE(w, side) != FIVC_LEASE_QUARANTINE)
			return 0;
		nw = side ? FIVC_LEASE_WORD(gen, 0, FIVC_LEASE_SIDE(w, 0))
			  : FIVC_LEASE_WORD(gen, FIVC_LEASE_SIDE(w, 1), 0);
	} while (!fivc_cas(&s->lease, &w, nw));
	if ((uint32_t)nw == 0) {
		if (r)
			r->slots_freed++;
		slot_free_buffers(f, i, gen);
		slotmap_clear(f, i);
	}
	return 1;
}

int fivc_slot_quarantine_lift(struct fivc_fabric *f, uint32_t slot, uint32_t gen, int side)
{
	if (slot >= f->g.nslots || (side != 0 && side != 1))
		return 0;
	return quarantine_lift(f, slot, gen, side, 0, NULL);
}

/* Take the sides of slot i whose holders are all dead per is_dead: each
 * goes to quarantine, which is lifted at once unless a thread of its
 * member is inside the slot.  Quarantines found in place are lifted when
 * they can be (nobody inside, FIVC_QUARANTINE_MAX_S passed, or `lift`). */
static void reclaim_slot(struct fivc_fabric *f, uint32_t i, dead_fn is_dead, void *arg,
			 struct fivc_gc_report *r, int lift)
{
	struct fivc_slot *s = fivc_slot_at(f, i);
	uint64_t w = fivc_load_acquire(&s->lease);
	if ((uint32_t)w == 0)
		return;
	uint32_t gen = FIVC_LEASE_GEN(w);
	for (int d = 0; d < 2; d++) {
		if (FIVC_LEASE_SIDE(w, d) != FIVC_LEASE_QUARANTINE)
			continue;
		if (quarantine_lift(f, i, gen, d, lift || quarantine_expired(s), r))
			r->quarantines_lifted++;
		else
			r->slots_quarantined++;
	}
	w = fivc_load_acquire(&s->lease);
	if ((uint32_t)w == 0 || FIVC_LEASE_GEN(w) != gen)
		return;
	uint32_t m0 = FIVC_LEASE_SIDE(w, 0), m1 = FIVC_LEASE_SIDE(w, 1);
	int d0 = m0 && m0 != FIVC_LEASE_QUARANTINE && !side_live(f, s, 0, m0, is_dead, arg, 1);
	int d1 = m1 && m1 != FIVC_LEASE_QUARANTINE && !side_live(f, s, 1, m1, is_dead, arg, 1);
	if (d0 || d1) /* (before the CAS: a lifter reads it once it sees the mark) */
		fivc_store_relaxed(&s->quarantine_s, wall_s());
	while (d0 || d1) {
		uint64_t nw = FIVC_LEASE_WORD(gen, d1 ? FIVC_LEASE_QUARANTINE : FIVC_LEASE_SIDE(w, 1),
					      d0 ? FIVC_LEASE_QUARANTINE : FIVC_LEASE_SIDE(w, 0));
		/* SYNC POINT: this CAS, a full fence and the load of busy
		 * (quarantine_lift) pair with chan_enter's increment, fence
		 * and lease load (store buffering: one of the two sees the
		 * other's store). */
		if (fivc_cas(&s->lease, &w, nw)) {
			/* A dead side can no longer signal its peer: mark its
			 * rings closed so the survivor sees EOF / EPIPE. */
			for (int d = 0; d < 2; d++) {
				if (!(d ? d1 : d0))
					continue;
				fivc_store_release(&s->ring[d].wr_closed, 1);
				fivc_store_release(&s->ring[1 - d].rd_closed, 1);
			}
			r->slot_sides_freed += (uint32_t)(d0 + d1);
			for (int d = 0; d < 2; d++)
				if ((d ? d1 : d0) && !quarantine_lift(f, i, gen, d, 0, r))
					r->slots_quarantined++;
			return;
		}
		/* the lease moved: only sides still held and of the same lease */
		if (FIVC_LEASE_GEN(w) != gen)
			return;
		d0 = d0 && FIVC_LEASE_SIDE(w, 0) && FIVC_LEASE_SIDE(w, 0) != FIVC_LEASE_QUARANTINE;
		d1 = d1 && FIVC_LEASE_SIDE(w, 1) && FIVC_LEASE_SIDE(w, 1) != FIVC_LEASE_QUARANTINE;
		if ((uint32_t)w == 0)
			return;
	}
}

/* Offers, listeners and wake records: a word at offset 0 that packs
 * gen | owner member+1 | state, FREE = 0.  owned_free: the entry goes back
 * to FREE if its word is still `word`.  reclaim_owned: the entries of such
 * a table whose owner is dead per is_dead go; returns how many. */
_Static_assert(offsetof(struct fivc_offer, state) == 0 && FIVC_OFFER_FREE == 0, "owned word");
_Static_assert(offsetof(struct fivc_listener, state) == 0 && FIVC_LISTENER_FREE == 0, "owned word");
_Static_assert(offsetof(struct fivc_waker, state) == 0 && FIVC_WAKER_FREE == 0, "owned word");

static int owned_free(uint64_t *state, uint64_t word)
{
	uint64_t w = word;
	return fivc_cas(state, &w, FIVC_OFFER_WORD(FIVC_OFFER_GEN(word), 0, 0));
}

static uint32_t reclaim_owned(struct fivc_fabric *f, uint8_t *table, size_t stride, uint32_t n,
			      dead_fn is_dead, void *arg)
{
	uint32_t freed = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t *st = (uint64_t *)(table + (size_t)i * stride);
		uint64_t w = fivc_load_acquire(st);
		if (FIVC_OFFER_STATE(w) != 0 && is_dead(f, FIVC_OFFER_OWNER(w), arg) &&
		    owned_free(st, w))
			freed++;
	}
	return freed;
}

/* Free offers and slot sides whose member is dead per is_dead; tables:
 * the FIVC_TOUCHED_* bits of the tables to sweep besides the slots. */
static void reclaim(struct fivc_fabric *f, dead_fn is_dead, void *arg,
		    struct fivc_gc_report *r, uint32_t tables, int lift)
{
	if (tables & FIVC_TOUCHED_OFFERS)
		r->offers_freed += reclaim_owned(f, f->base + f->offers_off,
						 sizeof(struct fivc_offer), f->g.noffers, is_dead, arg);
	if (tables & FIVC_TOUCHED_LISTENERS)
		r->listeners_freed += reclaim_owned(f, f->base + f->listeners_off,
						    sizeof(struct fivc_listener), FIVC_LISTENERS,
						    is_dead, arg);
	if (tables & FIVC_TOUCHED_WAKERS)
		r->wakers_freed += reclaim_owned(f, f->base + f->wakers_off,
						 sizeof(struct fivc_waker), FIVC_WAKERS, is_dead, arg);
	/* only slots ever used: the others' pages were never reserved (the
	 * index is read 8 bytes at a time: most of it is zero) */
	for (uint32_t i = 0; i < f->g.nslots; i++) {
		if (!(i & 7) && i + 8 <= f->g.nslots) {
			uint64_t w;
			memcpy(&w, slot_backed(f, i), sizeof(w));
			if (!w) {
				i += 7;
				continue;
			}
		}
		if (fivc_load_acquire(slot_backed(f, i)))
			reclaim_slot(f, i, is_dead, arg, r, lift);
	}
}

/* We took id m1, whose last owner is gone: free what it left, in the
 * tables it ever used, before anything can carry our (equal) id. */
static void join_sweep(struct fivc_fabric *f, struct fivc_member *me, uint32_t m1)
{
	struct fivc_gc_report rep = {0};
	uint32_t t = fivc_load_acquire(&me->touched);
	reclaim(f, dead_exact, &m1, &rep, t, 0);
	fivc_store_release(&me->touched, 0);
}

/* This process is about to own an entry of table bit (FIVC_TOUCHED_*):
 * record it first (an id's next owner sweeps only the tables named). */
static void touch(struct fivc_fabric *f, uint32_t bit)
{
	uint32_t *t = &fivc_member_at(f, f->self - 1)->touched;
	if (!(fivc_load_relaxed(t) & bit))
		__atomic_fetch_or(t, bit, __ATOMIC_ACQ_REL);
}

/* Take a free member id through fd's open file description; 0 if none. */
static uint32_t member_join_fd(struct fivc_fabric *f, int fd)
{
	uint32_t n = f->g.nmembers, start = (uint32_t)getpid() % n;
	for (uint32_t k = 0; k < n; k++) {
		uint32_t m = (start + k) % n;
		if (lock_member(fd, m, F_WRLCK, F_OFD_SETLK, NULL) < 0)
			continue;
		/* We hold member m's lock: whoever had m on this kernel is dead.
		 * A guest (no lock) may hold it, or take it now: claim by CAS. */
		struct fivc_member *me = fivc_member_at(f, m);
		uint32_t was = fivc_load_acquire(&me->state);
		if (was == FIVC_MEMBER_GUEST || !fivc_cas(&me->state, &was, FIVC_MEMBER_ALIVE)) {
			lock_member(fd, m, F_UNLCK, F_OFD_SETLK, NULL);
			continue;
		}
		/* Sweep the dead owner's leftovers before anything can carry our
		 * (equal) id. */
		uint32_t m1 = m + 1;
		join_sweep(f, me, m1);
		me->pid = (uint32_t)getpid();
		me->joined_ns = fivc_now_ns(CLOCK_REALTIME);
		me->heartbeat_ns = me->joined_ns;
		struct stat st;
		me->pidns_ino = stat("/proc/self/ns/pid", &st) == 0 ? st.st_ino : 0;
		memset(me->comm, 0, sizeof(me->comm));
		if (f->self) { /* a fork child to be: it runs the same program */
			memcpy(me->comm, fivc_member_at(f, f->self - 1)->comm, sizeof(me->comm));
			me->comm[sizeof(me->comm) - 1] = 0;
		} else {
			FILE *c = fopen("/proc/self/comm", "re");
			if (c) {
				if (fgets(me->comm, sizeof(me->comm), c))
					me->comm[strcspn(me->comm, "\n")] = 0;
				fclose(c);
			}
		}
		return m1;
	}
	return 0;
}

/* A guest takes a free id by CAS (no lock: its heartbeat says it lives). */
static uint32_t member_join_guest(struct fivc_fabric *f)
{
	uint32_t n = f->g.nmembers, start = (uint32_t)(fivc_now_ns(CLOCK_MONOTONIC) >> 8) % n;
	for (uint32_t k = 0; k < n; k++) {
		uint32_t m = (start + k) % n;
		struct fivc_member *me = fivc_member_at(f, m);
		uint32_t st = FIVC_MEMBER_FREE;
		if (fivc_load_relaxed(&me->state) != st ||
		    !fivc_cas(&me->state, &st, FIVC_MEMBER_GUEST))
			continue;
		uint32_t m1 = m + 1;
		fivc_store_release(&me->heartbeat_ns, fivc_load_relaxed(&me->heartbeat_ns) + 1);
		join_sweep(f, me, m1);
		me->pid = (uint32_t)getpid();
		me->joined_ns = fivc_now_ns(CLOCK_REALTIME);
		f->joined_ns = me->joined_ns;
		me->pidns_ino = 0;
		snprintf(me->comm, sizeof(me->comm), "%s",
			 f->self ? fivc_member_at(f, f->self - 1)->comm : "guest");
		return m1;
	}
	return 0;
}

int fivc_member_beat(struct fivc_fabric *f)
{
	uint32_t m1 = fivc_load_relaxed(&f->self);
	if (!f->guest || !m1)
		return 0;
	struct fivc_member *me = fivc_member_at(f, m1 - 1);
	if (fivc_load_acquire(&me->state) == FIVC_MEMBER_GUEST &&
	    fivc_load_relaxed(&me->joined_ns) == f->joined_ns &&
	    fivc_load_relaxed(&me->pid) == (uint32_t)getpid()) {
		__atomic_add_fetch(&me->heartbeat_ns, 1, __ATOMIC_RELEASE);
		return 0;
	}
	/* Judged dead while we were paused, and the id freed (maybe taken
	 * again): what we held was reclaimed.  Join anew; until then (a full
	 * table) new connections stay on TCP. */
	fivc_store_relaxed(&f->self, 0u);
	fivc_store_relaxed(&f->self, member_join_guest(f));
	return 1;
}

static void member_join(struct fivc_fabric *f)
{
	f->self = 0;
	f->self = member_join_fd(f, f->fd); /* 0: all ids taken; we can read, not claim */
}

int fivc_member_prepare(struct fivc_fabric *f, int *fd, uint32_t *member1)
{
	if (f->guest && f->self) { /* no fd: the child beats for its own id */
		uint32_t m1 = member_join_guest(f);
		if (!m1)
			return -EUSERS;
		*fd = -2;
		*member1 = m1;
		return 0;
	}
	if (f->fd < 0 || !f->self)
		return -EINVAL;
	int nfd = open(f->path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
	if (nfd < 0)
		return -errno;
	struct stat a, b;
	if (fstat(nfd, &a) < 0 || fstat(f->fd, &b) < 0 || a.st_ino != b.st_ino ||
	    a.st_dev != b.st_dev) {
		close(nfd); /* the path now names another file: no identity there */
		return -ESTALE;
	}
	uint32_t m1 = member_join_fd(f, nfd);
	if (!m1) {
		close(nfd);
		return -EUSERS;
	}
	*fd = nfd;
	*member1 = m1;
	return 0;
}

void fivc_fabric_become(struct fivc_fabric *f, int fd, uint32_t member1)
{
	if (!f->guest) {
		if (f->fd >= 0)
			close(f->fd); /* our copy only: the parent's descriptor keeps its lock */
		f->fd = fd;
	}
	f->self = member1;
	fivc_member_at(f, member1 - 1)->pid = (uint32_t)getpid();
}

void fivc_member_forget(struct fivc_fabric *f, int fd, uint32_t member1, int free_entry)
{
	if (free_entry)
		fivc_store_release(&fivc_member_at(f, member1 - 1)->state, FIVC_MEMBER_FREE);
	if (fd >= 0)
		close(fd);
}

/* ---- open / create ---- */

static int create_fabric(const char *path, const struct fivc_geometry *gin,
			 char *err, size_t errlen)
{
	struct fivc_geometry g = gin ? *gin : (struct fivc_geometry){0};
	struct fivc_fabric L;
	uint64_t total;
	if (fivc_layout_compute(&g, &L, &total) < 0) {
		seterr(err, errlen, "fabric %s: requested geometry out of range", path);
		return -EINVAL;
	}
	char tmp[300];
	snprintf(tmp, sizeof(tmp), "%s.%d.%llx.tmp", path, (int)getpid(),
		 (unsigned long long)fivc_now_ns(CLOCK_MONOTONIC));
	int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		int e = errno;
		seterr(err, errlen, "cannot create fabric %s: open(%s): %s", path, tmp, strerror(e));
		return -e;
	}
	int r = 0;
	void *base = MAP_FAILED;
	/* Permissions go on the temp file, before link() publishes it: nobody
	 * ever sees the fabric with other permissions than asked for.  fchmod,
	 * unlike open's mode, is not narrowed by the umask. */
	if (g.has_gid && fchown(fd, (uid_t)-1, (gid_t)g.gid) < 0) {
		r = -errno;
		seterr(err, errlen, "cannot create fabric %s: fchown(%s, group %u): %s", path, tmp,
		       g.gid, strerror(-r));
		goto out;
	}
	if (g.mode && fchmod(fd, (mode_t)g.mode) < 0) {
		r = -errno;
		seterr(err, errlen, "cannot create fabric %s: fchmod(%s, 0%o): %s", path, tmp,
		       g.mode, strerror(-r));
		goto out;
	}
	if (ftruncate(fd, (off_t)total) < 0) {
		r = -errno;
		seterr(err, errlen, "cannot create fabric %s: ftruncate(%llu): %s", path,
		       (unsigned long long)total, strerror(-r));
		goto out;
	}
	base = mmap(NULL, FIVC_PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED) {
		r = -errno;
		seterr(err, errlen, "cannot create fabric %s: mmap: %s", path, strerror(-r));
		goto out;
	}
	/* Reserve the header and tables now; a slot's slab on its first
	 * claim, a pool buffer when a ring first takes it. */
	if (fallocate(fd, 0, 0, (off_t)L.slots_off) < 0) {
		r = -errno;
		seterr(err, errlen, "cannot create fabric %s: fallocate(%llu): %s", path,
		       (unsigned long long)L.slots_off, strerror(-r));
		munmap(base, FIVC_PAGE);
		goto out;
	}
	r = fivc_fabric_format(base, total, &g);
	munmap(base, FIVC_PAGE);
	if (r < 0)
		goto out;
	/* Race-free publication: the file appears under its name fully
	 * initialised, or not at all.  Losers of the race open the winner's. */
	if (link(tmp, path) < 0) {
		r = -errno;
		if (r != -EEXIST)
			seterr(err, errlen, "cannot create fabric %s: link: %s", path, strerror(-r));
	}
out:
	unlink(tmp);
	close(fd);
	return r;
}

/* Validate the fabric behind fd and map it into f (fd, path set; no member). */
static int map_fd(struct fivc_fabric *f, int fd, const char *path, char *err, size_t errlen)
{
	struct stat st;
	struct fivc_fabric_hdr h;
	int r;
	if (fstat(fd, &st) < 0) {
		r = -errno;
		seterr(err, errlen, "fstat(%s): %s", path, strerror(-r));
		return r;
	}
	if (!S_ISREG(st.st_mode)) {
		r = -EPROTO;
		seterr(err, errlen, "fabric %s is not a regular file", path);
		return r;
	}
	if ((uint64_t)st.st_size < sizeof(h) ||
	    pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h)) {
		r = -EPROTO;
		seterr(err, errlen, "%s is not a fastivc fabric (too short: %lld bytes)", path,
		       (long long)st.st_size);
		return r;
	}
	r = validate_hdr(&h, (uint64_t)st.st_size, f, path, err, errlen);
	if (r < 0)
		return r;
	/* Mapped through a description of its own, which holds no lock: a
	 * mapping keeps its open file description alive, and a fork child
	 * inherits the mapping, so a mapping of fd (which carries our member
	 * lock) would keep our lock -- and hide our death -- for as long as
	 * any child of ours lives (found by the chaos test: a killed parent
	 * whose fork child lived on).  Without /proc, fd itself. */
	char self[64];
	snprintf(self, sizeof(self), "/proc/self/fd/%d", fd);
	int mfd = open(self, O_RDWR | O_CLOEXEC);
	struct stat ms;
	if (mfd >= 0 && (fstat(mfd, &ms) < 0 || ms.st_ino != st.st_ino || ms.st_dev != st.st_dev)) {
		close(mfd);
		mfd = -1;
	}
	f->base = mmap(NULL, f->size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd >= 0 ? mfd : fd, 0);
	if (mfd >= 0)
		close(mfd);
	if (f->base == MAP_FAILED) {
		r = -errno;
		f->base = NULL;
		seterr(err, errlen, "mmap(%s, %llu bytes): %s", path,
		       (unsigned long long)f->size, strerror(-r));
		return r;
	}
	f->fd = fd;
	snprintf(f->path, sizeof(f->path), "%s", path);
	return 0;
}

int fivc_fabric_adopt_fd(const char *path, int fd, uint32_t member1, struct fivc_fabric *f,
			 char *err, size_t errlen)
{
	memset(f, 0, sizeof(*f));
	f->fd = -1;
	if (strlen(path) >= sizeof(f->path) - 1) {
		seterr(err, errlen, "fabric path too long: %s", path);
		return -ENAMETOOLONG;
	}
	int r = map_fd(f, fd, path, err, errlen);
	if (r < 0)
		return r;
	if (!member1 || member1 > f->g.nmembers) {
		seterr(err, errlen, "fabric %s: member id %u out of range", path, member1);
		munmap(f->base, f->size);
		memset(f, 0, sizeof(*f));
		f->fd = -1;
		return -EINVAL;
	}
	f->self = member1;
	/* the image before exec had epoll sets, this one has none yet */
	for (uint32_t i = 0; i < FIVC_WAKERS; i++) {
		uint64_t w = fivc_load_acquire(&fivc_waker_at(f, i)->state);
		if (FIVC_OFFER_STATE(w) == FIVC_WAKER_LIVE && FIVC_OFFER_OWNER(w) == member1)
			fivc_waker_release(f, i, w);
	}
	return 0;
}

/* "pci:auto": the first ivshmem device (1af4:1110); "pci:ADDR": that one. */
static int find_ivshmem(const char *spec, char *out, size_t outlen, char *err, size_t errlen)
{
	const char *want = spec + 4;
	int autodet = !strcmp(want, "auto");
	DIR *d = opendir("/sys/bus/pci/devices");
	if (!d) {
		seterr(err, errlen, "no PCI bus visible (/sys/bus/pci/devices): %s", strerror(errno));
		return -ENODEV;
	}
	struct dirent *e;
	int found = 0;
	while (!found && (e = readdir(d))) {
		if (e->d_name[0] == '.' || (!autodet && strcmp(e->d_name, want)))
			continue;
		char p[512], v[32] = "", dv[32] = "";
		for (int i = 0; i < 2; i++) {
			snprintf(p, sizeof(p), "/sys/bus/pci/devices/%s/%s", e->d_name,
				 i ? "device" : "vendor");
			FILE *fp = fopen(p, "re");
			if (fp) {
				if (!fgets(i ? dv : v, sizeof(v), fp))
					v[0] = 0;
				fclose(fp);
			}
		}
		if (!strncmp(v, "0x1af4", 6) && !strncmp(dv, "0x1110", 6)) {
			snprintf(out, outlen, "/sys/bus/pci/devices/%s/resource2", e->d_name);
			found = 1;
		}
	}
	closedir(d);
	if (!found) {
		seterr(err, errlen, "%s: no ivshmem device (vendor 0x1af4, device 0x1110)%s%s",
		       spec, autodet ? "" : " at ", autodet ? "" : want);
		return -ENODEV;
	}
	return 0;
}

int fivc_fabric_open_pci(const char *spec, struct fivc_fabric *f, char *err, size_t errlen)
{
	memset(f, 0, sizeof(*f));
	f->fd = -1;
	char res[512];
	int r = find_ivshmem(spec, res, sizeof(res), err, errlen);
	if (r < 0)
		return r;
	int fd = open(res, O_RDWR | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		r = -errno;
		seterr(err, errlen, "cannot open %s: %s (root, or a udev rule for the device)", res,
		       strerror(-r));
		if (fd >= 0)
			close(fd);
		return r;
	}
	uint64_t len = (uint64_t)st.st_size;
	void *base = len ? mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
	r = base == MAP_FAILED ? -errno : 0;
	close(fd); /* the mapping stays */
	if (r < 0 || !len) {
		seterr(err, errlen, "mmap(%s, %llu bytes): %s", res, (unsigned long long)len,
		       strerror(r ? -r : EINVAL));
		return r ? r : -EINVAL;
	}
	r = fivc_fabric_attach_guest(base, len, f, err, errlen);
	if (r < 0) {
		munmap(base, len);
		return r;
	}
	snprintf(f->path, sizeof(f->path), "%s", spec);
	return 0;
}

int fivc_fabric_attach_guest(void *base, uint64_t len, struct fivc_fabric *f,
			     char *err, size_t errlen)
{
	int r = fivc_fabric_attach_mem(base, len, f, err, errlen);
	if (r < 0)
		return r;
	f->size = len;
	f->guest = 1;
	f->hb_seen = calloc((size_t)f->g.nmembers * 2, sizeof(uint64_t));
	f->alive_ns = calloc(f->g.nmembers, sizeof(uint64_t));
	f->self = member_join_guest(f);
	return 0;
}

/* Fabric trust (DESIGN.md "Fabric trust"): whoever can write a fabric can
 * read and steer every connection in it, so the file we opened (fstat of
 * the fd: no window between the check and the use) must be
 *   - owned by root or by our effective user, or else have the configured
 *     group (FASTIVC_FABRIC_GROUP): only root or a member can give a file
 *     its group, and that group's members are our declared trust domain
 *     (a postgres server that creates the fabric for a root client),
 *   - give others no permission at all,
 *   - give its group permissions only when that group is the configured
 *     one (FASTIVC_FABRIC_GROUP: g->has_gid) or one of our own groups
 *     (effective or supplementary): the users of such a group share
 *     their connections with each other by choice.
 * A symlink never gets here (O_NOFOLLOW).  0 or -EPERM with a message
 * naming the fix. */
static int check_trust(int fd, const char *path, const struct fivc_geometry *g, char *err,
		       size_t errlen)
{
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		seterr(err, errlen, "fstat(%s): %s", path, strerror(e));
		return -e;
	}
	uid_t me = geteuid();
	mode_t mode = st.st_mode & 07777;
	int group_cfg = g && g->has_gid && st.st_gid == g->gid;
	if (st.st_uid != 0 && st.st_uid != me && !group_cfg) {
		seterr(err, errlen,
		       "fabric %s is refused: it is owned by uid %u, neither root nor us (uid %u), "
		       "and its owner could read and steer our connections; remove it (as root or "
		       "its owner), set FASTIVC_FABRIC to a path of our own, or, to share it with "
		       "its group %u on purpose, FASTIVC_FABRIC_GROUP=%u",
		       path, (unsigned)st.st_uid, (unsigned)me, (unsigned)st.st_gid,
		       (unsigned)st.st_gid);
		return -EPERM;
	}
	if (mode & 0007) {
		seterr(err, errlen,
		       "fabric %s is refused: mode %04o lets every user at it; chmod o-rwx %s "
		       "(share it with a group: chmod 0660 and FASTIVC_FABRIC_GROUP)",
		       path, (unsigned)mode, path);
		return -EPERM;
	}
	if (mode & 0070) {
		int ok = group_cfg || st.st_gid == getegid();
		gid_t groups[256];
		int n = ok ? 0 : getgroups(256, groups);
		for (int i = 0; i < n && !ok; i++)
			ok = groups[i] == st.st_gid;
		if (!ok) {
			seterr(err, errlen,
			       "fabric %s is refused: mode %04o gives group %u, which is neither "
			       "FASTIVC_FABRIC_GROUP nor one of ours, access to it; chmod g-rwx %s, or "
			       "set FASTIVC_FABRIC_GROUP=%u to share connections with that group",
			       path, (unsigned)mode, (unsigned)st.st_gid, path, (unsigned)st.st_gid);
			return -EPERM;
		}
	}
	return 0;
}

/* A fabric of another layout version (its header's second word) that no
 * member uses: no lock at or past FIVC_LOCK_BASE is held (the lock
 * protocol is the same in every version).  Unlink it if the path still
 * names this file; its version when done, else 0. */
static uint32_t stale_unlink(int fd, const char *path)
{
	struct fivc_fabric_hdr h;
	struct stat a, b;
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET,
			   .l_start = (off_t)FIVC_LOCK_BASE, .l_len = 0};
	if (pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) || h.magic != FIVC_FABRIC_MAGIC ||
	    h.layout_version == FIVC_LAYOUT_VERSION || h.layout_version == 0)
		return 0;
	if (fcntl(fd, F_OFD_GETLK, &fl) < 0 || fl.l_type != F_UNLCK)
		return 0; /* in use (or cannot tell) */
	if (fstat(fd, &a) < 0 || lstat(path, &b) < 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev ||
	    unlink(path) < 0)
		return 0;
	return h.layout_version;
}

int fivc_fabric_open(const char *path, const struct fivc_geometry *g,
		     struct fivc_fabric *f, char *err, size_t errlen)
{
	memset(f, 0, sizeof(*f));
	f->fd = -1;
	if (strlen(path) >= sizeof(f->path) - 1) {
		seterr(err, errlen, "fabric path too long: %s", path);
		return -ENAMETOOLONG;
	}
	int fd = -1;
	for (int attempt = 0; attempt < 3 && fd < 0; attempt++) {
		fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
		if (fd >= 0)
			break;
		if (errno == ELOOP) {
			seterr(err, errlen,
			       "fabric %s is refused: it is a symbolic link (whoever placed it "
			       "chooses the file); remove it, or set FASTIVC_FABRIC to the file itself",
			       path);
			return -ELOOP;
		}
		if (errno != ENOENT) {
			int e = errno;
			seterr(err, errlen, "cannot open fabric %s: %s", path, strerror(e));
			return -e;
		}
		int r = create_fabric(path, g, err, errlen);
		if (r < 0 && r != -EEXIST)
			return r;
	}
	if (fd < 0) {
		seterr(err, errlen, "cannot open fabric %s: it keeps disappearing", path);
		return -ENOENT;
	}
	int r = g && g->any_owner ? 0 : check_trust(fd, path, g, err, errlen);
	if (r == 0)
		r = map_fd(f, fd, path, err, errlen);
	if (r == -EPROTONOSUPPORT && g && g->replace_stale && !g->any_owner &&
	    (f->replaced = stale_unlink(fd, path)) != 0) {
		close(fd);
		uint32_t old = f->replaced;
		r = fivc_fabric_open(path, g, f, err, errlen);
		f->replaced = old;
		return r;
	}
	if (r < 0)
		goto fail;
	f->hb_seen = calloc((size_t)f->g.nmembers * 2, sizeof(uint64_t)); /* NULL: guests never judged */
	f->alive_ns = calloc(f->g.nmembers, sizeof(uint64_t)); /* NULL: no cache */
	member_join(f);
	return 0;
fail:
	close(fd);
	return r;
}

void fivc_fabric_close(struct fivc_fabric *f)
{
	free(f->hb_seen);
	f->hb_seen = NULL;
	free(f->alive_ns);
	f->alive_ns = NULL;
	if (f->guest) {
		if (f->self)
			fivc_store_release(&fivc_member_at(f, f->self - 1)->state, FIVC_MEMBER_FREE);
		munmap(f->base, f->size);
	}
	if (f->fd >= 0) {
		if (f->self) {
			struct fivc_member *me = fivc_member_at(f, f->self - 1);
			fivc_store_release(&me->state, FIVC_MEMBER_FREE);
		}
		munmap(f->base, f->size);
		close(f->fd); /* drops the member lock */
	}
	f->fd = -1;
	f->base = NULL;
	f->self = 0;
}

/* ---- slots ---- */

static void ring_init(struct fivc_ring_hdr *r, uint32_t size)
{
	r->size = size;
	r->tail = 0;
	r->wr_closed = 0;
	r->prod_waiting = 0;
	r->from = 0;
	r->buf = FIVC_BUF_INLINE;
	r->prev = FIVC_BUF_INLINE;
	r->desc_seq = (r->desc_seq | 1u) + 1u; /* even, and not what a stale reader saw */
	r->head = 0;
	r->rd_closed = 0;
	r->cons_waiting = 0;
	r->rcvbuf = 0;
	r->rd_sig = 0;
	r->urg_seq = 0;
	r->urg_count = 0;
	r->urg_gap = 0;
	r->down_at = 0;
	/* cons_wake / prod_wake / desc_seq keep counting: a stale sleeper or
	 * reader compares values. */
	r->magic = FIVC_RING_MAGIC;
}

static uint64_t *slotmap_word(struct fivc_fabric *f, uint32_t i)
{
	return (uint64_t *)(f->base + f->slotmap_off) + i / 64;
}

static uint8_t *slot_backed(struct fivc_fabric *f, uint32_t i)
{
	return f->base + f->backed_off + i;
}

/* A fabric file is sparse.  Reserve a slot's slab (control page and inline
 * rings) before first use so that a full tmpfs gives ENOSPC here (and a
 * plain TCP connection) instead of SIGBUS on a page fault later.  Once per
 * slot: tmpfs keeps the pages.  The slab is not touched before: reading an
 * unreserved page of a tmpfs mapping allocates it too. */
static int reserve_slab(struct fivc_fabric *f, uint32_t i)
{
	if (fivc_load_acquire(slot_backed(f, i)))
		return 0;
	off_t off = (off_t)((uint8_t *)fivc_slot_at(f, i) - f->base);
	if (f->fd >= 0 && fallocate(f->fd, 0, off, (off_t)f->slab_size) < 0)
		return -errno;
	fivc_store_release(slot_backed(f, i), (uint8_t)1);
	return 0;
}

/* The claimed-slot bitmap is a hint for finding a free slot (and for
 * scanning only claimed ones); the lease word decides.  Claim: lease CAS,
 * then set the bit; release: clear the lease, then the bit.  A bit found
 * clear over a held lease (a racing release, or a claimer that died between
 * the two steps) is set again by whoever trips on it; a set bit over a free
 * lease is cleared by gc. */
static void slotmap_set(struct fivc_fabric *f, uint32_t i)
{
	__atomic_fetch_or(slotmap_word(f, i), 1ull << (i % 64), __ATOMIC_ACQ_REL);
}

static void slotmap_clear(struct fivc_fabric *f, uint32_t i)
{
	__atomic_fetch_and(slotmap_word(f, i), ~(1ull << (i % 64)), __ATOMIC_ACQ_REL);
	if (i < f->slot_hint)
		f->slot_hint = i;
}

/* The slot's two rings no longer need their pool buffers (both sides left). */
static void slot_free_buffers(struct fivc_fabric *f, uint32_t i, uint32_t gen)
{
	struct fivc_slot *s = fivc_slot_at(f, i);
	for (int d = 0; d < 2; d++) {
		uint32_t b = fivc_load_acquire(&s->ring[d].buf), p = fivc_load_acquire(&s->ring[d].prev);
		if (b != FIVC_BUF_INLINE)
			fivc_pool_give(f, b, i, gen, d, 0);
		if (p != FIVC_BUF_INLINE && p != b)
			fivc_pool_give(f, p, i, gen, d, 0);
	}
}

/* Try to claim slot i as side 0; 1 on success. */
static int slot_try_claim(struct fivc_fabric *f, uint32_t i, const struct fivc_tuple *t,
			  uint64_t nonce, uint32_t *gen)
{
	struct fivc_slot *s = fivc_slot_at(f, i);
	uint64_t w = fivc_load_acquire(&s->lease);
	if ((uint32_t)w != 0) {
		slotmap_set(f, i); /* held: the bit was stale */
		return 0;
	}
	uint32_t g = FIVC_LEASE_GEN(w) + 1;
	if (!fivc_cas(&s->lease, &w, FIVC_LEASE_WORD(g, 0, f->self)))
		return 0;
	slotmap_set(f, i);
	s->nonce = nonce;
	if (t)
		s->tuple = *t;
	else
		memset(&s->tuple, 0, sizeof(s->tuple));
	s->switch_bytes = 0;
	s->switch_state = 0;
	fivc_store_relaxed(&s->holders[0], 0);
	fivc_store_relaxed(&s->holders[1], 0);
	for (int k = 0; k < FIVC_SLOT_HOLDERS; k++) {
		fivc_store_relaxed(&s->holder_ids[0][k], (uint16_t)0);
		fivc_store_relaxed(&s->holder_ids[1][k], (uint16_t)0);
	}
	fivc_store_release(&s->holder_ids[0][0], (uint16_t)f->self);
	ring_init(&s->ring[0], f->g.small_ring);
	ring_init(&s->ring[1], f->g.small_ring);
	/* SYNC POINT WRITE: publishing the offer (store_release in
	 * fivc_offer_post) orders this initialisation before the adopter's
	 * acquire of the offer state. */
	*gen = g;
	return 1;
}

/* Full fabrics reclaim what dead members left at most this often per
 * process: a connect that finds no slot must cost what plain TCP costs,
 * not a pass over the fabric (issue 10). */
#define FIVC_FULL_GC_NS 1000000000ull

int fivc_slot_claim(struct fivc_fabric *f, const struct fivc_tuple *t,
		    uint64_t nonce, uint32_t *slot, uint32_t *gen)
{
	if (!f->self)
		return -EUSERS;
	uint32_t n = f->g.nslots, nw = (n + 63) / 64;
	for (int pass = 0; pass < 2; pass++) {
		/* Lowest free slot first, from the hint: the slabs in use stay
		 * packed at the start of the file (its resident size follows
		 * the connections open, not how many there ever were). */
		uint32_t w0 = f->slot_hint / 64 < nw ? f->slot_hint / 64 : 0;
		for (uint32_t k = 0; k < nw; k++) {
			uint32_t w = (w0 + k) % nw;
			uint64_t bits = fivc_load_acquire((uint64_t *)(f->base + f->slotmap_off) + w);
			while (~bits) {
				uint32_t b = (uint32_t)__builtin_ctzll(~bits);
				uint32_t i = w * 64 + b;
				bits |= 1ull << b;
				if (i >= n)
					break;
				int r = reserve_slab(f, i);
				if (r < 0)
					return r;
				if (!slot_try_claim(f, i, t, nonce, gen))
					continue;
				f->slot_hint = i;
				*slot = i;
				return 0;
			}
		}
		/* Full: reclaim what dead members left and look once more, at
		 * most once a second. */
		uint64_t now = fivc_now_ns(CLOCK_MONOTONIC);
		if (pass || (f->full_gc_ns && now - f->full_gc_ns < FIVC_FULL_GC_NS))
			break;
		f->full_gc_ns = now;
		struct fivc_gc_report rep = {0};
		fivc_gc(f, &rep);
		if (!rep.slots_freed)
			break;
	}
	return -ENOSPC;
}

/* ---- ring buffers from the pool ---- */

static int pool_reserve(struct fivc_fabric *f, int c, uint32_t i)
{
	if (f->fd < 0)
		return 0; /* a BAR or memory: nothing to reserve */
	off_t off = (off_t)(fivc_pool_data(f, c, i) - f->base);
	return fallocate(f->fd, 0, off, (off_t)f->pool_size[c]) < 0 ? -errno : 0;
}

static void pool_punch(struct fivc_fabric *f, int c, uint32_t i)
{
	if (f->fd < 0)
		return;
	off_t off = (off_t)(fivc_pool_data(f, c, i) - f->base);
	fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, (off_t)f->pool_size[c]);
}

int fivc_pool_take(struct fivc_fabric *f, int c, uint32_t slot, uint32_t gen, int dir,
		   uint32_t *buf)
{
	if (c < 0 || c >= FIVC_POOL_CLASSES || !f->g.npool[c])
		return -ENOSPC;
	uint32_t n = f->g.npool[c], start = f->pool_hint[c] % n;
	uint64_t me = FIVC_POOL_OWNER(gen, slot, dir);
	/* first a buffer whose pages are still there, then any */
	for (int pass = 0; pass < 2; pass++) {
		for (uint32_t k = 0; k < n; k++) {
			uint32_t i = (start + k) % n;
			struct fivc_pool_ent *e = fivc_pool_at(f, c, i);
			uint64_t o = 0;
			if (fivc_load_relaxed(&e->owner) != 0 || (!pass && !fivc_load_relaxed(&e->backed)))
				continue;
			if (!fivc_cas(&e->owner, &o, me))
				continue;
			fivc_store_relaxed(&e->aged, 0u);
			if (!fivc_load_acquire(&e->backed)) {
				int r = pool_reserve(f, c, i);
				if (r < 0) {
					fivc_store_release(&e->owner, 0ull);
					return r;
				}
				fivc_store_release(&e->backed, 1u);
			}
			f->pool_hint[c] = i + 1;
			*buf = FIVC_BUF_WORD(c, i);
			return 0;
		}
	}
	return -ENOSPC;
}

int fivc_pool_give(struct fivc_fabric *f, uint32_t buf, uint32_t slot, uint32_t gen, int dir,
		   int punch)
{
	int c = FIVC_BUF_CLASS(buf);
	uint32_t i = FIVC_BUF_INDEX(buf);
	if (c < 0 || c >= FIVC_POOL_CLASSES || i >= f->g.npool[c])
		return -EINVAL;
	struct fivc_pool_ent *e = fivc_pool_at(f, c, i);
	uint64_t o = FIVC_POOL_OWNER(gen, slot, dir);
	if (!punch || f->fd < 0)
		return fivc_cas(&e->owner, &o, 0ull) ? 0 : -ESTALE;
	if (!fivc_cas(&e->owner, &o, FIVC_POOL_BUSY))
		return -ESTALE;
	pool_punch(f, c, i);
	fivc_store_relaxed(&e->backed, 0u);
	fivc_store_relaxed(&e->aged, 0u);
	fivc_store_release(&e->owner, 0ull);
	return 0;
}

void fivc_pool_trim(struct fivc_fabric *f)
{
	if (f->fd < 0)
		return;
	for (int c = 0; c < FIVC_POOL_CLASSES; c++)
		for (uint32_t i = 0; i < f->g.npool[c]; i++) {
			struct fivc_pool_ent *e = fivc_pool_at(f, c, i);
			uint64_t o = 0;
			if (fivc_load_relaxed(&e->owner) != 0 || !fivc_load_relaxed(&e->backed))
				continue;
			if (!fivc_load_relaxed(&e->aged)) {
				fivc_store_relaxed(&e->aged, 1u); /* seen free once */
				continue;
			}
			if (!fivc_cas(&e->owner, &o, FIVC_POOL_BUSY))
				continue; /* taken meanwhile (the taker cleared aged) */
			pool_punch(f, c, i);
			fivc_store_relaxed(&e->backed, 0u);
			fivc_store_relaxed(&e->aged, 0u);
			fivc_store_release(&e->owner, 0ull);
		}
}

int fivc_buf_resolve(struct fivc_fabric *f, uint32_t buf, uint32_t slot, uint32_t gen, int dir,
		     uint8_t **data, uint64_t *size)
{
	if (slot >= f->g.nslots || (dir != 0 && dir != 1))
		return -EPROTO;
	if (buf == FIVC_BUF_INLINE) {
		*data = fivc_ring_inline(f, slot, dir);
		*size = f->g.small_ring;
		return 0;
	}
	int c = FIVC_BUF_CLASS(buf);
	uint32_t i = FIVC_BUF_INDEX(buf);
	if (c < 0 || c >= FIVC_POOL_CLASSES || i >= f->g.npool[c])
		return -EPROTO;
	if (fivc_load_acquire(&fivc_pool_at(f, c, i)->owner) != FIVC_POOL_OWNER(gen, slot, dir))
		return -EPROTO;
	*data = fivc_pool_data(f, c, i);
	*size = f->pool_size[c];
	return 0;
}

int fivc_slot_attach(struct fivc_fabric *f, uint32_t slot, uint32_t gen)
{
	if (!f->self)
		return -EUSERS;
	if (slot >= f->g.nslots)
		return -EINVAL;
	struct fivc_slot *s = fivc_slot_at(f, slot);
	uint64_t w = fivc_load_acquire(&s->lease);
	for (;;) {
		if (FIVC_LEASE_GEN(w) != gen)
			return -ESTALE;
		if (FIVC_LEASE_SIDE(w, 0) == 0 || FIVC_LEASE_SIDE(w, 0) == FIVC_LEASE_QUARANTINE)
			return -ECONNRESET;
		if (FIVC_LEASE_SIDE(w, 1) != 0)
			return -EBUSY;
		if (fivc_cas(&s->lease, &w, FIVC_LEASE_WORD(gen, f->self, FIVC_LEASE_SIDE(w, 0)))) {
			fivc_store_relaxed(&s->holders[1], 0);
			for (int k = 1; k < FIVC_SLOT_HOLDERS; k++)
				fivc_store_relaxed(&s->holder_ids[1][k], (uint16_t)0);
			fivc_store_release(&s->holder_ids[1][0], (uint16_t)f->self);
			return 0;
		}
	}
}

int fivc_slot_release(struct fivc_fabric *f, uint32_t slot, uint32_t gen, int side)
{
	if (slot >= f->g.nslots || (side != 0 && side != 1))
		return -EINVAL;
	struct fivc_slot *s = fivc_slot_at(f, slot);
	uint64_t w = fivc_load_acquire(&s->lease);
	for (;;) {
		/* The last holder releases; after a fork that may be another
		 * process than the one whose id the lease carries. */
		uint32_t m = FIVC_LEASE_SIDE(w, side);
		if (FIVC_LEASE_GEN(w) != gen || m == 0 || m > f->g.nmembers)
			return -ESTALE; /* already reclaimed, or not a member's */
		uint32_t m0 = side == 0 ? 0 : FIVC_LEASE_SIDE(w, 0);
		uint32_t m1 = side == 1 ? 0 : FIVC_LEASE_SIDE(w, 1);
		if (fivc_cas(&s->lease, &w, FIVC_LEASE_WORD(gen, m1, m0))) {
			if (!m0 && !m1) { /* we were the last: the slot is free */
				slot_free_buffers(f, slot, gen);
				slotmap_clear(f, slot);
			}
			return 0;
		}
	}
}

static int side_alive(struct fivc_fabric *f, uint32_t slot, uint32_t gen, int side,
		      dead_fn is_dead, void *arg)
{
	if (slot >= f->g.nslots || (side != 0 && side != 1))
		return 0;
	struct fivc_slot *s = fivc_slot_at(f, slot);
	uint64_t w = fivc_load_acquire(&s->lease);
	uint32_t m = FIVC_LEASE_SIDE(w, side);
	if (FIVC_LEASE_GEN(w) != gen || !m)
		return 0;
	return side_live(f, s, side, m, is_dead, arg, 0);
}

int fivc_slot_side_alive(struct fivc_fabric *f, uint32_t slot, uint32_t gen, int side)
{
	return side_alive(f, slot, gen, side, dead_by_lock, NULL);
}

int fivc_slot_side_alive_recent(struct fivc_fabric *f, uint32_t slot, uint32_t gen, int side,
				uint64_t max_age_ns)
{
	return side_alive(f, slot, gen, side, dead_recent, &max_age_ns);
}

int fivc_slot_held_by(struct fivc_fabric *f, uint32_t slot, int side, uint32_t member1)
{
	if (slot >= f->g.nslots || (side != 0 && side != 1) || !member1)
		return 0;
	struct fivc_slot *s = fivc_slot_at(f, slot);
	uint32_t m = FIVC_LEASE_SIDE(fivc_load_acquire(&s->lease), side);
	if (m == member1)
		return 1;
	if (!m)
		return 0; /* let go: the holder entries are the last holders' (reset at claim) */
	for (int k = 0; k < FIVC_SLOT_HOLDERS; k++)
		if (fivc_load_acquire(&s->holder_ids[side][k]) == member1)
			return 1;
	return 0;
}

/* Whether member1 lives, asked of the kernel once per id and memo. */
static int memo_alive(struct fivc_fabric *f, struct fivc_alive_memo *m, uint16_t id)
{
	for (int i = 0; i < m->n; i++)
		if (m->id[i] == id)
			return m->alive[i];
	int a = fivc_member_alive(f, id);
	if (m->n < (int)(sizeof(m->id) / sizeof(m->id[0]))) {
		m->id[m->n] = id;
		m->alive[m->n++] = (uint8_t)a;
	}
	return a;
}

int fivc_slot_hold(struct fivc_fabric *f, uint32_t slot, uint32_t gen, int side,
		   uint32_t member1, struct fivc_alive_memo *memo)
{
	if (slot >= f->g.nslots || (side != 0 && side != 1) || member1 > f->g.nmembers)
		return -EINVAL;
	struct fivc_slot *s = fivc_slot_at(f, slot);
	if (FIVC_LEASE_GEN(fivc_load_acquire(&s->lease)) != gen)
		return -ESTALE;
	for (int k = 0; member1 && k < FIVC_SLOT_HOLDERS; k++) {
		uint16_t id = 0;
		if (fivc_load_relaxed(&s->holder_ids[side][k]) == 0 &&
		    fivc_cas(&s->holder_ids[side][k], &id, (uint16_t)member1))
			return 0;
	}
	/* A full table: an entry whose member died (it exited without
	 * closing; earlier fork children) is taken over before the count is
	 * used, so that the count, which no kernel witnesses, stays for the
	 * rare side that really has more live holders than entries.  (memo:
	 * a pass over many slots asks about each member once.) */
	for (int k = 0; member1 && (memo || can_witness(f)) && k < FIVC_SLOT_HOLDERS; k++) {
		uint16_t id = fivc_load_acquire(&s->holder_ids[side][k]);
		if (id && id != member1 && id != f->self &&
		    !(memo ? memo_alive(f, memo, id) : fivc_member_alive(f, id)) &&
		    fivc_cas(&s->holder_ids[side][k], &id, (uint16_t)member1))
			return 0;
	}
	fivc_fetch_add(&s->holders[side], 1u);
	return 1;
}

int fivc_slot_unhold(struct fivc_fabric *f, uint32_t slot, uint32_t gen, int side,
		     uint32_t member1)
{
	if (slot >= f->g.nslots || (side != 0 && side != 1))
		return -EINVAL;
	struct fivc_slot *s = fivc_slot_at(f, slot);
	if (FIVC_LEASE_GEN(fivc_load_acquire(&s->lease)) != gen)
		return -ESTALE;
	if (!member1) {
		uint32_t n = fivc_load_acquire(&s->holders[side]);
		while (n && !fivc_cas(&s->holders[side], &n, n - 1))
			;
	} else {
		for (int k = 0; k < FIVC_SLOT_HOLDERS; k++) {
			uint16_t id = (uint16_t)member1;
			if (fivc_load_relaxed(&s->holder_ids[side][k]) == id &&
			    fivc_cas(&s->holder_ids[side][k], &id, (uint16_t)0))
				break;
		}
	}
	/* SYNC POINT: seq_cst CASes above and loads below; two holders that
	 * leave at once may both see an empty table and both close, which
	 * is idempotent (flags, and a release CAS that only one wins). */
	fivc_smp_mb();
	if (fivc_load_acquire(&s->holders[side]))
		return 0;
	for (int k = 0; k < FIVC_SLOT_HOLDERS; k++) {
		uint16_t id = fivc_load_acquire(&s->holder_ids[side][k]);
		if (!id)
			continue;
		if (id == member1 || fivc_member_alive(f, id))
			return 0;
		/* A holder that died (a forked child's exit closes nothing of
		 * ours): its hold went with it, so our close may be the last,
		 * which resets a ring with bytes unread as TCP's last close
		 * does (regression, issue 11: after a child's recv, the
		 * parent's close with bytes unread sent no reset) */
		fivc_cas(&s->holder_ids[side][k], &id, (uint16_t)0);
	}
	return 1;
}

/* ---- wake records ---- */

uint64_t fivc_wakes_coalesced;

int fivc_waker_take(struct fivc_fabric *f, uint32_t *idx, uint64_t *word)
{
	if (!f->self)
		return -EUSERS;
	touch(f, FIVC_TOUCHED_WAKERS);
	uint32_t start = f->waker_hint ? f->waker_hint : (uint32_t)getpid() % FIVC_WAKERS;
	for (uint32_t k = 0; k < FIVC_WAKERS; k++) {
		uint32_t i = (start + k) % FIVC_WAKERS;
		struct fivc_waker *r = fivc_waker_at(f, i);
		uint64_t w = fivc_load_acquire(&r->state);
		if (FIVC_OFFER_STATE(w) != FIVC_WAKER_FREE)
			continue;
		uint64_t nw = FIVC_OFFER_WORD(FIVC_OFFER_GEN(w) + 1, f->self, FIVC_WAKER_LIVE);
		if (!fivc_cas(&r->state, &w, nw))
			continue;
		/* (a late ringer of the previous owner may still set a bit: a
		 * spurious look for us, no more) */
		fivc_store_relaxed(&r->armed, 0);
		fivc_store_relaxed(&r->summary, 0);
		for (uint32_t b = 0; b < FIVC_WAKER_TOKENS / 64; b++)
			fivc_store_relaxed(&r->bits[b], 0);
		f->waker_hint = (i + 1) % FIVC_WAKERS;
		*idx = i;
		*word = nw;
		return 0;
	}
	return -ENOSPC;
}

void fivc_waker_release(struct fivc_fabric *f, uint32_t idx, uint64_t word)
{
	if (idx >= FIVC_WAKERS)
		return;
	owned_free(&fivc_waker_at(f, idx)->state, word);
}

int fivc_waker_note(struct fivc_fabric *f, uint32_t code)
{
	uint32_t i = FIVC_WAKE_REC(code), t = FIVC_WAKE_TOK(code);
	if (!f || i >= FIVC_WAKERS)
		return 1;
	struct fivc_waker *r = fivc_waker_at(f, i);
	if (FIVC_OFFER_STATE(fivc_load_relaxed(&r->state)) != FIVC_WAKER_LIVE)
		return 1;
	__atomic_fetch_or(&r->bits[t / 64], 1ull << (t % 64), __ATOMIC_RELEASE);
	__atomic_fetch_or(&r->summary, 1ull << (t / 64), __ATOMIC_RELEASE);
	fivc_smp_mb(); /* SB: the bits before our look at armed; pairs with the owner's fence */
	if (fivc_load_relaxed(&r->armed) && fivc_exchange(&r->armed, 0u))
		return 1;
	__atomic_fetch_add(&fivc_wakes_coalesced, 1, __ATOMIC_RELAXED);
	return 0;
}

/* ---- listeners ---- */

static uint32_t listener_home(uint16_t port)
{
	return (uint32_t)(((uint32_t)port * 2654435761u) >> 20) % FIVC_LISTENERS;
}

struct listener_key {
	uint8_t addr[16];
	uint16_t port;
	uint32_t netns;
};

/* A consistent copy of entry i's key and its word, or 0 if not LIVE. */
static uint64_t listener_read(struct fivc_fabric *f, uint32_t i, struct listener_key *k)
{
	struct fivc_listener *l = fivc_listener_at(f, i);
	/* SYNC POINT READ: pairs with the release in fivc_listener_add(). */
	uint64_t w = fivc_load_acquire(&l->state);
	if (FIVC_OFFER_STATE(w) != FIVC_LISTENER_LIVE)
		return 0;
	const uint64_t *a = (const uint64_t *)l->addr;
	uint64_t a0 = fivc_load_relaxed(&a[0]), a1 = fivc_load_relaxed(&a[1]);
	memcpy(k->addr, &a0, 8);
	memcpy(k->addr + 8, &a1, 8);
	k->port = fivc_load_relaxed(&l->port);
	k->netns = fivc_load_relaxed(&l->netns);
	__atomic_thread_fence(__ATOMIC_ACQUIRE); /* seqlock re-check */
	return fivc_load_relaxed(&l->state) == w ? w : 0;
}

int fivc_listener_add(struct fivc_fabric *f, const uint8_t addr[16], uint16_t port,
		      uint32_t netns, uint32_t *idx, uint64_t *word)
{
	if (!f->self)
		return -EUSERS;
	touch(f, FIVC_TOUCHED_LISTENERS);
	uint32_t home = listener_home(port);
	for (uint32_t k = 0; k < FIVC_LISTENER_PROBE; k++) { /* ours already? */
		uint32_t i = (home + k) % FIVC_LISTENERS;
		struct listener_key key;
		uint64_t w = listener_read(f, i, &key);
		if (w && FIVC_OFFER_OWNER(w) == f->self && key.port == port &&
		    key.netns == netns && !memcmp(key.addr, addr, 16)) {
			*idx = i;
			*word = w;
			return 0;
		}
	}
	for (uint32_t k = 0; k < FIVC_LISTENER_PROBE; k++) {
		uint32_t i = (home + k) % FIVC_LISTENERS;
		struct fivc_listener *l = fivc_listener_at(f, i);
		uint64_t w = fivc_load_acquire(&l->state);
		if (FIVC_OFFER_STATE(w) != FIVC_LISTENER_FREE)
			continue;
		uint32_t g = FIVC_OFFER_GEN(w) + 1;
		if (!fivc_cas(&l->state, &w, FIVC_OFFER_WORD(g, f->self, FIVC_LISTENER_WRITING)))
			continue;
		uint64_t a[2];
		memcpy(a, addr, 16);
		fivc_store_relaxed((uint64_t *)l->addr, a[0]);
		fivc_store_relaxed((uint64_t *)l->addr + 1, a[1]);
		fivc_store_relaxed(&l->port, port);
		fivc_store_relaxed(&l->netns, netns);
		uint64_t lw = FIVC_OFFER_WORD(g, f->self, FIVC_LISTENER_LIVE);
		/* SYNC POINT WRITE: pairs with the acquire in listener_read(). */
		fivc_store_release(&l->state, lw);
		*idx = i;
		*word = lw;
		return 0;
	}
	return -ENOSPC;
}

void fivc_listener_remove(struct fivc_fabric *f, uint32_t idx, uint64_t word)
{
	if (idx >= FIVC_LISTENERS)
		return;
	owned_free(&fivc_listener_at(f, idx)->state, word);
}

int fivc_listener_valid(struct fivc_fabric *f, uint32_t idx, uint64_t word)
{
	return idx < FIVC_LISTENERS &&
	       fivc_load_relaxed(&fivc_listener_at(f, idx)->state) == word;
}

int fivc_listener_match(struct fivc_fabric *f, const uint8_t daddr[16], uint16_t dport,
			int loopback, uint32_t netns)
{
	static const uint8_t any[16], any4[16] = {[10] = 0xff, [11] = 0xff};
	uint32_t home = listener_home(dport);
	for (uint32_t k = 0; k < FIVC_LISTENER_PROBE; k++) {
		struct listener_key key;
		if (!listener_read(f, (home + k) % FIVC_LISTENERS, &key) || key.port != dport)
			continue;
		if (memcmp(key.addr, daddr, 16) && memcmp(key.addr, any, 16) &&
		    memcmp(key.addr, any4, 16))
			continue;
		if (loopback && key.netns != netns)
			continue; /* a loopback address names a peer in our namespace only */
		return 1;
	}
	return 0;
}

int fivc_slot_sole_holder(struct fivc_fabric *f, uint32_t slot, uint32_t gen, int side)
{
	if (slot >= f->g.nslots || (side != 0 && side != 1) || !f->self)
		return -EINVAL;
	struct fivc_slot *s = fivc_slot_at(f, slot);
	if (FIVC_LEASE_GEN(fivc_load_acquire(&s->lease)) != gen)
		return -ESTALE;
	if (fivc_load_acquire(&s->holders[side]))
		return 0;
	int self = 0;
	for (int k = 0; k < FIVC_SLOT_HOLDERS; k++) {
		uint16_t id = fivc_load_acquire(&s->holder_ids[side][k]);
		if (!id)
			continue;
		if (id == f->self) {
			self = 1;
			continue;
		}
		if (fivc_member_alive(f, id))
			return 0;
		/* Dead (its lock went with its last fd): a live holder may drop
		 * the entry, as the id's next owner would when it joins. */
		fivc_cas(&s->holder_ids[side][k], &id, (uint16_t)0);
	}
	return self;
}

/* ---- offers ---- */

/* The registry is hashed: a key lives in one of two buckets of
 * FIVC_OFFER_BUCKET entries (two choices), so accept() scans 16 entries
 * instead of all of them (measured: the full scan of 1024 entries was a
 * visible part of connection setup).  Both full means "no offer" and a
 * plain connection (I4).  One bucket was not enough: 4,000 redis-benchmark
 * clients connecting at once overflowed a few of 2,048 buckets in most
 * runs (the fullest of 2,048 bins holding ~2 on average reaches 9). */
static uint32_t offer_buckets(const struct fivc_fabric *f, const struct fivc_tuple *key,
			      uint32_t first[2])
{
	const uint64_t *w = (const uint64_t *)key;
	uint64_t h = 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < sizeof(*key) / 8; i++)
		h = (h ^ w[i]) * 0xff51afd7ed558ccdull;
	uint64_t h2 = (h ^ (h >> 29)) * 0xbf58476d1ce4e5b9ull;
	h ^= h >> 32;
	h2 ^= h2 >> 32;
	uint32_t per = f->g.noffers < FIVC_OFFER_BUCKET ? f->g.noffers : FIVC_OFFER_BUCKET;
	uint32_t nb = f->g.noffers / per;
	first[0] = (uint32_t)(h % nb) * per;
	first[1] = (uint32_t)(h2 % nb) * per;
	return per;
}

int fivc_offer_post(struct fivc_fabric *f, const struct fivc_tuple *key,
		    uint64_t nonce, uint32_t slot, uint32_t slot_gen, uint32_t *idx,
		    uint64_t *word)
{
	if (!f->self)
		return -EUSERS;
	touch(f, FIVC_TOUCHED_OFFERS);
	uint32_t start[2], n = offer_buckets(f, key, start);
	for (uint32_t k = 0; k < 2 * n; k++) {
		if (k == n && start[1] == start[0])
			break;
		uint32_t i = start[k / n] + k % n;
		struct fivc_offer *o = fivc_offer_at(f, i);
		uint64_t w = fivc_load_acquire(&o->state);
		if (FIVC_OFFER_STATE(w) != FIVC_OFFER_FREE)
			continue;
		uint32_t g = FIVC_OFFER_GEN(w) + 1;
		if (!fivc_cas(&o->state, &w, FIVC_OFFER_WORD(g, f->self, FIVC_OFFER_WRITING)))
			continue;
		fivc_store_relaxed(&o->nonce, nonce);
		const uint64_t *src = (const uint64_t *)key;
		uint64_t *dst = (uint64_t *)&o->key;
		for (size_t j = 0; j < sizeof(*key) / 8; j++)
			fivc_store_relaxed(&dst[j], src[j]);
		fivc_store_relaxed(&o->slot, slot);
		fivc_store_relaxed(&o->slot_gen, slot_gen);
		fivc_store_relaxed(&o->adopter, 0);
		uint64_t pw = FIVC_OFFER_WORD(g, f->self, FIVC_OFFER_PENDING);
		/* SYNC POINT WRITE: pairs with the acquire in fivc_offer_lookup. */
		fivc_store_release(&o->state, pw);
		*idx = i;
		*word = pw;
		return 0;
	}
	return -ENOSPC;
}

int fivc_offer_lookup(struct fivc_fabric *f, const struct fivc_tuple *key,
		      struct fivc_offer_view *out)
{
	int found = 0;
	const uint64_t *want = (const uint64_t *)key;
	uint32_t start[2], n = offer_buckets(f, key, start);
	for (uint32_t k = 0; k < 2 * n; k++) {
		if (k == n && start[1] == start[0])
			break;
		uint32_t i = start[k / n] + k % n;
		struct fivc_offer *o = fivc_offer_at(f, i);
		/* SYNC POINT READ: pairs with the release in fivc_offer_post. */
		uint64_t w = fivc_load_acquire(&o->state);
		if (FIVC_OFFER_STATE(w) != FIVC_OFFER_PENDING)
			continue;
		uint64_t k[sizeof(*key) / 8];
		const uint64_t *src = (const uint64_t *)&o->key;
		for (size_t j = 0; j < sizeof(*key) / 8; j++)
			k[j] = fivc_load_relaxed(&src[j]);
		struct fivc_offer_view v = {
			.idx = i,
			.word = w,
			.nonce = fivc_load_relaxed(&o->nonce),
			.slot = fivc_load_relaxed(&o->slot),
			.slot_gen = fivc_load_relaxed(&o->slot_gen),
		};
		/* Seqlock re-check: the fields belong to state word w. */
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (fivc_load_relaxed(&o->state) != w)
			continue;
		if (memcmp(k, want, sizeof(k)) != 0)
			continue;
		if (v.slot >= f->g.nslots || !fivc_member_alive(f, FIVC_OFFER_OWNER(w)))
			continue; /* corrupt or dead: not a live offer */
		if (found++)
			return -EEXIST;
		*out = v;
	}
	return found ? 0 : -ENOENT;
}

int fivc_offer_adopt(struct fivc_fabric *f, const struct fivc_offer_view *v)
{
	if (v->idx >= f->g.noffers)
		return -EINVAL;
	int r = fivc_slot_attach(f, v->slot, v->slot_gen);
	if (r < 0)
		return r;
	struct fivc_offer *o = fivc_offer_at(f, v->idx);
	uint64_t w = v->word;
	uint64_t nw = FIVC_OFFER_WORD(FIVC_OFFER_GEN(w), FIVC_OFFER_OWNER(w), FIVC_OFFER_ADOPTED);
	if (!fivc_cas(&o->state, &w, nw)) {
		fivc_slot_release(f, v->slot, v->slot_gen, FIVC_SIDE_SERVER);
		return -ESTALE;
	}
	fivc_store_relaxed(&o->adopter, f->self);
	return 0;
}

static int offer_check(struct fivc_fabric *f, uint32_t idx, uint64_t word)
{
	if (idx >= f->g.noffers)
		return -EINVAL;
	uint64_t w = fivc_load_acquire(&fivc_offer_at(f, idx)->state);
	if (FIVC_OFFER_GEN(w) != FIVC_OFFER_GEN(word) ||
	    FIVC_OFFER_OWNER(w) != FIVC_OFFER_OWNER(word))
		return -ESTALE;
	return (int)FIVC_OFFER_STATE(w);
}

int fivc_offer_poll(struct fivc_fabric *f, uint32_t idx, uint64_t word)
{
	return offer_check(f, idx, word);
}

int fivc_offer_withdraw(struct fivc_fabric *f, uint32_t idx, uint64_t word)
{
	int st = offer_check(f, idx, word);
	if (st < 0)
		return st;
	struct fivc_offer *o = fivc_offer_at(f, idx);
	uint64_t w = FIVC_OFFER_WORD(FIVC_OFFER_GEN(word), FIVC_OFFER_OWNER(word), FIVC_OFFER_PENDING);
	uint64_t nw = FIVC_OFFER_WORD(FIVC_OFFER_GEN(word), FIVC_OFFER_OWNER(word), FIVC_OFFER_WITHDRAWN);
	if (fivc_cas(&o->state, &w, nw))
		return 0;
	if (FIVC_OFFER_STATE(w) == FIVC_OFFER_ADOPTED && FIVC_OFFER_GEN(w) == FIVC_OFFER_GEN(word))
		return -EALREADY;
	if (FIVC_OFFER_STATE(w) == FIVC_OFFER_WITHDRAWN && FIVC_OFFER_GEN(w) == FIVC_OFFER_GEN(word))
		return 0;
	return -ESTALE;
}

int fivc_offer_remove(struct fivc_fabric *f, uint32_t idx, uint64_t word)
{
	int st = offer_check(f, idx, word);
	if (st < 0)
		return st;
	if (st != FIVC_OFFER_ADOPTED && st != FIVC_OFFER_WITHDRAWN)
		return -EBUSY; /* a pending offer is withdrawn first */
	struct fivc_offer *o = fivc_offer_at(f, idx);
	uint64_t w = FIVC_OFFER_WORD(FIVC_OFFER_GEN(word), FIVC_OFFER_OWNER(word), (uint32_t)st);
	if (fivc_cas(&o->state, &w, FIVC_OFFER_WORD(FIVC_OFFER_GEN(word), 0, FIVC_OFFER_FREE)))
		return 0;
	return -ESTALE;
}

/* The offers of slot/gen whose owner died: an adopted offer stays until its
 * client switches, so a client killed before it wrote left one behind for
 * the next gc (the chaos test: one per such connection, until the registry
 * was full and connections went plain).  Only its key's buckets are looked
 * at. */
static void reap_slot_offers(struct fivc_fabric *f, uint32_t slot, uint32_t gen)
{
	struct fivc_slot *s = fivc_slot_at(f, slot);
	struct fivc_tuple key;
	uint64_t *dst = (uint64_t *)&key;
	const uint64_t *src = (const uint64_t *)&s->tuple;
	for (size_t j = 0; j < sizeof(key) / 8; j++)
		dst[j] = fivc_load_relaxed(&src[j]);
	uint32_t start[2], n = offer_buckets(f, &key, start);
	for (uint32_t k = 0; k < 2 * n; k++) {
		if (k == n && start[1] == start[0])
			break;
		struct fivc_offer *o = fivc_offer_at(f, start[k / n] + k % n);
		uint64_t w = fivc_load_acquire(&o->state);
		if (FIVC_OFFER_STATE(w) == FIVC_OFFER_FREE || fivc_load_relaxed(&o->slot) != slot ||
		    fivc_load_relaxed(&o->slot_gen) != gen ||
		    !dead_by_lock(f, FIVC_OFFER_OWNER(w), NULL))
			continue;
		owned_free(&o->state, w);
	}
}

int fivc_slot_reap(struct fivc_fabric *f, uint32_t slot)
{
	struct fivc_gc_report r = {0};
	if (slot >= f->g.nslots || !can_witness(f))
		return 0;
	uint32_t gen = FIVC_LEASE_GEN(fivc_load_acquire(&fivc_slot_at(f, slot)->lease));
	reclaim_slot(f, slot, dead_by_lock, NULL, &r, 0);
	reap_slot_offers(f, slot, gen);
	return (int)r.slot_sides_freed;
}

int fivc_gc(struct fivc_fabric *f, struct fivc_gc_report *r) { return fivc_gc_flags(f, r, 0); }

int fivc_gc_flags(struct fivc_fabric *f, struct fivc_gc_report *r, unsigned flags)
{
	memset(r, 0, sizeof(*r));
	if (!can_witness(f))
		return 0; /* no witness: nothing is provably dead */
	for (uint32_t m = 0; m < f->g.nmembers; m++) {
		struct fivc_member *me = fivc_member_at(f, m);
		uint32_t st = fivc_load_acquire(&me->state);
		if (st != FIVC_MEMBER_FREE && !fivc_member_alive(f, m + 1))
			r->members_dead++;
	}
	reclaim(f, dead_by_lock, NULL, r, FIVC_TOUCHED_ALL, (flags & FIVC_GC_LIFT_QUARANTINE) != 0);
	/* the claimed-slot bits of free slots (a releaser that died between
	 * its two steps), and pool buffers whose slot moved on */
	for (uint32_t i = 0; i < f->g.nslots; i++) {
		if (!fivc_load_acquire(slot_backed(f, i)))
			continue;
		uint64_t w = fivc_load_acquire(&fivc_slot_at(f, i)->lease);
		uint64_t bit = 1ull << (i % 64);
		if ((uint32_t)w == 0 && (fivc_load_acquire(slotmap_word(f, i)) & bit))
			slotmap_clear(f, i);
	}
	for (int c = 0; c < FIVC_POOL_CLASSES; c++)
		for (uint32_t i = 0; i < f->g.npool[c]; i++) {
			struct fivc_pool_ent *e = fivc_pool_at(f, c, i);
			uint64_t o = fivc_load_acquire(&e->owner);
			if (o == 0 || o == FIVC_POOL_BUSY)
				continue;
			uint32_t slot1 = (uint32_t)o >> 1, gen = (uint32_t)(o >> 32);
			uint64_t w = slot1 && slot1 <= f->g.nslots
					     ? fivc_load_acquire(&fivc_slot_at(f, slot1 - 1)->lease)
					     : 0;
			if (slot1 && slot1 <= f->g.nslots && (uint32_t)w != 0 && FIVC_LEASE_GEN(w) == gen)
				continue;
			if (fivc_cas(&e->owner, &o, 0ull))
				r->buffers_freed++;
		}
	/* a dead guest's id is free again once its leftovers are gone */
	for (uint32_t m = 0; m < f->g.nmembers; m++) {
		struct fivc_member *me = fivc_member_at(f, m);
		uint32_t st = FIVC_MEMBER_GUEST;
		if (fivc_load_acquire(&me->state) == st && !fivc_member_alive(f, m + 1))
			fivc_cas(&me->state, &st, FIVC_MEMBER_FREE);
	}
	return 0;
}

/* ---- `fastivc downgrade` (issue 12) ---- */

static int down_askable(struct fivc_fabric *f, uint32_t i, uint32_t member)
{
	if ((member && i + 1 != member) || i + 1 == f->self) /* (not the asker itself) */
		return 0;
	uint32_t st = __atomic_load_n(&fivc_member_at(f, i)->state, __ATOMIC_ACQUIRE);
	return st == FIVC_MEMBER_ALIVE || st == FIVC_MEMBER_GUEST;
}

uint32_t fivc_down_mark(struct fivc_fabric *f, uint32_t member, int keep)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < f->g.nmembers; i++) {
		if (!down_askable(f, i, member))
			continue;
		struct fivc_member *m = fivc_member_at(f, i);
		if (keep) {
			__atomic_fetch_add(&m->down_req, FIVC_DOWN_REQ_NOW, __ATOMIC_SEQ_CST);
		} else { /* (saturates: never wraps back to "not asked") */
			uint32_t v = __atomic_load_n(&m->down_req, __ATOMIC_RELAXED);
			while ((v & FIVC_DOWN_REQ_PLAIN) != FIVC_DOWN_REQ_PLAIN &&
			       !__atomic_compare_exchange_n(&m->down_req, &v, v + 1, 0,
							    __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
				;
		}
		n++;
	}
	return n;
}

void fivc_down_wake(struct fivc_fabric *f, uint32_t member)
{
	/* a member's watcher sleeps on the word (a process-shared futex: the
	 * mapping is MAP_SHARED); a guest's looks every heartbeat */
	for (uint32_t i = 0; i < f->g.nmembers; i++)
		if (down_askable(f, i, member))
			syscall(SYS_futex, &fivc_member_at(f, i)->down_req, FUTEX_WAKE, INT32_MAX,
				NULL, NULL, 0);
}

uint32_t fivc_down_request(struct fivc_fabric *f, uint32_t member, int drain, int keep)
{
	struct fivc_fabric_hdr *h = (struct fivc_fabric_hdr *)f->base;
	if (drain)
		__atomic_store_n(&h->drain, 1u, __ATOMIC_SEQ_CST);
	uint32_t n = fivc_down_mark(f, member, keep);
	fivc_down_wake(f, member);
	return n;
}

uint32_t fivc_down_poke_follow(struct fivc_fabric *f, uint32_t slot, int side)
{
	if (slot >= f->g.nslots || (side != 0 && side != 1))
		return 0;
	struct fivc_slot *s = fivc_slot_at(f, slot);
	uint32_t n = 0;
	for (int k = 0; k < FIVC_SLOT_HOLDERS; k++) {
		uint32_t id = fivc_load_acquire(&s->holder_ids[side][k]);
		if (!id || id > f->g.nmembers)
			continue; /* (a peer's word: checked like any) */
		struct fivc_member *m = fivc_member_at(f, id - 1);
		__atomic_fetch_add(&m->down_req, FIVC_DOWN_REQ_FOLLOW, __ATOMIC_SEQ_CST);
		syscall(SYS_futex, &m->down_req, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
		n++;
	}
	return n;
}

void fivc_drain_set(struct fivc_fabric *f, int on)
{
	__atomic_store_n(&((struct fivc_fabric_hdr *)f->base)->drain, on ? 1u : 0u,
			 __ATOMIC_SEQ_CST);
}
