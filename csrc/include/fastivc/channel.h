/* fastivc — one accelerated connection: a slot's two rings seen from one side.
 * Return values are byte counts or -errno (STYLE.md 6). */
#ifndef FASTIVC_CHANNEL_H
#define FASTIVC_CHANNEL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "fabric.h"

/* How a side sleeps and wakes its peer.  wait() returns 0 when woken or when
 * *word != expected already, -ETIMEDOUT or -EINTR. */
struct fivc_doorbell {
	int (*wait)(void *ctx, uint32_t *word, uint32_t expected, uint32_t timeout_ms);
	void (*wake)(void *ctx, uint32_t *word);
	/* An urgent write's doorbell, out of band (its kernel raises SIGURG
	 * at the peer's owner); NULL: none (channel.c "signals") */
	void (*wake_urgent)(void *ctx);
	/* Whether a spin before the sleep should stop now (a signal's
	 * handler ran: the sleep ends it with EINTR); NULL: never */
	int (*stop_spin)(void *ctx);
};
extern const struct fivc_doorbell fivc_doorbell_futex;

/* Flags for read/write. */
#define FIVC_NONBLOCK 0x1
#define FIVC_PEEK 0x2
#define FIVC_WAITALL 0x4
#define FIVC_DISCARD 0x8 /* MSG_TRUNC: the bytes are taken (or peeked) and not copied */
#define FIVC_URGENT 0x10 /* write: MSG_OOB, the last byte is urgent (channel.c) */

/* Spin adaptation: how far the budget shrinks, how often a full spin probes. */
#define FIVC_SPIN_MAX_SHIFT 8
#define FIVC_SPIN_PROBE 64
/* `shared` bits, and how often a shared direction looks whether it is ours
 * alone again (a look asks the kernel about each other holder). */
#define FIVC_SHARED_RD 0x1u
#define FIVC_SHARED_WR 0x2u
#define FIVC_UNSHARE_CHECK_NS (10u * 1000000u)
/* How long a sleeping side waits before it checks the peer is alive
 * (every wait: read, write, poll, select, epoll; DESIGN.md I5). */
#define FIVC_LIVENESS_MS 100u

/* Where one ring's bytes are, as one side sees it (layout.h: byte p is in
 * buf if p >= from, else in prev).  Private: the producer's is the truth
 * (it writes the shared words from it); the consumer's is refreshed, and
 * checked, whenever desc_seq moved. */
struct fivc_ringview {
	uint8_t *data, *pdata;  /* buf's and prev's bytes (pdata NULL: not needed) */
	uint64_t size, psize;   /* their sizes (powers of two) */
	uint64_t from;
	uint32_t buf, prev, seq;
	int prev_held;          /* producer: prev is a pool buffer not yet given back */
};

struct fivc_chan {
	struct fivc_fabric *f;
	struct fivc_slot *slot;
	uint32_t idx, gen;
	int side;
	struct fivc_ring_hdr *tx, *rx; /* tx: we produce; rx: we consume */
	struct fivc_ringview txv, rxv;
	uint64_t max_size;             /* the largest ring a producer may grow to */
	uint64_t grow_failed_ns;       /* the pool was empty then: do not promise space */
	uint64_t tx_idle_mark;         /* the janitor's last look at tx_tail */
	uint64_t tx_tail, tx_head_seen; /* tx_tail is ours: shared copy is write-only */
	uint64_t rx_head, rx_tail_seen; /* rx_head is ours */
	uint64_t spin_ns;
	/* Adaptive spinning, per direction [0] read [1] write: the budget is
	 * spin_ns >> spin_fails[d]; a spin that ends in sleep doubles the
	 * shift, one that finds the ring ready halves it, and every
	 * FIVC_SPIN_PROBE-th wait spins the full budget to learn again. */
	uint8_t spin_fails[2];
	uint8_t spin_probe[2];
	unsigned shared;               /* FIVC_SHARED_*: other processes may use this
					  side too (fork): each read (write) takes the
					  slot's lock for its direction and reloads its
					  index from the ring; cleared per direction once
					  we are the side's only holder again */
	uint64_t unshare_ns[2];        /* the last look for that, per direction */
	int broken;                    /* sticky -ECONNRESET after a peer violation (atomic:
					  one reader and one writer thread may run at once) */
	int wr_shut, rd_shut;
	/* TCP's reset, as the kernel keeps it (issue 11): reset is the
	 * CLOSE state a reset left; sk_err the error not yet reported
	 * (ECONNRESET, or EPIPE when the peer's FIN had come), given once by
	 * the next call that reports errors, SO_ERROR, or shown as POLLERR. */
	int reset, sk_err;
	int peer_gone;                 /* set by the doorbell: 1 the peer's socket
					  closed (EOF after drain), 2 it was reset */
	uint64_t rd_timeout_ns, wr_timeout_ns; /* 0: wait forever (SO_RCVTIMEO/SNDTIMEO) */
	uint32_t sleepers[2];          /* our threads asleep in a read [0] / write [1] */
	/* urgent data we receive (channel.c "urgent data"): the mark's stream
	 * offset, the peer's urg_count it came with, its state, the byte;
	 * oob_inline: SO_OOBINLINE (set by the preload) */
	uint64_t urg_pos;
	uint32_t urg_seen;
	int urg_state;
	uint8_t urg_byte;
	int oob_inline;
	uint32_t rcvlowat;             /* SO_RCVLOWAT (set by the preload); 0 or 1: a byte */
	int linger0;                   /* SO_LINGER on with 0 s (set by the preload): the
					  last close resets, as TCP's abortive close */
	uint32_t sig;                  /* FIVC_SIG_*: what our program asked for (set by the
					  preload through fivc_chan_set_signals) */
	uint64_t sndbuf;               /* our SO_SNDBUF as the kernel reports it, when the
					  program set one; 0: none (bytes in flight unbounded
					  but by the ring) */
	const struct fivc_doorbell *db;
	void *db_ctx;
	/* counters (private, for stats and tests); rx_* touched only by the
	 * reading thread, tx_* only by the writing thread */
	uint64_t rx_sleeps, tx_sleeps, rx_wakes_sent, tx_wakes_sent;
	uint64_t down_pos;             /* the next backlog byte to send (downgrade) */
	int backlog_on;                /* ... once fivc_chan_backlog_start set it */
};

int fivc_chan_open(struct fivc_chan *c, struct fivc_fabric *f, uint32_t slot,
		   uint32_t gen, int side);
ssize_t fivc_chan_write(struct fivc_chan *c, const void *buf, size_t len, int flags);
ssize_t fivc_chan_read(struct fivc_chan *c, void *buf, size_t len, int flags);
/* Bytes ready to read (>0), 0 when none, -ECONNRESET on a broken peer;
 * *eof is set when the peer shut down writing and the ring is drained. */
ssize_t fivc_chan_readable(struct fivc_chan *c, int *eof);
/* The bytes that make the ring readable for poll (SO_RCVLOWAT; >= 1). */
uint64_t fivc_chan_lowat(const struct fivc_chan *c);
/* The peer shut down writing (or its socket went): TCP's RDHUP, even
 * while data is still to be read. */
int fivc_chan_peer_shut(struct fivc_chan *c);
/* The peer closed both ways (or its socket went). */
int fivc_chan_peer_closed(struct fivc_chan *c);
/* Free ring space in bytes (counting the space a write would get by growing
 * the ring), or -ECONNRESET / -EPIPE. */
ssize_t fivc_chan_writable(struct fivc_chan *c);
/* Urgent data (reader's lock held, but fivc_chan_urgent): recv(MSG_OOB)
 * into buf (1 byte; *trunc set when len is 0), -EINVAL, -EAGAIN; whether
 * the next byte is the mark (SIOCATMARK); whether an urgent byte waits
 * (POLLPRI). */
ssize_t fivc_chan_recv_oob(struct fivc_chan *c, void *buf, size_t len, int peek, int *trunc);
int fivc_chan_atmark(struct fivc_chan *c);
int fivc_chan_urgent(struct fivc_chan *c);
ssize_t fivc_chan_inq(struct fivc_chan *c); /* FIONREAD */
int fivc_chan_tx_consumed(struct fivc_chan *c); /* the peer read all we wrote */
/* Our program set SO_RCVBUF: the kernel's figure (0: none), for the writer's
 * bound (channel.c "buffer sizes"). */
void fivc_chan_set_rcvbuf(struct fivc_chan *c, uint32_t bytes);
/* Our program asked for signals (FIVC_SIG_*: O_ASYNC with an owner, an
 * owner for SIGURG): the peer's writes ring our doorbell for them. */
void fivc_chan_set_signals(struct fivc_chan *c, uint32_t sig);
/* Our side's other holders (fork) are gone: back to one process now (1),
 * else 0 (as the check shared reads and writes make now and then). */
int fivc_chan_unshare_now(struct fivc_chan *c);
/* A reset's error, taken by a call that returns success anyway (recvmmsg
 * after entries), given back for the next call (the kernel's sk_err). */
void fivc_chan_store_error(struct fivc_chan *c, int err);
/* The janitor (about once a second, holding the writer's lock): a ring on
 * a pool buffer that stayed empty since the last call goes back to its
 * inline buffer and the pool buffer's pages go back to the system.  Returns
 * 1 while the ring is still on a pool buffer (call again), 0 when not. */
int fivc_chan_tx_idle(struct fivc_chan *c);
/* Whether our ring is on a pool buffer (the janitor should watch it). */
static inline int fivc_chan_tx_grown(const struct fivc_chan *c)
{
	return c->txv.buf != 0 || c->txv.prev_held;
}
/* For poll()-style waiting outside the channel: announce that we wait for
 * data (rd) and/or space (wr) so the peer rings the doorbell, with the SB
 * fence; returns 1 if that is already there.  The flags stay set either
 * way: the peer clears them when it rings (one arm, at most one doorbell);
 * fivc_chan_disarm is for a side that is sure it is the only waiter. */
int fivc_chan_arm(struct fivc_chan *c, int rd, int wr);
void fivc_chan_disarm(struct fivc_chan *c);
/* Arm without looking: for edge-triggered waiters, woken by the next change. */
void fivc_chan_arm_always(struct fivc_chan *c, int rd, int wr);
/* The same with a wake code (layout.h "wake record") for an epoll set's
 * own sleep; the caller looks at the rings afterwards (SB). */
void fivc_chan_arm_code(struct fivc_chan *c, int rd, int wr, uint32_t code);
/* Take code back out of the waiting flags that still hold it (its watcher
 * goes); a flag another waiter shares (1) or that a ringer took stays. */
void fivc_chan_unarm_code(struct fivc_chan *c, uint32_t code);
/* For waiters outside the channel (poll, epoll), once per FIVC_LIVENESS_MS
 * of sleep: 1 when the peer is gone (found dead now: then it is marked as
 * reset, so readiness reports it and I/O drains, then fails), 0 while it
 * lives. */
/* The peer let go of its side of the slot (it closed, or finished its
 * downgrade), or the slot moved on; for a side that was adopted. */
int fivc_chan_peer_released(struct fivc_chan *c);
int fivc_chan_peer_check(struct fivc_chan *c);
/* Stores into the slot outside the channel's calls (the client's switch,
 * io.c) go between these: 1 when the lease stands (a guest then counts as
 * inside the slot until fivc_chan_leave), 0 when the slot moved on. */
int fivc_chan_enter(struct fivc_chan *c);
/* The reset state (above), brought up to date from the rings: 1 when the
 * connection was reset; *err (if given) the pending error, taken when
 * `take`. */
int fivc_chan_reset_state(struct fivc_chan *c, int *err, int take);
void fivc_chan_leave(struct fivc_chan *c);
/* SHUT_RD / SHUT_WR / SHUT_RDWR semantics. */
int fivc_chan_shutdown(struct fivc_chan *c, int how);
/* TCP's abortive close (SO_LINGER 0): the peer's next call gets ECONNRESET
 * once what was written is read, as after a close with bytes unread. */
void fivc_chan_abort(struct fivc_chan *c);
/* fork: both directions become shared (after the child's holder entry is
 * in).  unshared_count: how many times a direction went back to the
 * lock-free path in this process (for tests and stats). */
void fivc_chan_share(struct fivc_chan *c);
uint64_t fivc_chan_unshared_count(void);
/* The side's cross-process lock for one direction (wr: 0 reading, 1
 * writing), as shared reads and writes take it: for the preload's TCP
 * steps before the switch on a side several processes hold.  Never held
 * across a sleep.  0, or -EINTR / -ECONNRESET (broken channel). */
int fivc_chan_xlock(struct fivc_chan *c, int wr);
void fivc_chan_xunlock(struct fivc_chan *c, int wr);
/* Shut down both directions and give up our side of the slot. */
void fivc_chan_close(struct fivc_chan *c);

/* The way back to TCP (issue 12; channel.c, README "Downgrade").  A read
 * or write returns -FIVC_EDOWN (not an errno) where the peer left the
 * ring: a reader once the ring is dry, a writer at once. */
#define FIVC_EDOWN 4096
#define FIVC_PEER_RD_DOWN 1 /* the peer stopped reading our ring: we resend */
#define FIVC_PEER_LEFT 2    /* the peer stopped writing its ring */
#define FIVC_PEER_AT 4      /* ... and *at says where its doorbells end on TCP */
void fivc_chan_down_leave_rx(struct fivc_chan *c);
void fivc_chan_down_leave_tx(struct fivc_chan *c);
void fivc_chan_down_publish(struct fivc_chan *c, uint64_t sent);
int fivc_chan_down_peer(struct fivc_chan *c, uint64_t *at);
/* The producer's bytes its consumer left unread (FIVC_PEER_RD_DOWN), to be
 * sent over TCP: start (-ECONNRESET for a head outside what we wrote),
 * copy the next ones out, count them sent, how many are left. */
int fivc_chan_backlog_start(struct fivc_chan *c);
size_t fivc_chan_backlog_peek(struct fivc_chan *c, void *buf, size_t len);
void fivc_chan_backlog_sent(struct fivc_chan *c, size_t n);
uint64_t fivc_chan_backlog_left(const struct fivc_chan *c);
/* Let go of our side without a flag or a doorbell (both sides are on TCP). */
void fivc_chan_down_release(struct fivc_chan *c);

/* The two halves of the SB pattern, exposed for the litmus test.
 * Consumer: announce "waiting", full fence, then report whether data (or EOF)
 * is there.  Producer: after publishing its tail, full fence, then report
 * whether the consumer announced waiting. */
int fivc_ring_arm_consumer(struct fivc_ring_hdr *r, uint64_t head);
int fivc_ring_consumer_waiting(struct fivc_ring_hdr *r);

#endif
