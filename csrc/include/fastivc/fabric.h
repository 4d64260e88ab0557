/* fastivc — fabric: the shared region, its members, channel slots and the
 * offer registry.  All functions return 0 / a non-negative value or -errno;
 * errno itself is never touched here (STYLE.md 6). */
#ifndef FASTIVC_FABRIC_H
#define FASTIVC_FABRIC_H

#include <stddef.h>
#include <stdint.h>

#include "layout.h"

struct fivc_geometry {
	uint32_t nmembers, noffers, nslots, ring_size;
	/* Ring memory (layout.h): the inline ring of every slot, and how many
	 * pool buffers of each class (0: mid, 64 KiB; 1: big, ring_size).
	 * Zero takes the defaults below; a class no larger than the one
	 * before it has no buffers. */
	uint32_t small_ring, npool[FIVC_POOL_CLASSES];
	uint32_t exact; /* zero pool counts mean none (reading a header), not defaults */
	/* Not layout: the file's permissions, applied only when this call
	 * creates the fabric.  mode 0 means 0600; has_gid 0 keeps the
	 * creator's group.  Servers that drop privileges (nginx workers,
	 * PostgreSQL) need a group they share with their peers. */
	uint32_t mode, has_gid, gid;
	/* Not layout either: 1 opens an existing fabric whatever its owner and
	 * mode (fabric.c check_trust), for gc, which puts no connection
	 * through it.  has_gid/gid also name the group the trust rule
	 * accepts (FASTIVC_FABRIC_GROUP). */
	uint32_t any_owner;
	/* Not layout: 1 replaces a trusted fabric of another layout version
	 * that no member uses (none of its member locks is held): what an
	 * upgrade of the library leaves at the default path.  f->replaced
	 * says it happened. */
	uint32_t replace_stale;
};

/* Defaults when the caller leaves a field zero.  A whole host: 65,536
 * connections at one 12 KiB slab each while idle (768 MiB of address
 * space, resident only as used), with pool buffers for the ones that
 * stream: 4,096 x 64 KiB and 1,024 x 1 MiB (DESIGN.md I10). */
#define FIVC_DEFAULT_SLOTS 65536u
#define FIVC_DEFAULT_MEMBERS 4096u
#define FIVC_DEFAULT_OFFERS 65536u
#define FIVC_DEFAULT_SMALL_RING 4096u
#define FIVC_MID_RING (64u * 1024)
#define FIVC_OFFER_BUCKET 8u /* noffers is a multiple of it (or smaller) */
/* 1 MiB per direction: measured on the 2-core reference machine, 64 KiB
 * streaming ran 10-15 GB/s with 128-256 KiB rings and 31-38 GB/s with
 * 1-2 MiB rings (producer and consumer stop sharing cache lines). */
#define FIVC_DEFAULT_RING (1024u * 1024)

/* Private view of an opened fabric.  `g` and the offsets are copied out of
 * the header once, after validation; they are never re-read from shared
 * memory. */
struct fivc_fabric {
	int fd;             /* -1 for a memory-only fabric (tests, fuzzing) */
	uint8_t *base;
	uint64_t size;
	struct fivc_geometry g;
	uint64_t members_off, offers_off, slots_off;
	uint64_t slotmap_off, backed_off, listeners_off, wakers_off;
	uint64_t pool_off[FIVC_POOL_CLASSES], pooldata_off[FIVC_POOL_CLASSES];
	uint32_t pool_size[FIVC_POOL_CLASSES];
	uint32_t slab_size;
	uint64_t epoch;
	uint32_t self;      /* our member index + 1; 0 = not joined */
	uint64_t joined_ns; /* GUEST: our member's joined_ns, to know it is still ours */
	int guest;          /* mapped through an ivshmem BAR: we are a GUEST member */
	uint32_t replaced;  /* open replaced a stale fabric of this layout version */
	uint64_t *hb_seen;  /* per member: last heartbeat seen, and when (private) */
	uint64_t *alive_ns; /* per member: when last seen alive (private; NULL: none) */
	/* private allocation hints: where the last free slot / pool buffer was */
	uint32_t slot_hint, pool_hint[FIVC_POOL_CLASSES];
	uint64_t full_gc_ns; /* the last reclaim pass a full fabric ran */
	uint32_t waker_hint; /* private: where the last free wake record was */
	char path[256];
};

/* The layout of a fabric of geometry g: g's zero fields get their
 * defaults, the offsets and sizes go into f's layout fields, the total
 * size into *total.  -EINVAL for a geometry out of range. */
int fivc_layout_compute(struct fivc_geometry *g, struct fivc_fabric *f, uint64_t *total);

/* Open the fabric at path, creating it race-free if missing (geometry from g,
 * zero fields take defaults), and join it as a member.  On failure a message
 * naming the path and the problem is written to err. */
int fivc_fabric_open(const char *path, const struct fivc_geometry *g,
		     struct fivc_fabric *f, char *err, size_t errlen);
/* Take over a fabric already open on fd as member member1 (its lock is on
 * fd's open file description: exec kept it open).  path is for display and
 * for fork's re-join. */
int fivc_fabric_adopt_fd(const char *path, int fd, uint32_t member1, struct fivc_fabric *f,
			 char *err, size_t errlen);
/* Open the fabric of an ivshmem device in a virtual machine ("pci:auto" or
 * "pci:DDDD:BB:DD.F": BAR 2 through sysfs) and join as a GUEST member. */
int fivc_fabric_open_pci(const char *spec, struct fivc_fabric *f, char *err, size_t errlen);
/* Join a mapped region (a BAR, or a test's mapping of a fabric file) as a
 * GUEST member, whose liveness is its heartbeat: what open_pci does once
 * it mapped the BAR.  f->fd stays -1. */
int fivc_fabric_attach_guest(void *base, uint64_t len, struct fivc_fabric *f,
			     char *err, size_t errlen);
/* A GUEST member's heartbeat: advance it (every FIVC_HEARTBEAT_MS).  A
 * guest that stopped beating for FIVC_HEARTBEAT_DEAD_MS (a paused VM) was
 * judged dead by the host and its id may be someone else's: then it does
 * not beat for that id but joins again, under a new id, and returns 1 (its
 * old connections' slots may be reused: the channels see their lease
 * moved and give ECONNRESET); 0 otherwise. */
int fivc_member_beat(struct fivc_fabric *f);
/* Validate and adopt an existing region (e.g. a test image, a PCI BAR);
 * no member is joined and no locks exist (fd = -1). */
int fivc_fabric_attach_mem(void *base, uint64_t len, struct fivc_fabric *f,
			   char *err, size_t errlen);
/* Initialise a fresh region of exactly the layout's size. */
int fivc_fabric_format(void *base, uint64_t len, const struct fivc_geometry *g);
void fivc_fabric_close(struct fivc_fabric *f);

/* Members. */
int fivc_member_alive(struct fivc_fabric *f, uint32_t member1);

/* Slots. */
static inline struct fivc_slot *fivc_slot_at(struct fivc_fabric *f, uint32_t i)
{
	return (struct fivc_slot *)(f->base + f->slots_off + (uint64_t)i * f->slab_size);
}
/* Slot i's inline ring d. */
static inline uint8_t *fivc_ring_inline(struct fivc_fabric *f, uint32_t i, int d)
{
	return f->base + f->slots_off + (uint64_t)i * f->slab_size + FIVC_PAGE +
	       (uint64_t)d * f->g.small_ring;
}
static inline struct fivc_pool_ent *fivc_pool_at(struct fivc_fabric *f, int c, uint32_t i)
{
	return (struct fivc_pool_ent *)(f->base + f->pool_off[c] + (uint64_t)i * sizeof(struct fivc_pool_ent));
}
static inline uint8_t *fivc_pool_data(struct fivc_fabric *f, int c, uint32_t i)
{
	return f->base + f->pooldata_off[c] + (uint64_t)i * f->pool_size[c];
}
static inline struct fivc_offer *fivc_offer_at(struct fivc_fabric *f, uint32_t i)
{
	return (struct fivc_offer *)(f->base + f->offers_off + (uint64_t)i * sizeof(struct fivc_offer));
}
static inline struct fivc_listener *fivc_listener_at(struct fivc_fabric *f, uint32_t i)
{
	return (struct fivc_listener *)(f->base + f->listeners_off +
					(uint64_t)i * sizeof(struct fivc_listener));
}
static inline struct fivc_waker *fivc_waker_at(struct fivc_fabric *f, uint32_t i)
{
	return (struct fivc_waker *)(f->base + f->wakers_off + (uint64_t)i * sizeof(struct fivc_waker));
}
static inline struct fivc_member *fivc_member_at(struct fivc_fabric *f, uint32_t i)
{
	return (struct fivc_member *)(f->base + f->members_off + (uint64_t)i * sizeof(struct fivc_member));
}

/* Claim a free slot as side 0 and initialise its rings; returns the slot
 * index and its lease generation. */
int fivc_slot_claim(struct fivc_fabric *f, const struct fivc_tuple *t,
		    uint64_t nonce, uint32_t *slot, uint32_t *gen);
/* Attach as side 1 to slot (gen must match, side 0 must still be there). */
int fivc_slot_attach(struct fivc_fabric *f, uint32_t slot, uint32_t gen);
/* Whether member1 holds `side` of the slot (its lease or a holder entry). */
int fivc_slot_held_by(struct fivc_fabric *f, uint32_t slot, int side, uint32_t member1);
/* Whether some process still holds `side` of the slot (read-only). */
int fivc_slot_side_alive(struct fivc_fabric *f, uint32_t slot, uint32_t gen, int side);
/* The same for a waiter that asks again and again (every FIVC_LIVENESS_MS):
 * a member seen alive less than max_age_ns ago is not asked about again. */
int fivc_slot_side_alive_recent(struct fivc_fabric *f, uint32_t slot, uint32_t gen, int side,
				uint64_t max_age_ns);
/* Members' liveness as seen once, for a pass over many slots (fork: the
 * dead entries in full holder tables are mostly the same few children). */
struct fivc_alive_memo {
	uint16_t id[16];
	uint8_t alive[16];
	int n;
};
/* Processes holding a side (fork).  hold: the process with member id
 * member1 holds `side` too (called by a holder, before the new process can
 * run); 0, or 1 when it is counted without an entry (member1 0, or the
 * table is full of live members) (then it unholds with member1 = 0).  With
 * memo, a full table's dead entries are reused.  unhold: member1 lets
 * go; returns 1 when no holder is left, and the caller then closes the
 * channel, which releases the side. */
int fivc_slot_hold(struct fivc_fabric *f, uint32_t slot, uint32_t gen, int side,
		   uint32_t member1, struct fivc_alive_memo *memo);
int fivc_slot_unhold(struct fivc_fabric *f, uint32_t slot, uint32_t gen, int side,
		     uint32_t member1);
/* 1 when we (f->self) are the only process holding `side`: no holder
 * counted without an entry, and every other entry's member dead (those
 * entries are cleared on the way: their holds went with them); 0 if not;
 * -errno.  Asks the kernel once per other entry. */
int fivc_slot_sole_holder(struct fivc_fabric *f, uint32_t slot, uint32_t gen, int side);
/* Join the fabric once more through a new open file description, for a
 * process about to be forked: returns the new fd and member id in *fd and
 * *member1 (the child makes them its own: fivc_fabric_become).  -errno. */
int fivc_member_prepare(struct fivc_fabric *f, int *fd, uint32_t *member1);
/* The child side of fivc_member_prepare: switch f to fd and member1,
 * closing the inherited fd (whose lock the parent keeps). */
void fivc_fabric_become(struct fivc_fabric *f, int fd, uint32_t member1);
/* Undo fivc_member_prepare (fork failed, or in the parent after it). */
void fivc_member_forget(struct fivc_fabric *f, int fd, uint32_t member1, int free_entry);
/* Give up our side of the slot; the slot is free once both sides did. */
int fivc_slot_release(struct fivc_fabric *f, uint32_t slot, uint32_t gen, int side);

/* Ring buffers from the pool.  take: a free buffer of class c for
 * direction dir of the slot (reserving its pages first); its buffer word
 * in *buf.  give: the buffer goes back (punch: its pages too).  Both
 * -errno.  fivc_pool_trim: give the pages of buffers that stayed free since
 * the previous call back to the system (a janitor, about once a second). */
int fivc_pool_take(struct fivc_fabric *f, int c, uint32_t slot, uint32_t gen, int dir,
		   uint32_t *buf);
int fivc_pool_give(struct fivc_fabric *f, uint32_t buf, uint32_t slot, uint32_t gen, int dir,
		   int punch);
void fivc_pool_trim(struct fivc_fabric *f);
/* Where buffer word buf lives and how large it is, if it is slot's
 * direction dir's to use: 0, or -EPROTO for a word that names no such
 * buffer (a broken peer). */
int fivc_buf_resolve(struct fivc_fabric *f, uint32_t buf, uint32_t slot, uint32_t gen, int dir,
		     uint8_t **data, uint64_t *size);

/* Clear the sides of one slot whose member died; returns how many. */
int fivc_slot_reap(struct fivc_fabric *f, uint32_t slot);

/* Offers. */
int fivc_offer_post(struct fivc_fabric *f, const struct fivc_tuple *key,
		    uint64_t nonce, uint32_t slot, uint32_t slot_gen, uint32_t *idx,
		    uint64_t *word);
struct fivc_offer_view {
	uint32_t idx;
	uint64_t word;  /* the state word the snapshot was taken under */
	uint64_t nonce;
	uint32_t slot, slot_gen;
};
/* Look up a PENDING offer by exact key.  0 when exactly one live offer
 * matches; -ENOENT for none; -EEXIST when ambiguous. */
int fivc_offer_lookup(struct fivc_fabric *f, const struct fivc_tuple *key,
		      struct fivc_offer_view *out);
/* Server: attach to the slot, then CAS the offer PENDING -> ADOPTED. */
int fivc_offer_adopt(struct fivc_fabric *f, const struct fivc_offer_view *v);
/* Client: current state of its own offer (FIVC_OFFER_*), or -ESTALE. */
int fivc_offer_poll(struct fivc_fabric *f, uint32_t idx, uint64_t word);
/* Client: PENDING -> WITHDRAWN; -EALREADY if it was adopted meanwhile. */
int fivc_offer_withdraw(struct fivc_fabric *f, uint32_t idx, uint64_t word);
/* Client: free the entry (after it saw ADOPTED or withdrew it). */
int fivc_offer_remove(struct fivc_fabric *f, uint32_t idx, uint64_t word);

/* Reclamation of dead members' offers and slot sides. */
/* Listeners (layout.h: a hint for clients).  add: publish that we listen
 * on addr:port (addr all zero: any address) in network namespace netns;
 * returns the entry and its word (0, or -ENOSPC when the port's entries are
 * all taken).  A second add of the same key by the same member returns the
 * existing entry.  remove: our entry goes (no-op if it is not ours any
 * more).  valid: the entry is still ours.  match: some live entry says an
 * accelerated process may accept daddr:dport (netns: the client's, compared
 * for loopback destinations only); 1 or 0. */
int fivc_listener_add(struct fivc_fabric *f, const uint8_t addr[16], uint16_t port,
		      uint32_t netns, uint32_t *idx, uint64_t *word);
void fivc_listener_remove(struct fivc_fabric *f, uint32_t idx, uint64_t word);
int fivc_listener_valid(struct fivc_fabric *f, uint32_t idx, uint64_t word);
int fivc_listener_match(struct fivc_fabric *f, const uint8_t daddr[16], uint16_t dport,
			int loopback, uint32_t netns);

/* Wake records (layout.h).  take: a free record, zeroed, for us; its index
 * and word (-ENOSPC: none free; the set then arms with plain flags).
 * release: it goes back (no-op if not ours any more).  note: a ringer took
 * code from a waiting flag: set its bit; 1 if the doorbell must still be
 * sent (the set sleeps, or the code is not a live record's). */
int fivc_waker_take(struct fivc_fabric *f, uint32_t *idx, uint64_t *word);
void fivc_waker_release(struct fivc_fabric *f, uint32_t idx, uint64_t word);
int fivc_waker_note(struct fivc_fabric *f, uint32_t code);
extern uint64_t fivc_wakes_coalesced; /* doorbells note() saved, this process (relaxed atomic) */

struct fivc_gc_report {
	uint32_t wakers_freed;
	uint32_t listeners_freed;
	uint32_t offers_freed;
	uint32_t slot_sides_freed;
	uint32_t slots_freed;
	uint32_t members_dead;
	uint32_t buffers_freed; /* pool buffers of slots that moved on */
	uint32_t slots_quarantined; /* sides left in quarantine (FIVC_LEASE_QUARANTINE) */
	uint32_t quarantines_lifted;
};
int fivc_gc(struct fivc_fabric *f, struct fivc_gc_report *r);
/* FIVC_GC_LIFT_QUARANTINE: lift every quarantine of a dead member, inside
 * or not (the operator knows the guest is gone for good). */
#define FIVC_GC_LIFT_QUARANTINE 1u
int fivc_gc_flags(struct fivc_fabric *f, struct fivc_gc_report *r, unsigned flags);
/* `fastivc downgrade`: ask members to take their connections back to TCP
 * and accelerate no new one (keep: new ones are accelerated): the member
 * with id+1 == member, else every live one; drain: then no member
 * accelerates a new connection until fivc_drain_set(f, 0).  Returns how
 * many were asked. */
uint32_t fivc_down_request(struct fivc_fabric *f, uint32_t member, int drain, int keep);
/* The two halves of fivc_down_request: mark the asked words, then wake
 * their watchers.  Several members asked at once are all marked before any
 * is woken: a woken one's downgrade pokes its peers' watchers (FOLLOW)
 * within 1 ms, and a peer that follows before it sees its own ask leaves
 * its unread ring bytes to its program's calls (regression: `--all` under
 * load left the client's side held until its next call). */
uint32_t fivc_down_mark(struct fivc_fabric *f, uint32_t member, int keep);
void fivc_down_wake(struct fivc_fabric *f, uint32_t member);
void fivc_drain_set(struct fivc_fabric *f, int on);
/* The way back to TCP: the holders of a slot's side (its peer, waiting
 * for their count) are asked to follow now (FIVC_DOWN_REQ_FOLLOW).
 * Returns how many were asked. */
uint32_t fivc_down_poke_follow(struct fivc_fabric *f, uint32_t slot, int side);
/* A guest member's last thread left the slot (busy 0): lift its side's
 * quarantine if there is one; 1 when lifted. */
int fivc_slot_quarantine_lift(struct fivc_fabric *f, uint32_t slot, uint32_t gen, int side);

#endif
