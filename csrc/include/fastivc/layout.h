/* fastivc — the shared-memory layout of a fabric (DESIGN.md "Fabric", "Channel").
 *
 * Everything in this file lives in memory that every participant of a fabric
 * can write.  A peer is untrusted: nothing read from here is used as an
 * offset, index or size before it is checked (fabric.c, channel.c).
 * Geometry is copied out of the header once, at open, and never re-read.
 *
 * Each field says who writes it.  Fields written by different parties sit on
 * different cache lines, with a guard line between a ring's producer and
 * consumer lines.
 *
 * File layout (all offsets from the start of the fabric):
 *
 *   [0, 4096)                      struct fivc_fabric_hdr
 *   members_off                    nmembers x struct fivc_member   (64 B each)
 *   offers_off                     noffers  x struct fivc_offer    (128 B each)
 *   listeners_off                  nlisteners x struct fivc_listener (64 B each)
 *   wakers_off                     nwakers x struct fivc_waker (1 KiB each)
 *   slotmap_off                    nslots bits: slot claimed (a hint, see fabric.c)
 *   backed_off                     nslots bytes: the slot's pages are reserved
 *   pool_off[c]                    npool[c] x struct fivc_pool_ent (c = 0: mid, 1: big)
 *   slots_off (page aligned)       nslots slabs of slab_size bytes:
 *                                    [0, 4096)           struct fivc_slot
 *                                    [4096, +small)      inline ring 0
 *                                    [+small, +2 small)  inline ring 1
 *   pooldata_off[c] (page aligned) npool[c] x pool_size[c] bytes of ring data
 *
 * Ring memory follows the bytes in flight (DESIGN.md I10): every ring starts
 * on its slot's small inline buffer (what an idle connection costs: one slab,
 * 12 KiB with 4 KiB rings).  A producer that needs more space takes a buffer
 * from a shared pool (mid: 64 KiB, big: ring_size) and switches to it at its
 * current tail; it goes back to the inline buffer when the ring has been
 * empty and idle, and pool buffers give their pages back (punch-hole) after
 * they stayed free a while.  The switch protocol is in channel.c.
 *
 * Liveness locks are OFD byte locks on the fabric file at FIVC_LOCK_BASE + m
 * (member m); POSIX allows locks beyond end of file, so they cost no space.
 */
#ifndef FASTIVC_LAYOUT_H
#define FASTIVC_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#define FIVC_CACHELINE 64
#define FIVC_PAGE 4096

#define FIVC_FABRIC_MAGIC 0x3143564954534146ULL /* "FASTIVC1" little-endian */
#define FIVC_LAYOUT_VERSION 9u
#define FIVC_RING_MAGIC 0x474e4952u /* "RING" */
#define FIVC_LOCK_BASE (1ULL << 40)
#define FIVC_SLOT_HOLDERS 8 /* processes per slot side with their own entry */

/* Limits a header must respect to be accepted. */
#define FIVC_MIN_RING (4u * 1024)
#define FIVC_MAX_RING (64u * 1024 * 1024)
#define FIVC_MAX_SLOTS (1u << 22)
#define FIVC_POOL_CLASSES 2 /* 0: mid, 1: big (ring_size) */
#define FIVC_MAX_POOL (1u << 22)
#define FIVC_MAX_MEMBERS 65533u /* member+1 fits 16 bits; 0xffff is FIVC_LEASE_QUARANTINE */
#define FIVC_MAX_OFFERS 65536u
#define FIVC_LISTENERS 4096u      /* listener table entries (fixed) */
#define FIVC_LISTENER_PROBE 32u   /* entries a port's key may live in */
#define FIVC_WAKERS 2048u         /* wake records (fixed) */
#define FIVC_WAKER_TOKENS 4096u   /* entries one wake record covers */

/* ---- fabric header: written once by the creator, before the file is linked
 * into place (fabric.c), read-only afterwards. ---- */
struct fivc_fabric_hdr {
	uint64_t magic;
	uint32_t layout_version;
	uint32_t hdr_size;
	uint64_t total_size;
	uint64_t epoch; /* creation time (CLOCK_REALTIME ns) */
	uint32_t nmembers;
	uint32_t noffers;
	uint32_t nslots;
	uint32_t ring_size; /* the largest ring per direction (the big pool's), power of two */
	uint64_t members_off;
	uint64_t offers_off;
	uint64_t slots_off;
	uint64_t pooldata_off[FIVC_POOL_CLASSES];
	uint32_t member_size;
	uint32_t offer_size;
	uint32_t slot_size;
	uint32_t flags;
	uint32_t small_ring; /* inline ring per direction, power of two */
	uint32_t slab_size;  /* slot control page + two inline rings */
	uint32_t npool[FIVC_POOL_CLASSES];
	uint32_t pool_size[FIVC_POOL_CLASSES];
	uint64_t slotmap_off;
	uint64_t backed_off;
	uint64_t pool_off[FIVC_POOL_CLASSES];
	uint64_t listeners_off;
	uint32_t nlisteners;
	uint32_t listener_size;
	uint64_t wakers_off;
	uint32_t nwakers;
	uint32_t waker_size;
	/* connections that went back to TCP (issue 12), by reason: [1] the
	 * peer left, [2] exec of a program without the library, [3] io_uring
	 * set up in the process, [4] `fastivc downgrade`, [5] duplicated
	 * onto an fd beyond the library's table (FIVC_DOWN_* in the
	 * preload); added by every
	 * member, read by `fastivc stat` */
	uint64_t downgrades[8];
	/* set by `fastivc downgrade --all` (cleared by --resume): no member
	 * puts a new connection on a ring (the one other field written after
	 * creation, with downgrades) */
	uint32_t drain;
	uint8_t reserved[FIVC_PAGE - 260];
};

/* ---- member: one per process (more exactly: per open file description of
 * the fabric) that joined.  Written only by the member that holds its lock;
 * everything here is informational except `state`. ---- */
/* ALIVE: a process on this kernel, its liveness witnessed by its OFD lock.
 * GUEST: a process in a virtual machine (the fabric is its ivshmem BAR), with
 * no kernel in common: it advances `heartbeat_ns` (a counter) every
 * FIVC_HEARTBEAT_MS and is dead once it has not for FIVC_HEARTBEAT_DEAD_MS.
 * A guest takes an id by CAS FREE -> GUEST; gc frees a dead guest's id. */
enum { FIVC_MEMBER_FREE = 0, FIVC_MEMBER_ALIVE = 1, FIVC_MEMBER_GUEST = 2 };
#define FIVC_HEARTBEAT_MS 100u
#define FIVC_HEARTBEAT_DEAD_MS 2000u
struct fivc_member {
	uint32_t state;    /* written by the member */
	uint32_t pid;      /* pid in the member's own pid namespace (display only) */
	uint64_t joined_ns;
	uint64_t heartbeat_ns; /* GUEST: a counter it advances (FIVC_HEARTBEAT_MS) */
	uint64_t pidns_ino;    /* inode of /proc/self/ns/pid (display only) */
	char comm[16];
	/* FIVC_TOUCHED_* bits: the tables in which this id ever owned an
	 * entry.  Whoever takes the id next sweeps only those for the dead
	 * owner's leftovers (fork would otherwise read the whole offer table,
	 * 65,536 entries, at every fork); slots are always swept (their index
	 * of used slots is small to scan). */
	uint32_t touched;
	/* `fastivc downgrade` (the one field another process writes, then a
	 * futex wake on it): FIVC_DOWN_REQ_PLAIN bits bumped: the member's
	 * connections go back to TCP and it accelerates no new one; the
	 * FIVC_DOWN_REQ_NOW count (bits 16-23) bumped: the connections it has
	 * now go back, new ones are accelerated (--keep-accelerating); the
	 * FIVC_DOWN_REQ_FOLLOW count (bits 24-31) bumped: a peer of one of its
	 * connections left the ring and waits for its count, which the
	 * member's watcher gives where no thread of the program is inside a
	 * call (a program computing, or asleep elsewhere) (preload down.c).
	 * The counts wrap; a NOW that wraps bumps FOLLOW, which costs one
	 * look. */
	uint32_t down_req;
	uint8_t pad[8];
};
#define FIVC_DOWN_REQ_PLAIN 0xffffu
#define FIVC_DOWN_REQ_NOW 0x10000u      /* the unit of its count (bits 16-23) */
#define FIVC_DOWN_REQ_FOLLOW 0x1000000u /* the unit of its count (bits 24-31) */
#define FIVC_DOWN_REQ_NOW_MASK 0xff0000u
enum { FIVC_TOUCHED_OFFERS = 1, FIVC_TOUCHED_LISTENERS = 2, FIVC_TOUCHED_WAKERS = 4,
       FIVC_TOUCHED_ALL = 7 };

/* ---- the TCP 4-tuple an offer is keyed by.  Addresses in network order,
 * IPv4 as an IPv4-mapped IPv6 address, ports in host order. ---- */
struct fivc_tuple {
	uint8_t saddr[16];
	uint8_t daddr[16];
	uint16_t sport;
	uint16_t dport;
	uint32_t pad; /* zero */
};

/* ---- offer: a pending connection offer posted by a client in connect().
 *
 * `state` packs gen:32 | owner member+1:16 | unused:8 | state:8.  `gen` is
 * bumped each time the entry is claimed, so a reader that sees the same
 * `state` before and after reading the other fields (seqlock style) has a
 * consistent snapshot.  The client writes everything but `adopter`; the
 * server writes `adopter` and moves PENDING -> ADOPTED by CAS. ---- */
enum {
	FIVC_OFFER_FREE = 0,
	FIVC_OFFER_WRITING = 1, /* being filled by its owner */
	FIVC_OFFER_PENDING = 2,
	FIVC_OFFER_ADOPTED = 3,
	FIVC_OFFER_WITHDRAWN = 4,
};
#define FIVC_OFFER_STATE(w) ((uint32_t)((w) & 0xff))
#define FIVC_OFFER_OWNER(w) ((uint32_t)(((w) >> 16) & 0xffff)) /* member+1 */
#define FIVC_OFFER_GEN(w) ((uint32_t)((w) >> 32))
#define FIVC_OFFER_WORD(gen, owner, st) \
	(((uint64_t)(gen) << 32) | ((uint64_t)(owner) << 16) | (uint64_t)(st))

struct fivc_offer {
	uint64_t state;   /* CAS: client (claim, publish, withdraw, free), server (adopt) */
	uint64_t nonce;   /* client */
	struct fivc_tuple key; /* client */
	uint32_t slot;    /* client: channel slot index */
	uint32_t slot_gen; /* client: the slot's lease generation */
	uint32_t adopter; /* server: member+1 that adopted */
	uint8_t pad[128 - 68];
};

/* ---- listener: a listening socket of an accelerated process, so that a
 * client posts an offer (and takes a slot) only for a destination where an
 * adopter may be (issue 10: no slot for a peer that is not local).
 *
 * `state` packs gen:32 | owner member+1:16 | unused:8 | state:8, as offers
 * do.  Only the owner writes the other fields, while the state says WRITING.
 * An entry for port p lives in one of FIVC_LISTENER_PROBE entries from
 * hash(p).  It is a hint: a missing entry means a plain connection, a stale
 * or forged one an offer nobody adopts, as before the table existed. ---- */
enum { FIVC_LISTENER_FREE = 0, FIVC_LISTENER_WRITING = 1, FIVC_LISTENER_LIVE = 2 };
struct fivc_listener {
	uint64_t state;   /* CAS by the owner; gc and the member-join sweep free dead owners' */
	uint8_t addr[16]; /* owner: bound address (IPv4-mapped), all zero = any address */
	uint16_t port;    /* owner: host order */
	uint16_t pad0;
	uint32_t netns;   /* owner: network namespace id (loopback addresses only match in it) */
	uint8_t pad[64 - 32];
};

/* ---- wake record: one per epoll set that sleeps on rings (issue 10: one
 * doorbell per sleep of a set, not one per connection).
 *
 * A set arms an entry by putting a WAKE CODE (record, token) instead of 1
 * into the ring's waiting flag (cons_waiting / prod_waiting).  The peer that
 * takes a code from a flag (exchange, as for 1) sets the token's bit in
 * `bits` and the word's bit in `summary`, fences, and exchanges `armed` to
 * 0: only if it was 1 does it send the TCP doorbell on its connection.
 * The owner stores `armed` = 1, fences and looks at `summary` before it
 * sleeps (the store-buffering pattern), and collects bits (exchange) on
 * every call.  So while a set is awake, or already rung, ring moves cost a
 * bit, not a system call on each side.
 *
 * `state` packs gen:32 | owner member+1:16 | unused:8 | state:8, as
 * listeners do.  Everything here is a hint to its owner: a forged bit
 * queues an entry that is then looked at; a forged or freed code makes the
 * ringer send the plain doorbell.  A lost one is found within a liveness
 * slice (FIVC_LIVENESS_MS), when a sleeping set collects anyway. ---- */
enum { FIVC_WAKER_FREE = 0, FIVC_WAKER_LIVE = 2 };
#define FIVC_WAKE_CODE(rec, tok) (0x80000000u | ((uint32_t)(rec) << 12) | (uint32_t)(tok))
#define FIVC_WAKE_IS_CODE(v) (((v) & 0x80000000u) != 0)
#define FIVC_WAKE_REC(v) (((v) >> 12) & 0x7ffffu)
#define FIVC_WAKE_TOK(v) ((v) & 0xfffu)
struct fivc_waker {
	uint64_t state;   /* CAS by the owner; gc and reclaim free dead owners' */
	uint8_t l0_pad[FIVC_CACHELINE - 8];
	uint32_t armed;   /* owner: 1 before it sleeps; ringers exchange it to 0 */
	uint8_t l1_pad[FIVC_CACHELINE - 4];
	uint64_t summary; /* ringers: OR bit w after a bit in bits[w]; owner exchanges */
	uint8_t l2_pad[FIVC_CACHELINE - 8];
	uint64_t bits[FIVC_WAKER_TOKENS / 64]; /* ringers OR; owner exchanges */
	uint8_t pad[1024 - 3 * FIVC_CACHELINE - FIVC_WAKER_TOKENS / 8];
};

/* ---- ring header.  Ring d of a slot carries bytes from side d to side 1-d
 * (side 0 = the connecting client, side 1 = the accepting server).  Indices
 * are free-running 64-bit byte counts; used = tail - head, and a reader
 * rejects used beyond the buffers' capacity as a broken peer.
 *
 * Where the bytes are: byte p lives in buffer `buf` if p >= `from`, else in
 * `prev` (at offset p mod that buffer's size).  A buffer word is 0 for the
 * slot's inline ring, else FIVC_BUF_WORD(class, index) for a pool buffer.
 * The producer changes (prev, from, buf) only under desc_seq (a seqlock:
 * odd while it writes) and only once the consumer's head has passed `from`
 * (nothing of the old prev is unread). ---- */
#define FIVC_BUF_INLINE 0u
#define FIVC_BUF_WORD(c, i) ((((uint32_t)(c) + 1u) << 24) | (uint32_t)(i))
#define FIVC_BUF_CLASS(w) ((int)((w) >> 24) - 1) /* -1: inline */
#define FIVC_BUF_INDEX(w) ((uint32_t)(w) & 0xffffffu)
/* A ring's closing flags.  wr_closed, by the producer: FIVC_WR_FIN (no more
 * bytes: shutdown or close), FIVC_WR_RST (its end reset the connection, as
 * TCP does on a close with bytes unread).  rd_closed, by the consumer:
 * FIVC_RD_GONE (closed: nobody will read), FIVC_RD_RST (reset),
 * FIVC_RD_SHUT (shut for reading but open: a write to it when it has shut
 * writing too resets it, as TCP does in FIN_WAIT).  Reclaim sets FIN/GONE
 * for a dead side. */
#define FIVC_WR_FIN 1u
#define FIVC_WR_RST 2u
#define FIVC_RD_GONE 1u
#define FIVC_RD_RST 2u
#define FIVC_RD_SHUT 4u
#define FIVC_RD_ERRTAKEN 8u /* the reset's error was reported, by some holder of the side */
/* The way back to TCP (issue 12, README "Downgrade").  down_at, by the
 * producer (0 at claim): FIVC_DOWN_LEFT once it left the ring (what it
 * sends after its tail comes over TCP), then also FIVC_DOWN_AT with the
 * count of bytes its TCP socket had sent by then (pre-switch bytes and
 * every doorbell), so that the consumer drops exactly those doorbells
 * before it reads TCP.  FIVC_RD_DOWN in rd_closed, by the consumer: it left
 * the ring at its head; the producer sends what is past the head, and all
 * it writes later, over TCP after its own down_at. */
#define FIVC_DOWN_LEFT (1ull << 63)
#define FIVC_DOWN_AT (1ull << 62)
#define FIVC_DOWN_COUNT(w) ((w) & ((1ull << 62) - 1))
#define FIVC_RD_DOWN 16u
/* rd_sig: SIGIO wanted (O_ASYNC with an owner: every write rings);
 * SIGURG wanted (an owner: an urgent write rings out of band) */
#define FIVC_SIG_IO 1u
#define FIVC_SIG_URG 2u

struct fivc_ring_hdr {
	/* line 0: read-only after the slot's claimer initialised it */
	uint32_t magic;
	uint32_t size;         /* the inline ring's size */
	uint8_t ro_pad[FIVC_CACHELINE - 8];
	/* line 1: written by the producer */
	uint64_t tail;         /* bytes produced */
	uint32_t wr_closed;    /* producer shut down writing (EOF after drain) */
	uint32_t cons_wake;    /* futex word the consumer sleeps on; producer bumps it */
	uint32_t prod_waiting; /* producer is (about to be) asleep for space: 1 or a wake code */
	uint32_t desc_seq;     /* seqlock over buf, prev, from */
	uint64_t from;         /* first byte in buf */
	uint32_t buf, prev;    /* buffer words (see above) */
	uint64_t urg_seq;      /* the last urgent byte's stream offset (MSG_OOB) ... */
	uint32_t urg_count;    /* ... and how many urgent sends there were: stored
				* (release) after urg_seq, before the tail covering it */
	uint32_t urg_gap;      /* 1 + urg_seq minus the mark before it (0: none, or
				* further than 4 GiB), stored with urg_seq */
	uint64_t down_at;      /* FIVC_DOWN_*: the producer left the ring (downgrade) */
	/* line 2: guard, written by nobody */
	uint8_t guard0[FIVC_CACHELINE];
	/* line 3: written by the consumer */
	uint64_t head;         /* bytes consumed */
	uint32_t rd_closed;    /* FIVC_RD_*: consumer gone (producer gets EPIPE), reset, shut */
	uint32_t prod_wake;    /* futex word the producer sleeps on; consumer bumps it */
	uint32_t cons_waiting; /* consumer is (about to be) asleep for data: 1 or a wake code */
	uint32_t rcvbuf;       /* the consumer's SO_RCVBUF as the kernel reports it, when
				* its program set one; else 0 (channel.c "buffer sizes") */
	uint32_t rd_sig;       /* FIVC_SIG_*: the signals the consumer's program asked
				* for (O_ASYNC, F_SETOWN), raised by its kernel for the
				* TCP doorbells (channel.c "signals"); 0 at claim */
	uint8_t c_pad[FIVC_CACHELINE - 28];
	/* line 4: guard */
	uint8_t guard1[FIVC_CACHELINE];
};

/* ---- channel slot control block.
 *
 * `lease` packs gen:32 | side1 member+1:16 | side0 member+1:16.  A slot is
 * free when both member fields are zero.  Claim: CAS (g,0,0) -> (g+1,0,me)
 * by the client; attach: CAS (g,0,a) -> (g,me,a) by the server (only while
 * the client side is still there); release: CAS clearing one's own field.
 * Reclamation clears the field of a dead member the same way. ---- */
/* Quarantine (issue 13).  A guest's death is a judgement (its heartbeat
 * stopped), not a fact: a paused VM resumes, and a thread of it that was
 * storing into the slot, past its last lease check, finishes that store
 * (up to a chunk's copy).  So a reclaimer does not clear a dead member's
 * field: it writes FIVC_LEASE_QUARANTINE there (the side is no longer
 * held, every later lease check fails, and the slot is not free), then
 * looks at busy[side]; only when no thread of that member is inside does
 * the field become 0.  Otherwise the last thread to leave lifts it
 * (fivc_slot_quarantine_lift), or a reclaim pass once FIVC_QUARANTINE_MAX_S
 * passed (a killed VM never leaves), or `fastivc gc --lift-quarantine`.
 * Host processes never count themselves (their death is the kernel's
 * word), so their sides go at once. */
#define FIVC_LEASE_QUARANTINE 0xffffu
#define FIVC_QUARANTINE_MAX_S 300u
#define FIVC_BUSY_TAG(gen) ((uint32_t)(gen) & 0xfffffu)
#define FIVC_BUSY_WORD(tag, n) (((uint32_t)(tag) << 12) | (uint32_t)(n))
#define FIVC_BUSY_WORD_TAG(w) ((uint32_t)(w) >> 12)
#define FIVC_BUSY_WORD_N(w) ((uint32_t)(w) & 0xfffu)
#define FIVC_LEASE_GEN(w) ((uint32_t)((w) >> 32))
#define FIVC_LEASE_SIDE(w, s) ((uint32_t)(((w) >> ((s) ? 16 : 0)) & 0xffff))
#define FIVC_LEASE_WORD(gen, m1, m0) \
	(((uint64_t)(gen) << 32) | ((uint64_t)(m1) << 16) | (uint64_t)(m0))

enum { FIVC_SIDE_CLIENT = 0, FIVC_SIDE_SERVER = 1 };

struct fivc_slot {
	/* line 0 */
	uint64_t lease;        /* CAS by both sides and by reclaimers */
	uint64_t nonce;        /* claimer */
	struct fivc_tuple tuple; /* claimer: the connection this slot carries */
	uint8_t l0_pad[FIVC_CACHELINE - 56];
	/* line 1: the upgrade protocol (issue 3); side0 writes switch_bytes */
	uint64_t switch_bytes; /* client: bytes it sent over TCP before the switch */
	uint32_t switch_state; /* client */
	uint32_t quarantine_s; /* reclaimer: CLOCK_REALTIME seconds of the last quarantine */
	/* Who holds each side.  A process that holds a side (it claimed or
	 * attached it, or inherited it through fork) has its member id in
	 * holder_ids[side]; it removes it when it lets go, and the one that
	 * leaves the table empty closes the side.  A side whose holders are
	 * all dead is reclaimed.  holders[side] counts processes that hold the
	 * side without an entry (more than FIVC_SLOT_HOLDERS forks): while it
	 * is non-zero the side is never reclaimed. */
	uint32_t holders[2];
	uint16_t holder_ids[2][FIVC_SLOT_HOLDERS]; /* member+1, 0 = empty */
	/* Threads of a GUEST member inside the slot for a side: between the
	 * lease check that lets them store into its memory (ring bytes, pool
	 * buffers, indices, flags) and their last such store.  FIVC_BUSY_WORD
	 * (gen's low 20 bits, count); see FIVC_LEASE_QUARANTINE. */
	uint32_t busy[2];
	struct fivc_ring_hdr ring[2];
	/* Used only when several processes use one side at once (fork): a
	 * lock per side and direction ([side][0] reading, [side][1] writing),
	 * holding member+1 of the owner, bit 31 set while someone waits. */
	uint32_t xlock[2][2];
	uint8_t pad[1024 - 2 * FIVC_CACHELINE - 2 * sizeof(struct fivc_ring_hdr) - 16];
};

/* ---- pool buffer: a ring buffer lent to one direction of one slot.
 * `owner` is 0 when free, FIVC_POOL_BUSY while a janitor gives its pages
 * back, else FIVC_POOL_OWNER(slot gen, slot, dir): taken by CAS 0 -> owner
 * by the producer that grows, given back by CAS owner -> 0 by that producer
 * (once the consumer passed it), by the last side to leave the slot, or by
 * gc for a slot that moved on.  `backed`: its pages are reserved
 * (fallocate); `aged`: a janitor saw it free and backed once. ---- */
#define FIVC_POOL_OWNER(gen, slot, dir) \
	(((uint64_t)(gen) << 32) | ((uint64_t)(slot) + 1) << 1 | (uint64_t)(dir))
#define FIVC_POOL_BUSY UINT64_MAX
struct fivc_pool_ent {
	uint64_t owner;
	uint32_t backed;
	uint32_t aged;
};

_Static_assert(sizeof(struct fivc_fabric_hdr) == FIVC_PAGE, "header is one page");
_Static_assert(sizeof(struct fivc_pool_ent) == 16, "pool entry");
_Static_assert(sizeof(struct fivc_member) == 64, "member entry is one line");
_Static_assert(sizeof(struct fivc_tuple) == 40, "tuple size");
_Static_assert(sizeof(struct fivc_offer) == 128, "offer entry is two lines");
_Static_assert(sizeof(struct fivc_listener) == 64, "listener entry is one line");
_Static_assert(sizeof(struct fivc_waker) == 1024, "wake record");
_Static_assert(FIVC_WAKERS <= 0x80000u && FIVC_WAKER_TOKENS == 4096u, "wake code fields");
_Static_assert(sizeof(struct fivc_ring_hdr) == 5 * FIVC_CACHELINE, "ring header lines");
_Static_assert(offsetof(struct fivc_slot, ring) == 2 * FIVC_CACHELINE, "slot lines 0-1");
_Static_assert(offsetof(struct fivc_ring_hdr, tail) == FIVC_CACHELINE, "producer line");
_Static_assert(offsetof(struct fivc_ring_hdr, head) == 3 * FIVC_CACHELINE, "consumer line");
_Static_assert(sizeof(struct fivc_slot) == 1024, "slot control block");
_Static_assert(offsetof(struct fivc_slot, ring) == 2 * FIVC_CACHELINE, "rings after two lines");

#endif
