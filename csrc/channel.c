/* fastivc — the channel: byte rings with spin-then-sleep and a doorbell.
 *
 * Each ring has one producer and one consumer.  The producer owns `tail`, the
 * consumer owns `head`; each keeps the authoritative value privately and only
 * stores it to shared memory, so a peer scribbling on our own index cannot
 * steer us.  Every index read from the peer is checked: 0 <= tail - head <=
 * size, else the peer is broken and the channel fails with ECONNRESET.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sys/socket.h>

#include "fastivc/atomics.h"
#include "fastivc/channel.h"
#include "fastivc/util.h"

/* Write in pieces of at most this many bytes, publishing the tail after
 * each, so the consumer can start copying out while we copy in. */
#ifndef FIVC_WRITE_CHUNK
#define FIVC_WRITE_CHUNK (64u * 1024)
#endif

#define FIVC_DEFAULT_SPIN_NS 50000u

/* ---- the SB pattern (see atomics.h) ---- */

int fivc_ring_arm_consumer(struct fivc_ring_hdr *r, uint64_t head)
{
	fivc_store_relaxed(&r->cons_waiting, 1);
	fivc_smp_mb(); /* SB: pairs with the fence in fivc_ring_consumer_waiting() */
	return fivc_load_acquire(&r->tail) != head || fivc_load_acquire(&r->wr_closed);
}

int fivc_ring_consumer_waiting(struct fivc_ring_hdr *r)
{
	fivc_smp_mb(); /* SB: pairs with the fence in fivc_ring_arm_consumer() */
	return fivc_load_relaxed(&r->cons_waiting) != 0;
}

/* The same pattern for a producer that waits for space. */
static int ring_arm_producer(struct fivc_ring_hdr *r, uint64_t tail, uint64_t size)
{
	fivc_store_relaxed(&r->prod_waiting, 1);
	fivc_smp_mb(); /* SB: pairs with the fence in ring_producer_waiting() */
	return tail - fivc_load_acquire(&r->head) < size || fivc_load_acquire(&r->rd_closed);
}

static int ring_producer_waiting(struct fivc_ring_hdr *r)
{
	fivc_smp_mb(); /* SB: pairs with the fence in ring_arm_producer() */
	return fivc_load_relaxed(&r->prod_waiting) != 0;
}

static void ring_bell(struct fivc_chan *c, uint32_t *word, uint64_t *counter)
{
	fivc_fetch_add(word, 1);
	c->db->wake(c->db_ctx, word);
	(*counter)++;
}

/* Called by the writer after publishing its tail.  The ringer clears
 * "waiting" (one arm, at most one doorbell), so waiters never clear it
 * themselves: several may watch one ring (a blocking reader thread, poll,
 * epoll sets) and a waiter's clear could wipe another's arm between our
 * look and our ring.  The exchange picks one ringer among several
 * producers (fork).  The plain look first keeps the RMW off the busy path. */
static void notify_consumer(struct fivc_chan *c)
{
	if (fivc_ring_consumer_waiting(c->tx) && fivc_exchange(&c->tx->cons_waiting, 0u))
		ring_bell(c, &c->tx->cons_wake, &c->tx_wakes_sent);
}

/* Called by the reader after publishing its head (see notify_consumer). */
static void notify_producer(struct fivc_chan *c)
{
	if (ring_producer_waiting(c->rx) && fivc_exchange(&c->rx->prod_waiting, 0u))
		ring_bell(c, &c->rx->prod_wake, &c->rx_wakes_sent);
}

/* ---- open ---- */

int fivc_chan_open(struct fivc_chan *c, struct fivc_fabric *f, uint32_t slot,
		   uint32_t gen, int side)
{
	memset(c, 0, sizeof(*c));
	if (slot >= f->g.nslots || (side != 0 && side != 1))
		return -EINVAL;
	struct fivc_slot *s = fivc_slot_at(f, slot);
	uint64_t w = fivc_load_acquire(&s->lease);
	if (FIVC_LEASE_GEN(w) != gen || !f->self ||
	    (FIVC_LEASE_SIDE(w, side) != f->self && !fivc_slot_held_by(f, slot, side, f->self)))
		return -ESTALE; /* (after fork and exec the holder may not be the leaser) */
	for (int d = 0; d < 2; d++)
		if (fivc_load_relaxed(&s->ring[d].magic) != FIVC_RING_MAGIC ||
		    fivc_load_relaxed(&s->ring[d].size) != f->g.ring_size)
			return -EPROTO;
	c->f = f;
	c->slot = s;
	c->idx = slot;
	c->gen = gen;
	c->side = side;
	c->tx = &s->ring[side];
	c->rx = &s->ring[1 - side];
	c->txd = fivc_ring_data(f, slot, side);
	c->rxd = fivc_ring_data(f, slot, 1 - side);
	c->size = f->g.ring_size;
	c->mask = c->size - 1;
	c->tx_tail = fivc_load_acquire(&c->tx->tail);
	c->tx_head_seen = fivc_load_acquire(&c->tx->head);
	c->rx_head = fivc_load_acquire(&c->rx->head);
	c->rx_tail_seen = fivc_load_acquire(&c->rx->tail);
	if (c->tx_tail - c->tx_head_seen > c->size || c->rx_tail_seen - c->rx_head > c->size)
		return -EPROTO;
	c->spin_ns = FIVC_DEFAULT_SPIN_NS;
	c->db = &fivc_doorbell_futex;
	return 0;
}

/* ---- readiness ---- */

static int broken(struct fivc_chan *c)
{
	fivc_store_relaxed(&c->broken, 1);
	return -ECONNRESET;
}

static int is_broken(struct fivc_chan *c) { return fivc_load_relaxed(&c->broken); }

/* >0 data or EOF ready, 0 nothing yet, <0 error.  Refreshes rx_tail_seen. */
static int ready_read(struct fivc_chan *c, int *eof)
{
	*eof = 0;
	if (is_broken(c))
		return -ECONNRESET;
	/* SYNC POINT READ: pairs with the release of the tail in write. */
	uint64_t tail = fivc_load_acquire(&c->rx->tail);
	if (tail - c->rx_head > c->size)
		return broken(c);
	c->rx_tail_seen = tail;
	if (tail != c->rx_head)
		return 1;
	/* wr_closed is stored (release) after the last tail: re-read it. */
	if (fivc_load_acquire(&c->rx->wr_closed)) {
		tail = fivc_load_acquire(&c->rx->tail);
		if (tail - c->rx_head > c->size)
			return broken(c);
		c->rx_tail_seen = tail;
		*eof = tail == c->rx_head;
		return 1;
	}
	switch (fivc_load_relaxed(&c->peer_gone)) {
	case 1: /* its socket closed without a ring EOF: it died; EOF after drain */
		*eof = 1;
		return 1;
	case 2:
		return -ECONNRESET;
	}
	return 0;
}

/* >0 space ready, 0 full, <0 error.  Refreshes tx_head_seen. */
static int ready_write(struct fivc_chan *c)
{
	if (is_broken(c))
		return -ECONNRESET;
	if (fivc_load_acquire(&c->tx->rd_closed))
		return -EPIPE;
	switch (fivc_load_relaxed(&c->peer_gone)) {
	case 1:
		return -EPIPE;
	case 2:
		return -ECONNRESET;
	}
	/* SYNC POINT READ: pairs with the release of the head in read. */
	uint64_t head = fivc_load_acquire(&c->tx->head);
	if (c->tx_tail - head > c->size)
		return broken(c);
	c->tx_head_seen = head;
	return c->tx_tail - head < c->size;
}

/* Is the peer still there?  Only asked after a sleep timed out. */
static int peer_alive(struct fivc_chan *c)
{
	uint64_t w = fivc_load_acquire(&c->slot->lease);
	if (FIVC_LEASE_GEN(w) != c->gen)
		return 0;
	if (!FIVC_LEASE_SIDE(w, 1 - c->side))
		return c->side == FIVC_SIDE_CLIENT ? 1 : 0; /* not adopted yet */
	return fivc_slot_side_alive(c->f, c->idx, c->gen, 1 - c->side);
}

/* Spin for spin_ns, then sleep on the doorbell until ready.  0 = ready
 * (re-check), <0 = error (-ECONNRESET on a dead peer, -EINTR). */
static int wait_ready(struct fivc_chan *c, int writing)
{
	int eof;
	uint64_t start = fivc_now_ns(CLOCK_MONOTONIC);
	uint8_t *fails = &c->spin_fails[writing];
	uint64_t budget = c->spin_ns >> *fails;
	if (++c->spin_probe[writing] >= FIVC_SPIN_PROBE) {
		c->spin_probe[writing] = 0;
		budget = c->spin_ns;
	}
	if (budget) {
		/* Measured: with more busy threads than CPUs (pgbench against
		 * PostgreSQL, 2 cores) a fixed 50 us spin took the CPU the peer
		 * needed and cost 25% against plain TCP; spinning only while it
		 * pays keeps the ping-pong latency and gives that back. */
		for (unsigned i = 1;; i++) {
			int r = writing ? ready_write(c) : ready_read(c, &eof);
			if (r) {
				*fails = budget == c->spin_ns ? 0 : (uint8_t)(*fails >> 1);
				return r < 0 ? r : 0;
			}
			fivc_cpu_relax();
			if (!(i & 31) && fivc_now_ns(CLOCK_MONOTONIC) - start >= budget)
				break;
		}
		if (*fails < FIVC_SPIN_MAX_SHIFT)
			*fails = (uint8_t)(*fails ? *fails * 2 : 1);
		if (*fails > FIVC_SPIN_MAX_SHIFT)
			*fails = FIVC_SPIN_MAX_SHIFT;
	}
	uint32_t *word = writing ? &c->tx->prod_wake : &c->rx->cons_wake;
	uint64_t limit = writing ? c->wr_timeout_ns : c->rd_timeout_ns;
	for (;;) {
		uint32_t tmo = FIVC_LIVENESS_MS;
		if (limit) {
			uint64_t el = fivc_now_ns(CLOCK_MONOTONIC) - start;
			if (el >= limit)
				return -EAGAIN; /* SO_RCVTIMEO / SO_SNDTIMEO expired */
			uint64_t left_ms = (limit - el + 999999) / 1000000;
			if (left_ms < tmo)
				tmo = (uint32_t)left_ms;
		}
		uint32_t seq = fivc_load_acquire(word);
		/* "waiting" stays set when we leave: the peer's next ring clears
		 * it (notify_consumer); clearing it here could wipe the arm of
		 * another waiter on this ring (epoll, poll) just before the peer
		 * looks.  The cost is at most one spare doorbell. */
		int armed = writing ? ring_arm_producer(c->tx, c->tx_tail, c->size)
				    : fivc_ring_arm_consumer(c->rx, c->rx_head);
		int r = armed ? (writing ? ready_write(c) : ready_read(c, &eof)) : 0;
		if (r)
			return r < 0 ? r : 0;
		int w = c->db->wait(c->db_ctx, word, seq, tmo);
		(*(writing ? &c->tx_sleeps : &c->rx_sleeps))++;
		if (w == -EINTR)
			return -EINTR;
		if (w == -ETIMEDOUT && !peer_alive(c)) {
			r = writing ? ready_write(c) : ready_read(c, &eof);
			if (r)
				return r < 0 ? r : 0;
			return broken(c);
		}
	}
}

int fivc_chan_peer_shut(struct fivc_chan *c)
{
	return fivc_load_acquire(&c->rx->wr_closed) || fivc_load_relaxed(&c->peer_gone);
}

int fivc_chan_peer_closed(struct fivc_chan *c)
{
	return fivc_load_relaxed(&c->peer_gone) ||
	       (fivc_load_acquire(&c->rx->wr_closed) && fivc_load_acquire(&c->tx->rd_closed));
}

/* Shared: readiness from the ring's own indices (no lock: only a hint). */
static void refresh(struct fivc_chan *c)
{
	if (!fivc_load_relaxed(&c->shared))
		return;
	uint64_t h = fivc_load_acquire(&c->rx->head), t = fivc_load_acquire(&c->tx->tail);
	if (h - c->rx_head <= c->size)
		c->rx_head = h;
	if (t - c->tx_tail <= c->size)
		c->tx_tail = t;
}

ssize_t fivc_chan_readable(struct fivc_chan *c, int *eof)
{
	refresh(c);
	int r = ready_read(c, eof);
	if (r < 0)
		return r;
	return (ssize_t)(c->rx_tail_seen - c->rx_head);
}

ssize_t fivc_chan_writable(struct fivc_chan *c)
{
	if (c->wr_shut)
		return -EPIPE;
	refresh(c);
	int r = ready_write(c);
	if (r < 0)
		return r;
	return (ssize_t)(c->size - (c->tx_tail - c->tx_head_seen));
}

/* (When it finds the ring ready it leaves the flags set: see
 * notify_consumer for why only the ringer clears them.) */
int fivc_chan_arm(struct fivc_chan *c, int rd, int wr)
{
	int ready = 0;
	refresh(c);
	if (rd)
		ready |= fivc_ring_arm_consumer(c->rx, c->rx_head);
	if (wr)
		ready |= ring_arm_producer(c->tx, c->tx_tail, c->size);
	return ready;
}

void fivc_chan_arm_always(struct fivc_chan *c, int rd, int wr)
{
	if (rd)
		fivc_ring_arm_consumer(c->rx, c->rx_head);
	if (wr)
		ring_arm_producer(c->tx, c->tx_tail, c->size);
}

void fivc_chan_disarm(struct fivc_chan *c)
{
	fivc_store_relaxed(&c->rx->cons_waiting, 0);
	fivc_store_relaxed(&c->tx->prod_waiting, 0);
}

/* ---- several processes on one side (fork) ----
 *
 * The ring indices a side keeps privately are then the shared ones: each
 * read (write) takes the side's reading (writing) lock in the slot and
 * reloads its index from the ring header.  A lock whose owner died is taken
 * over; one whose owner is not a live member (garbage from a broken peer)
 * too, after the same wait. */
#define XLOCK_WAITERS 0x80000000u

static int xlock(struct fivc_chan *c, int wr)
{
	uint32_t *w = &c->slot->xlock[c->side][wr];
	uint32_t me = c->f->self;
	for (unsigned spins = 0;; spins++) {
		uint32_t v = fivc_load_relaxed(w);
		if ((v & ~XLOCK_WAITERS) == 0) {
			if (fivc_cas(w, &v, me | (v & XLOCK_WAITERS)))
				return 0;
			continue;
		}
		if (spins < 256) {
			fivc_cpu_relax();
			continue;
		}
		if (!(v & XLOCK_WAITERS) && !fivc_cas(w, &v, v | XLOCK_WAITERS))
			continue;
		struct timespec ts = {0, 10 * 1000000};
		long r = syscall(SYS_futex, w, FUTEX_WAIT, v | XLOCK_WAITERS, &ts, NULL, 0);
		if (r < 0 && errno == EINTR)
			return -EINTR;
		if (r < 0 && errno == ETIMEDOUT) {
			uint32_t owner = v & ~XLOCK_WAITERS;
			if (owner != me && !fivc_member_alive(c->f, owner)) {
				uint32_t cur = v | XLOCK_WAITERS;
				fivc_cas(w, &cur, (uint32_t)XLOCK_WAITERS); /* free it; retry */
			}
		}
		if (is_broken(c))
			return -ECONNRESET;
	}
}

static void xunlock(struct fivc_chan *c, int wr)
{
	uint32_t *w = &c->slot->xlock[c->side][wr];
	if (__atomic_exchange_n(w, 0u, __ATOMIC_RELEASE) & XLOCK_WAITERS)
		syscall(SYS_futex, w, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* Our index is the ring's (another process may have moved it). */
static int reload(struct fivc_chan *c, int wr)
{
	if (wr) {
		c->tx_tail = fivc_load_acquire(&c->tx->tail);
		c->tx_head_seen = fivc_load_acquire(&c->tx->head);
		if (c->tx_tail - c->tx_head_seen > c->size)
			return broken(c);
	} else {
		c->rx_head = fivc_load_acquire(&c->rx->head);
		c->rx_tail_seen = c->rx_head;
	}
	return 0;
}

static ssize_t chan_read(struct fivc_chan *c, void *buf, size_t len, int flags);
static ssize_t chan_write(struct fivc_chan *c, const void *buf, size_t len, int flags);

static ssize_t chan_io(struct fivc_chan *c, int wr, void *buf, size_t len, int flags)
{
	int shared = fivc_load_relaxed(&c->shared);
	ssize_t n = shared ? xlock(c, wr) : 0;
	if (n < 0)
		return n;
	if (shared)
		n = reload(c, wr);
	if (n == 0)
		n = wr ? chan_write(c, buf, len, flags) : chan_read(c, buf, len, flags);
	if (shared)
		xunlock(c, wr);
	return n;
}

ssize_t fivc_chan_read(struct fivc_chan *c, void *buf, size_t len, int flags)
{
	return chan_io(c, 0, buf, len, flags);
}

ssize_t fivc_chan_write(struct fivc_chan *c, const void *buf, size_t len, int flags)
{
	return chan_io(c, 1, (void *)buf, len, flags);
}

/* ---- data ---- */

static ssize_t chan_read(struct fivc_chan *c, void *buf, size_t len, int flags)
{
	uint8_t *dst = buf;
	size_t got = 0;
	if (is_broken(c))
		return -ECONNRESET;
	if (c->rd_shut || len == 0)
		return 0;
	for (;;) {
		int eof;
		int r = ready_read(c, &eof);
		uint64_t avail = c->rx_tail_seen - c->rx_head;
		if (r > 0 && avail) {
			size_t n = (size_t)FIVC_MIN(avail, (uint64_t)(len - got));
			uint64_t off = c->rx_head & c->mask;
			size_t first = (size_t)FIVC_MIN((uint64_t)n, c->size - off);
			memcpy(dst + got, c->rxd + off, first);
			memcpy(dst + got + first, c->rxd, n - first);
			got += n;
			if (flags & FIVC_PEEK)
				return (ssize_t)got;
			c->rx_head += n;
			/* SYNC POINT WRITE: pairs with the acquire of the head in ready_write. */
			fivc_store_release(&c->rx->head, c->rx_head);
			notify_producer(c);
			if (!(flags & FIVC_WAITALL) || got == len)
				return (ssize_t)got;
			continue;
		}
		if (r < 0)
			return got ? (ssize_t)got : r;
		if (r > 0 && eof)
			return (ssize_t)got;
		if (flags & FIVC_NONBLOCK)
			return got ? (ssize_t)got : -EAGAIN;
		int w = wait_ready(c, 0);
		if (w < 0)
			return got ? (ssize_t)got : w;
	}
}

static ssize_t chan_write(struct fivc_chan *c, const void *buf, size_t len, int flags)
{
	const uint8_t *src = buf;
	size_t done = 0;
	if (is_broken(c))
		return -ECONNRESET;
	if (c->wr_shut)
		return -EPIPE;
	while (done < len) {
		uint64_t space = c->size - (c->tx_tail - c->tx_head_seen);
		int r = 1;
		if (space < len - done) {
			r = ready_write(c);
			space = c->size - (c->tx_tail - c->tx_head_seen);
		} else if (fivc_load_relaxed(&c->tx->rd_closed)) {
			r = -EPIPE;
		}
		if (r < 0)
			return done ? (ssize_t)done : r;
		if (space) {
			size_t n = (size_t)FIVC_MIN(FIVC_MIN(space, (uint64_t)(len - done)),
						    (uint64_t)FIVC_WRITE_CHUNK);
			uint64_t off = c->tx_tail & c->mask;
			size_t first = (size_t)FIVC_MIN((uint64_t)n, c->size - off);
			memcpy(c->txd + off, src + done, first);
			memcpy(c->txd, src + done + first, n - first);
			c->tx_tail += n;
			/* SYNC POINT WRITE: pairs with the acquire of the tail in ready_read. */
			fivc_store_release(&c->tx->tail, c->tx_tail);
			notify_consumer(c);
			done += n;
			continue;
		}
		if (flags & FIVC_NONBLOCK)
			return done ? (ssize_t)done : -EAGAIN;
		int w = wait_ready(c, 1);
		if (w < 0)
			return done ? (ssize_t)done : w;
	}
	return (ssize_t)done;
}

int fivc_chan_shutdown(struct fivc_chan *c, int how)
{
	if (how != SHUT_RD && how != SHUT_WR && how != SHUT_RDWR)
		return -EINVAL;
	if ((how == SHUT_WR || how == SHUT_RDWR) && !c->wr_shut) {
		c->wr_shut = 1;
		/* SYNC POINT WRITE: after the last tail; pairs with ready_read. */
		fivc_store_release(&c->tx->wr_closed, 1);
		notify_consumer(c);
	}
	if ((how == SHUT_RD || how == SHUT_RDWR) && !c->rd_shut) {
		c->rd_shut = 1;
		fivc_store_release(&c->rx->rd_closed, 1);
		notify_producer(c);
	}
	return 0;
}

void fivc_chan_close(struct fivc_chan *c)
{
	if (!c->f)
		return;
	fivc_chan_shutdown(c, SHUT_RDWR);
	fivc_slot_release(c->f, c->idx, c->gen, c->side);
	/* A peer that died cannot release its side; when we saw it go, do it
	 * for it now rather than leave the slot to the next gc.  (Not on every
	 * close: asking the kernel costs a syscall per connection.) */
	if (is_broken(c) || fivc_load_relaxed(&c->peer_gone))
		fivc_slot_reap(c->f, c->idx);
	c->f = NULL;
}
