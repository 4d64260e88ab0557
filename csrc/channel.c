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
	return fivc_load_acquire(&r->tail) != head || fivc_load_acquire(&r->wr_closed) ||
	       (fivc_load_acquire(&r->down_at) & FIVC_DOWN_LEFT);
}

int fivc_ring_consumer_waiting(struct fivc_ring_hdr *r)
{
	fivc_smp_mb(); /* SB: pairs with the fence in fivc_ring_arm_consumer() */
	return fivc_load_relaxed(&r->cons_waiting) != 0;
}

static int before(uint64_t a, uint64_t b) { return (int64_t)(a - b) < 0; }
enum { URG_NONE, URG_PENDING, URG_VALID, URG_READ }; /* "urgent data" below */
static int urg_mark(struct fivc_chan *c, uint64_t *pos);
static int tx_can_grow(struct fivc_chan *c);
static uint64_t tx_space(const struct fivc_chan *c);
static uint64_t tx_bound(const struct fivc_chan *c);

/* The same pattern for a producer that waits for space.  (Poll and epoll
 * call it from threads that do not hold the writer's lock: it only looks.) */
static int ring_arm_producer(struct fivc_chan *c)
{
	struct fivc_ring_hdr *r = c->tx;
	fivc_store_relaxed(&r->prod_waiting, 1);
	fivc_smp_mb(); /* SB: pairs with the fence in ring_producer_waiting() */
	uint64_t head = fivc_load_acquire(&r->head), tail = c->tx_tail;
	uint64_t base = before(head, c->txv.from) ? c->txv.from : head;
	return ((tail - base < c->txv.size || tx_can_grow(c)) && tail - head < tx_bound(c)) ||
	       (fivc_load_acquire(&r->rd_closed) & (FIVC_RD_GONE | FIVC_RD_RST | FIVC_RD_DOWN));
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
/* A flag taken by the exchange: 1 asks for the doorbell; a wake code
 * (layout.h "wake record") for it only if that record's set sleeps. */
static int bell_needed(struct fivc_chan *c, uint32_t v)
{
	return v && (!FIVC_WAKE_IS_CODE(v) || fivc_waker_note(c->f, v));
}

/* No bell for a peer that closed its side (its consumer flag RD_GONE, in
 * the ring we write): nobody there waits, and a TCP doorbell byte to a
 * closed socket is answered with a reset, an error on our socket the
 * program could see (regression, issue 11: SO_ERROR gave EPIPE after our
 * shutdown, whose FIN rang for the arm the peer's last timed-out recv had
 * left). */
static int peer_closed_side(const struct fivc_chan *c)
{
	return (fivc_load_relaxed(&c->tx->rd_closed) & FIVC_RD_GONE) != 0;
}

/* ---- signals (issue 11) ----
 *
 * The kernel raises SIGIO at a socket's owner (F_SETOWN) when data or a FIN
 * arrives and the file has O_ASYNC, and SIGURG at the owner when urgent
 * data arrives.  Ring bytes cross no kernel, so the consumer says in its
 * ring line (rd_sig) what its program asked for, and its kernel raises the
 * signals for our TCP doorbells: with FIVC_SIG_IO every write rings (the
 * consumer drains them, io.c), with FIVC_SIG_URG an urgent write also
 * sends an out-of-band doorbell byte.  A FIN, a reset and a writer's space
 * (an EAGAIN arms the producer flag) come as they do without signals: TCP
 * closes, doorbells.  Differences (README): SIGIO also while a thread of
 * the reader blocks in recv (the kernel then raises none), and at a writer
 * whose poll for POLLOUT had armed its flag. */
static void notify_consumer(struct fivc_chan *c)
{
	int want = fivc_ring_consumer_waiting(c->tx) &&
		   bell_needed(c, fivc_exchange(&c->tx->cons_waiting, 0u));
	if ((want || (fivc_load_relaxed(&c->tx->rd_sig) & FIVC_SIG_IO)) && !peer_closed_side(c))
		ring_bell(c, &c->tx->cons_wake, &c->tx_wakes_sent);
}

/* Called by the reader after publishing its head (see notify_consumer). */
static void notify_producer(struct fivc_chan *c)
{
	if (ring_producer_waiting(c->rx) &&
	    bell_needed(c, fivc_exchange(&c->rx->prod_waiting, 0u)) && !peer_closed_side(c))
		ring_bell(c, &c->rx->prod_wake, &c->rx_wakes_sent);
}

/* ---- where the bytes are (layout.h "ring header") ---- */

/* Ring r's descriptor, read consistently; -EAGAIN while its producer is
 * changing it.  SYNC POINT READ: pairs with the releases in desc_write(). */
static int desc_read(struct fivc_ring_hdr *r, uint32_t *seq, uint32_t *buf, uint32_t *prev,
		     uint64_t *from)
{
	uint32_t s1 = fivc_load_acquire(&r->desc_seq);
	if (s1 & 1)
		return -EAGAIN;
	*buf = fivc_load_relaxed(&r->buf);
	*prev = fivc_load_relaxed(&r->prev);
	*from = fivc_load_relaxed(&r->from);
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	if (fivc_load_relaxed(&r->desc_seq) != s1)
		return -EAGAIN;
	*seq = s1;
	return 0;
}

/* Producer: publish (prev, from, buf); a seqlock, so a consumer never
 * pairs one switch's `from` with another's buffers. */
static void desc_write(struct fivc_ring_hdr *r, uint32_t prev, uint64_t from, uint32_t buf,
		       uint32_t *seq)
{
	uint32_t s0 = fivc_load_relaxed(&r->desc_seq) & ~1u;
	fivc_store_relaxed(&r->desc_seq, s0 + 1);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	fivc_store_relaxed(&r->prev, prev);
	fivc_store_relaxed(&r->from, from);
	fivc_store_relaxed(&r->buf, buf);
	fivc_store_release(&r->desc_seq, s0 + 2);
	*seq = s0 + 2;
}

/* The view of ring r (direction dir) for a side whose position is pos: the
 * prev buffer is resolved only while pos is before `from` (after that it
 * may already be someone else's).  A buffer that does not check out under
 * an unchanged descriptor is a broken peer (-EPROTO); one that changed
 * meanwhile (a switch, and the old buffer given back) is read again. */
static int view_load(struct fivc_chan *c, struct fivc_ring_hdr *r, int dir, uint64_t pos,
		     struct fivc_ringview *v)
{
	for (unsigned tries = 0; tries < 100000; tries++) {
		struct fivc_ringview n = {0};
		if (desc_read(r, &n.seq, &n.buf, &n.prev, &n.from) < 0) {
			fivc_cpu_relax();
			continue;
		}
		int rc = fivc_buf_resolve(c->f, n.buf, c->idx, c->gen, dir, &n.data, &n.size);
		if (rc == 0 && before(pos, n.from))
			rc = fivc_buf_resolve(c->f, n.prev, c->idx, c->gen, dir, &n.pdata, &n.psize);
		if (rc < 0) {
			__atomic_thread_fence(__ATOMIC_ACQUIRE);
			if (fivc_load_relaxed(&r->desc_seq) != n.seq)
				continue;
			return -EPROTO;
		}
		n.prev_held = n.pdata && n.prev != FIVC_BUF_INLINE;
		*v = n;
		return 0;
	}
	return -EPROTO; /* a descriptor that never settles */
}

/* Copy n bytes at stream position pos out of (or into) the view's buffers. */
static void view_copy(const struct fivc_ringview *v, uint64_t pos, uint8_t *p, size_t n, int in)
{
	while (n) {
		int old = before(pos, v->from);
		uint8_t *d = old ? v->pdata : v->data;
		uint64_t sz = old ? v->psize : v->size;
		size_t k = n;
		if (old && v->from - pos < k)
			k = (size_t)(v->from - pos);
		uint64_t off = pos & (sz - 1);
		size_t first = (size_t)FIVC_MIN((uint64_t)k, sz - off);
		if (in) {
			memcpy(d + off, p, first);
			memcpy(d, p + first, k - first);
		} else {
			memcpy(p, d + off, first);
			memcpy(p + first, d, k - first);
		}
		p += k;
		pos += k;
		n -= k;
	}
}

/* Bytes [head, tail) fit the view's buffers. */
static int view_holds(const struct fivc_ringview *v, uint64_t head, uint64_t tail)
{
	if (before(tail, head))
		return 0;
	if (!before(head, v->from))
		return tail - head <= v->size;
	uint64_t end = before(v->from, tail) ? v->from : tail;
	return end - head <= v->psize && (!before(v->from, tail) || tail - v->from <= v->size);
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
		    fivc_load_relaxed(&s->ring[d].size) != f->g.small_ring)
			return -EPROTO;
	c->f = f;
	c->slot = s;
	c->idx = slot;
	c->gen = gen;
	c->side = side;
	c->tx = &s->ring[side];
	c->rx = &s->ring[1 - side];
	c->max_size = f->g.small_ring;
	for (int k = 0; k < FIVC_POOL_CLASSES; k++)
		if (f->g.npool[k] && f->pool_size[k] > c->max_size)
			c->max_size = f->pool_size[k];
	c->tx_tail = fivc_load_acquire(&c->tx->tail);
	c->tx_head_seen = fivc_load_acquire(&c->tx->head);
	c->rx_head = fivc_load_acquire(&c->rx->head);
	c->rx_tail_seen = fivc_load_acquire(&c->rx->tail);
	/* (exec and fork take over rings that may have grown) */
	if (view_load(c, c->tx, side, c->tx_head_seen, &c->txv) < 0 ||
	    view_load(c, c->rx, 1 - side, c->rx_head, &c->rxv) < 0)
		return -EPROTO;
	if (!view_holds(&c->txv, c->tx_head_seen, c->tx_tail) ||
	    !view_holds(&c->rxv, c->rx_head, c->rx_tail_seen))
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

/* Our side's lease still stands: the slot has the generation we opened and
 * our side is held.  A member judged dead (a guest paused past its
 * heartbeat window) had its side reclaimed, and the slot may carry another
 * connection by now: such a member must neither publish an index there nor
 * return bytes it read from it.  Line 0 of the slot is read-mostly, so this
 * is a load from our own cache on the busy path. */
static int lease_held(struct fivc_chan *c)
{
	uint64_t w = fivc_load_acquire(&c->slot->lease);
	uint32_t m = FIVC_LEASE_SIDE(w, c->side);
	return FIVC_LEASE_GEN(w) == c->gen && m != 0 && m != FIVC_LEASE_QUARANTINE;
}

/* ---- a guest inside the slot (quarantine: layout.h) ----
 *
 * Every store of ours into the slot's memory that a lease check lets
 * through (ring bytes, indices, a descriptor, the closing flags) is made
 * between chan_enter and chan_leave.  A GUEST member counts itself in
 * busy[side] first and checks the lease after a full fence; a reclaimer
 * that judged it dead marks the side quarantined first and looks at the
 * count after a full fence (fabric.c, reclaim_slot).  So either we see the
 * mark and store nothing, or it sees us and the slot stays out of use
 * until our last thread leaves.  A host process's death is the kernel's
 * word, not a judgement: it only checks the lease. */
static void chan_leave(struct fivc_chan *c)
{
	if (!c->f->guest)
		return;
	uint32_t *b = &c->slot->busy[c->side], tag = FIVC_BUSY_TAG(c->gen);
	uint32_t v = fivc_load_relaxed(b);
	do {
		if (FIVC_BUSY_WORD_TAG(v) != tag || !FIVC_BUSY_WORD_N(v))
			return; /* (lifted by force, or taken over by the next connection) */
	} while (!fivc_cas(b, &v, v - 1)); /* release: our stores before the count drops */
	if (FIVC_BUSY_WORD_N(v - 1) == 0) {
		uint64_t w = fivc_load_acquire(&c->slot->lease);
		if (FIVC_LEASE_GEN(w) == c->gen &&
		    FIVC_LEASE_SIDE(w, c->side) == FIVC_LEASE_QUARANTINE)
			fivc_slot_quarantine_lift(c->f, c->idx, c->gen, c->side);
	}
}

static int chan_enter(struct fivc_chan *c)
{
	if (!c->f->guest)
		return lease_held(c);
	if (!lease_held(c))
		return 0; /* (a count under another generation is not ours to touch) */
	uint32_t *b = &c->slot->busy[c->side], tag = FIVC_BUSY_TAG(c->gen);
	uint32_t v = fivc_load_relaxed(b);
	for (;;) {
		uint32_t n = FIVC_BUSY_WORD_TAG(v) == tag ? FIVC_BUSY_WORD_N(v) : 0;
		if (n == FIVC_BUSY_WORD_N(~0u)) { /* (4,095 threads inside: wait for one) */
			fivc_cpu_relax();
			v = fivc_load_relaxed(b);
			continue;
		}
		if (fivc_cas(b, &v, FIVC_BUSY_WORD(tag, n + 1)))
			break;
	}
	fivc_smp_mb(); /* SYNC POINT: pairs with reclaim_slot's CAS and fence */
	if (lease_held(c))
		return 1;
	chan_leave(c);
	return 0;
}

int fivc_chan_enter(struct fivc_chan *c) { return c->f && chan_enter(c); }

void fivc_chan_leave(struct fivc_chan *c)
{
	if (c->f)
		chan_leave(c);
}

/* The consumer, after loading the tail: the view must describe the bytes
 * up to it.  The descriptor is read after the tail (the producer writes it
 * before the bytes it covers), and again only when its seqlock moved. */
static int rx_check(struct fivc_chan *c, uint64_t tail)
{
	if (fivc_load_acquire(&c->rx->desc_seq) != c->rxv.seq &&
	    view_load(c, c->rx, 1 - c->side, c->rx_head, &c->rxv) < 0)
		return -EPROTO;
	return view_holds(&c->rxv, c->rx_head, tail) ? 0 : -EPROTO;
}

/* >0 data or EOF ready, 0 nothing yet, <0 error.  Refreshes rx_tail_seen. */
/* >0 readable: more than `have` bytes there (a blocking peek waits past
 * what it saw), or the end; 0 not; <0 error. */
static int ready_read_past(struct fivc_chan *c, int *eof, uint64_t have)
{
	*eof = 0;
	if (is_broken(c))
		return -ECONNRESET;
	/* SYNC POINT READ: pairs with the release of the tail in write. */
	uint64_t tail = fivc_load_acquire(&c->rx->tail);
	if (rx_check(c, tail) < 0)
		return broken(c);
	c->rx_tail_seen = tail;
	if (tail - c->rx_head > have)
		return 1;
	/* The producer left the ring (downgrade), after its last tail: what
	 * is there, then TCP (down_at is stored with a release after it) */
	if (fivc_load_acquire(&c->rx->down_at) & FIVC_DOWN_LEFT) {
		tail = fivc_load_acquire(&c->rx->tail);
		if (rx_check(c, tail) < 0)
			return broken(c);
		c->rx_tail_seen = tail;
		return tail - c->rx_head > have ? 1 : -FIVC_EDOWN;
	}
	/* wr_closed is stored (release) after the last tail: re-read it. */
	if (fivc_load_acquire(&c->rx->wr_closed)) {
		tail = fivc_load_acquire(&c->rx->tail);
		if (rx_check(c, tail) < 0)
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

static int ready_read(struct fivc_chan *c, int *eof) { return ready_read_past(c, eof, 0); }

/* >0 space ready, 0 full, <0 error.  Refreshes tx_head_seen. */
static int ready_write(struct fivc_chan *c)
{
	if (is_broken(c))
		return -ECONNRESET;
	uint32_t rd = fivc_load_acquire(&c->tx->rd_closed);
	if (rd & FIVC_RD_DOWN)
		return -FIVC_EDOWN; /* the consumer left the ring: TCP (downgrade) */
	if (rd & (FIVC_RD_GONE | FIVC_RD_RST))
		return -EPIPE;
	switch (fivc_load_relaxed(&c->peer_gone)) {
	case 1:
		return -EPIPE;
	case 2:
		return -ECONNRESET;
	}
	/* SYNC POINT READ: pairs with the release of the head in read. */
	uint64_t head = fivc_load_acquire(&c->tx->head);
	if ((fivc_load_relaxed(&c->shared) & FIVC_SHARED_WR) &&
	    fivc_load_acquire(&c->tx->desc_seq) != c->txv.seq)
		return 1; /* another holder switched buffers: the write (under the
			   * side's lock) reloads the view and looks again */
	if (before(head, c->tx_head_seen) || !view_holds(&c->txv, head, c->tx_tail))
		return broken(c); /* a head that went back, or beyond what we wrote */
	c->tx_head_seen = head;
	return tx_space(c) > 0;
}

/* ---- growing and shrinking the producer's ring (layout.h) ---- */

/* ---- buffer sizes (issue 11) ----
 *
 * A program that sets SO_SNDBUF or SO_RCVBUF asks for back-pressure: TCP
 * then holds at most what the two buffers hold, and a writer to a peer that
 * does not read blocks (or gets EAGAIN) after that much.  Measured on
 * loopback, buffers set before connect (the kernel reports twice what was
 * asked): in flight, sender's + receiver's figure times 0.75 (4 KiB each),
 * 0.88 (16 KiB), 0.97 (64 KiB), 0.94 (256 KiB), 0.98 (1 MiB).  So a writer
 * whose program set SO_SNDBUF keeps at most 3/4 of (its figure + the
 * reader's) unread in the ring: the reader publishes its figure in the
 * ring (rcvbuf, 0 when its program set none: then the kernel's default
 * receive buffer, tcp_rmem's middle value, 128 KiB on Debian).  A writer
 * whose program set no SO_SNDBUF has an autotuned send buffer (up to 4 MiB
 * in flight on TCP whatever the reader set), so only the ring bounds it.
 * The reader's figure is the peer's word: taken up to 64 MiB. */
#define FIVC_DEFAULT_RCVBUF (128u << 10)
#define FIVC_MAX_RCVBUF (64u << 20)

/* UINT64_MAX: no bound.  (sndbuf: set by setsockopt in any thread) */
static uint64_t tx_bound(const struct fivc_chan *c)
{
	uint64_t snd = fivc_load_relaxed(&c->sndbuf);
	if (!snd)
		return UINT64_MAX;
	uint64_t rcv = fivc_load_relaxed(&c->tx->rcvbuf);
	if (!rcv)
		rcv = FIVC_DEFAULT_RCVBUF;
	if (rcv > FIVC_MAX_RCVBUF)
		rcv = FIVC_MAX_RCVBUF;
	return (snd + rcv) / 4 * 3;
}

/* What the bound leaves of n bytes of space. */
static uint64_t tx_within_bound(const struct fivc_chan *c, uint64_t n)
{
	uint64_t bound = tx_bound(c), inflight = c->tx_tail - c->tx_head_seen;
	return inflight >= bound ? 0 : FIVC_MIN(n, bound - inflight);
}

void fivc_chan_set_rcvbuf(struct fivc_chan *c, uint32_t bytes)
{
	if (!chan_enter(c))
		return; /* the slot moved on: nothing of ours to say */
	fivc_store_relaxed(&c->rx->rcvbuf, bytes);
	/* a bound that grew frees a writer that waits for space */
	notify_producer(c);
	chan_leave(c);
}

/* ("signals" above) */
void fivc_chan_set_signals(struct fivc_chan *c, uint32_t sig)
{
	if (!chan_enter(c))
		return;
	c->sig = sig;
	fivc_store_relaxed(&c->rx->rd_sig, sig);
	chan_leave(c);
}

/* Free space in the buffer we write to now, within the bound above. */
static uint64_t tx_space(const struct fivc_chan *c)
{
	uint64_t base = before(c->tx_head_seen, c->txv.from) ? c->txv.from : c->tx_head_seen;
	return tx_within_bound(c, c->txv.size - (c->tx_tail - base));
}

/* The consumer is past `from`: the old buffer goes back to the pool. */
static void tx_release_prev(struct fivc_chan *c)
{
	if (!c->txv.prev_held || before(c->tx_head_seen, c->txv.from))
		return;
	fivc_pool_give(c->f, c->txv.prev, c->idx, c->gen, c->side, 0);
	c->txv.prev_held = 0;
	c->txv.pdata = NULL;
}

/* Switch the ring to buffer word buf at our tail (nothing of prev unread). */
static void tx_switch(struct fivc_chan *c, uint32_t buf, uint8_t *data, uint64_t size)
{
	struct fivc_ringview *v = &c->txv;
	v->prev = v->buf;
	v->pdata = v->data;
	v->psize = v->size;
	v->prev_held = v->buf != FIVC_BUF_INLINE;
	v->buf = buf;
	v->data = data;
	v->size = size;
	v->from = c->tx_tail;
	/* SYNC POINT WRITE: the descriptor before any byte it covers (the
	 * tail's release in chan_write orders them). */
	desc_write(c->tx, v->prev, v->from, v->buf, &v->seq);
}

#define FIVC_GROW_RETRY_NS 100000000ull /* after the pool was found empty */

/* Whether a write could get more space by growing: a larger buffer exists,
 * the previous switch is behind the consumer, the pool was not empty just
 * now. */
static int tx_can_grow(struct fivc_chan *c)
{
	if (c->txv.size >= c->max_size || before(c->tx_head_seen, c->txv.from) ||
	    c->txv.size >= tx_bound(c))
		return 0;
	return !c->grow_failed_ns ||
	       fivc_now_ns(CLOCK_MONOTONIC) - c->grow_failed_ns >= FIVC_GROW_RETRY_NS;
}

/* Take a larger buffer for a write that needs `need` more bytes: the mid
 * class from the inline ring when that holds it, else the big one. */
static int tx_grow_in(struct fivc_chan *c, uint64_t need);

static int tx_grow(struct fivc_chan *c, uint64_t need)
{
	tx_release_prev(c);
	if (!tx_can_grow(c))
		return -ENOSPC;
	if (!chan_enter(c)) /* never a descriptor into a slot that moved on */
		return broken(c);
	int r = tx_grow_in(c, need);
	chan_leave(c);
	return r;
}

static int tx_grow_in(struct fivc_chan *c, uint64_t need)
{
	struct fivc_fabric *f = c->f;
	int cur = FIVC_BUF_CLASS(c->txv.buf);
	int want = cur + 1;
	if (want == 0 && (!f->g.npool[0] || need > f->pool_size[0]))
		want = 1;
	for (int k = want; k < FIVC_POOL_CLASSES; k++) {
		uint32_t b;
		uint8_t *d;
		uint64_t sz;
		if (!f->g.npool[k] || f->pool_size[k] <= c->txv.size ||
		    fivc_pool_take(f, k, c->idx, c->gen, c->side, &b) < 0)
			continue;
		if (fivc_buf_resolve(f, b, c->idx, c->gen, c->side, &d, &sz) < 0) {
			fivc_pool_give(f, b, c->idx, c->gen, c->side, 0);
			return broken(c);
		}
		c->grow_failed_ns = 0;
		tx_switch(c, b, d, sz);
		return 0;
	}
	c->grow_failed_ns = fivc_now_ns(CLOCK_MONOTONIC);
	return -ENOSPC;
}

int fivc_chan_tx_idle(struct fivc_chan *c)
{
	if (!c->f || (fivc_load_relaxed(&c->shared) & FIVC_SHARED_WR))
		return c->f ? fivc_chan_tx_grown(c) : 0;
	if (ready_write(c) < 0 && !c->txv.prev_held)
		return 0; /* the slot's release gives its buffers back */
	tx_release_prev(c);
	if (c->txv.buf == FIVC_BUF_INLINE)
		return c->txv.prev_held;
	if (c->tx_head_seen != c->tx_tail || c->tx_idle_mark != c->tx_tail) {
		c->tx_idle_mark = c->tx_tail;
		return 1;
	}
	/* Empty since the last look: back to the inline ring.  The consumer
	 * is at `from` already, so the pool buffer is free at once, and its
	 * pages go back to the system. */
	uint8_t *d;
	uint64_t sz;
	if (fivc_buf_resolve(c->f, FIVC_BUF_INLINE, c->idx, c->gen, c->side, &d, &sz) < 0)
		return 1;
	if (!chan_enter(c))
		return 0; /* the slot moved on: its release gave the buffers back */
	uint32_t old = c->txv.buf;
	tx_switch(c, FIVC_BUF_INLINE, d, sz);
	chan_leave(c);
	fivc_pool_give(c->f, old, c->idx, c->gen, c->side, 1);
	c->txv.prev_held = 0;
	c->txv.pdata = NULL;
	return 0;
}

/* Is the peer still there?  Asked by a waiter once per FIVC_LIVENESS_MS of
 * sleep, never on the busy path.  (A peer side that was reclaimed has its
 * rings marked closed, so "not adopted yet" for a client is not a way to
 * miss its death: ready_read/ready_write see the flags.) */
static int peer_alive(struct fivc_chan *c)
{
	uint64_t w = fivc_load_acquire(&c->slot->lease);
	if (FIVC_LEASE_GEN(w) != c->gen)
		return 0;
	if (!FIVC_LEASE_SIDE(w, 1 - c->side))
		return c->side == FIVC_SIDE_CLIENT ? 1 : 0; /* not adopted yet */
	return fivc_slot_side_alive_recent(c->f, c->idx, c->gen, 1 - c->side,
					   FIVC_LIVENESS_MS * 1000000ull / 2);
}

int fivc_chan_tx_consumed(struct fivc_chan *c)
{
	return fivc_load_acquire(&c->tx->head) == fivc_load_relaxed(&c->tx_tail);
}

/* The dead peer was a host process, whose kernel closed its socket (not a
 * guest judged dead: a paused VM's TCP lives on, and its side may be in
 * quarantine), and we are not a guest (which sees no host death). */
static int peer_was_process(struct fivc_chan *c)
{
	if (c->f->guest)
		return 0;
	uint32_t m = FIVC_LEASE_SIDE(fivc_load_acquire(&c->slot->lease), 1 - c->side);
	if (!m || m == FIVC_LEASE_QUARANTINE || m > c->f->g.nmembers)
		return 0;
	return fivc_load_acquire(&fivc_member_at(c->f, m - 1)->state) == FIVC_MEMBER_ALIVE;
}

int fivc_chan_peer_released(struct fivc_chan *c)
{
	uint64_t w = fivc_load_acquire(&c->slot->lease);
	return FIVC_LEASE_GEN(w) != c->gen || !FIVC_LEASE_SIDE(w, 1 - c->side);
}

int fivc_chan_peer_check(struct fivc_chan *c)
{
	if (!c->f || is_broken(c) || fivc_load_relaxed(&c->peer_gone))
		return 1;
	if (!lease_held(c)) { /* we were judged dead (a paused guest) */
		broken(c);
		return 1;
	}
	if (peer_alive(c))
		return 0;
	/* As its kernel does when a process dies: a FIN when it had read
	 * all we wrote (EOF after what it wrote; a write EPIPE), else a reset
	 * (what it wrote is still read, then ECONNRESET; a write ECONNRESET)
	 * (ready_read, ready_write).  (Regression, tornado's
	 * test_multi_process: a server's os._exit after reading the request
	 * gave its client ECONNRESET where TCP gives EOF.) */
	fivc_store_relaxed(&c->peer_gone, peer_was_process(c) && fivc_chan_tx_consumed(c) ? 1 : 2);
	return 1;
}

/* Spin for spin_ns, then sleep on the doorbell until ready (a reader:
 * more than `have` bytes there).  0 = ready (re-check), <0 = error
 * (-ECONNRESET on a dead peer, -EINTR). */
static int wait_ready_past(struct fivc_chan *c, int writing, uint64_t have)
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
			int r = writing ? ready_write(c) : ready_read_past(c, &eof, have);
			if (r) {
				*fails = budget == c->spin_ns ? 0 : (uint8_t)(*fails >> 1);
				return r < 0 ? r : 0;
			}
			fivc_cpu_relax();
			if (!(i & 31) && (fivc_now_ns(CLOCK_MONOTONIC) - start >= budget ||
					  (c->db->stop_spin && c->db->stop_spin(c->db_ctx))))
				break;
		}
		if (*fails < FIVC_SPIN_MAX_SHIFT)
			*fails = (uint8_t)(*fails ? *fails * 2 : 1);
		if (*fails > FIVC_SPIN_MAX_SHIFT)
			*fails = FIVC_SPIN_MAX_SHIFT;
	}
	uint32_t *word = writing ? &c->tx->prod_wake : &c->rx->cons_wake;
	uint64_t limit = writing ? c->wr_timeout_ns : c->rd_timeout_ns;
	uint64_t checked = start;
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
		int armed = writing ? ring_arm_producer(c)
				    : fivc_ring_arm_consumer(c->rx, c->rx_head + have);
		int r = armed ? (writing ? ready_write(c) : ready_read_past(c, &eof, have)) : 0;
		if (r)
			return r < 0 ? r : 0;
		/* Shut meanwhile by another thread of ours (as TCP, whose
		 * shutdown wakes a blocked recv with 0 and a blocked send with
		 * EPIPE): the caller sees it.  The futex doorbell is rung by
		 * the shutdown; the TCP doorbell's sleeper sees it after its
		 * nap, FIVC_LIVENESS_MS at most (regression, issue 11: a recv
		 * blocked in another thread stayed blocked until data came). */
		if (__atomic_load_n(writing ? &c->wr_shut : &c->rd_shut, __ATOMIC_ACQUIRE))
			return 0;
		__atomic_add_fetch(&c->sleepers[writing], 1, __ATOMIC_ACQ_REL);
		int w = c->db->wait(c->db_ctx, word, seq, tmo);
		__atomic_sub_fetch(&c->sleepers[writing], 1, __ATOMIC_ACQ_REL);
		(*(writing ? &c->tx_sleeps : &c->rx_sleeps))++;
		if (w == -EINTR)
			return -EINTR;
		/* Whatever woke us (a timeout, a doorbell, a 1 ms nap of a
		 * doorbell that cannot watch TCP yet), the peer's liveness is
		 * asked once per FIVC_LIVENESS_MS: no wait may rest on a FIN,
		 * which a guest or a process sharing the socket after fork
		 * never sends (regression, issue 13: a server that had not
		 * read yet napped forever on a full ring after its reader's
		 * kill -9, its doorbell never reporting a timeout). */
		uint64_t now = fivc_now_ns(CLOCK_MONOTONIC);
		/* (-ETIMEDOUT: a slice ended, or the doorbell saw FIN/RST) */
		if (w == -ETIMEDOUT || fivc_load_relaxed(&c->peer_gone) ||
		    now - checked >= FIVC_LIVENESS_MS * 1000000ull) {
			checked = now;
			if (fivc_chan_peer_check(c)) {
				r = writing ? ready_write(c) : ready_read_past(c, &eof, have);
				if (r)
					return r < 0 ? r : 0;
				return broken(c);
			}
		}
	}
}

static int wait_ready(struct fivc_chan *c, int writing) { return wait_ready_past(c, writing, 0); }

int fivc_chan_peer_shut(struct fivc_chan *c)
{
	return fivc_load_acquire(&c->rx->wr_closed) || fivc_load_relaxed(&c->peer_gone);
}

int fivc_chan_peer_closed(struct fivc_chan *c)
{
	return fivc_load_relaxed(&c->peer_gone) ||
	       (fivc_load_acquire(&c->rx->wr_closed) &&
		(fivc_load_acquire(&c->tx->rd_closed) & (FIVC_RD_GONE | FIVC_RD_RST)));
}

/* Shared: readiness from the ring's own indices (no lock: only a hint).
 * By CAS, so that an index our own reader or writer moved meanwhile (it
 * may just have taken its direction back to the lock-free path) never goes
 * back. */
static void refresh(struct fivc_chan *c)
{
	unsigned sh = fivc_load_relaxed(&c->shared);
	if (!sh)
		return;
	/* Forward only.  Not bounded by our view's size: the other holders
	 * may have read (written) far past it, on a buffer our view does not
	 * know yet (a bound made the look below find a head outside our
	 * view and break the channel: found by the chaos test, a reader
	 * after fork in poll).  ready_read/ready_write validate what we took
	 * (a hostile holder's index breaks the channel there). */
	if (sh & FIVC_SHARED_RD) {
		uint64_t h = fivc_load_acquire(&c->rx->head), mine = fivc_load_relaxed(&c->rx_head);
		if (before(mine, h))
			fivc_cas(&c->rx_head, &mine, h);
	}
	if (sh & FIVC_SHARED_WR) {
		uint64_t t = fivc_load_acquire(&c->tx->tail), mine = fivc_load_relaxed(&c->tx_tail);
		if (before(mine, t))
			fivc_cas(&c->tx_tail, &mine, t);
	}
}

ssize_t fivc_chan_readable(struct fivc_chan *c, int *eof)
{
	refresh(c);
	int r = ready_read(c, eof);
	if (r < 0)
		return r;
	uint64_t n = c->rx_tail_seen - c->rx_head, pos;
	/* (tcp_poll: an urgent byte at the mark, not inline, is not data) */
	if (n && !c->oob_inline && urg_mark(c, &pos) && pos == c->rx_head)
		n--;
	return (ssize_t)n;
}

/* SO_RCVLOWAT: poll reports the ring readable once this many bytes are
 * there, as tcp_epollin_ready; and, as its small-window rule there, once
 * the writer may be unable to add more: half of what the ring's buffer, or
 * the writer's bound (3/4 of at least our receive figure: buffer sizes
 * above), lets be in flight.  Without that a mark above what fits would
 * never be reached. */
uint64_t fivc_chan_lowat(const struct fivc_chan *c)
{
	uint32_t lo = __atomic_load_n(&c->rcvlowat, __ATOMIC_RELAXED);
	if (lo <= 1)
		return 1;
	uint64_t rcv = fivc_load_relaxed(&c->rx->rcvbuf);
	if (!rcv)
		rcv = FIVC_DEFAULT_RCVBUF;
	uint64_t fits = FIVC_MIN(c->rxv.size, rcv / 4 * 3) / 2;
	uint64_t t = FIVC_MIN((uint64_t)lo, fits);
	return t ? t : 1;
}

/* FIONREAD (SIOCINQ): what is there, or, with an urgent mark ahead and
 * not SO_OOBINLINE, the bytes before the mark (tcp_ioctl). */
ssize_t fivc_chan_inq(struct fivc_chan *c)
{
	int eof;
	refresh(c);
	int r = ready_read(c, &eof);
	if (r < 0)
		return r;
	uint64_t n = c->rx_tail_seen - c->rx_head, pos;
	if (n && !c->oob_inline && urg_mark(c, &pos) && before(pos, c->rx_tail_seen))
		n = pos - c->rx_head;
	return (ssize_t)n;
}

ssize_t fivc_chan_writable(struct fivc_chan *c)
{
	if (c->wr_shut)
		return -EPIPE;
	refresh(c);
	int r = ready_write(c);
	if (r < 0)
		return r;
	/* a write would grow the ring: as much space as TCP's buffer would
	 * promise (a full inline ring must not look full to a program that
	 * needs its peer to read first) */
	return (ssize_t)tx_within_bound(c, tx_space(c) + (tx_can_grow(c) ? c->max_size : 0));
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
		ready |= ring_arm_producer(c);
	return ready;
}

void fivc_chan_arm_always(struct fivc_chan *c, int rd, int wr)
{
	if (rd)
		fivc_ring_arm_consumer(c->rx, c->rx_head);
	if (wr)
		ring_arm_producer(c);
}

/* Put code into a waiting flag unless another waiter's value is there:
 * then 1, the plain doorbell, which wakes every watcher of the socket. */
static void flag_arm(uint32_t *flag, uint32_t code)
{
	uint32_t old = fivc_load_relaxed(flag);
	for (;;) {
		uint32_t want = old == 0 || old == code ? code : 1u;
		if (old == want || fivc_cas(flag, &old, want))
			return;
	}
}

void fivc_chan_arm_code(struct fivc_chan *c, int rd, int wr, uint32_t code)
{
	if (!FIVC_WAKE_IS_CODE(code)) {
		fivc_chan_arm_always(c, rd, wr);
		return;
	}
	if (rd)
		flag_arm(&c->rx->cons_waiting, code);
	if (wr)
		flag_arm(&c->tx->prod_waiting, code);
	fivc_smp_mb(); /* SB: the caller looks at the rings after this */
}

/* A watcher that goes (its epoll entry freed: close, DEL) leaves its code
 * in the flags it armed.  A later ring write by the peer would spend it:
 * the exchange takes it, the note clears the set's record's "armed" and
 * rings this connection's socket, which no longer wakes the set; the set,
 * asleep for another connection, then misses that one's note (regression:
 * an epoll client that closes and connects again waited 100 ms for one
 * reply in five).  The CAS leaves alone a flag that holds anything else. */
void fivc_chan_unarm_code(struct fivc_chan *c, uint32_t code)
{
	if (!FIVC_WAKE_IS_CODE(code))
		return;
	uint32_t v = code;
	fivc_cas(&c->rx->cons_waiting, &v, 0u);
	v = code;
	fivc_cas(&c->tx->prod_waiting, &v, 0u);
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

int fivc_chan_xlock(struct fivc_chan *c, int wr) { return xlock(c, wr); }

void fivc_chan_xunlock(struct fivc_chan *c, int wr) { xunlock(c, wr); }

/* Our index is the ring's (another process may have moved it). */
static int reload(struct fivc_chan *c, int wr)
{
	if (wr) {
		c->tx_tail = fivc_load_acquire(&c->tx->tail);
		c->tx_head_seen = fivc_load_acquire(&c->tx->head);
		/* another process of our side may have switched buffers */
		if (fivc_load_acquire(&c->tx->desc_seq) != c->txv.seq &&
		    view_load(c, c->tx, c->side, c->tx_head_seen, &c->txv) < 0)
			return broken(c);
		if (!view_holds(&c->txv, c->tx_head_seen, c->tx_tail))
			return broken(c);
	} else {
		c->rx_head = fivc_load_acquire(&c->rx->head);
		c->rx_tail_seen = c->rx_head;
	}
	return 0;
}

static ssize_t chan_read(struct fivc_chan *c, void *buf, size_t len, int flags);
static ssize_t chan_write(struct fivc_chan *c, const void *buf, size_t len, int flags);

/* ---- back to one process (issue 10) ----
 *
 * A direction stays shared only while another process may use it.  Once
 * every other holder of our side closed its copy or died, it goes back to
 * the lock-free path.  The check reads the slot's holder table (a few
 * words) and asks the kernel about each other entry, so it runs at most
 * every FIVC_UNSHARE_CHECK_NS per direction, from a shared read or write
 * that holds the direction's slot lock (our indices were just reloaded, so
 * they are the ring's).
 *
 * Against a fork in another thread of ours, which enters the child in the
 * table and then marks the side shared (preload/sock.c): we clear the mark,
 * fence, and look at the table again; a child entered after that look
 * marks the side after our clear.  (Both RMWs and the fence are seq_cst.) */
static uint64_t unshared_count;

uint64_t fivc_chan_unshared_count(void) { return fivc_load_relaxed(&unshared_count); }

void fivc_chan_share(struct fivc_chan *c)
{
	__atomic_fetch_or(&c->shared, FIVC_SHARED_RD | FIVC_SHARED_WR, __ATOMIC_SEQ_CST);
}

static void maybe_unshare(struct fivc_chan *c, int wr)
{
	uint64_t now = fivc_now_ns(CLOCK_MONOTONIC_COARSE);
	if (c->unshare_ns[wr] && now - c->unshare_ns[wr] < FIVC_UNSHARE_CHECK_NS)
		return;
	c->unshare_ns[wr] = now ? now : 1;
	if (fivc_slot_sole_holder(c->f, c->idx, c->gen, c->side) != 1)
		return;
	unsigned bit = wr ? FIVC_SHARED_WR : FIVC_SHARED_RD;
	__atomic_fetch_and(&c->shared, ~bit, __ATOMIC_SEQ_CST);
	fivc_smp_mb(); /* SYNC POINT: pairs with fivc_slot_hold's CAS before fivc_chan_share */
	if (fivc_slot_sole_holder(c->f, c->idx, c->gen, c->side) != 1)
		__atomic_fetch_or(&c->shared, bit, __ATOMIC_SEQ_CST);
	else
		fivc_fetch_add(&unshared_count, 1);
}

int fivc_chan_unshare_now(struct fivc_chan *c)
{
	if (!fivc_load_relaxed(&c->shared))
		return 1;
	if (!c->f || fivc_slot_sole_holder(c->f, c->idx, c->gen, c->side) != 1)
		return 0;
	__atomic_fetch_and(&c->shared, ~(unsigned)(FIVC_SHARED_RD | FIVC_SHARED_WR), __ATOMIC_SEQ_CST);
	fivc_smp_mb(); /* SYNC POINT: as in maybe_unshare */
	if (fivc_slot_sole_holder(c->f, c->idx, c->gen, c->side) != 1) {
		fivc_chan_share(c);
		return 0;
	}
	/* the others' moves are the ring's: ours from it */
	reload(c, 0);
	reload(c, 1);
	fivc_fetch_add(&unshared_count, 1);
	return 1;
}

static ssize_t chan_io(struct fivc_chan *c, int wr, void *buf, size_t len, int flags)
{
	int shared = (fivc_load_relaxed(&c->shared) & (wr ? FIVC_SHARED_WR : FIVC_SHARED_RD)) != 0;
	ssize_t n = shared ? xlock(c, wr) : 0;
	if (n < 0)
		return n;
	if (shared)
		n = reload(c, wr);
	if (shared && n == 0)
		maybe_unshare(c, wr);
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

/* ---- TCP's reset (issue 11) ----
 *
 * The kernel resets a connection when an end closes with bytes unread, and
 * when bytes reach an end that is closed or shut both ways (FIN_WAIT).  The
 * end that resets marks its rings (FIVC_WR_RST, FIVC_RD_RST); a writer
 * that finds its peer closed or shut both ways plays the peer's kernel: its
 * bytes are taken, then the reset comes back.  Each end then keeps what
 * tcp_reset() leaves: the CLOSE state (reads give what is queued, then 0;
 * writes EPIPE; shutdown ENOTCONN; poll HUP) and one error to report
 * (ECONNRESET, or EPIPE when the peer's FIN had come and ours had not),
 * given by the next read that finds nothing, the next write, or SO_ERROR,
 * and shown as POLLERR until then.  (Checked call by call against the
 * kernel: tests/test_conformance.py.) */
/* The error is the socket's, reported once by whichever holder of the
 * side asks first (fork): FIVC_RD_ERRTAKEN in the ring we consume, a word
 * only our side writes (regression, issue 11: a forked child's send took
 * ECONNRESET, and its parent's recv then reported it again). */
static int rst_err_taken(const struct fivc_chan *c)
{
	return (fivc_load_acquire(&c->rx->rd_closed) & FIVC_RD_ERRTAKEN) != 0;
}

static void rst_update(struct fivc_chan *c)
{
	if (c->reset) {
		if (c->sk_err && rst_err_taken(c))
			c->sk_err = 0;
		return;
	}
	uint32_t w = fivc_load_acquire(&c->rx->wr_closed), rd = fivc_load_acquire(&c->tx->rd_closed);
	if (!(w & FIVC_WR_RST) && !(rd & FIVC_RD_RST))
		return;
	c->reset = 1;
	c->sk_err = rst_err_taken(c) ? 0 : !(w & FIVC_WR_FIN) ? ECONNRESET : c->wr_shut ? 0 : EPIPE;
}

static int rst_take(struct fivc_chan *c)
{
	int e = c->sk_err;
	c->sk_err = 0;
	if (e && chan_enter(c)) {
		__atomic_fetch_or(&c->rx->rd_closed, FIVC_RD_ERRTAKEN, __ATOMIC_RELEASE);
		chan_leave(c);
	}
	return e;
}

void fivc_chan_store_error(struct fivc_chan *c, int err)
{
	rst_update(c);
	if (!c->reset || !chan_enter(c))
		return;
	c->sk_err = err;
	__atomic_fetch_and(&c->rx->rd_closed, ~FIVC_RD_ERRTAKEN, __ATOMIC_RELEASE);
	chan_leave(c);
}

int fivc_chan_reset_state(struct fivc_chan *c, int *err, int take)
{
	if (!c->f) {
		if (err)
			*err = 0;
		return 0;
	}
	rst_update(c);
	if (err)
		*err = take ? rst_take(c) : c->sk_err;
	return c->reset;
}

/* A read that found nothing (EOF, or shut for reading): 0, or the reset's
 * error once (tcp_recvmsg: the peer's FIN first, then sk_err). */
static ssize_t read_end(struct fivc_chan *c)
{
	rst_update(c);
	if (c->reset && !(fivc_load_acquire(&c->rx->wr_closed) & FIVC_WR_FIN) && c->sk_err)
		return -rst_take(c);
	return 0;
}

/* ---- data ---- */

/* ---- urgent data (issue 11) ----
 *
 * As TCP's urgent pointer: send(MSG_OOB) makes its last byte urgent.  The
 * writer stores the byte's stream offset in its ring (urg_seq, then
 * urg_count, before the tail that covers it).  The reader keeps the mark:
 * - the byte, once it is in, is readable once with recv(MSG_OOB)
 *   (tcp_recv_urg: EINVAL without one, once read, or with SO_OOBINLINE;
 *   EAGAIN while it is not in yet), and POLLPRI says so;
 * - a read stops at the mark (after bytes, it returns them); at the mark,
 *   without SO_OOBINLINE, the urgent byte is not part of the stream and
 *   is skipped, with it the byte is read in order;
 * - SIOCATMARK: the next byte is the mark;
 * - a read past the mark drops it (urg_data = 0), and a later urgent send
 *   replaces an earlier mark, whose byte is then in-band.
 * - a new mark while the reader sits at the old urgent byte drops that
 *   byte (tcp_check_urg).
 * Left out: SIGURG (the kernel raises it for TCP's urgent pointer, which
 * ring bytes do not carry).  The mark is the peer's word: one
 * behind us is dropped, one ahead waits until the bytes reach it. */
static void urg_set(struct fivc_chan *c, int st) { __atomic_store_n(&c->urg_state, st, __ATOMIC_RELAXED); }

/* Reader: n bytes at our head are consumed, under the lease (0: it is
 * lost, nothing moved). */
static int rx_consume(struct fivc_chan *c, uint64_t n)
{
	if (!chan_enter(c))
		return 0;
	c->rx_head += n;
	/* SYNC POINT WRITE: pairs with the acquire of the head in ready_write. */
	fivc_store_release(&c->rx->head, c->rx_head);
	notify_producer(c);
	chan_leave(c);
	return 1;
}

/* Reader: take a new mark, its byte once it is in, drop a mark read past.
 * rx_tail_seen fresh (ready_read).  can_move: we may move rx_head (the
 * reading call, or a side no other process reads). */
static void urg_look(struct fivc_chan *c, int can_move)
{
	uint32_t n = fivc_load_acquire(&c->rx->urg_count);
	if (n != c->urg_seen) {
		uint64_t pos = fivc_load_relaxed(&c->rx->urg_seq);
		uint32_t gap = fivc_load_relaxed(&c->rx->urg_gap);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (fivc_load_relaxed(&c->rx->urg_count) != n)
			return; /* a newer one came meanwhile: the next look */
		/* tcp_check_urg: a new mark while the reader sits at the old
		 * one's byte, which is in, drops that byte.  The old mark is
		 * the one we knew, or, when marks came unseen since our last
		 * look, the one before the newest (urg_gap); a longer run of
		 * unseen marks on consecutive bytes is judged by the last two. */
		int at_known = c->urg_state != URG_NONE && c->urg_pos == c->rx_head;
		int at_prev = n - c->urg_seen >= 2 && gap && pos - (gap - 1) == c->rx_head + at_known;
		if (can_move && !c->oob_inline && (at_known || at_prev) &&
		    before(c->rx_head + at_known + at_prev - 1, c->rx_tail_seen))
			rx_consume(c, (uint64_t)(at_known + at_prev));
		__atomic_store_n(&c->urg_seen, n, __ATOMIC_RELAXED);
		c->urg_pos = pos;
		urg_set(c, before(pos, c->rx_head) ? URG_NONE : URG_PENDING);
	}
	int st = c->urg_state;
	if (st == URG_NONE)
		return;
	if (before(c->urg_pos, c->rx_head)) {
		urg_set(c, URG_NONE);
		return;
	}
	if (st == URG_PENDING && before(c->urg_pos, c->rx_tail_seen) &&
	    view_holds(&c->rxv, c->rx_head, c->rx_tail_seen)) {
		view_copy(&c->rxv, c->urg_pos, &c->urg_byte, 1, 0);
		urg_set(c, URG_VALID);
	}
}

/* Any thread, a look (no change): whether a mark the reader has not read
 * past is there (a new one, or the reader's), and where. */
static int urg_mark(struct fivc_chan *c, uint64_t *pos)
{
	uint32_t n = fivc_load_acquire(&c->rx->urg_count);
	if (!n || (__atomic_load_n(&c->urg_state, __ATOMIC_RELAXED) == URG_NONE &&
		   n == __atomic_load_n(&c->urg_seen, __ATOMIC_RELAXED)))
		return 0;
	*pos = fivc_load_relaxed(&c->rx->urg_seq);
	return !before(*pos, fivc_load_relaxed(&c->rx_head));
}

static int urg_active(struct fivc_chan *c)
{
	return c->urg_state != URG_NONE ||
	       fivc_load_relaxed(&c->rx->urg_count) != c->urg_seen;
}

ssize_t fivc_chan_recv_oob(struct fivc_chan *c, void *buf, size_t len, int peek, int *trunc)
{
	int eof;
	int r = ready_read(c, &eof);
	if (r < 0)
		return r;
	urg_look(c, !(fivc_load_relaxed(&c->shared) & FIVC_SHARED_RD));
	*trunc = 0;
	if (c->oob_inline || c->urg_state == URG_NONE || c->urg_state == URG_READ)
		return -EINVAL;
	if (c->urg_state == URG_VALID) {
		if (!len) {
			*trunc = 1;
			return 0;
		}
		if (!peek)
			urg_set(c, URG_READ);
		*(uint8_t *)buf = c->urg_byte;
		return 1;
	}
	return (r > 0 && eof) || c->rd_shut ? 0 : -EAGAIN;
}

int fivc_chan_atmark(struct fivc_chan *c)
{
	int eof;
	if (ready_read(c, &eof) < 0)
		return 0;
	urg_look(c, !(fivc_load_relaxed(&c->shared) & FIVC_SHARED_RD));
	return c->urg_state != URG_NONE && c->urg_pos == c->rx_head;
}

int fivc_chan_urgent(struct fivc_chan *c)
{
	/* (any thread: a look at the reader's state and the ring, no change) */
	int st = __atomic_load_n(&c->urg_state, __ATOMIC_RELAXED);
	if (st == URG_VALID)
		return 1;
	uint64_t pos;
	if (st == URG_READ &&
	    fivc_load_acquire(&c->rx->urg_count) == __atomic_load_n(&c->urg_seen, __ATOMIC_RELAXED))
		return 0;
	return urg_mark(c, &pos) && before(pos, fivc_load_acquire(&c->rx->tail));
}

static ssize_t chan_read(struct fivc_chan *c, void *buf, size_t len, int flags)
{
	uint8_t *dst = buf;
	size_t got = 0;
	/* tcp_recvmsg's target: a blocking read returns once it has this
	 * much (MSG_WAITALL: all; else SO_RCVLOWAT, at most len), an end, an
	 * error, a signal or the timeout; a non-blocking one what is there */
	uint32_t lo = __atomic_load_n(&c->rcvlowat, __ATOMIC_RELAXED);
	size_t target = flags & FIVC_WAITALL ? len : FIVC_MIN((size_t)(lo > 1 ? lo : 1), len);
	if (is_broken(c))
		return -ECONNRESET;
	for (;;) {
		int eof, at_mark = 0;
		int r = ready_read(c, &eof);
		uint64_t avail = c->rx_tail_seen - c->rx_head, skip = 0;
		if (r > 0 && avail && urg_active(c)) {
			urg_look(c, 1);
			avail = c->rx_tail_seen - c->rx_head; /* (it may drop a byte) */
			if (!avail)
				continue;
			if (c->urg_state != URG_NONE) {
				uint64_t at = c->urg_pos - c->rx_head;
				if (at == 0 && got)
					return (ssize_t)got; /* a read stops at the mark */
				if (at == 0 && !c->oob_inline)
					skip = 1; /* not in the stream */
				else if (at > 0 && at < avail)
					avail = at, at_mark = 1;
			}
			if (skip && avail == 1) {
				if (flags & FIVC_PEEK) { /* only the urgent byte: nothing to peek */
					if (flags & FIVC_NONBLOCK)
						return -EAGAIN;
					struct timespec ts = {0, 1000000};
					nanosleep(&ts, NULL); /* (the ring is not empty: a nap, not a wait) */
					continue;
				}
				if (!rx_consume(c, 1)) /* past the urgent byte: the mark goes */
					return broken(c);
				urg_set(c, URG_NONE);
				continue;
			}
		}
		if (len == 0 && r == 0 && c->rd_shut)
			r = 1; /* (as below: shut for reading, nothing there: 0) */
		if (len == 0 && r != 0) /* as TCP: a read of 0 returns once one of more would */
			return r < 0 ? r : avail ? 0 : read_end(c);
		if (r > 0 && avail && len) {
			size_t n = (size_t)FIVC_MIN(avail - skip, (uint64_t)(len - got));
			if (!(flags & FIVC_DISCARD))
				view_copy(&c->rxv, c->rx_head + skip, dst + got, n, 0);
			/* the copy's loads before the lease's: bytes copied from
			 * a slot that moved on are not ours to return */
			__atomic_thread_fence(__ATOMIC_ACQUIRE);
			if (flags & FIVC_PEEK) {
				if (!lease_held(c))
					return broken(c);
				if (n < target && n < len && !at_mark && !(flags & FIVC_NONBLOCK) &&
				    !c->rd_shut && !fivc_chan_peer_shut(c)) {
					/* tcp_recvmsg: a blocking peek, too, waits for its
					 * target (SO_RCVLOWAT), then peeks from the start;
					 * a timeout or a signal returns what it saw */
					int w = wait_ready_past(c, 0, avail);
					if (w == 0)
						continue;
				}
				return (ssize_t)(got + n);
			}
			if (!rx_consume(c, n + skip))
				return broken(c);
			got += n;
			if (got >= target)
				return (ssize_t)got;
			continue;
		}
		if (r < 0)
			return got ? (ssize_t)got : r;
		if ((r > 0 && eof) || c->rd_shut) /* (shut for reading: what was there, then 0, as TCP) */
			return got ? (ssize_t)got : read_end(c);
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
	rst_update(c);
	if (c->wr_shut || c->reset) { /* tcp_sendmsg: the pending error first, else EPIPE */
		int e = rst_take(c);
		return -(e ? e : EPIPE);
	}
	if (len == 0) /* as TCP: the connection's error, else 0 (no reset: no bytes go) */
		return fivc_load_relaxed(&c->peer_gone) == 2 ? -ECONNRESET : 0;
	uint32_t rd = fivc_load_acquire(&c->tx->rd_closed), w = fivc_load_acquire(&c->rx->wr_closed);
	if (rd & FIVC_RD_DOWN)
		return -FIVC_EDOWN; /* the consumer left the ring: TCP (downgrade) */
	if ((rd & FIVC_RD_GONE) || ((rd & FIVC_RD_SHUT) && (w & FIVC_WR_FIN))) {
		if (!lease_held(c))
			return broken(c); /* (those flags are not ours: the slot moved on) */
		/* bytes to a closed end, or to one shut both ways: TCP takes them
		 * and the peer's kernel answers with a reset (which resets an
		 * open peer too).  It takes what its send buffer holds, not a
		 * write of any length: as much as our ring could grow to (or
		 * the SO_SNDBUF bound), and the reset is the next call's (regression, tornado's
		 * test_write_bytearray_resizable_after_error: a 10 MB write to a
		 * closed peer "succeeded" whole) */
		if (chan_enter(c)) {
			if (!(rd & FIVC_RD_GONE)) {
				__atomic_fetch_or(&c->tx->wr_closed, FIVC_WR_RST, __ATOMIC_RELEASE);
				notify_consumer(c);
			}
			/* the reset that comes back, where every holder of our
			 * side sees it (fork: TCP's is the shared socket's;
			 * regression, issue 11: a child's write to a closed
			 * peer left its parent's next send unreset) */
			__atomic_fetch_or(&c->tx->rd_closed, FIVC_RD_RST, __ATOMIC_RELEASE);
			chan_leave(c);
		}
		c->reset = 1;
		c->sk_err = (w & FIVC_WR_FIN) ? EPIPE : ECONNRESET;
		return (ssize_t)FIVC_MIN((uint64_t)len, FIVC_MIN(c->max_size, tx_bound(c)));
	}
	while (done < len) {
		uint64_t space = tx_space(c);
		int r = 1;
		if (space < len - done) {
			r = ready_write(c);
			tx_release_prev(c);
			space = tx_space(c);
			if (r >= 0 && space < len - done && tx_grow(c, len - done) == 0)
				space = tx_space(c);
			if (r == 0 && space)
				r = 1;
		} else if (fivc_load_relaxed(&c->tx->rd_closed) & (FIVC_RD_GONE | FIVC_RD_RST | FIVC_RD_DOWN)) {
			r = (fivc_load_relaxed(&c->tx->rd_closed) & FIVC_RD_DOWN) ? -FIVC_EDOWN : -EPIPE;
		}
		if (r < 0)
			return done ? (ssize_t)done : r;
		if (space) {
			size_t n = (size_t)FIVC_MIN(FIVC_MIN(space, (uint64_t)(len - done)),
						    (uint64_t)FIVC_WRITE_CHUNK);
			/* before the copy (not over another connection's bytes)
			 * and before the tail (never an index of a slot that moved
			 * on; the release below orders this load before it) */
			if (!chan_enter(c))
				return done ? (ssize_t)done : broken(c);
			view_copy(&c->txv, c->tx_tail, (uint8_t *)src + done, n, 1);
			if (!lease_held(c)) {
				chan_leave(c);
				return done ? (ssize_t)done : broken(c);
			}
			c->tx_tail += n;
			if ((flags & FIVC_URGENT) && done + n == len) {
				/* the last byte is urgent: the mark goes before the
				 * tail that covers it (a reader that sees the byte
				 * sees the mark) */
				uint64_t gap = fivc_load_relaxed(&c->tx->urg_count)
						       ? c->tx_tail - fivc_load_relaxed(&c->tx->urg_seq)
						       : 0;
				fivc_store_relaxed(&c->tx->urg_gap, gap > UINT32_MAX ? 0 : (uint32_t)gap);
				fivc_store_relaxed(&c->tx->urg_seq, c->tx_tail - 1);
				fivc_store_release(&c->tx->urg_count,
						   fivc_load_relaxed(&c->tx->urg_count) + 1);
			}
			/* SYNC POINT WRITE: pairs with the acquire of the tail in ready_read. */
			fivc_store_release(&c->tx->tail, c->tx_tail);
			notify_consumer(c);
			if ((flags & FIVC_URGENT) && done + n == len && c->db->wake_urgent &&
			    (fivc_load_relaxed(&c->tx->rd_sig) & FIVC_SIG_URG) && !peer_closed_side(c))
				c->db->wake_urgent(c->db_ctx); /* SIGURG there ("signals") */
			chan_leave(c);
			done += n;
			continue;
		}
		if (flags & FIVC_NONBLOCK) {
			if (c->sig & FIVC_SIG_IO) /* SIGIO once there is room ("signals") */
				ring_arm_producer(c);
			return done ? (ssize_t)done : -EAGAIN;
		}
		int w = wait_ready(c, 1);
		if (w < 0)
			return done ? (ssize_t)done : w;
		if (__atomic_load_n(&c->wr_shut, __ATOMIC_ACQUIRE))
			return done ? (ssize_t)done : -EPIPE; /* (sk_stream_wait_memory) */
	}
	return (ssize_t)done;
}

/* SHUT_RD is the reader's own business, as in TCP (which sends nothing
 * for it): reads return what is there, then 0, and the peer may go on
 * writing.  Only a close tells the writer that nobody will read
 * (rd_closed: EPIPE). */
static int chan_shutdown(struct fivc_chan *c, int how, int closing);

int fivc_chan_shutdown(struct fivc_chan *c, int how) { return chan_shutdown(c, how, 0); }

/* Wake our own threads asleep on word (a shutdown of theirs): the futex
 * doorbell only, whose sleepers compare the word (a TCP doorbell's wake
 * would go to the peer). */
static void wake_own(struct fivc_chan *c, uint32_t *word)
{
	if (c->db != &fivc_doorbell_futex)
		return;
	fivc_fetch_add(word, 1);
	syscall(SYS_futex, word, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
}

static int chan_shutdown(struct fivc_chan *c, int how, int closing)
{
	if (how != SHUT_RD && how != SHUT_WR && how != SHUT_RDWR)
		return -EINVAL;
	if (!chan_enter(c)) { /* the slot moved on: its flags are another's */
		c->wr_shut = c->rd_shut = 1;
		return 0;
	}
	rst_update(c);
	if (closing && !c->reset && (c->linger0 || fivc_load_acquire(&c->rx->tail) != c->rx_head)) {
		/* a close with bytes unread, or with SO_LINGER 0: TCP resets,
		 * with no FIN */
		__atomic_fetch_or(&c->tx->wr_closed, FIVC_WR_RST, __ATOMIC_RELEASE);
		__atomic_fetch_or(&c->rx->rd_closed, FIVC_RD_GONE | FIVC_RD_RST, __ATOMIC_RELEASE);
		c->wr_shut = c->rd_shut = c->reset = 1;
		notify_consumer(c);
		notify_producer(c);
		chan_leave(c);
		return 0;
	}
	if ((how == SHUT_WR || how == SHUT_RDWR) && !c->wr_shut) {
		__atomic_store_n(&c->wr_shut, 1, __ATOMIC_RELEASE);
		wake_own(c, &c->tx->prod_wake);
		/* SYNC POINT WRITE: after the last tail; pairs with ready_read.
		 * (A reset connection is CLOSEd: no FIN goes after the reset.) */
		if (!c->reset) {
			__atomic_fetch_or(&c->tx->wr_closed, FIVC_WR_FIN, __ATOMIC_RELEASE);
			notify_consumer(c);
		}
	}
	if ((how == SHUT_RD || how == SHUT_RDWR) && !c->rd_shut) {
		__atomic_store_n(&c->rd_shut, 1, __ATOMIC_RELEASE);
		wake_own(c, &c->rx->cons_wake);
		/* (a hint for the writer: bytes now reset us if we shut writing too) */
		__atomic_fetch_or(&c->rx->rd_closed, FIVC_RD_SHUT, __ATOMIC_RELEASE);
	}
	if (closing && !(fivc_load_relaxed(&c->rx->rd_closed) & FIVC_RD_GONE)) {
		__atomic_fetch_or(&c->rx->rd_closed, FIVC_RD_GONE, __ATOMIC_RELEASE);
		notify_producer(c);
	}
	chan_leave(c);
	return 0;
}

void fivc_chan_abort(struct fivc_chan *c)
{
	c->linger0 = 1;
	chan_shutdown(c, SHUT_RDWR, 1);
}

void fivc_chan_close(struct fivc_chan *c)
{
	if (!c->f)
		return;
	if (fivc_load_relaxed(&c->shared) & FIVC_SHARED_RD) /* the last holder: a child's */
		c->rx_head = fivc_load_acquire(&c->rx->head); /* reads count (as reload) */
	chan_shutdown(c, SHUT_RDWR, 1);
	fivc_slot_release(c->f, c->idx, c->gen, c->side);
	/* A peer that died cannot release its side; when we saw it go, do it
	 * for it now rather than leave the slot to the next gc.  (Not on every
	 * close: asking the kernel costs a syscall per connection.) */
	if (is_broken(c) || fivc_load_relaxed(&c->peer_gone))
		fivc_slot_reap(c->f, c->idx);
	c->f = NULL;
}

/* ---- the way back to TCP (issue 12; README "Downgrade") ----
 *
 * Either side may leave the rings; the TCP byte counts the preload
 * publishes (down_at) tell the other where the doorbells end in the TCP
 * stream.  These only move the ring words: no doorbell is rung here (the
 * preload sends and counts its own). */
void fivc_chan_down_leave_rx(struct fivc_chan *c)
{
	/* our head is final: the producer sends what is past it over TCP */
	fivc_store_release(&c->rx->head, c->rx_head);
	__atomic_fetch_or(&c->rx->rd_closed, FIVC_RD_DOWN, __ATOMIC_RELEASE);
}

void fivc_chan_down_leave_tx(struct fivc_chan *c)
{
	/* after our last tail (release); the consumer reads the ring dry */
	__atomic_store_n(&c->tx->down_at, FIVC_DOWN_LEFT, __ATOMIC_RELEASE);
}

void fivc_chan_down_publish(struct fivc_chan *c, uint64_t sent)
{
	__atomic_store_n(&c->tx->down_at, FIVC_DOWN_LEFT | FIVC_DOWN_AT | FIVC_DOWN_COUNT(sent),
			 __ATOMIC_RELEASE);
}

int fivc_chan_down_peer(struct fivc_chan *c, uint64_t *at)
{
	if (!c->f)
		return 0;
	int r = 0;
	if (fivc_load_acquire(&c->tx->rd_closed) & FIVC_RD_DOWN)
		r |= FIVC_PEER_RD_DOWN;
	uint64_t w = fivc_load_acquire(&c->rx->down_at);
	if (w & FIVC_DOWN_LEFT)
		r |= FIVC_PEER_LEFT;
	if ((w & FIVC_DOWN_LEFT) && (w & FIVC_DOWN_AT)) {
		r |= FIVC_PEER_AT;
		if (at)
			*at = FIVC_DOWN_COUNT(w);
	}
	return r;
}

int fivc_chan_backlog_start(struct fivc_chan *c)
{
	uint64_t head = fivc_load_acquire(&c->tx->head);
	if (before(head, c->tx_head_seen) || !view_holds(&c->txv, head, c->tx_tail))
		return broken(c); /* a head that went back, or past what we wrote */
	c->down_pos = head;
	c->backlog_on = 1;
	return 0;
}

size_t fivc_chan_backlog_peek(struct fivc_chan *c, void *buf, size_t len)
{
	uint64_t left = c->tx_tail - c->down_pos;
	size_t n = (size_t)FIVC_MIN(left, (uint64_t)len);
	view_copy(&c->txv, c->down_pos, buf, n, 0);
	return n;
}

void fivc_chan_backlog_sent(struct fivc_chan *c, size_t n) { c->down_pos += n; }

uint64_t fivc_chan_backlog_left(const struct fivc_chan *c)
{
	return c->backlog_on ? c->tx_tail - c->down_pos : 0;
}

void fivc_chan_down_release(struct fivc_chan *c)
{
	if (!c->f)
		return;
	fivc_slot_release(c->f, c->idx, c->gen, c->side);
	c->f = NULL;
}
